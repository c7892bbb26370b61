//! Events in, signed webhooks out.

use reqwest::StatusCode;
use serde_json::json;
use testkit::TestReceiver;

use crate::helpers::*;

#[tokio::test]
async fn an_accepted_event_arrives_signed_with_the_exact_envelope_and_headers() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub_id, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["call.started"], "headers": {"X-Team": "voice"}}))
        .await;
    assert!(sub_id.starts_with("sub_") && secret.starts_with("whsec_"));

    let mut body = event("call.started", "agent_7");
    body["occurred_at"] = json!("2026-11-28T15:20:11.123Z");
    let (status, accepted) = sys.post("/v1/events", &key, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("evt_") && id.len() == 30, "{id}");
    assert!(accepted["sequence"].as_u64().unwrap() >= 1);
    assert_eq!(accepted["duplicate"], json!(false));

    let got = receiver.recv_within(SOON).await.expect("delivered");
    got.verify(&secret)
        .expect("signature verifies with the standardwebhooks crate");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-team"), Some("voice"));
    assert!(
        got.header("user-agent")
            .unwrap()
            .starts_with("OpenWebhooks/")
    );
    let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((ts - chrono_now()).abs() < 60);
    assert!(got.header("webhook-signature").unwrap().starts_with("v1,"));

    let envelope = got.json();
    let keys: Vec<&str> = envelope
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "type",
            "timestamp",
            "tenant_id",
            "agent_id",
            "call_id",
            "data",
            "links"
        ]
    );
    assert_eq!(envelope["id"], json!(id));
    assert_eq!(envelope["type"], json!("call.started"));
    assert_eq!(envelope["timestamp"], json!("2026-11-28T15:20:11.123Z"));
    assert_eq!(envelope["tenant_id"], json!("acme"));
    assert_eq!(envelope["agent_id"], json!("agent_7"));
    assert_eq!(envelope["call_id"], json!("call_1"));
    assert_eq!(envelope["data"], body["data"]);
    assert_eq!(
        envelope["links"]["call"],
        json!("https://api.open.example/v1/calls/call_1")
    );
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "exactly one delivery"
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
