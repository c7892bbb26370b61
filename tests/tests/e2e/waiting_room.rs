//! The waiting room's subjects per bucket and tenant: each tenant's budget there
//! (`WEBHOOKS_MAX_WAITING_PER_TENANT`), past which a tenant's retries are dead-lettered as
//! `system_error` with their attempt counted (never attempted again at the same number) while
//! another tenant's retries still wait and come; and tasks filed by an older version, without
//! a tenant in their subject, still moved on when their bucket is due.

use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt as _;
use prost::Message as _;
use proto::{
    subjects,
    v1::{Delivery, DeliveryOrigin},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// What `tenant` has in the waiting room, by the server's subject totals.
async fn waiting(js: &jetstream::Context, tenant: &str) -> u64 {
    let stream = js.get_stream(subjects::WAITING_STREAM).await.unwrap();
    let totals: Vec<(String, usize)> = stream
        .info_with_subjects(subjects::waiting_tenant_filter(tenant))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    totals.iter().map(|(_, n)| *n as u64).sum()
}

async fn dead_letters(sys: &System, key: &str, sub: &str) -> Vec<Value> {
    let (status, body) = sys
        .get(
            &format!("/v1/dead-letters?subscription_id={sub}&limit=1000"),
            key,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_tenant_over_its_waiting_budget_has_its_retries_dead_lettered_and_no_other() {
    const BUDGET: u64 = 20;
    const EVENTS: usize = 60;
    // No circuit breaker here: every first attempt is made and fails.
    let sys = system_with(|s| {
        s.max_waiting_per_tenant = BUDGET;
        s.breaker_threshold = 10_000;
    })
    .await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let noisy = sys.tenant_key("noisy").await;
    let quiet = sys.tenant_key("quiet").await;
    // Tenant noisy: a dead endpoint, each failure retried in ten minutes.
    let dead = TestReceiver::start(vec![]).await.unwrap();
    let (noisy_sub, _) = sys
        .subscribe(
            &noisy,
            json!({"url": dead.url(), "event_types": ["*"], "retry": {"max_attempts": 3, "schedule_ms": [600_000]}}),
        )
        .await;
    // Tenant quiet: a first attempt fails, its retry is due two seconds later.
    let flaky = TestReceiver::start(vec![]).await.unwrap();
    let (quiet_sub, secret) = sys
        .subscribe(
            &quiet,
            json!({"url": flaky.url(), "event_types": ["*"], "retry": {"schedule_ms": [2000]}}),
        )
        .await;
    a_delivery_where(&sys, &noisy, &dead, "noisy's endpoint is known", |_| true).await;
    a_delivery_where(&sys, &quiet, &flaky, "quiet's endpoint is known", |_| true).await;
    while dead.recv_within(QUIET).await.is_some() {}
    while flaky
        .recv_within(Duration::from_millis(200))
        .await
        .is_some()
    {}
    dead.answer_after_script(500).unwrap();

    batch(&sys, &noisy, EVENTS).await;
    // Every failed first attempt ends waiting for its retry or, past the budget, dead.
    let (waiting_now, letters) = eventually(
        Duration::from_secs(60),
        "every retry waiting or dead-lettered",
        || async {
            let w = waiting(&js, "noisy").await;
            let letters = dead_letters(&sys, &noisy, &noisy_sub).await;
            (w as usize + letters.len() == EVENTS).then_some((w, letters))
        },
    )
    .await
    .unwrap();
    assert!(waiting_now <= BUDGET, "{waiting_now} waiting");
    assert!(
        letters.len() >= EVENTS - BUDGET as usize,
        "{}",
        letters.len()
    );
    for letter in &letters {
        assert_eq!(letter["reason"], json!("system_error"), "{letter}");
        assert_eq!(letter["attempts"], json!(1), "{letter}");
        assert_eq!(letter["last_status_code"], json!(500), "{letter}");
        let error = letter["last_error"].as_str().unwrap();
        assert!(error.contains("budget"), "{error}");
    }
    // Each event was attempted once: none again at the same number.
    let mut attempts = 0;
    while let Some(got) = dead.recv_within(QUIET).await {
        assert_eq!(got.header("webhook-attempt"), Some("1"));
        attempts += 1;
    }
    assert_eq!(attempts, EVENTS);

    // Another tenant's retry still waits, and comes on time.
    flaky.answer_after_script(500).unwrap();
    let id = sys.send_event(&quiet, event("call.ended", "agent_1")).await;
    let first = flaky.recv_within(SOON).await.expect("a first attempt");
    assert_eq!(first.header("webhook-attempt"), Some("1"));
    flaky.answer_after_script(200).unwrap();
    let retry = flaky
        .recv_within(Duration::from_secs(30))
        .await
        .expect("quiet's retry");
    assert_eq!(retry.header("webhook-id"), Some(id.as_str()));
    assert_eq!(retry.header("webhook-attempt"), Some("2"));
    retry.verify(&secret).unwrap();
    assert!(dead_letters(&sys, &quiet, &quiet_sub).await.is_empty());
}

#[tokio::test]
async fn a_task_filed_without_a_tenant_in_its_subject_is_still_moved_on_when_due() {
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}

    // A retry as versions before the per-tenant subjects filed it, in a bucket now due...
    let bucket = now_ms() / 250 * 250;
    let envelope = json!({
        "id": "evt_legacy_1",
        "type": "call.started",
        "timestamp": "2026-11-28T15:20:11.123Z",
        "tenant_id": "acme",
        "agent_id": "agent_1",
        "call_id": "call_1",
        "data": proto::catalog::example(proto::catalog::find("call.started").unwrap()),
    });
    let task = Delivery {
        event_id: "evt_legacy_1".into(),
        tenant_id: "acme".into(),
        subscription_id: sub.clone(),
        event_type: "call.started".into(),
        agent_id: "agent_1".into(),
        payload: serde_json::to_vec(&envelope).unwrap().into(),
        accepted_at: Some(proto::time::now()),
        origin: DeliveryOrigin::Live as i32,
        attempt: 2,
        not_before: Some(proto::time::now()),
        ..Default::default()
    };
    js.publish(
        format!("webhooks.waiting.{bucket}"),
        task.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // ...and its tick.
    js.publish(subjects::TICKS_DUE_SUBJECT, bucket.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let got = receiver.recv_within(SOON).await.expect("the waiting retry");
    assert_eq!(got.header("webhook-id"), Some("evt_legacy_1"));
    assert_eq!(got.header("webhook-attempt"), Some("2"));
    got.verify(&secret).unwrap();
    // Moved on, and purged from its bucket.
    let stream = js.get_stream(subjects::WAITING_STREAM).await.unwrap();
    eventually(SOON, "the bucket purged", || async {
        let info = stream.get_info().await.unwrap();
        (info.state.messages == 0).then_some(())
    })
    .await
    .unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
