//! Dead letters, attempt logs and stats through the API.
//!
//! Most tests write `DeadLetter` and `Attempt` records straight to their streams, as the
//! dispatcher would, so they pin the API down independently of how the dispatcher decides to
//! dead-letter. Redrives go through the real dispatcher to a receiver that checks signatures.

use std::collections::BTreeSet;

use async_nats::jetstream;
use prost::Message as _;
use proto::{
    subjects,
    v1::{Attempt, DeadLetter, Delivery, DeliveryOrigin},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// Writes records to the streams the way the dispatcher does.
struct Streams {
    js: jetstream::Context,
}

impl Streams {
    async fn connect(sys: &System) -> Streams {
        let client = async_nats::connect(sys.nats.url()).await.unwrap();
        Streams {
            js: jetstream::new(client),
        }
    }

    /// Publishes and awaits the PubAck; answers the stream sequence.
    async fn publish(&self, subject: String, payload: Vec<u8>) -> u64 {
        self.js
            .publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Stores a dead letter of `delivery`; answers its public id.
    async fn dead_letter(&self, delivery: Delivery, reason: &str, status: u32) -> String {
        let subject = subjects::dlq_subject(&delivery.tenant_id, &delivery.subscription_id);
        let dl = DeadLetter {
            attempts: delivery.attempt,
            last_status_code: status,
            last_error: if status == 0 {
                String::new()
            } else {
                format!("HTTP {status}")
            },
            dead_at: proto::time::parse_rfc3339("2026-11-28T15:20:11.123Z"),
            reason: reason.into(),
            failed_by: if reason == "system_error" {
                "system"
            } else {
                "endpoint"
            }
            .into(),
            delivery: Some(delivery),
        };
        subjects::dead_letter_id(self.publish(subject, dl.encode_to_vec()).await)
    }

    async fn attempt(&self, tenant: &str, a: Attempt) -> u64 {
        let subject = subjects::attempts_subject(tenant, &a.subscription_id);
        let a = Attempt {
            tenant_id: tenant.into(),
            ..a
        };
        self.publish(subject, a.encode_to_vec()).await
    }
}

/// A delivery of `event_id` to `subscription`, carrying the catalog's `call.started` example as
/// its envelope, as it looks after its last failed attempt.
fn delivery(tenant: &str, subscription: &str, event_id: &str) -> Delivery {
    let spec = proto::catalog::find("call.started").unwrap();
    let envelope = json!({
        "id": event_id,
        "type": "call.started",
        "timestamp": "2026-11-28T15:20:11.123Z",
        "tenant_id": tenant,
        "agent_id": "agent_1",
        "call_id": "call_1",
        "data": proto::catalog::example(spec),
        "links": {"call": "https://api.open.example/v1/calls/call_1"},
    });
    Delivery {
        event_id: event_id.into(),
        tenant_id: tenant.into(),
        subscription_id: subscription.into(),
        event_type: "call.started".into(),
        agent_id: "agent_1".into(),
        payload: serde_json::to_vec(&envelope).unwrap().into(),
        event_sequence: 1,
        accepted_at: Some(proto::time::now()),
        origin: DeliveryOrigin::Live as i32,
        attempt: 5,
        not_before: Some(proto::time::now()),
        last_status_code: 500,
        last_error: "HTTP 500".into(),
        pending_death: None,
    }
}

fn attempt(subscription: &str, event_id: &str, n: u32, status: u32, latency_ms: u32) -> Attempt {
    Attempt {
        event_id: event_id.into(),
        subscription_id: subscription.into(),
        attempt: n,
        succeeded: (200..300).contains(&status),
        status_code: status,
        error: if status == 0 {
            "connection refused".into()
        } else {
            String::new()
        },
        latency_ms,
        at: proto::time::parse_rfc3339("2026-11-28T15:20:11.123Z"),
        event_type: "call.started".into(),
        ..Default::default()
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a list, following `next_cursor` with `limit`.
async fn all_pages(sys: &System, key: &str, path: &str, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (status, page) = sys.get(&url, key).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        after = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        if after.is_none() {
            return pages;
        }
        assert!(pages.len() < 50, "paging does not end");
    }
}

async fn a_subscription(sys: &System, key: &str, url: &str) -> (String, String) {
    sys.subscribe(key, json!({"url": url, "event_types": ["call.started"]}))
        .await
}

#[tokio::test]
async fn dead_letters_are_listed_in_order_with_every_field_and_paged_by_cursor() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let streams = Streams::connect(&sys).await;
    let mut expected = Vec::new();
    for (i, sub) in ["sub_a", "sub_b", "sub_a", "sub_a", "sub_b"]
        .into_iter()
        .enumerate()
    {
        let status = if i == 1 { 0 } else { 503 };
        let reason = if i == 1 {
            "system_error"
        } else {
            "attempts_exhausted"
        };
        expected.push(
            streams
                .dead_letter(delivery("acme", sub, &format!("evt_{i}")), reason, status)
                .await,
        );
    }

    let (status, all) = sys.get("/v1/dead-letters", &key).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(ids(&all), expected);
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(
        all["data"][0],
        json!({
            "id": expected[0],
            "event_id": "evt_0",
            "subscription_id": "sub_a",
            "event_type": "call.started",
            "attempts": 5,
            "last_status_code": 503,
            "last_error": "HTTP 503",
            "reason": "attempts_exhausted",
            "failed_by": "endpoint",
            "dead_at": "2026-11-28T15:20:11.123Z",
        })
    );
    assert_eq!(all["data"][1]["last_status_code"], Value::Null);
    assert_eq!(all["data"][1]["last_error"], Value::Null);
    assert_eq!(all["data"][1]["reason"], json!("system_error"));
    assert_eq!(all["data"][1]["failed_by"], json!("system"));

    let pages = all_pages(&sys, &key, "/v1/dead-letters", 2).await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0]["next_cursor"], json!(expected[1]));
    let paged: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(paged, expected);

    let only_a = all_pages(&sys, &key, "/v1/dead-letters?subscription_id=sub_a", 2).await;
    let only_a: Vec<String> = only_a.iter().flat_map(ids).collect();
    assert_eq!(
        only_a,
        [
            expected[0].clone(),
            expected[2].clone(),
            expected[3].clone()
        ]
    );

    let (status, one) = sys
        .get(&format!("/v1/dead-letters/{}", expected[4]), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one, all["data"][4]);
}

