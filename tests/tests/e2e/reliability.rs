//! Delivery that never loses an event: retries, dead letters, disabling, isolation, SSRF.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// The tenant's dead letters of one subscription, once there are `n` of them.
async fn dead_letters(sys: &System, key: &str, sub: &str, n: usize) -> Vec<Value> {
    eventually(SOON, "dead letters", || async {
        let (status, body) = sys
            .get(&format!("/v1/dead-letters?subscription_id={sub}"), key)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = body["data"].as_array().cloned().unwrap_or_default();
        (data.len() >= n).then_some(data)
    })
    .await
    .unwrap()
}

async fn subscription(sys: &System, key: &str, id: &str) -> Value {
    let (status, body) = sys.get(&format!("/v1/subscriptions/{id}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn two_failures_then_success_make_exactly_three_signed_attempts_with_one_webhook_id() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500, 503, 200]).await.unwrap();
    let (_, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [50, 100]}}))
        .await;
    let id = sys.send_event(&key, event("call.started", "a1")).await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let got = receiver.recv_within(SOON).await.expect("an attempt");
        got.verify(&secret).unwrap();
        assert_eq!(got.header("webhook-id"), Some(id.as_str()));
        attempts.push((got.header("webhook-attempt").unwrap().to_owned(), got.at));
    }
    let numbers: Vec<&str> = attempts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    // The schedule's delays (with at most 20% jitter) separate the attempts.
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(40));
    assert!(attempts[2].1 - attempts[1].1 >= Duration::from_millis(80));
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "no attempt after the success"
    );

    let (_, log) = sys.get(&format!("/v1/events/{id}/attempts"), &key).await;
    let outcomes: Vec<(u64, &str)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [(1, "failed"), (2, "failed"), (3, "succeeded")]);
}

#[tokio::test]
async fn a_permanent_client_error_is_dead_lettered_after_one_attempt() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![422]).await.unwrap();
    let (sub, _) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [10]}}),
        )
        .await;
    let id = sys.send_event(&key, event("qa.scored", "a1")).await;
    assert!(receiver.recv_within(SOON).await.is_some());
    let dl = dead_letters(&sys, &key, &sub, 1).await;
    assert_eq!(dl[0]["event_id"], json!(id));
    assert_eq!(dl[0]["reason"], json!("permanent_failure"));
    assert_eq!(dl[0]["failed_by"], json!("endpoint"));
    assert_eq!(dl[0]["attempts"], json!(1));
    assert_eq!(dl[0]["last_status_code"], json!(422));
    assert!(dl[0]["id"].as_str().unwrap().starts_with("dl_"));
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "no retry of a permanent failure"
    );
}

