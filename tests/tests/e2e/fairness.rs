//! Delivery that holds at scale: one tenant's waiting retries, slow endpoints or failures never
//! starve another tenant. The limits are small here (a consumer that hands out 50 tasks at a
//! time, a few slots) so that what takes production hours happens in seconds.

use std::time::Duration;

use serde_json::json;
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// Sends `n` events of tenant `key` in one batch.
async fn batch(sys: &System, key: &str, n: usize) {
    let events: Vec<_> = (0..n).map(|_| event("call.started", "agent_1")).collect();
    let (status, body) = sys
        .post("/v1/events/batch", key, json!({ "events": events }))
        .await;
    assert!(status.is_success(), "{body}");
}

#[tokio::test]
async fn another_tenants_waiting_retries_do_not_delay_a_due_retry() {
    // The deliveries consumer hands out at most 50 tasks before an ack.
    let sys = system_with(|s| s.deliver_max_ack_pending = 50).await;
    let noisy = sys.tenant_key("noisy").await;
    let quiet = sys.tenant_key("quiet").await;
    // Tenant noisy: a dead endpoint, every failure retried in a minute.
    let dead = TestReceiver::start(vec![]).await.unwrap();
    dead.answer_after_script(500).unwrap();
    sys.subscribe(
        &noisy,
        json!({"url": dead.url(), "event_types": ["*"], "retry": {"max_attempts": 3, "schedule_ms": [60_000]}}),
    )
    .await;
    // Tenant quiet: each first attempt fails, its retry is due three seconds later.
    let flaky = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(
            &quiet,
            json!({"url": flaky.url(), "event_types": ["*"], "retry": {"schedule_ms": [3000]}}),
        )
        .await;
    // Subscriptions reach the dispatcher a moment after the API answers.
    a_delivery_where(&sys, &quiet, &flaky, "quiet's endpoint is known", |_| true).await;
    while flaky.recv_within(QUIET).await.is_some() {}

    for _ in 0..4 {
        batch(&sys, &noisy, 100).await;
    }
    eventually(SOON, "noisy's first attempts", || async {
        (dead.count() >= 5).then_some(())
    })
    .await
    .unwrap();
    // Noisy now has hundreds of deliveries waiting for their retry, a minute away.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        flaky.answer_after_script(500).unwrap();
        let id = sys.send_event(&quiet, event("call.ended", "agent_1")).await;
        let first = flaky.recv_within(SOON).await.expect("a first attempt");
        assert_eq!(first.header("webhook-attempt"), Some("1"));
        flaky.answer_after_script(200).unwrap();
        // Due three seconds after the failure (waiting in the waiting room, not in a consumer):
        // well within 20 s, whatever noisy has waiting.
        let retry = flaky
            .recv_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("the retry of {id} did not arrive"));
        assert_eq!(retry.header("webhook-id"), Some(id.as_str()));
        assert_eq!(retry.header("webhook-attempt"), Some("2"));
        retry.verify(&secret).unwrap();
        ids.push(id);
    }
    assert_eq!(ids.len(), 5);
}
