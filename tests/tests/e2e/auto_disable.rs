//! Automatic disabling across successes and restarts: "failing since" is set by a failure,
//! cleared by a success, and neither a success nor a restart leaves it wrong.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

const DISABLE_AFTER: Duration = Duration::from_secs(1);

async fn subscription(sys: &System, key: &str, id: &str) -> Value {
    let (status, body) = sys.get(&format!("/v1/subscriptions/{id}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Sends one event, answers its first attempt 500 and its retry 200, and waits for both.
async fn fail_then_succeed(sys: &System, key: &str, receiver: &TestReceiver) {
    receiver.answer_after_script(500).unwrap();
    let id = sys.send_event(key, event("call.started", "a1")).await;
    let first = receiver.recv_within(SOON).await.expect("a first attempt");
    assert_eq!(first.header("webhook-id"), Some(id.as_str()));
    receiver.answer_after_script(200).unwrap();
    let retry = receiver
        .recv_within(SOON)
        .await
        .unwrap_or_else(|| panic!("the retry of {id} did not arrive"));
    assert_eq!(retry.header("webhook-id"), Some(id.as_str()));
    assert_eq!(retry.header("webhook-attempt"), Some("2"));
}

#[tokio::test]
async fn a_subscription_that_succeeded_once_and_then_fails_for_good_is_disabled() {
    let sys = system_with(|s| s.disable_after = DISABLE_AFTER).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 30, "schedule_ms": [200]}}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}

    fail_then_succeed(&sys, &key, &receiver).await;
    // Now it fails for good: disabled once it has failed for DISABLE_AFTER.
    receiver.answer_after_script(500).unwrap();
    sys.send_event(&key, event("call.ended", "a1")).await;
    let s = eventually(SOON, "the failing subscription to be disabled", || async {
        let s = subscription(&sys, &key, &sub).await;
        (s["enabled"] == json!(false)).then_some(s)
    })
    .await
    .unwrap();
    assert!(s["disabled_reason"].as_str().unwrap().contains("failing"));
}

#[tokio::test]
async fn after_a_restart_one_blip_does_not_disable_a_subscription_that_recovered() {
    let mut sys = system_with(|s| s.disable_after = DISABLE_AFTER).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 5, "schedule_ms": [200]}}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}

    // Two blips, each followed by a success: the endpoint is healthy.
    fail_then_succeed(&sys, &key, &receiver).await;
    fail_then_succeed(&sys, &key, &receiver).await;
    // Long after the last failure, with a fresh dispatcher that reads failing-since from KV, a
    // third blip is a new failing period, not the continuation of an old one.
    tokio::time::sleep(DISABLE_AFTER * 2).await;
    sys.restart_dispatcher(|s| s.disable_after = DISABLE_AFTER)
        .await;
    // (No warm-up delivery here: its success would clear the state this test is about.)
    // Had the blip disabled it, the retry would have been parked as a dead letter, not sent.
    fail_then_succeed(&sys, &key, &receiver).await;
    assert_eq!(subscription(&sys, &key, &sub).await["enabled"], json!(true));
}
