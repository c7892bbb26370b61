//! Scenario 10, soak (issue 14): millions of events through a system with the default 1 GiB
//! caps at a steady rate, to one fast endpoint. Measured: events refused (none should be: the
//! events stream makes room at its cap), every accepted event delivered, each process's RSS
//! sampled every 5 s and how far it strays after warm-up (flat within ±15% is the target), and
//! nats-server's memory per retained event after a quiet minute. One event in ten carries a
//! producer's own id, so the id index is exercised too. The RSS over time is drawn into an SVG.
//!
//! `bench suite --only 10 [--soak-events 5000000] [--soak-rate 4000] [--soak-svg docs/soak-rss.svg]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, routing::post};

use crate::system::{self, ADMIN_TOKEN, Bins, NATS_PORT, System};
use crate::{Metrics, load, setup};

/// What the soak sends and where it draws.
pub struct Options {
    pub events: usize,
    pub rate: f64,
    pub svg: std::path::PathBuf,
}

/// Events per batch request.
const BATCH: usize = 100;
/// Seconds between samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Warm-up: the share of events after which RSS should stay flat. At 5,000,000 events of about
/// 700 stored bytes the events stream reaches its 1 GiB cap at about 1,500,000 (30 %), and
/// nats-server's memory grows until then (its first run, with 20 %, counted that growth).
const WARM_UP: f64 = 0.4;

#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    accepted: u64,
    rss: [f64; 3],
}

pub async fn run_once(
    bins: &Bins,
    dir: &std::path::Path,
    client: &reqwest::Client,
    opts: &Options,
) -> anyhow::Result<Metrics> {
    let sys = System::start(bins, dir, client, &[]).await?;
    let result = measure(&sys, client, opts).await;
    sys.stop().await;
    let _ = std::fs::remove_dir_all(dir.join("nats"));
    result
}

async fn measure(
    sys: &System,
    client: &reqwest::Client,
    opts: &Options,
) -> anyhow::Result<Metrics> {
    let api = sys.api.as_str();
    let delivered = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr()?.port());
    let counter = delivered.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Relaxed);
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let reply = setup::post_json(
        client,
        &format!("{api}/v1/admin/tenants/soak/api-keys"),
        ADMIN_TOKEN,
        None,
    )
    .await?;
    let key = reply["key"].as_str().context("no key")?.to_string();
    let sub = serde_json::json!({"url": url, "event_types": ["*"]});
    setup::post_json(client, &format!("{api}/v1/subscriptions"), &key, Some(sub)).await?;
    // The dispatcher knows the subscription once a probe arrives.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Relaxed) == 0 {
        anyhow::ensure!(
            Instant::now() < probe_deadline,
            "the probe was not delivered"
        );
        setup::send_event(client, api, &key, load::event_json("probe", 0)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probes = delivered.load(Relaxed);

    let pids: Vec<String> = sys.pids().iter().map(|(_, p)| p.to_string()).collect();
    let rss = || -> [f64; 3] {
        let mut out = [0.0; 3];
        for (i, pid) in pids.iter().take(3).enumerate() {
            out[i] = system::rss_mib(pid).unwrap_or(0.0);
        }
        out
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut samples = vec![Sample {
        t: 0.0,
        accepted: 0,
        rss: rss(),
    }];
    let sender = {
        let (client, api, key) = (client.clone(), api.to_string(), key.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        let (events, rate) = (opts.events, opts.rate);
        tokio::spawn(
            async move { send(&client, &api, &key, events, rate, accepted, refused).await },
        )
    };
    let mut next = t0 + SAMPLE_EVERY;
    while !sender.is_finished() {
        tokio::time::sleep_until(next.into()).await;
        next += SAMPLE_EVERY;
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            accepted: accepted.load(Relaxed),
            rss: rss(),
        });
        eprintln!(
            "  {:>6.0} s: {} accepted, {} delivered, {} refused, RSS MiB nats / ingest / dispatcher {:.0} / {:.0} / {:.0}",
            t0.elapsed().as_secs_f64(),
            accepted.load(Relaxed),
            delivered.load(Relaxed).saturating_sub(probes),
            refused.load(Relaxed),
            samples.last().map_or(0.0, |s| s.rss[0]),
            samples.last().map_or(0.0, |s| s.rss[1]),
            samples.last().map_or(0.0, |s| s.rss[2]),
        );
    }
    sender.await??;
    let send_s = t0.elapsed().as_secs_f64();
    let accepted_n = accepted.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(300);
    while delivered.load(Relaxed).saturating_sub(probes) < accepted_n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A quiet minute, then the last sample.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let quiet = Sample {
        t: t0.elapsed().as_secs_f64(),
        accepted: accepted_n,
        rss: rss(),
    };
    samples.push(quiet);

    let js = async_nats::jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{NATS_PORT}")).await?,
    );
    let events = js
        .get_stream(proto::subjects::EVENTS_STREAM)
        .await?
        .get_info()
        .await?;
    let retained = events.state.messages;
    let subjects_total: u64 = {
        let mut n = 0;
        for name in proto::subjects::STREAMS {
            if let Ok(mut s) = js.get_stream(name).await
                && let Ok(info) = s.info().await
            {
                n += info.state.subjects_count;
            }
        }
        n
    };

    let mut m = Metrics::new();
    let delivered_n = delivered.load(Relaxed).saturating_sub(probes);
    m.insert("events_sent".into(), opts.events as f64);
    m.insert("events_accepted".into(), accepted_n as f64);
    m.insert("events_refused".into(), refused.load(Relaxed) as f64);
    m.insert("deliveries".into(), delivered_n as f64);
    m.insert("lost".into(), accepted_n.saturating_sub(delivered_n) as f64);
    m.insert(
        "accepted_per_s".into(),
        accepted_n as f64 / send_s.max(1e-9),
    );
    m.insert("events_retained".into(), retained as f64);
    m.insert("events_stream_bytes".into(), events.state.bytes as f64);
    m.insert("subjects_in_all_streams".into(), subjects_total as f64);
    let warm_at = (opts.events as f64 * WARM_UP) as u64;
    let warm = samples
        .iter()
        .find(|s| s.accepted >= warm_at)
        .copied()
        .unwrap_or(quiet);
    for (i, name) in ["nats", "ingest", "dispatcher"].iter().enumerate() {
        let after: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= warm.t)
            .map(|s| s.rss[i])
            .collect();
        let max = after.iter().copied().fold(f64::MIN, f64::max);
        let min = after.iter().copied().fold(f64::MAX, f64::min);
        m.insert(format!("rss_mib_{name}_warm"), warm.rss[i]);
        m.insert(format!("rss_mib_{name}_max_after_warm"), max);
        m.insert(format!("rss_mib_{name}_min_after_warm"), min);
        m.insert(format!("rss_mib_{name}_quiet"), quiet.rss[i]);
        m.insert(
            format!("rss_{name}_stray_pct"),
            100.0 * (max - warm.rss[i]).abs().max((warm.rss[i] - min).abs())
                / warm.rss[i].max(1e-9),
        );
    }
    m.insert(
        "nats_kib_per_retained_event".into(),
        (quiet.rss[0] - samples[0].rss[0]) * 1024.0 / (retained.max(1) as f64),
    );
    std::fs::write(&opts.svg, svg(&samples, opts))
        .with_context(|| format!("writing {}", opts.svg.display()))?;
    eprintln!("  wrote {}", opts.svg.display());
    Ok(m)
}

