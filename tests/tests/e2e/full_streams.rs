//! When an outcome cannot be stored (a full stream): the matches already delivered are not
//! delivered again, the loop ends in a recorded `system_error`, a retry with no room is
//! dead-lettered with its attempt counted rather than attempted again at the same number, and a
//! dead letter with no room waits for it without the final attempt being made again.

use std::time::Duration;

use async_nats::jetstream;
use proto::subjects;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// A bucket far in the future: nothing is ever due there, so filler filed under it stays.
const NEVER: u64 = 4_102_444_800_000;

/// Shrinks `stream` to `max_bytes` and fills it with filler under `subject` until it refuses.
async fn fill(js: &jetstream::Context, stream: &str, subject: &str, max_bytes: i64) {
    let mut info = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    info.config.max_bytes = max_bytes;
    js.update_stream(&info.config).await.unwrap();
    for n in 0.. {
        let stored = async {
            js.publish(subject.to_owned(), vec![b'x'; 1024].into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        if stored.is_err() {
            break;
        }
        assert!(n < 10_000, "{stream} never filled up");
    }
}

/// Removes the filler and gives `stream` its cap back.
async fn unfill(js: &jetstream::Context, stream: &str, subject: &str, max_bytes: i64) {
    let s = js.get_stream(stream).await.unwrap();
    s.purge().filter(subject).await.unwrap();
    let mut info = s.get_info().await.unwrap();
    info.config.max_bytes = max_bytes;
    js.update_stream(&info.config).await.unwrap();
}

/// Fills the dead-letter stream; returns the filler's subject and the stream's cap.
async fn fill_dlq(js: &jetstream::Context) -> (String, i64) {
    let cap = js
        .get_stream(subjects::DLQ_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config
        .max_bytes;
    let filler = subjects::dlq_subject("filler", "sub_filler");
    fill(js, subjects::DLQ_STREAM, &filler, 64 * 1024).await;
    (filler, cap)
}

/// Until the dispatcher has found no room for a dead letter twice (the same one a second time
/// after it waited in the waiting room, or two different ones).
async fn refused_twice(sys: &System) {
    eventually(
        Duration::from_secs(60),
        "two refused dead letters",
        || async {
            let refused = dispatcher_metric(
                sys,
                "webhooks_deliveries_handed_back_total",
                &[("reason", "dead_letter_pending")],
            )
            .await;
            (refused >= 2.0).then_some(())
        },
    )
    .await
    .unwrap();
}

async fn dead_letters(sys: &System, key: &str, sub: &str) -> Vec<Value> {
    let (status, body) = sys
        .get(&format!("/v1/dead-letters?subscription_id={sub}"), key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

/// The first dead letter of `sub`, once there is one (within `within`).
async fn first_dead_letter(sys: &System, key: &str, sub: &str, within: Duration) -> Value {
    eventually(within, "a dead letter", || async {
        dead_letters(sys, key, sub).await.first().cloned()
    })
    .await
    .unwrap()
}

/// How many of `receiver`'s requests so far carried `id` (taking them).
async fn received(receiver: &TestReceiver, id: &str) -> usize {
    let mut n = 0;
    while let Some(got) = receiver.recv_within(Duration::from_millis(100)).await {
        n += usize::from(got.header("webhook-id") == Some(id));
    }
    n
}

#[tokio::test]
async fn a_match_whose_outcome_cannot_be_stored_repeats_no_other_and_ends_in_a_dead_letter() {
    let sys = system_with(|s| s.fanout_max_deliveries = 2).await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let healthy = TestReceiver::start(vec![]).await.unwrap();
    let failing = TestReceiver::start(vec![]).await.unwrap();
    let (_, healthy_secret) = sys
        .subscribe(&key, json!({"url": healthy.url(), "event_types": ["*"]}))
        .await;
    let (failing_sub, _) = sys
        .subscribe(&key, json!({"url": failing.url(), "event_types": ["*"]}))
        .await;
    // Both known (the second was created last), then the second starts failing.
    a_delivery_where(&sys, &key, &failing, "both endpoints are known", |_| true).await;
    while healthy.recv_within(QUIET).await.is_some() {}
    while failing
        .recv_within(Duration::from_millis(200))
        .await
        .is_some()
    {}
    failing.answer_after_script(500).unwrap();

    // Neither its retry nor its dead letter can be stored.
    let waiting_cap = js
        .get_stream(subjects::WAITING_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .config
        .max_bytes;
    let filler_waiting = subjects::waiting_subject(NEVER, "filler");
    fill(&js, subjects::WAITING_STREAM, &filler_waiting, 64 * 1024).await;
    let (filler_dlq, dlq_cap) = fill_dlq(&js).await;

    let id = sys.send_event(&key, event("call.started", "agent_1")).await;
    // The fan-out is handed back and tried again: the failing endpoint is attempted twice...
    eventually(
        Duration::from_secs(60),
        "the fan-out to be tried again",
        || async { (failing.count() >= 2).then_some(()) },
    )
    .await
    .unwrap();
    unfill(&js, subjects::DLQ_STREAM, &filler_dlq, dlq_cap).await;
    // ...and after `fanout_max_deliveries` the match ends in a dead letter, on the record.
    let dead = first_dead_letter(&sys, &key, &failing_sub, Duration::from_secs(60)).await;
    assert_eq!(dead["event_id"], json!(id), "{dead}");
    assert_eq!(dead["reason"], json!("system_error"), "{dead}");
    assert_eq!(dead["failed_by"], json!("system"), "{dead}");
    // The healthy endpoint got the event once, whatever happened to the other match.
    let got = healthy
        .recv_within(SOON)
        .await
        .expect("the healthy delivery");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    got.verify(&healthy_secret).unwrap();
    assert_eq!(received(&healthy, &id).await, 0, "delivered twice");
    assert!(
        healthy.expect_none(QUIET).await.is_none(),
        "delivered again"
    );
    assert!(failing.count() <= 3, "{} attempts", failing.count());
    unfill(&js, subjects::WAITING_STREAM, &filler_waiting, waiting_cap).await;
}

#[tokio::test]
async fn a_retry_with_no_room_to_wait_is_dead_lettered_with_its_attempt_counted() {
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let failing = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": failing.url(), "event_types": ["*"]}))
        .await;
    a_delivery_where(&sys, &key, &failing, "the endpoint is known", |_| true).await;
    while failing.recv_within(QUIET).await.is_some() {}
    failing.answer_after_script(500).unwrap();
    fill(
        &js,
        subjects::WAITING_STREAM,
        &subjects::waiting_subject(NEVER, "filler"),
        64 * 1024,
    )
    .await;

    let id = sys.send_event(&key, event("call.started", "agent_1")).await;
    let dead = first_dead_letter(&sys, &key, &sub, SOON).await;
    assert_eq!(dead["event_id"], json!(id), "{dead}");
    assert_eq!(dead["reason"], json!("system_error"), "{dead}");
    assert_eq!(dead["attempts"], json!(1), "{dead}");
    assert_eq!(dead["last_status_code"], json!(500), "{dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("no room in the waiting room"),
        "{dead}"
    );
    // Attempted once, not again and again at attempt 1.
    let first = failing.recv_within(SOON).await.expect("the attempt");
    assert_eq!(first.header("webhook-id"), Some(id.as_str()));
    assert!(
        failing.expect_none(QUIET).await.is_none(),
        "attempted again"
    );
    // The stream's fullness is exported.
    let ratio = eventually(Duration::from_secs(30), "the stream gauges", || async {
        let used = dispatcher_metric(
            &sys,
            "webhooks_stream_bytes",
            &[("stream", subjects::WAITING_STREAM)],
        )
        .await;
        let cap = dispatcher_metric(
            &sys,
            "webhooks_stream_max_bytes",
            &[("stream", subjects::WAITING_STREAM)],
        )
        .await;
        (cap == 64.0 * 1024.0 && used > 0.0).then_some(used / cap)
    })
    .await
    .unwrap();
    assert!(ratio > 0.9, "{ratio}");
}

#[tokio::test]
async fn a_final_attempt_whose_dead_letter_finds_no_room_is_made_once_and_dead_lettered_later() {
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let failing = TestReceiver::start(vec![]).await.unwrap();
    // Two attempts: the first straight from the fan-out, the last from the deliveries lane.
    let (sub, _) = sys
        .subscribe(
            &key,
            json!({"url": failing.url(), "event_types": ["*"], "retry": {"max_attempts": 2, "schedule_ms": [1500]}}),
        )
        .await;
    // The dead letter is refused twice (the second time after waiting in the waiting room),
    // and stored once there is room, with both attempts counted.
    let (id, dead) = dead_lettered_after_no_room(&sys, &js, &key, &failing, &sub).await;
    assert_eq!(dead["event_id"], json!(id), "{dead}");
    assert_eq!(dead["reason"], json!("attempts_exhausted"), "{dead}");
    assert_eq!(dead["failed_by"], json!("endpoint"), "{dead}");
    assert_eq!(dead["attempts"], json!(2), "{dead}");
    assert_eq!(dead["last_status_code"], json!(500), "{dead}");
    // Each attempt was made once: the final one was not made again while its letter waited.
    assert_eq!(received(&failing, &id).await, 2);
    assert!(
        failing.expect_none(QUIET).await.is_none(),
        "attempted again"
    );
    assert_eq!(dead_letters(&sys, &key, &sub).await.len(), 1);
}

/// With `failing` answering 500 and the DLQ full, sends one event, waits until its dead letter
/// was refused twice, makes room, and answers the event's id and its dead letter once stored.
async fn dead_lettered_after_no_room(
    sys: &System,
    js: &jetstream::Context,
    key: &str,
    failing: &TestReceiver,
    sub: &str,
) -> (String, Value) {
    a_delivery_where(sys, key, failing, "the endpoint is known", |_| true).await;
    while failing.recv_within(QUIET).await.is_some() {}
    failing.answer_after_script(500).unwrap();
    let (filler, dlq_cap) = fill_dlq(js).await;
    let id = sys.send_event(key, event("call.started", "agent_1")).await;
    refused_twice(sys).await;
    unfill(js, subjects::DLQ_STREAM, &filler, dlq_cap).await;
    let dead = first_dead_letter(sys, key, sub, Duration::from_secs(60)).await;
    (id, dead)
}

#[tokio::test]
async fn a_first_attempt_whose_dead_letter_finds_no_room_is_not_fanned_out_again() {
    let sys = System::start().await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let key = sys.tenant_key("acme").await;
    let failing = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(
            &key,
            json!({"url": failing.url(), "event_types": ["*"], "retry": {"max_attempts": 1}}),
        )
        .await;
    let (id, dead) = dead_lettered_after_no_room(&sys, &js, &key, &failing, &sub).await;
    assert_eq!(dead["event_id"], json!(id), "{dead}");
    assert_eq!(dead["reason"], json!("attempts_exhausted"), "{dead}");
    assert_eq!(dead["attempts"], json!(1), "{dead}");
    assert_eq!(received(&failing, &id).await, 1);
    assert!(
        failing.expect_none(QUIET).await.is_none(),
        "attempted again"
    );
}

#[tokio::test]
async fn one_subscriptions_dead_letters_over_its_budget_wait_and_leave_room_for_every_other() {
    // Each subscription may hold two messages in each shared stream.
    let sys = system_with(|s| s.shared.max_queued_per_subscription = 2).await;
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    for stream in [
        subjects::DELIVERIES_STREAM,
        subjects::REPLAYS_STREAM,
        subjects::DLQ_STREAM,
    ] {
        let config = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .config;
        assert_eq!(config.max_messages_per_subject, 2, "{stream}");
        assert!(config.discard_new_per_subject, "{stream}");
    }
    let noisy_endpoint = TestReceiver::start(vec![]).await.unwrap();
    let quiet_endpoint = TestReceiver::start(vec![]).await.unwrap();
    let (noisy, noisy_sub) = dead_on_first_failure(&sys, "noisy", &noisy_endpoint).await;
    let (quiet, quiet_sub) = dead_on_first_failure(&sys, "quiet", &quiet_endpoint).await;

    // Four dead letters for a budget of two: two are stored, two wait for room.
    for _ in 0..4 {
        sys.send_event(&noisy, event("call.started", "agent_1"))
            .await;
    }
    refused_twice(&sys).await;
    assert_eq!(dead_letters(&sys, &noisy, &noisy_sub).await.len(), 2);

    // Another tenant's dead letter still has room.
    let id = sys
        .send_event(&quiet, event("call.started", "agent_1"))
        .await;
    let dead = first_dead_letter(&sys, &quiet, &quiet_sub, Duration::from_secs(30)).await;
    assert_eq!(dead["event_id"], json!(id), "{dead}");
}

/// A tenant's key and a subscription of it to `receiver` that dead-letters its first failure;
/// `receiver` answers 500 from now on.
async fn dead_on_first_failure(
    sys: &System,
    tenant: &str,
    receiver: &TestReceiver,
) -> (String, String) {
    let key = sys.tenant_key(tenant).await;
    let body = json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 1}});
    let (sub, _) = sys.subscribe(&key, body).await;
    a_delivery_where(sys, &key, receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}
    receiver.answer_after_script(500).unwrap();
    (key, sub)
}
