//! Scenario 12, capacity (issue 14): the bytes each stream stores per message, measured on a
//! real system, for the capacity model in docs/operations.md. One subscription whose endpoint
//! refuses connections (the circuit breaker off), two attempts 10 s apart: every event leaves an event (half with a
//! producer's id, so an id-index entry), a waiting retry, two attempt records and a dead letter.
//! The events are the benchmark's usual 500-byte JSON.
//!
//! `bench suite --only 12`

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::system::{ADMIN_TOKEN, Bins, NATS_PORT, System};
use crate::{Metrics, load, setup};

const EVENTS: usize = 2_000;

pub async fn run_once(
    bins: &Bins,
    dir: &std::path::Path,
    client: &reqwest::Client,
) -> anyhow::Result<Metrics> {
    // No circuit breaker: it would hold the retries back for minutes.
    let extra = [("WEBHOOKS_BREAKER_THRESHOLD", "1000000".to_string())];
    let sys = System::start(bins, dir, client, &extra).await?;
    let result = measure(&sys, client).await;
    sys.stop().await;
    let _ = std::fs::remove_dir_all(dir.join("nats"));
    result
}

/// Bytes and messages of `stream`.
async fn usage(js: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<(u64, u64)> {
    let mut s = js.get_stream(stream).await?;
    let info = s.info().await?;
    Ok((info.state.bytes, info.state.messages))
}

/// Waits until `stream` holds at least `want` messages.
async fn until_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
    want: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while usage(js, stream).await?.1 < want {
        anyhow::ensure!(Instant::now() < deadline, "{stream} never reached {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn measure(sys: &System, client: &reqwest::Client) -> anyhow::Result<Metrics> {
    let api = sys.api.as_str();
    let reply = setup::post_json(
        client,
        &format!("{api}/v1/admin/tenants/capacity/api-keys"),
        ADMIN_TOKEN,
        None,
    )
    .await?;
    let key = reply["key"].as_str().context("no key")?.to_string();
    // Nothing listens on port 9: every attempt fails at once.
    let sub = json!({"url": "http://127.0.0.1:9/hook", "event_types": ["*"],
        "retry": {"max_attempts": 2, "schedule_ms": [10_000]}});
    setup::post_json(client, &format!("{api}/v1/subscriptions"), &key, Some(sub)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut body = String::from(r#"{"events":["#);
    for n in 0..EVENTS {
        if n % 100 == 0 && n > 0 {
            body.push_str("]}");
            setup::send_batch(client, api, &key, std::mem::take(&mut body)).await?;
            body = String::from(r#"{"events":["#);
        } else if n > 0 {
            body.push(',');
        }
        let id = format!("cap-{n}");
        let mut one = load::event_json(&id, n % 16);
        if n % 2 == 1 {
            // Half without an id: ingest assigns one and writes no index entry.
            one = one.replacen(&format!("\"id\":\"{id}\","), "", 1);
        }
        body.push_str(&one);
    }
    body.push_str("]}");
    setup::send_batch(client, api, &key, body).await?;

    let js = async_nats::jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{NATS_PORT}")).await?,
    );
    use proto::subjects as s;
    let n = EVENTS as u64;
    // Every first attempt failed: each delivery waits for its retry.
    until_messages(&js, s::WAITING_STREAM, n).await?;
    let mut m = Metrics::new();
    let mut per = |name: &str, (bytes, messages): (u64, u64)| {
        m.insert(format!("{name}_messages"), messages as f64);
        m.insert(
            format!("{name}_bytes_per_message"),
            bytes as f64 / messages.max(1) as f64,
        );
    };
    per("events", usage(&js, s::EVENTS_STREAM).await?);
    per("event_ids", usage(&js, s::EVENT_IDS_STREAM).await?);
    per("waiting_tasks", usage(&js, s::WAITING_STREAM).await?);
    // The retries, then the dead letters.
    until_messages(&js, s::DLQ_STREAM, n).await?;
    until_messages(&js, s::ATTEMPTS_STREAM, 2 * n).await?;
    per("attempts", usage(&js, s::ATTEMPTS_STREAM).await?);
    per("dead_letters", usage(&js, s::DLQ_STREAM).await?);
    m.insert("event_json_bytes".into(), load::EVENT_BYTES as f64);
    Ok(m)
}
