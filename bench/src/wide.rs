//! Scenario 11, big fan-out (issue 14): one tenant's 1,000 `*` subscriptions and the largest
//! events the catalog accepts at 50 events/s, about 3 GB/s of deliveries to make, far more than
//! this machine can send. (The issue asks for 200 KiB events; a typed event cannot be that
//! large: the largest is an `outcome.tagged` with 64 tags of 256 four-byte characters, a 66 KiB
//! envelope. The dispatcher validates what it fans out, so nothing larger reaches it.)
//! What is measured is what the dispatcher holds while it cannot keep up: its RSS sampled every
//! second and its peak (target: under 256 MiB), beside what it delivered and what it
//! dead-lettered. The events and the tasks it could not make yet wait in JetStream, not in its
//! memory; the run ends with the load (nothing is drained).
//!
//! `bench suite --only 11 [--wide-seconds 30]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::{Router, body::Bytes, http::StatusCode, routing::post};

use crate::system::{self, ADMIN_TOKEN, Bins, DISPATCHER_PORT, System};
use crate::{Metrics, setup};

/// Subscriptions of the one tenant, every one to `*`.
pub const SUBSCRIPTIONS: usize = 1_000;
/// Tags of each event, each of [`TAG_CHARS`] four-byte characters: the catalog's limits.
const TAGS: usize = proto::catalog::MAX_LIST_ITEMS;
const TAG_CHARS: usize = proto::catalog::MAX_IDENTIFIER_CHARS;
/// Bytes of each event's `data`, about.
pub const EVENT_DATA_BYTES: usize = (TAGS + 1) * TAG_CHARS * 4;
/// Events per second.
pub const RATE: f64 = 50.0;

pub async fn run_once(
    bins: &Bins,
    dir: &std::path::Path,
    client: &reqwest::Client,
    seconds: u64,
) -> anyhow::Result<Metrics> {
    let sys = System::start(bins, dir, client, &[]).await?;
    let result = measure(&sys, client, seconds).await;
    sys.stop().await;
    let _ = std::fs::remove_dir_all(dir.join("nats"));
    result
}

/// The largest event the catalog accepts, about [`EVENT_DATA_BYTES`] of data.
fn big_event(n: u64) -> String {
    let tag = |i: usize| format!("{i:02}{}", "\u{1F600}".repeat(TAG_CHARS - 2));
    let tags: Vec<String> = (0..TAGS).map(tag).collect();
    serde_json::json!({
        "type": "outcome.tagged",
        "agent_id": "agent_1",
        "call_id": format!("call_{n}"),
        "data": {"outcome": tag(99), "tags": tags},
    })
    .to_string()
}

