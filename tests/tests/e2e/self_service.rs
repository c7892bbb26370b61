//! Self-service on a subscription: a test send now, and rotating its signing secret.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Received, TestReceiver};

use crate::helpers::*;

/// The `webhook-signature` entries of a delivery.
fn signatures(got: &Received) -> Vec<String> {
    got.header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

/// The delivery as if it had carried only `signature`.
fn with_only(got: &Received, signature: &str) -> Received {
    let mut one = got.clone();
    one.headers
        .insert("webhook-signature", signature.parse().unwrap());
    one
}

async fn test_send(sys: &System, key: &str, sub: &str, body: Value) -> (StatusCode, Value) {
    sys.post(&format!("/v1/subscriptions/{sub}/test"), key, body)
        .await
}

async fn rotate(sys: &System, key: &str, sub: &str, body: Value) -> (StatusCode, Value) {
    sys.post(&format!("/v1/subscriptions/{sub}/secret/rotate"), key, body)
        .await
}

async fn current_secret(sys: &System, key: &str, sub: &str) -> String {
    let (status, body) = sys
        .get(&format!("/v1/subscriptions/{sub}/secret"), key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_test_send_delivers_a_signed_sample_of_the_requested_type_and_reports_the_answer() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["call.started"]}),
        )
        .await;

    let (status, answer) = test_send(&sys, &key, &sub, json!({"type": "transcript.ready"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivered"], json!(true), "{answer}");
    assert_eq!(answer["status_code"], json!(200), "{answer}");
    assert!(answer["latency_ms"].is_u64(), "{answer}");
    assert_eq!(answer["response_body"], json!(""), "{answer}");
    assert_eq!(answer["error"], Value::Null, "{answer}");

    let got = receiver
        .recv_within(SOON)
        .await
        .expect("the sample arrived");
    got.verify(&secret).expect("signed with the current secret");
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    let envelope = got.json();
    let id = envelope["id"].as_str().unwrap();
    assert!(id.starts_with("evt_test_"), "{envelope}");
    assert_eq!(got.header("webhook-id"), Some(id));
    assert_eq!(envelope["type"], json!("transcript.ready"));
    assert_eq!(envelope["tenant_id"], json!("acme"));
    assert_eq!(envelope["agent_id"], json!("agent_test"));
    assert_eq!(envelope["call_id"], json!("call_test"));
    let spec = proto::catalog::find("transcript.ready").unwrap();
    assert_eq!(envelope["data"], proto::catalog::example(spec));
    assert!(envelope["links"]["transcript"].is_string(), "{envelope}");

    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "a test send is sent once"
    );
    let (status, attempts) = sys
        .get(&format!("/v1/subscriptions/{sub}/attempts"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{attempts}");
    assert_eq!(attempts["data"], json!([]), "a test send is not an attempt");
}

#[tokio::test]
async fn a_test_send_to_a_failing_endpoint_reports_its_status_once_without_retrying() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (status, answer) = test_send(&sys, &key, &sub, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivered"], json!(false), "{answer}");
    assert_eq!(answer["status_code"], json!(500), "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    let got = receiver
        .recv_within(SOON)
        .await
        .expect("the sample arrived");
    assert_eq!(
        got.json()["type"],
        json!("call.started"),
        "the default type"
    );
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "a failed test send is not retried"
    );
}

#[tokio::test]
async fn a_test_send_to_an_unreachable_endpoint_reports_no_status_and_the_error() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (sub, _) = sys
        .subscribe(
            &key,
            json!({"url": format!("http://127.0.0.1:{port}/hook"), "event_types": ["*"]}),
        )
        .await;

    let (status, answer) = test_send(&sys, &key, &sub, json!({"type": "call.ended"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivered"], json!(false), "{answer}");
    assert_eq!(answer["status_code"], Value::Null, "{answer}");
    assert_eq!(answer["response_body"], Value::Null, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("connect"), "{answer}");
}

#[tokio::test]
async fn a_test_send_of_an_unknown_type_is_refused_naming_the_type() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (status, problem) = test_send(&sys, &key, &sub, json!({"type": "call.exploded"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], json!("type"), "{problem}");
    assert!(receiver.expect_none(QUIET).await.is_none(), "nothing sent");
}

#[tokio::test]
async fn a_test_send_to_another_tenants_or_an_unknown_subscription_is_not_found() {
    let sys = System::start().await;
    let acme = sys.tenant_key("acme").await;
    let globex = sys.tenant_key("globex").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&acme, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (status, problem) = test_send(&sys, &globex, &sub, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let unknown = "sub_01JDQ7Z3K8M2VX4N6P9R5T0WYB";
    let (status, problem) = test_send(&sys, &acme, unknown, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(receiver.expect_none(QUIET).await.is_none(), "nothing sent");
}

#[tokio::test]
async fn a_test_send_with_no_dispatcher_running_answers_503_promptly() {
    let mut sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    sys.dispatcher.take().unwrap().stop().await.unwrap();

    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        sys.http
            .post(sys.url(&format!("/v1/subscriptions/{sub}/test")))
            .bearer_auth(&key)
            .json(&json!({}))
            .send(),
    )
    .await
    .expect("answered within the test-send timeout")
    .unwrap();
    // NATS tells a requester at once that nobody listens; no need to wait for the timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert!(receiver.expect_none(QUIET).await.is_none(), "nothing sent");
}

#[tokio::test]
async fn after_a_rotation_every_delivery_carries_the_new_and_the_old_signature_during_the_grace() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, old) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    // No grace given: the default, a day.
    let (status, body) = rotate(&sys, &key, &sub, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{body}");
    assert_eq!(current_secret(&sys, &key, &sub).await, new);

    let got = a_delivery_where(&sys, &key, &receiver, "two signatures", |got| {
        signatures(got).len() == 2
    })
    .await;
    let both = signatures(&got);
    assert!(both.iter().all(|s| s.starts_with("v1,")), "{both:?}");
    with_only(&got, &both[0])
        .verify(&new)
        .expect("the first signature is the new secret's");
    with_only(&got, &both[1])
        .verify(&old)
        .expect("the second signature is the old secret's");
    with_only(&got, &both[0])
        .verify(&old)
        .expect_err("the old secret does not make the new signature");
    got.verify(&old)
        .expect("a receiver still on the old secret");
    got.verify(&new)
        .expect("a receiver already on the new secret");
}

#[tokio::test]
async fn a_rotation_without_grace_signs_with_the_new_secret_only() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, old) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (status, body) = rotate(&sys, &key, &sub, json!({"grace_period_s": 0})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_owned();

    let got = a_delivery_where(&sys, &key, &receiver, "the new secret", |got| {
        got.verify(&new).is_ok()
    })
    .await;
    assert_eq!(signatures(&got).len(), 1, "{:?}", signatures(&got));
    got.verify(&old)
        .expect_err("the old secret is dropped at once");
}

#[tokio::test]
async fn the_old_secret_stops_signing_when_the_grace_period_ends() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, old) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (status, body) = rotate(&sys, &key, &sub, json!({"grace_period_s": 3})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_owned();
    let rotated = Instant::now();

    let during = a_delivery_where(&sys, &key, &receiver, "both secrets", |got| {
        signatures(got).len() == 2
    })
    .await;
    during
        .verify(&old)
        .expect("the old secret signs during the grace");
    let after = a_delivery_where(&sys, &key, &receiver, "the old secret to expire", |got| {
        got.verify(&old).is_err()
    })
    .await;
    assert!(
        rotated.elapsed() >= Duration::from_secs(1),
        "not before the grace ends"
    );
    after.verify(&new).expect("the new secret signs on");
    assert_eq!(signatures(&after).len(), 1, "{:?}", signatures(&after));
}

#[tokio::test]
async fn a_rotation_with_a_grace_period_out_of_range_is_refused_and_changes_nothing() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}),
        )
        .await;

    for grace in [json!(-1), json!(604_801), json!("1d")] {
        let (status, problem) = rotate(&sys, &key, &sub, json!({ "grace_period_s": grace })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(
            problem["errors"][0]["field"],
            json!("grace_period_s"),
            "{problem}"
        );
    }
    assert_eq!(current_secret(&sys, &key, &sub).await, secret);
}

#[tokio::test]
async fn rotating_another_tenants_subscription_is_not_found_and_changes_nothing() {
    let sys = System::start().await;
    let acme = sys.tenant_key("acme").await;
    let globex = sys.tenant_key("globex").await;
    let (sub, secret) = sys
        .subscribe(
            &acme,
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}),
        )
        .await;

    let (status, problem) = rotate(&sys, &globex, &sub, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(current_secret(&sys, &acme, &sub).await, secret);
}
