//! The events stream is a retention log, not a gate: at its cap the oldest events already
//! fanned out make room, so a healthy system accepts events for ever; only events not yet
//! fanned out filling the stream themselves are refused (`503`), and that recovers as the
//! fan-out drains.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream;
use proto::subjects;
use reqwest::StatusCode;
use serde_json::json;
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// The events stream's cap in these tests: a few hundred events.
const CAP: i64 = 256 * 1024;

async fn shrink_events_stream(js: &jetstream::Context) {
    let mut info = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    info.config.max_bytes = CAP;
    js.update_stream(&info.config).await.unwrap();
}

async fn events_state(js: &jetstream::Context) -> async_nats::jetstream::stream::State {
    js.get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
}

/// Posts `n` events in one batch; answers the status and body.
async fn post_batch(sys: &System, key: &str, n: usize) -> (StatusCode, serde_json::Value) {
    let events: Vec<_> = (0..n).map(|_| event("call.started", "agent_1")).collect();
    sys.post("/v1/events/batch", key, json!({ "events": events }))
        .await
}

#[tokio::test]
async fn a_small_events_stream_filled_many_times_over_accepts_every_event_while_delivery_keeps_up()
{
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    sys.subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}
    shrink_events_stream(&js).await;

    // About six times the cap, a batch at a time, each delivered before the next is sent.
    const BATCHES: usize = 30;
    const BATCH: usize = 100;
    let mut delivered = HashSet::new();
    for b in 0..BATCHES {
        let (status, body) = post_batch(&sys, &key, BATCH).await;
        assert!(status.is_success(), "batch {b}: {status} {body}");
        while delivered.len() < (b + 1) * BATCH {
            let got = receiver
                .recv_within(SOON)
                .await
                .unwrap_or_else(|| panic!("batch {b}: {} delivered", delivered.len()));
            delivered.insert(got.header("webhook-id").unwrap().to_owned());
        }
    }
    let state = events_state(&js).await;
    assert!(state.bytes <= CAP as u64, "{state:?}");
    assert!(
        state.first_sequence > (BATCHES * BATCH / 2) as u64,
        "the oldest events made room: {state:?}"
    );
    // Still accepting, one by one too.
    for _ in 0..20 {
        sys.send_event(&key, event("call.ended", "agent_1")).await;
    }
    take_until(&receiver, &mut delivered, SOON, |d| {
        d.len() == BATCHES * BATCH + 20
    })
    .await;
    // The feed's reach is reported.
    let metrics = metrics_text(&sys, sys.ingest.addr).await;
    assert!(
        metrics.contains("webhooks_events_retained_seconds "),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_fan_out_backlog_at_the_cap_is_refused_with_503_and_recovers_as_it_drains() {
    let mut sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    sys.subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    shrink_events_stream(&js).await;
    // No dispatcher: nothing is fanned out, so nothing may make room.
    if let Some(d) = sys.dispatcher.take() {
        d.stop().await.unwrap();
    }
    let mut accepted = HashSet::new();
    let problem = loop {
        let (status, body) = sys
            .post("/v1/events", &key, event("call.started", "agent_1"))
            .await;
        if status == StatusCode::ACCEPTED {
            accepted.insert(body["id"].as_str().unwrap().to_owned());
            assert!(accepted.len() < 5_000, "never refused");
            continue;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        break body;
    };
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not yet delivered"),
        "{problem}"
    );
    assert!(
        accepted.len() > 100,
        "{} accepted before the cap",
        accepted.len()
    );

    // The fan-out drains: room again, and every accepted event is delivered.
    sys.restart_dispatcher(|_| {}).await;
    eventually(Duration::from_secs(60), "room again", || async {
        let (status, _) = sys
            .post("/v1/events", &key, event("call.ended", "agent_1"))
            .await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await
    .unwrap();
    let mut delivered = HashSet::new();
    take_until(&receiver, &mut delivered, Duration::from_secs(60), |d| {
        accepted.is_subset(d)
    })
    .await;
}

/// Takes `receiver`'s deliveries into `delivered` (their ids) until `done` says so, failing
/// after `within`.
async fn take_until(
    receiver: &TestReceiver,
    delivered: &mut HashSet<String>,
    within: Duration,
    done: impl Fn(&HashSet<String>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(delivered) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} delivered",
            delivered.len()
        );
        if let Some(got) = receiver.recv_within(Duration::from_millis(200)).await {
            delivered.insert(got.header("webhook-id").unwrap().to_owned());
        }
    }
}

#[tokio::test]
async fn events_are_found_by_id_without_a_subject_or_key_per_event() {
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let other = sys.tenant_key("other").await;
    const N: usize = 200;
    let mut assigned = Vec::new();
    let mut chosen = Vec::new();
    for n in 0..N {
        assigned.push(sys.send_event(&key, event("call.started", "agent_1")).await);
        let mut own = event("call.ended", "agent_1");
        own["id"] = json!(format!("order-{n}"));
        chosen.push(sys.send_event(&key, own).await);
    }
    // One derived from an Idempotency-Key: a ULID whose time is a hash.
    let response = sys
        .http
        .post(sys.url("/v1/events"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "retry-me-7781")
        .json(&event("call.failed", "agent_1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let derived: serde_json::Value = response.json().await.unwrap();
    let derived = derived["id"].as_str().unwrap().to_owned();

    for id in assigned.iter().chain(&chosen).chain([&derived]) {
        let (status, body) = sys.get(&format!("/v1/events/{id}"), &key).await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["id"], json!(id));
        // Another tenant's key finds nothing.
        let (status, _) = sys.get(&format!("/v1/events/{id}"), &other).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    let (status, _) = sys.get("/v1/events/order-unknown", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = format!("evt_{}", ulid::Ulid::new());
    let (status, _) = sys.get(&format!("/v1/events/{unknown}"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Only the ids ingest did not assign are indexed, under at most 64 subjects a tenant.
    let ids = js
        .get_stream(subjects::EVENT_IDS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state;
    assert_eq!(ids.messages as usize, N + 1, "{ids:?}");
    assert!(ids.subjects_count <= 64, "{ids:?}");
    let legacy = js
        .get_key_value(subjects::EVENT_INDEX_BUCKET)
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!(legacy.values(), 0, "nothing written to the per-event keys");
}
