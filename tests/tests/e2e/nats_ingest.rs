//! Upstream NATS ingest: protobuf `Event` requests on `webhooks.ingest.<tenant>`, answered with a
//! protobuf `IngestReply`, under the same rules (validation, idempotency) as `POST /v1/events`.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use prost::Message as _;
use proto::{
    subjects,
    v1::{self, Accepted, IngestReply, Rejected, event::Data, ingest_reply},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::TestReceiver;

use crate::helpers::*;

const OCCURRED_AT: &str = "2026-11-28T15:20:11.123Z";

async fn nats_client(sys: &System) -> async_nats::Client {
    async_nats::connect(sys.nats.url())
        .await
        .expect("nats client connects")
}

/// Sends `payload` as a request on `subject` and decodes the reply.
async fn request_on(client: &async_nats::Client, subject: &str, payload: Vec<u8>) -> IngestReply {
    let reply = tokio::time::timeout(SOON, client.request(subject.to_owned(), payload.into()))
        .await
        .unwrap_or_else(|_| panic!("no reply on {subject} within {SOON:?}"))
        .unwrap_or_else(|error| panic!("request on {subject} failed: {error}"));
    IngestReply::decode(reply.payload).expect("the reply is a protobuf IngestReply")
}

/// Sends `event` to the ingest subject of `tenant`.
async fn send(client: &async_nats::Client, tenant: &str, event: &v1::Event) -> IngestReply {
    request_on(
        client,
        &subjects::ingest_subject(tenant),
        event.encode_to_vec(),
    )
    .await
}

fn accepted(reply: IngestReply) -> Accepted {
    match reply.result {
        Some(ingest_reply::Result::Accepted(accepted)) => accepted,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn rejected(reply: IngestReply) -> Rejected {
    match reply.result {
        Some(ingest_reply::Result::Rejected(rejected)) => rejected,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Asserts a `422` with a title, and answers the set of listed fields.
fn invalid_fields(reply: IngestReply) -> BTreeSet<String> {
    let rejected = rejected(reply);
    assert_eq!(rejected.status, 422, "{rejected:?}");
    assert!(!rejected.title.is_empty(), "{rejected:?}");
    assert!(
        rejected.errors.iter().all(|e| !e.message.is_empty()),
        "{rejected:?}"
    );
    rejected.errors.into_iter().map(|e| e.field).collect()
}

/// The fields a `422` problem of the HTTP path lists.
fn http_invalid_fields(status: StatusCode, body: &Value) -> BTreeSet<String> {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors[]: {body}"))
        .iter()
        .map(|e| e["field"].as_str().expect("field").to_owned())
        .collect()
}

fn fields(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// A valid `call.started` event from `agent`, with a fixed `occurred_at`.
fn call_started(agent: &str) -> v1::Event {
    v1::Event {
        r#type: "call.started".to_owned(),
        agent_id: agent.to_owned(),
        call_id: "call_1".to_owned(),
        occurred_at: proto::time::parse_rfc3339(OCCURRED_AT),
        data: Some(Data::CallStarted(v1::CallStarted {
            direction: "inbound".to_owned(),
            from: "+14155550100".to_owned(),
            to: "+14155550199".to_owned(),
            started_at: proto::time::parse_rfc3339("2026-11-28T15:20:10.000Z"),
        })),
        ..Default::default()
    }
}

/// The same event as [`call_started`], as the JSON body of `POST /v1/events`.
fn call_started_json(agent: &str) -> Value {
    json!({
        "type": "call.started",
        "agent_id": agent,
        "call_id": "call_1",
        "occurred_at": OCCURRED_AT,
        "data": {
            "direction": "inbound",
            "from": "+14155550100",
            "to": "+14155550199",
            "started_at": "2026-11-28T15:20:10.000Z",
        },
    })
}

fn with_id(mut event: v1::Event, id: &str) -> v1::Event {
    event.id = id.to_owned();
    event
}

/// A receiver subscribed to every event type of the tenant of `key`; answers it and the secret.
async fn subscribed_receiver(sys: &System, key: &str) -> (TestReceiver, String) {
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    (receiver, secret)
}

/// Takes `n` deliveries, verifying each signature; answers their envelopes by `webhook-id`.
async fn take_envelopes(
    receiver: &TestReceiver,
    secret: &str,
    n: usize,
) -> BTreeMap<String, Value> {
    let mut envelopes = BTreeMap::new();
    for i in 0..n {
        let got = receiver
            .recv_within(SOON)
            .await
            .unwrap_or_else(|| panic!("delivery {} of {n} did not arrive", i + 1));
        got.verify(secret).expect("signature verifies");
        let id = got.header("webhook-id").expect("webhook-id").to_owned();
        envelopes.insert(id, got.json());
    }
    envelopes
}

/// An envelope with its event id blanked out, so two events' envelopes can be compared.
fn without_id(envelope: &Value, id: &str) -> Value {
    serde_json::from_str(&envelope.to_string().replace(id, "<id>")).expect("json")
}

#[tokio::test]
async fn a_protobuf_event_sent_over_nats_is_accepted_and_delivered_signed_like_the_same_http_event()
{
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;

    let via_nats = accepted(send(&client, "acme", &call_started("agent_1")).await);
    assert!(via_nats.id.starts_with("evt_"), "{via_nats:?}");
    assert_eq!(via_nats.id.len(), "evt_".len() + 26, "{via_nats:?}");
    assert!(via_nats.sequence > 0, "{via_nats:?}");
    assert!(!via_nats.duplicate, "{via_nats:?}");
    let via_http = sys.send_event(&key, call_started_json("agent_1")).await;

    let envelopes = take_envelopes(&receiver, &secret, 2).await;
    let nats_envelope = &envelopes[&via_nats.id];
    let http_envelope = &envelopes[&via_http];
    assert_eq!(nats_envelope["id"], json!(via_nats.id));
    assert_eq!(nats_envelope["tenant_id"], json!("acme"));
    assert_eq!(nats_envelope["type"], json!("call.started"));
    assert_eq!(nats_envelope["timestamp"], json!(OCCURRED_AT));
    assert_eq!(
        nats_envelope["data"],
        call_started_json("agent_1")["data"],
        "{nats_envelope}"
    );
    assert_eq!(
        without_id(nats_envelope, &via_nats.id),
        without_id(http_envelope, &via_http)
    );
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn an_event_sent_without_occurred_at_is_timestamped_at_acceptance() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;

    let before = proto::time::now();
    let mut event = call_started("agent_1");
    event.occurred_at = None;
    let id = accepted(send(&client, "acme", &event).await).id;

    let envelopes = take_envelopes(&receiver, &secret, 1).await;
    let stamp = envelopes[&id]["timestamp"].as_str().expect("timestamp");
    let stamp = proto::time::parse_rfc3339(stamp).expect("rfc 3339");
    assert!(
        proto::time::to_unix_ms(&stamp) >= proto::time::to_unix_ms(&before) - 1000,
        "{stamp:?} is long before {before:?}"
    );
}

#[tokio::test]
async fn invalid_content_over_nats_is_rejected_with_the_same_field_paths_as_over_http() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let client = nats_client(&sys).await;

    // A confidence out of range and a missing agent_id.
    let intent = v1::Event {
        r#type: "intent.detected".to_owned(),
        call_id: "call_1".to_owned(),
        data: Some(Data::IntentDetected(v1::IntentDetected {
            intent: "refund".to_owned(),
            confidence: 1.5,
        })),
        ..Default::default()
    };
    let intent_json = json!({"type": "intent.detected", "call_id": "call_1",
        "data": {"intent": "refund", "confidence": 1.5}});
    // A missing timestamp, an end reason outside its enum, a call id with a dot.
    let ended = v1::Event {
        r#type: "call.ended".to_owned(),
        agent_id: "agent_1".to_owned(),
        call_id: "call.1".to_owned(),
        data: Some(Data::CallEnded(v1::CallEnded {
            ended_at: None,
            duration_ms: 5,
            end_reason: "exploded".to_owned(),
        })),
        ..Default::default()
    };
    let ended_json = json!({"type": "call.ended", "agent_id": "agent_1", "call_id": "call.1",
        "data": {"duration_ms": 5, "end_reason": "exploded"}});
    // An unknown type and a producer id with a dot.
    let unknown = v1::Event {
        r#type: "call.exploded".to_owned(),
        id: "evt.1".to_owned(),
        ..call_started("agent_1")
    };
    let mut unknown_json = call_started_json("agent_1");
    unknown_json["type"] = json!("call.exploded");
    unknown_json["id"] = json!("evt.1");

    for (event, body, expected) in [
        (
            &intent,
            &intent_json,
            fields(&["agent_id", "data.confidence"]),
        ),
        (
            &ended,
            &ended_json,
            fields(&["call_id", "data.ended_at", "data.end_reason"]),
        ),
        (&unknown, &unknown_json, fields(&["type", "id"])),
    ] {
        let over_nats = invalid_fields(send(&client, "acme", event).await);
        let (status, problem) = sys.post("/v1/events", &key, body.clone()).await;
        let over_http = http_invalid_fields(status, &problem);
        assert_eq!(over_nats, expected, "{event:?}");
        assert_eq!(over_nats, over_http, "{event:?} vs {body}");
    }
}

#[tokio::test]
async fn a_type_that_does_not_match_the_data_is_rejected_naming_type() {
    let sys = System::start().await;
    let client = nats_client(&sys).await;
    let mismatched = v1::Event {
        r#type: "call.ended".to_owned(),
        ..call_started("agent_1")
    };
    assert_eq!(
        invalid_fields(send(&client, "acme", &mismatched).await),
        fields(&["type"])
    );
    let without_data = v1::Event {
        data: None,
        ..call_started("agent_1")
    };
    assert_eq!(
        invalid_fields(send(&client, "acme", &without_data).await),
        fields(&["data"])
    );
}

#[tokio::test]
async fn garbage_bytes_and_an_empty_payload_are_rejected_as_malformed_and_the_service_keeps_answering()
 {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;
    let subject = subjects::ingest_subject("acme");

    let payloads: [&[u8]; 4] = [
        b"\xff\xff\xff\xff not protobuf",
        // JSON sent to the protobuf subject by mistake.
        br#"{"type":"call.started","agent_id":"agent_1"}"#,
        // A length-delimited field that claims more bytes than there are.
        b"\x0a\x7fevt",
        b"",
    ];
    for payload in payloads {
        let rejected = rejected(request_on(&client, &subject, payload.to_vec()).await);
        assert_eq!(rejected.status, 400, "{payload:?}: {rejected:?}");
        assert!(!rejected.title.is_empty(), "{payload:?}: {rejected:?}");
        assert!(!rejected.detail.is_empty(), "{payload:?}: {rejected:?}");
        assert!(rejected.errors.is_empty(), "{payload:?}: {rejected:?}");
    }

    let after = accepted(send(&client, "acme", &call_started("agent_1")).await);
    let envelopes = take_envelopes(&receiver, &secret, 1).await;
    assert!(envelopes.contains_key(&after.id), "{envelopes:?}");
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn an_event_whose_tenant_id_differs_from_the_subjects_tenant_is_rejected_naming_tenant_id() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, _) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;

    let foreign = v1::Event {
        tenant_id: "globex".to_owned(),
        ..call_started("agent_1")
    };
    assert_eq!(
        invalid_fields(send(&client, "acme", &foreign).await),
        fields(&["tenant_id"])
    );
    // Every other problem is listed alongside it.
    let foreign_and_invalid = v1::Event {
        agent_id: String::new(),
        ..foreign
    };
    assert_eq!(
        invalid_fields(send(&client, "acme", &foreign_and_invalid).await),
        fields(&["tenant_id", "agent_id"])
    );
    assert!(receiver.expect_none(QUIET).await.is_none());

    // The subject's own tenant, spelled out, is fine.
    let own = v1::Event {
        tenant_id: "acme".to_owned(),
        ..call_started("agent_1")
    };
    accepted(send(&client, "acme", &own).await);
    assert!(receiver.recv_within(SOON).await.is_some());
}

#[tokio::test]
async fn a_subject_whose_tenant_token_breaks_the_tenant_id_rule_is_rejected_naming_tenant_id() {
    let sys = System::start().await;
    let client = nats_client(&sys).await;
    let too_long = "a".repeat(64);
    for tenant in ["Acme", "-acme", "_acme", "ac~me", too_long.as_str()] {
        let reply = send(&client, tenant, &call_started("agent_1")).await;
        assert_eq!(invalid_fields(reply), fields(&["tenant_id"]), "{tenant}");
    }
    let longest = "a".repeat(63);
    accepted(send(&client, &longest, &call_started("agent_1")).await);
}

#[tokio::test]
async fn the_same_producer_id_sent_twice_over_nats_is_a_duplicate_with_the_same_sequence_and_delivered_once()
 {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;

    let event = with_id(call_started("agent_1"), "upstream-42");
    let first = accepted(send(&client, "acme", &event).await);
    assert_eq!(first.id, "upstream-42");
    assert!(!first.duplicate, "{first:?}");
    let second = accepted(send(&client, "acme", &event).await);
    assert_eq!(second.id, "upstream-42");
    assert!(second.duplicate, "{second:?}");
    assert_eq!(second.sequence, first.sequence);

    let envelopes = take_envelopes(&receiver, &secret, 1).await;
    assert!(envelopes.contains_key("upstream-42"), "{envelopes:?}");
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn nats_and_http_events_of_one_tenant_share_idempotency_and_other_tenants_do_not() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let client = nats_client(&sys).await;

    // HTTP first, then NATS.
    let mut body = call_started_json("agent_1");
    body["id"] = json!("shared-1");
    let (status, over_http) = sys.post("/v1/events", &key, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{over_http}");
    let over_nats = accepted(
        send(
            &client,
            "acme",
            &with_id(call_started("agent_1"), "shared-1"),
        )
        .await,
    );
    assert!(over_nats.duplicate, "{over_nats:?}");
    assert_eq!(json!(over_nats.sequence), over_http["sequence"]);

    // NATS first, then HTTP.
    let first = accepted(
        send(
            &client,
            "acme",
            &with_id(call_started("agent_1"), "shared-2"),
        )
        .await,
    );
    assert!(!first.duplicate, "{first:?}");
    let mut body = call_started_json("agent_1");
    body["id"] = json!("shared-2");
    let (status, again) = sys.post("/v1/events", &key, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["duplicate"], json!(true), "{again}");
    assert_eq!(again["sequence"], json!(first.sequence), "{again}");

    // Another tenant's event with the same id is its own event.
    let other = accepted(
        send(
            &client,
            "globex",
            &with_id(call_started("agent_1"), "shared-1"),
        )
        .await,
    );
    assert!(!other.duplicate, "{other:?}");

    let envelopes = take_envelopes(&receiver, &secret, 2).await;
    assert_eq!(
        envelopes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["shared-1", "shared-2"]
    );
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn many_requests_at_once_are_all_answered_with_distinct_sequences() {
    let sys = System::start().await;
    let client = nats_client(&sys).await;
    let replies = futures::future::join_all((0..300).map(|i| {
        let client = client.clone();
        async move {
            // Every third one is garbage: a rejection never holds up the others.
            if i % 3 == 0 {
                request_on(&client, &subjects::ingest_subject("acme"), vec![0xff; 8]).await
            } else {
                send(&client, "acme", &call_started("agent_1")).await
            }
        }
    }))
    .await;
    let mut sequences = BTreeSet::new();
    for (i, reply) in replies.into_iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(rejected(reply).status, 400);
        } else {
            assert!(sequences.insert(accepted(reply).sequence));
        }
    }
    assert_eq!(sequences.len(), 200);
}

#[tokio::test]
async fn with_two_ingest_replicas_each_request_is_answered_exactly_once() {
    let sys = System::start().await;
    let _second = spawn_ingest(&sys.nats).await;
    let client = nats_client(&sys).await;

    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client.flush().await.unwrap();
    for i in 0..10 {
        let event = with_id(call_started("agent_1"), &format!("replicated-{i}"));
        client
            .publish_with_reply(
                subjects::ingest_subject("acme"),
                inbox.clone(),
                event.encode_to_vec().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut answered = BTreeMap::new();
    for _ in 0..10 {
        let reply = tokio::time::timeout(SOON, replies.next())
            .await
            .expect("a reply in time")
            .expect("the inbox is open");
        let accepted = accepted(IngestReply::decode(reply.payload).unwrap());
        *answered.entry(accepted.id).or_insert(0) += 1;
    }
    assert_eq!(answered.len(), 10, "{answered:?}");
    // A second answer to any request would show up here (as a duplicate).
    assert!(
        tokio::time::timeout(QUIET, replies.next()).await.is_err(),
        "a request was answered twice"
    );
}

#[tokio::test]
async fn a_stopped_ingest_stops_answering_and_its_drain_finishes() {
    let sys = System::start().await;
    let client = nats_client(&sys).await;
    accepted(send(&client, "acme", &call_started("agent_1")).await);

    let System { ingest, nats, .. } = sys;
    tokio::time::timeout(SOON, ingest.stop())
        .await
        .expect("ingest stops in time")
        .expect("ingest stops cleanly");
    let after = client
        .request(
            subjects::ingest_subject("acme"),
            call_started("agent_1").encode_to_vec().into(),
        )
        .await;
    assert!(after.is_err(), "answered after stopping: {after:?}");
    drop(nats);
}