/// Posts `events` in batches of [`BATCH`] at `rate` events/s (a few batches in flight); one
/// event in ten has a producer's own id. A refused batch (`503`) is counted and sent again.
async fn send(
    client: &reqwest::Client,
    api: &str,
    key: &str,
    events: usize,
    rate: f64,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let t0 = tokio::time::Instant::now();
    let cap = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for from in (0..events).step_by(BATCH) {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(from as f64 / rate)).await;
        let permit = cap.clone().acquire_owned().await?;
        let mut body = String::from(r#"{"events":["#);
        for n in from..(from + BATCH).min(events) {
            if n > from {
                body.push(',');
            }
            let id = format!("soak-{n}");
            let mut one = load::event_json(&id, n % 16);
            if n % 10 != 0 {
                // Nine in ten without an id: ingest assigns one.
                one = one.replacen(&format!("\"id\":\"{id}\","), "", 1);
            }
            body.push_str(&one);
        }
        body.push_str("]}");
        let n = ((from + BATCH).min(events) - from) as u64;
        let (client, url, key) = (
            client.clone(),
            format!("{api}/v1/events/batch"),
            key.to_string(),
        );
        let (accepted, refused) = (accepted.clone(), refused.clone());
        tasks.spawn(async move {
            let _permit = permit;
            loop {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        accepted.fetch_add(n, Relaxed);
                        return;
                    }
                    _ => {
                        refused.fetch_add(n, Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// RSS of the three processes over time, as an SVG line chart with a table alternative.
fn svg(samples: &[Sample], opts: &Options) -> String {
    let (w, h, pad) = (720.0, 360.0, 48.0);
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = samples.iter().flat_map(|s| s.rss).fold(1.0_f64, f64::max) * 1.1;
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / y_max;
    let colours = ["#1f77b4", "#d62728", "#2ca02c"];
    let names = ["nats-server", "ingest", "dispatcher"];
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-labelledby="title desc">
<title id="title">Resident memory over a soak of {} events at {} events/s</title>
<desc id="desc">RSS in MiB of nats-server, ingest and the dispatcher, sampled every 5 s (bench scenario 10).</desc>
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<text x="{}" y="{}" font-size="12" text-anchor="middle">seconds ({:.0} in all)</text>
<text x="12" y="{}" font-size="12" transform="rotate(-90 12 {})" text-anchor="middle">RSS MiB (top {:.0})</text>
"#,
        opts.events,
        opts.rate,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 12.0,
        t_max,
        h / 2.0,
        h / 2.0,
        y_max,
    );
    for (i, (colour, name)) in colours.iter().zip(names).enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(s.rss[i])))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{name}</title></polyline>\n",
            points.join(" ")
        ));
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{name}</text>\n",
            w - pad - 110.0,
            pad + 16.0 * i as f64
        ));
    }
    out.push_str("</svg>\n");
    out
}