#[tokio::test]
async fn exhausted_retries_end_in_the_dead_letter_stream_and_redrive_starts_a_fresh_budget() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500, 500, 500]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 3, "schedule_ms": [20]}}),
        )
        .await;
    let id = sys.send_event(&key, event("call.ended", "a1")).await;
    for n in 1..=3 {
        let got = receiver.recv_within(SOON).await.expect("attempt");
        assert_eq!(got.header("webhook-attempt"), Some(n.to_string().as_str()));
    }
    let dl = dead_letters(&sys, &key, &sub, 1).await;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0]["event_id"], json!(id));
    assert_eq!(dl[0]["reason"], json!("attempts_exhausted"));
    assert_eq!(dl[0]["attempts"], json!(3));
    assert_eq!(dl[0]["last_status_code"], json!(500));
    assert!(dl[0]["last_error"].as_str().unwrap().contains("500"));
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "nothing after the last attempt"
    );

    // The receiver now answers 200 (its script is used up): a redrive delivers, from attempt 1.
    let dl_id = dl[0]["id"].as_str().unwrap();
    let (status, _) = sys
        .post(
            &format!("/v1/dead-letters/{dl_id}/redrive"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = receiver.recv_within(SOON).await.expect("redriven delivery");
    got.verify(&secret).unwrap();
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
}

#[tokio::test]
async fn gone_disables_the_subscription_at_once_and_parks_later_deliveries_until_redriven() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![410]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [10]}}),
        )
        .await;
    let first = sys.send_event(&key, event("call.started", "a1")).await;
    assert!(receiver.recv_within(SOON).await.is_some());
    let dl = dead_letters(&sys, &key, &sub, 1).await;
    assert_eq!(dl[0]["event_id"], json!(first));
    assert_eq!(dl[0]["reason"], json!("subscription_disabled"));
    let s = eventually(SOON, "the subscription to be disabled", || async {
        let s = subscription(&sys, &key, &sub).await;
        (s["enabled"] == json!(false)).then_some(s)
    })
    .await
    .unwrap();
    assert!(s["disabled_reason"].as_str().unwrap().contains("410"));

    // While disabled by the system, deliveries are parked, not dropped and not sent.
    let second = sys.send_event(&key, event("call.ended", "a1")).await;
    let dl = dead_letters(&sys, &key, &sub, 2).await;
    assert!(
        dl.iter().any(
            |d| d["event_id"] == json!(second) && d["reason"] == json!("subscription_disabled")
        )
    );
    assert!(receiver.expect_none(QUIET).await.is_none());

    // Re-enabled by its owner, the parked deliveries are redriven and arrive.
    let (status, _) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{sub}"),
            &key,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Until the dispatcher has seen the re-enable, a redriven delivery is parked again; so
    // redrive until both have arrived.
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + SOON;
    while !(ids.contains(&first) && ids.contains(&second)) {
        assert!(
            Instant::now() < deadline,
            "parked deliveries not delivered after redrive: {ids:?}"
        );
        let (s, body) = sys
            .post(
                "/v1/dead-letters/redrive",
                &key,
                json!({"subscription_id": sub}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        while let Some(got) = receiver.recv_within(Duration::from_millis(300)).await {
            got.verify(&secret).unwrap();
            assert_eq!(got.header("webhook-attempt"), Some("1"));
            ids.insert(got.header("webhook-id").unwrap().to_owned());
        }
    }
    let (_, body) = sys
        .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
        .await;
    assert!(
        body["data"].as_array().unwrap().is_empty(),
        "redriven dead letters are gone: {body}"
    );
}

#[tokio::test]
async fn failing_without_success_for_the_configured_time_disables_the_subscription() {
    let sys = system_with(|s| s.disable_after = Duration::from_millis(500)).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500; 1000]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 30, "schedule_ms": [100]}}))
        .await;
    sys.send_event(&key, event("call.started", "a1")).await;
    let s = eventually(SOON, "the failing subscription to be disabled", || async {
        let s = subscription(&sys, &key, &sub).await;
        (s["enabled"] == json!(false)).then_some(s)
    })
    .await
    .unwrap();
    assert!(s["disabled_reason"].as_str().unwrap().contains("failing"));
    let dl = dead_letters(&sys, &key, &sub, 1).await;
    assert_eq!(dl[0]["reason"], json!("subscription_disabled"));
    assert!(dl[0]["attempts"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn retry_after_on_429_is_honoured_over_a_shorter_schedule() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = testkit::TestReceiver::start_with_retry_after(vec![429, 200], 2)
        .await
        .unwrap();
    sys.subscribe(
        &key,
        json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [10]}}),
    )
    .await;
    sys.send_event(&key, event("call.started", "a1")).await;
    let first = receiver.recv_within(SOON).await.unwrap();
    let second = receiver.recv_within(SOON).await.unwrap();
    assert!(
        second.at - first.at >= Duration::from_millis(1900),
        "{:?}",
        second.at - first.at
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failed_attempt() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![302, 200]).await.unwrap();
    sys.subscribe(
        &key,
        json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [10]}}),
    )
    .await;
    sys.send_event(&key, event("call.started", "a1")).await;
    let first = receiver.recv_within(SOON).await.unwrap();
    let second = receiver.recv_within(SOON).await.unwrap();
    assert_eq!(first.header("webhook-attempt"), Some("1"));
    assert_eq!(second.header("webhook-attempt"), Some("2"));
}

#[tokio::test]
async fn a_slow_endpoint_never_delays_deliveries_to_another() {
    let sys = system_with(|s| s.per_endpoint_in_flight = 4).await;
    let key = sys.tenant_key("acme").await;
    let slow = TestReceiver::start_with_delay(vec![], Duration::from_secs(3))
        .await
        .unwrap();
    let fast = TestReceiver::start(vec![]).await.unwrap();
    sys.subscribe(
        &key,
        json!({"url": slow.url(), "event_types": ["call.started"]}),
    )
    .await;
    sys.subscribe(
        &key,
        json!({"url": fast.url(), "event_types": ["call.started"]}),
    )
    .await;
    let n = 50;
    let sent = Instant::now();
    let items: Vec<Value> = (0..n).map(|_| event("call.started", "a1")).collect();
    let (status, _) = sys
        .post("/v1/events/batch", &key, json!({"events": items}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..n {
        fast.recv_within(SOON)
            .await
            .expect("fast endpoint delivery");
    }
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the fast endpoint waited on the slow one: {took:?}"
    );
    assert!(
        slow.count() <= 4,
        "at most per_endpoint_in_flight requests to the slow endpoint at once"
    );
}

#[tokio::test]
async fn an_open_circuit_stops_the_hammering_without_burning_attempts() {
    let sys = system_with(|s| {
        s.breaker_threshold = 3;
        s.breaker_cooldown = Duration::from_millis(1000);
        s.breaker_max_cooldown = Duration::from_millis(1000);
    })
    .await;
    let key = sys.tenant_key("acme").await;
    let n = 20;
    // The first wave (one attempt per event) and two probes fail; then the endpoint recovers.
    let receiver = TestReceiver::start(vec![500; n + 2]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 4, "schedule_ms": [10]}}),
        )
        .await;
    let items: Vec<Value> = (0..n).map(|_| event("call.started", "a1")).collect();
    let (status, _) = sys
        .post("/v1/events/batch", &key, json!({"events": items}))
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(SOON, "the first wave", || async {
        (receiver.count() >= n).then_some(())
    })
    .await
    .unwrap();
    // Twenty retries are due every 10 ms, but the circuit is open: for most of the cooldown
    // at most a probe gets through.
    let opened = receiver.count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = receiver.count() - opened;
    assert!(during <= 1, "circuit open, yet {during} more requests");
    // Every event is delivered, and none dead-lettered although each may fail only 4 times:
    // waiting on the open circuit burned no attempts.
    let mut delivered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.len() < n && Instant::now() < deadline {
        if let Some(got) = receiver.recv_within(Duration::from_millis(500)).await
            && got.status.as_u16() == 200
        {
            got.verify(&secret).unwrap();
            delivered.insert(got.header("webhook-id").unwrap().to_owned());
        }
    }
    assert_eq!(delivered.len(), n);
    let (_, dl) = sys
        .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
        .await;
    assert!(dl["data"].as_array().unwrap().is_empty(), "{dl}");
}

