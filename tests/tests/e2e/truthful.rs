//! Truthful answers: a receiver's 2xx is a success even when its body breaks off, and a producer
//! told "503" when the store did not confirm in time learns the event's id, with which a repeat
//! is deduplicated.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

/// A receiver that answers `200 OK` with a promised 100-byte body, sends 7 bytes of it and
/// then stays silent. Records the `webhook-id` of every request.
async fn body_breaking_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = ids.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // The headers are enough: the id is there.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let id = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("webhook-id")
                            .then(|| value.trim())
                    })
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(id);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial";
                if stream.write_all(answer).await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            });
        }
    });
    (url, ids)
}

#[tokio::test]
async fn a_2xx_whose_body_breaks_off_is_a_success_and_is_not_retried() {
    let sys = system_with(|s| s.http_timeout = Duration::from_secs(1)).await;
    let key = sys.tenant_key("acme").await;
    let (url, ids) = body_breaking_receiver().await;
    let (sub, _) = sys
        .subscribe(
            &key,
            json!({"url": url, "event_types": ["*"], "retry": {"schedule_ms": [100]}}),
        )
        .await;
    // Subscriptions reach the dispatcher a moment after the API answers.
    let first = eventually(SOON, "a delivery", || async {
        sys.send_event(&key, event("call.started", "a1")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ids.lock().unwrap().first().cloned()
    })
    .await
    .unwrap();
    let attempts = eventually(SOON, "the attempt record", || async {
        let (status, body) = sys.get(&format!("/v1/events/{first}/attempts"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = body["data"].as_array().cloned().unwrap_or_default();
        (!data.is_empty()).then_some(data)
    })
    .await
    .unwrap();
    assert_eq!(attempts[0]["outcome"], json!("succeeded"), "{attempts:?}");
    assert_eq!(attempts[0]["status_code"], json!(200));
    // A failed attempt would be retried 100 ms later; none is.
    tokio::time::sleep(QUIET).await;
    let ids = ids.lock().unwrap().clone();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an event was sent twice: {ids:?}");
    let (_, body) = sys
        .get(&format!("/v1/subscriptions/{sub}/attempts"), &key)
        .await;
    let all = body["data"].as_array().cloned().unwrap_or_default();
    assert!(
        all.iter().all(|a| a["outcome"] == json!("succeeded")),
        "{all:?}"
    );
}

#[tokio::test]
async fn an_unconfirmed_event_is_answered_503_with_its_id_and_a_repeat_is_deduplicated() {
    let mut sys = System::start().await;
    let ingest = spawn_ingest_with(&sys.nats, |s| s.publish_timeout = Duration::from_secs(1)).await;
    std::mem::replace(&mut sys.ingest, ingest)
        .stop()
        .await
        .unwrap();
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    a_delivery_where(&sys, &key, &receiver, "the endpoint is known", |_| true).await;
    while receiver.recv_within(QUIET).await.is_some() {}

    // The server stops answering: the publish reaches its socket, the PubAck never comes.
    sys.nats.pause().unwrap();
    let (status, problem) = sys
        .post("/v1/events", &key, event("call.ended", "a1"))
        .await;
    sys.nats.resume().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    let id = problem["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {problem}"))
        .to_owned();
    assert!(
        problem["detail"].as_str().unwrap().contains(&id),
        "{problem}"
    );

    // The producer repeats with that id: deduplicated, since the first try was stored.
    let mut repeat = event("call.ended", "a1");
    repeat["id"] = Value::from(id.clone());
    let (status, accepted) = sys.post("/v1/events", &key, repeat).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["id"], json!(id));
    assert_eq!(accepted["duplicate"], json!(true), "{accepted}");
    let got = receiver.recv_within(SOON).await.expect("the delivery");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    got.verify(&secret).unwrap();
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "delivered twice"
    );
}
