//! The dispatcher's payload memory is bounded (issue 14): events in fan-out and tasks pulled
//! are charged against `WEBHOOKS_PAYLOAD_MEMORY`, and past it work waits in JetStream, never
//! in the process, and is never lost. Here the budget is the smallest allowed (2 MiB) and the
//! events the largest the catalog accepts (about 66 KiB), so each budget holds a handful.
//! (The memory figure itself is benchmark scenario 11.)

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// The largest event the catalog accepts: 64 tags of 256 four-byte characters.
fn big_event(n: usize) -> Value {
    let tag = |i: usize| format!("{i:02}{}", "\u{1F600}".repeat(254));
    json!({
        "type": "outcome.tagged",
        "agent_id": "agent_1",
        "call_id": format!("call_{n}"),
        "data": {"outcome": tag(99), "tags": (0..64).map(tag).collect::<Vec<_>>()},
    })
}

/// Receives until every one of `ids` arrived (each signature checked), answering the set seen.
async fn receive_all(receiver: &TestReceiver, secret: &str, ids: &HashSet<String>) {
    let mut seen = HashSet::new();
    while !ids.is_subset(&seen) {
        let got = receiver
            .recv_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{} of {} delivered", seen.len(), ids.len()));
        got.verify(secret).unwrap();
        seen.insert(got.header("webhook-id").unwrap().to_owned());
    }
}

/// Sends `n` big events in one batch, so they are all in the events stream at once.
async fn big_batch(sys: &System, key: &str, n: usize) -> HashSet<String> {
    let events: Vec<Value> = (1..=n).map(big_event).collect();
    let (status, body) = sys
        .post("/v1/events/batch", key, json!({"events": events}))
        .await;
    assert!(status.is_success(), "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().expect("accepted").to_owned())
        .collect()
}

async fn payload_memory(sys: &System, budget: &str) -> f64 {
    dispatcher_metric(sys, "webhooks_payload_memory_bytes", &[("budget", budget)]).await
}

#[tokio::test]
async fn events_larger_than_the_fanout_budget_are_all_delivered_one_at_a_time() {
    let sys = system_with(|s| s.payload_memory = dispatcher::config::MIN_PAYLOAD_MEMORY).await;
    let key = sys.tenant_key("acme").await;
    let mut receivers = Vec::new();
    for _ in 0..5 {
        let r = TestReceiver::start(vec![]).await.unwrap();
        let (_, secret) = sys
            .subscribe(
                &key,
                json!({"url": r.url(), "event_types": ["outcome.tagged"]}),
            )
            .await;
        receivers.push((r, secret));
    }
    // Every subscription is known once one event reaches all five.
    eventually(SOON, "the subscriptions are known", || async {
        sys.send_event(&key, big_event(0)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        receivers.iter().all(|(r, _)| r.count() > 0).then_some(())
    })
    .await
    .unwrap();
    for (r, _) in &receivers {
        while r.recv_within(QUIET).await.is_some() {}
    }

    let ids = big_batch(&sys, &key, 30).await;
    for (r, secret) in &receivers {
        receive_all(r, secret, &ids).await;
    }
    // Each charge is given back once its event is settled.
    eventually(SOON, "the fan-out budget is empty again", || async {
        (payload_memory(&sys, "fanout").await == 0.0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tenant_past_its_share_of_task_memory_is_set_aside_and_still_delivered() {
    let sys = system_with(|s| {
        s.payload_memory = dispatcher::config::MIN_PAYLOAD_MEMORY;
        // Every delivery is a task, and the endpoint takes one at a time: the tasks pulled
        // wait in line, each holding its payload, until the tenant holds half the budget.
        s.direct_first_attempt = false;
        s.per_endpoint_in_flight = 1;
    })
    .await;
    let key = sys.tenant_key("acme").await;
    let slow = TestReceiver::start_with_delay(vec![], Duration::from_millis(100))
        .await
        .unwrap();
    let (_, secret) = sys
        .subscribe(
            &key,
            json!({"url": slow.url(), "event_types": ["outcome.tagged"]}),
        )
        .await;
    eventually(SOON, "the subscription is known", || async {
        sys.send_event(&key, big_event(0)).await;
        slow.recv_within(Duration::from_secs(2)).await
    })
    .await
    .unwrap();
    while slow.recv_within(QUIET).await.is_some() {}

    let ids = big_batch(&sys, &key, 30).await;
    receive_all(&slow, &secret, &ids).await;
    let set_aside = dispatcher_metric(
        &sys,
        "webhooks_deliveries_handed_back_total",
        &[("reason", "memory_share")],
    )
    .await;
    assert!(set_aside > 0.0, "the tenant's share was never reached");
    eventually(SOON, "the deliveries budget is empty again", || async {
        (payload_memory(&sys, "deliveries").await == 0.0).then_some(())
    })
    .await
    .unwrap();
}