#[tokio::test]
async fn a_rate_limited_subscription_is_paced_without_losing_anything() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    sys.subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "rate_limit_per_s": 5, "retry": {"max_attempts": 1}}))
        .await;
    let n = 15;
    let items: Vec<Value> = (0..n).map(|_| event("call.started", "a1")).collect();
    let started = Instant::now();
    let (status, _) = sys
        .post("/v1/events/batch", &key, json!({"events": items}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..n {
        receiver
            .recv_within(SOON)
            .await
            .expect("every event, paced");
    }
    // 15 events at 5/s (a burst of 5 allowed) take about two seconds.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn a_target_that_is_private_at_delivery_time_is_refused_by_the_dispatcher() {
    // Ingest allows loopback (as if DNS had answered a public address at creation); the
    // dispatcher does not, so the check at delivery time refuses the connection.
    let sys = system_with(|s| s.shared.url_policy.allowed_private.clear()).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let (sub_ip, _) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 1}}),
        )
        .await;
    let (sub_name, _) = sys
        .subscribe(
            &key,
            json!({"url": by_name, "event_types": ["*"], "retry": {"max_attempts": 1}}),
        )
        .await;
    sys.send_event(&key, event("call.started", "a1")).await;
    for sub in [sub_ip, sub_name] {
        let dl = dead_letters(&sys, &key, &sub, 1).await;
        assert_eq!(dl[0]["reason"], json!("attempts_exhausted"));
        assert!(
            dl[0]["last_error"].as_str().unwrap().contains("non-public"),
            "{}",
            dl[0]
        );
    }
    assert_eq!(receiver.count(), 0, "nothing reached the private address");
}

/// A counter of the dispatcher's `/metrics`, by its exact sample name.
async fn dispatcher_counter(sys: &System, name: &str) -> f64 {
    let addr = sys.dispatcher.as_ref().expect("dispatcher").addr;
    let text = metrics_text(sys, addr).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[tokio::test]
async fn with_direct_first_attempts_off_every_first_attempt_goes_through_a_queued_task() {
    let sys = system_with(|s| s.direct_first_attempt = false).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500, 200]).await.unwrap();
    let (_, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"], "retry": {"schedule_ms": [50]}}),
        )
        .await;
    let id = sys.send_event(&key, event("call.started", "a1")).await;
    for n in ["1", "2"] {
        let got = receiver.recv_within(SOON).await.expect("an attempt");
        got.verify(&secret).unwrap();
        assert_eq!(got.header("webhook-id"), Some(id.as_str()));
        assert_eq!(got.header("webhook-attempt"), Some(n));
    }
    assert!(receiver.expect_none(QUIET).await.is_none());
    assert_eq!(
        dispatcher_counter(&sys, "webhooks_delivery_direct_first_attempts_total").await,
        0.0
    );
    assert_eq!(
        dispatcher_counter(&sys, "webhooks_delivery_tasks_queued_total").await,
        1.0
    );
}

#[tokio::test]
async fn first_attempts_an_endpoint_cannot_take_now_are_queued_and_all_arrive_once() {
    // One slot per endpoint, one place in line and a slow receiver: while one first attempt
    // runs straight from the fan-out and one waits in line, the others find the endpoint busy
    // and are queued as tasks instead.
    let sys = system_with(|s| {
        s.per_endpoint_in_flight = 1;
        s.max_in_line = 1;
    })
    .await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start_with_delay(vec![], Duration::from_millis(100))
        .await
        .unwrap();
    let (_, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(sys.send_event(&key, event("call.started", "a1")).await);
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let r = receiver.recv_within(SOON).await.expect("a delivery");
        r.verify(&secret).unwrap();
        assert_eq!(
            r.header("webhook-attempt"),
            Some("1"),
            "no attempt was spent waiting"
        );
        got.push(r.header("webhook-id").unwrap().to_owned());
    }
    assert!(receiver.expect_none(QUIET).await.is_none(), "each once");
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    let direct = dispatcher_counter(&sys, "webhooks_delivery_direct_first_attempts_total").await;
    assert!(
        (1.0..5.0).contains(&direct),
        "some direct, some queued: {direct}"
    );
}