#[tokio::test]
async fn bad_cursors_and_ids_are_refused_as_problems() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    for path in [
        "/v1/dead-letters?after=42",
        "/v1/dead-letters?limit=0",
        "/v1/dead-letters?subscription_id=a.b",
    ] {
        let (status, problem) = sys.get(path, &key).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {problem}"
        );
        assert_eq!(problem["status"], json!(422), "{path}");
    }
    for id in ["dl_0", "dl_x", "42", "dl_999"] {
        let (status, problem) = sys.get(&format!("/v1/dead-letters/{id}"), &key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {problem}");
        assert_eq!(problem["status"], json!(404));
    }
    let (status, _) = sys.get("/v1/dead-letters", "owk_nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_tenants_dead_letters_are_invisible_and_cannot_be_redriven() {
    let sys = System::start().await;
    let acme = sys.tenant_key("acme").await;
    let beta = sys.tenant_key("beta").await;
    let streams = Streams::connect(&sys).await;
    let id = streams
        .dead_letter(
            delivery("acme", "sub_a", "evt_1"),
            "attempts_exhausted",
            500,
        )
        .await;

    let (_, list) = sys.get("/v1/dead-letters", &beta).await;
    assert_eq!(list, json!({"data": [], "next_cursor": null}));
    let (_, list) = sys
        .get("/v1/dead-letters?subscription_id=sub_a", &beta)
        .await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = sys.get(&format!("/v1/dead-letters/{id}"), &beta).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys
        .post(&format!("/v1/dead-letters/{id}/redrive"), &beta, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, list) = sys.get("/v1/dead-letters", &acme).await;
    assert_eq!(ids(&list), [id], "still there for its owner");
}

#[tokio::test]
async fn a_redriven_dead_letter_is_delivered_signed_as_attempt_one_and_leaves_the_list() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = a_subscription(&sys, &key, &receiver.url()).await;
    let streams = Streams::connect(&sys).await;
    let dead = delivery("acme", &sub, "evt_redriven");
    let id = streams
        .dead_letter(dead.clone(), "attempts_exhausted", 500)
        .await;

    let (status, body) = sys
        .post(&format!("/v1/dead-letters/{id}/redrive"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"redriven": 1}));

    let got = receiver.recv_within(SOON).await.expect("redelivered");
    got.verify(&secret).expect("signature verifies");
    assert_eq!(got.header("webhook-id"), Some("evt_redriven"));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    assert_eq!(got.body.as_ref(), dead.payload.as_ref());

    let (_, list) = sys.get("/v1/dead-letters", &key).await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = sys.get(&format!("/v1/dead-letters/{id}"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, again) = sys
        .post(&format!("/v1/dead-letters/{id}/redrive"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "exactly one redelivery"
    );
}

#[tokio::test]
async fn a_redrive_queues_a_fresh_task_with_a_new_attempt_budget() {
    // No dispatcher: the queued task stays on the deliveries stream to be inspected.
    let nats = testkit::NatsServer::start().await.unwrap();
    let ingest = spawn_ingest(&nats).await;
    let sys = System {
        ingest,
        dispatcher: None,
        http: reqwest::Client::new(),
        nats,
    };
    let key = sys.tenant_key("acme").await;
    let streams = Streams::connect(&sys).await;
    let id = streams
        .dead_letter(
            delivery("acme", "sub_q", "evt_q"),
            "attempts_exhausted",
            500,
        )
        .await;
    let sequence = subjects::dead_letter_sequence(&id).unwrap();
    let (status, _) = sys
        .post(&format!("/v1/dead-letters/{id}/redrive"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let stream = streams
        .js
        .get_stream(subjects::REPLAYS_STREAM)
        .await
        .unwrap();
    // Redriven tasks go to the replay lane, never ahead of live deliveries.
    let task = stream
        .get_last_raw_message_by_subject(&subjects::replay_subject("acme", "sub_q"))
        .await
        .unwrap();
    assert_eq!(
        task.headers
            .get(subjects::HEADER_MSG_ID)
            .map(|v| v.as_str().to_owned()),
        Some(subjects::redrive_msg_id(sequence))
    );
    let task = Delivery::decode(task.payload.as_ref()).unwrap();
    assert_eq!(task.attempt, 1);
    assert_eq!(task.origin, DeliveryOrigin::Redrive as i32);
    assert_eq!(task.not_before, None);
    assert_eq!(task.last_status_code, 0);
    assert_eq!(task.last_error, "");
    let original = delivery("acme", "sub_q", "evt_q");
    assert_eq!(task.payload, original.payload);
    assert_eq!(task.event_id, "evt_q");
}

#[tokio::test]
async fn bulk_redrive_requeues_every_dead_letter_of_the_subscription_and_no_other() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = a_subscription(&sys, &key, &receiver.url()).await;
    let streams = Streams::connect(&sys).await;
    for i in 0..3 {
        streams
            .dead_letter(
                delivery("acme", &sub, &format!("evt_bulk_{i}")),
                "attempts_exhausted",
                500,
            )
            .await;
    }
    let other = streams
        .dead_letter(
            delivery("acme", "sub_other", "evt_other"),
            "permanent_failure",
            400,
        )
        .await;

    let (status, body) = sys
        .post(
            "/v1/dead-letters/redrive",
            &key,
            json!({"subscription_id": sub}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"redriven": 3}));

    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let r = receiver.recv_within(SOON).await.expect("redelivered");
        r.verify(&secret).expect("signature verifies");
        assert_eq!(r.header("webhook-attempt"), Some("1"));
        got.insert(r.header("webhook-id").unwrap().to_owned());
    }
    assert_eq!(
        got,
        BTreeSet::from([
            "evt_bulk_0".into(),
            "evt_bulk_1".into(),
            "evt_bulk_2".into()
        ])
    );
    let (_, list) = sys.get("/v1/dead-letters", &key).await;
    assert_eq!(ids(&list), [other], "only the other subscription's is left");

    let (status, body) = sys
        .post(
            "/v1/dead-letters/redrive",
            &key,
            json!({"subscription_id": sub}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"redriven": 0}), "nothing is redriven twice");
}