async fn measure(sys: &System, client: &reqwest::Client, seconds: u64) -> anyhow::Result<Metrics> {
    let api = sys.api.as_str();
    let (delivered, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr()?.port());
    let (d, b) = (delivered.clone(), bytes.clone());
    let app = Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let (d, b) = (d.clone(), b.clone());
            async move {
                d.fetch_add(1, Relaxed);
                b.fetch_add(body.len() as u64, Relaxed);
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let reply = setup::post_json(
        client,
        &format!("{api}/v1/admin/tenants/wide/api-keys"),
        ADMIN_TOKEN,
        None,
    )
    .await?;
    let key = reply["key"].as_str().context("no key")?.to_string();
    let t_setup = Instant::now();
    {
        let (c, a, k, u) = (client.clone(), api.to_string(), key.clone(), url.clone());
        setup::concurrently(SUBSCRIPTIONS, 32, move |_| {
            let (c, a, k, u) = (c.clone(), a.clone(), k.clone(), u.clone());
            async move {
                let sub = serde_json::json!({"url": u, "event_types": ["*"]});
                setup::post_json(&c, &format!("{a}/v1/subscriptions"), &k, Some(sub)).await
            }
        })
        .await?;
    }
    // Every subscription is known to the dispatcher once one small event reaches them all.
    let probe = |n: u64| crate::load::event_json(&format!("probe-{n}"), 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    setup::send_event(client, api, &key, probe(1)).await?;
    let mut probes = 1u64;
    while delivered.load(Relaxed) < probes * SUBSCRIPTIONS as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the probes did not reach every subscription"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        if delivered.load(Relaxed) < probes * SUBSCRIPTIONS as u64 {
            // One probe before the index caught up reached fewer; another one reaches all.
            let before = delivered.load(Relaxed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            if delivered.load(Relaxed) == before {
                probes += 1;
                setup::send_event(client, api, &key, probe(probes)).await?;
            }
        }
    }
    let setup_s = t_setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (base_delivered, base_bytes) = (delivered.load(Relaxed), bytes.load(Relaxed));

    let pids = sys.pids();
    let dispatcher = pids
        .iter()
        .find(|(n, _)| *n == "dispatcher")
        .map(|(_, p)| p.to_string())
        .context("no dispatcher")?;
    let nats = pids
        .iter()
        .find(|(n, _)| *n == "nats")
        .map(|(_, p)| p.to_string())
        .context("no nats")?;
    let rss_before = system::rss_mib(&dispatcher)?;
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sender = {
        let (client, api, key) = (client.clone(), api.to_string(), key.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let body = Arc::new(big_event(0));
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..(RATE as u64 * seconds) {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(n as f64 / RATE)).await;
                let (client, api, key, body) =
                    (client.clone(), api.clone(), key.clone(), body.clone());
                let (accepted, refused) = (accepted.clone(), refused.clone());
                tasks.spawn(async move {
                    match setup::send_event(&client, &api, &key, body.to_string()).await {
                        Ok(()) => accepted.fetch_add(1, Relaxed),
                        Err(_) => refused.fetch_add(1, Relaxed),
                    };
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let t0 = Instant::now();
    let mut max_rss = rss_before;
    let mut died_at = None;
    while !sender.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Gone: the old code's dispatcher was killed for memory within 30 s on 24 GiB.
        let Ok(rss) = system::rss_mib(&dispatcher) else {
            died_at = Some(t0.elapsed().as_secs_f64());
            eprintln!(
                "  the dispatcher is gone (killed for memory?) after {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            sender.abort();
            break;
        };
        max_rss = max_rss.max(rss);
        eprintln!(
            "  {:>4.0} s: {} accepted, {} refused, {} delivered ({:.0} MiB), dispatcher RSS {rss:.0} MiB, nats {:.0} MiB",
            t0.elapsed().as_secs_f64(),
            accepted.load(Relaxed),
            refused.load(Relaxed),
            delivered.load(Relaxed) - base_delivered,
            (bytes.load(Relaxed) - base_bytes) as f64 / 1048576.0,
            system::rss_mib(&nats).unwrap_or(0.0),
        );
    }
    let _ = sender.await;
    let load_s = t0.elapsed().as_secs_f64();
    let metrics = match client
        .get(format!("http://127.0.0.1:{DISPATCHER_PORT}/metrics"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("webhooks_dead_letters_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);

    let mut m = Metrics::new();
    let n = delivered.load(Relaxed) - base_delivered;
    m.insert("subscriptions".into(), SUBSCRIPTIONS as f64);
    m.insert("event_data_kib".into(), (EVENT_DATA_BYTES / 1024) as f64);
    m.insert("setup_s".into(), setup_s);
    m.insert("load_s".into(), load_s);
    m.insert("events_accepted".into(), accepted.load(Relaxed) as f64);
    m.insert("events_refused".into(), refused.load(Relaxed) as f64);
    m.insert("deliveries".into(), n as f64);
    m.insert("deliveries_per_s".into(), n as f64 / load_s.max(1e-9));
    m.insert(
        "delivered_mib_per_s".into(),
        (bytes.load(Relaxed) - base_bytes) as f64 / 1048576.0 / load_s.max(1e-9),
    );
    m.insert("dead_letters".into(), dead);
    m.insert("rss_mib_dispatcher_before_load".into(), rss_before);
    m.insert("rss_mib_dispatcher_max_sampled".into(), max_rss);
    m.insert("dispatcher_died_after_s".into(), died_at.unwrap_or(0.0));
    m.insert(
        "peak_rss_mib_dispatcher".into(),
        system::peak_rss_mib(&dispatcher).unwrap_or(max_rss),
    );
    m.insert("peak_rss_mib_nats".into(), system::peak_rss_mib(&nats)?);
    Ok(m)
}
