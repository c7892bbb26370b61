//! Hostile messages published straight onto the event and delivery subjects are set aside with
//! a recorded reason: never delivered, never redelivered forever, never blocking the consumer.

use async_nats::jetstream;
use futures::StreamExt as _;
use prost::Message as _;
use proto::{
    subjects,
    v1::{Delivery, Event},
};
use serde_json::json;
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// Every message of the rejects stream: (original subject, reason).
async fn rejects(js: &jetstream::Context, n: usize) -> Vec<(String, String)> {
    eventually(SOON, "messages to be set aside", || async {
        let stream = js.get_stream(subjects::REJECTS_STREAM).await.ok()?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .ok()?;
        let mut out = Vec::new();
        let mut messages = consumer.messages().await.ok()?;
        while out.len() < n {
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(300), messages.next()).await;
            let Ok(Some(Ok(m))) = next else { break };
            let header = |name| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            out.push((
                header(subjects::HEADER_ORIGINAL_SUBJECT),
                header(subjects::HEADER_REJECT_REASON),
            ));
        }
        (out.len() >= n).then_some(out)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn garbage_and_lying_protobufs_on_nats_are_set_aside_and_the_consumers_keep_going() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    let client = async_nats::connect(sys.nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let publish = |subject: String, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };

    // A valid event of tenant "acme", to copy and corrupt.
    let valid_id = sys.send_event(&key, event("call.started", "a1")).await;
    let first = receiver.recv_within(SOON).await.expect("the valid event");
    assert_eq!(first.header("webhook-id"), Some(valid_id.as_str()));
    let envelope = first.json();
    let event_subject = subjects::event_subject("acme", "a1", "call.started");
    let lying = Event {
        id: "evt_forged".into(),
        tenant_id: "other".into(), // says another tenant than its subject
        agent_id: "a1".into(),
        call_id: "c1".into(),
        r#type: "call.started".into(),
        ..Default::default()
    };
    let invalid = Event {
        tenant_id: "acme".into(),
        ..lying.clone()
    }; // no data at all
    publish(event_subject.clone(), b"\xff\xfe garbage \x00".to_vec()).await;
    publish(event_subject.clone(), lying.encode_to_vec()).await;
    publish(event_subject.clone(), invalid.encode_to_vec()).await;

    let delivery_subject = subjects::delivery_subject("acme", &sub);
    let forged = Delivery {
        event_id: "evt_forged".into(),
        tenant_id: "other".into(),
        subscription_id: sub.clone(),
        payload: envelope.to_string().into_bytes().into(),
        ..Default::default()
    };
    publish(delivery_subject.clone(), vec![0x0a, 0xff, 0xff, 0xff]).await;
    publish(delivery_subject.clone(), forged.encode_to_vec()).await;

    let set_aside = rejects(&js, 5).await;
    let reasons: Vec<&str> = set_aside.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        set_aside
            .iter()
            .filter(|(s, _)| *s == event_subject)
            .count(),
        3,
        "{set_aside:?}"
    );
    assert_eq!(
        set_aside
            .iter()
            .filter(|(s, _)| *s == delivery_subject)
            .count(),
        2,
        "{set_aside:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not a protobuf Event")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("does not match the subject")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid event")),
        "{reasons:?}"
    );

    // Nothing forged reached the receiver, and the consumers are not stuck: a valid event after
    // the garbage is delivered, and nothing is left unacknowledged.
    let after = sys.send_event(&key, event("qa.scored", "a1")).await;
    let got = receiver
        .recv_within(SOON)
        .await
        .expect("an event after the garbage");
    got.verify(&secret).unwrap();
    assert_eq!(got.header("webhook-id"), Some(after.as_str()));
    assert!(receiver.expect_none(QUIET).await.is_none());
    for (stream, consumer) in [
        (subjects::EVENTS_STREAM, subjects::FANOUT_CONSUMER),
        (subjects::DELIVERIES_STREAM, subjects::DELIVER_CONSUMER),
    ] {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_consumer(consumer)
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(
            (info.num_ack_pending, info.num_pending),
            (0, 0),
            "{consumer}"
        );
    }
}