#[tokio::test]
async fn bulk_redrive_needs_one_of_the_tenants_subscriptions() {
    let sys = System::start().await;
    let acme = sys.tenant_key("acme").await;
    let beta = sys.tenant_key("beta").await;
    let (sub, _) = a_subscription(&sys, &acme, "http://127.0.0.1:9/hook").await;
    let (status, problem) = sys.post("/v1/dead-letters/redrive", &acme, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], json!("subscription_id"));
    let (status, _) = sys
        .post(
            "/v1/dead-letters/redrive",
            &acme,
            json!({"subscription_id": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = sys
        .post(
            "/v1/dead-letters/redrive",
            &acme,
            json!({"subscription_id": "sub_01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys
        .post(
            "/v1/dead-letters/redrive",
            &beta,
            json!({"subscription_id": sub}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's subscription"
    );
}

#[tokio::test]
async fn a_subscriptions_attempts_are_listed_in_order_and_paged() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let beta = sys.tenant_key("beta").await;
    let (sub, _) = a_subscription(&sys, &key, "http://127.0.0.1:9/hook").await;
    let (other, _) = a_subscription(&sys, &key, "http://127.0.0.1:9/other").await;
    let streams = Streams::connect(&sys).await;
    streams
        .attempt("acme", attempt(&sub, "evt_1", 1, 0, 12))
        .await;
    streams
        .attempt("acme", attempt(&other, "evt_1", 1, 200, 5))
        .await;
    streams
        .attempt("acme", attempt(&sub, "evt_1", 2, 503, 30))
        .await;
    streams
        .attempt("acme", attempt(&sub, "evt_1", 3, 204, 8))
        .await;

    let pages = all_pages(&sys, &key, &format!("/v1/subscriptions/{sub}/attempts"), 2).await;
    assert_eq!(pages.len(), 2);
    let data: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        data,
        [
            json!({"event_id": "evt_1", "subscription_id": sub, "attempt": 1, "outcome": "failed",
                   "status_code": null, "error": "connection refused", "latency_ms": 12,
                   "at": "2026-11-28T15:20:11.123Z"}),
            json!({"event_id": "evt_1", "subscription_id": sub, "attempt": 2, "outcome": "failed",
                   "status_code": 503, "error": null, "latency_ms": 30,
                   "at": "2026-11-28T15:20:11.123Z"}),
            json!({"event_id": "evt_1", "subscription_id": sub, "attempt": 3, "outcome": "succeeded",
                   "status_code": 204, "error": null, "latency_ms": 8,
                   "at": "2026-11-28T15:20:11.123Z"}),
        ]
    );

    let (status, _) = sys
        .get(&format!("/v1/subscriptions/{sub}/attempts"), &beta)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's subscription"
    );
    let (status, _) = sys
        .get(
            "/v1/subscriptions/sub_01ARZ3NDEKTSV4RRFFQ69G5FAV/attempts",
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys
        .get(&format!("/v1/subscriptions/{sub}/attempts?after=x"), &key)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_events_attempts_across_subscriptions_are_found_by_its_id() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let beta = sys.tenant_key("beta").await;
    // An assigned id, so the scan starts at the id's time; no subscription matches it, so the
    // dispatcher records nothing of its own.
    let assigned = sys.send_event(&key, event("call.ended", "agent_1")).await;
    assert!(assigned.starts_with("evt_"));
    let streams = Streams::connect(&sys).await;
    for (sub, event_id, n) in [
        ("sub_x", assigned.as_str(), 1),
        ("sub_x", "order-17", 1),
        ("sub_y", assigned.as_str(), 1),
        ("sub_x", assigned.as_str(), 2),
        ("sub_y", "order-17", 1),
    ] {
        streams
            .attempt("acme", attempt(sub, event_id, n, 500, 10))
            .await;
    }
    // The same event id in another tenant is not this event.
    streams
        .attempt("beta", attempt("sub_z", &assigned, 1, 500, 10))
        .await;

    let pages = all_pages(&sys, &key, &format!("/v1/events/{assigned}/attempts"), 2).await;
    let seen: Vec<(String, u64)> = pages
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().clone())
        .map(|a| {
            assert_eq!(a["event_id"], json!(assigned));
            (
                a["subscription_id"].as_str().unwrap().to_owned(),
                a["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("sub_x".to_owned(), 1),
            ("sub_y".to_owned(), 1),
            ("sub_x".to_owned(), 2)
        ]
    );

    let (status, chosen) = sys.get("/v1/events/order-17/attempts", &key).await;
    assert_eq!(status, StatusCode::OK, "{chosen}");
    assert_eq!(chosen["data"].as_array().unwrap().len(), 2);
    assert_eq!(chosen["next_cursor"], Value::Null);

    let (_, theirs) = sys
        .get(&format!("/v1/events/{assigned}/attempts"), &beta)
        .await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["data"][0]["subscription_id"], json!("sub_z"));
}

#[tokio::test]
async fn stats_count_outcomes_and_give_latency_percentiles() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (sub, _) = a_subscription(&sys, &key, "http://127.0.0.1:9/hook").await;
    let (quiet, _) = a_subscription(&sys, &key, "http://127.0.0.1:9/quiet").await;
    let streams = Streams::connect(&sys).await;
    // Latencies 1..=100 ms, shuffled by a fixed stride; every tenth attempt failed.
    for i in 0..100u32 {
        let latency = (i * 37) % 100 + 1;
        let status = if latency % 10 == 0 { 500 } else { 200 };
        streams
            .attempt("acme", attempt(&sub, "evt_s", 1, status, latency))
            .await;
    }

    let (status, stats) = sys
        .get(&format!("/v1/subscriptions/{sub}/stats"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats,
        json!({
            "subscription_id": sub,
            "window_s": 86400,
            "attempts": 100,
            "succeeded": 90,
            "failed": 10,
            "latency_ms": {"p50": 50, "p90": 90, "p99": 99, "max": 100},
            "truncated": false,
        })
    );

    let (status, hour) = sys
        .get(&format!("/v1/subscriptions/{sub}/stats?window=1h"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{hour}");
    assert_eq!(hour["window_s"], json!(3600));
    assert_eq!(hour["attempts"], json!(100));

    let (_, none) = sys
        .get(&format!("/v1/subscriptions/{quiet}/stats"), &key)
        .await;
    assert_eq!(none["attempts"], json!(0));
    assert_eq!(none["latency_ms"], Value::Null);

    for window in ["8d", "0s", "soon"] {
        let (status, problem) = sys
            .get(
                &format!("/v1/subscriptions/{sub}/stats?window={window}"),
                &key,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{window}");
        assert_eq!(problem["errors"][0]["field"], json!("window"));
    }
    let beta = sys.tenant_key("beta").await;
    let (status, _) = sys
        .get(&format!("/v1/subscriptions/{sub}/stats"), &beta)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_delivery_that_exhausts_its_attempts_is_listed_and_logged_and_redrive_delivers_it() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![500, 500]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["call.started"],
                   "retry": {"max_attempts": 2, "schedule_ms": [10]}}),
        )
        .await;
    let event_id = sys.send_event(&key, event("call.started", "agent_1")).await;
    for n in ["1", "2"] {
        let got = receiver.recv_within(SOON).await.expect("attempted");
        assert_eq!(got.header("webhook-attempt"), Some(n));
    }

    let dead = eventually(SOON, "the dead letter", || async {
        let (_, list) = sys
            .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
            .await;
        list["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .unwrap();
    assert_eq!(dead["event_id"], json!(event_id));
    assert_eq!(dead["attempts"], json!(2));
    assert_eq!(dead["last_status_code"], json!(500));
    assert_eq!(dead["reason"], json!("attempts_exhausted"));
    assert_eq!(dead["failed_by"], json!("endpoint"));

    let (_, log) = sys
        .get(&format!("/v1/events/{event_id}/attempts"), &key)
        .await;
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
    assert_eq!(outcomes, [(1, "failed"), (2, "failed")]);

    let id = dead["id"].as_str().unwrap();
    let (status, _) = sys
        .post(&format!("/v1/dead-letters/{id}/redrive"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = receiver.recv_within(SOON).await.expect("redriven");
    got.verify(&secret).expect("signature verifies");
    assert_eq!(got.header("webhook-id"), Some(event_id.as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    let stats = eventually(SOON, "the successful attempt in the stats", || async {
        let (_, stats) = sys
            .get(&format!("/v1/subscriptions/{sub}/stats"), &key)
            .await;
        (stats["succeeded"] == json!(1)).then_some(stats)
    })
    .await
    .unwrap();
    assert_eq!(stats["failed"], json!(2));
    assert_eq!(stats["attempts"], json!(3));
}
