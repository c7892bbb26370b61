//! Ingest API: validation, idempotency, batches, limits, auth errors, the catalog.

use std::collections::BTreeSet;
use std::time::Duration;

use proto::catalog::{self, FieldKind};
use reqwest::{Method, RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// An answer with its headers, for checks on content-type and Retry-After.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(req: RequestBuilder) -> Answer {
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body read");
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A request with no `Authorization` header at all.
fn request(sys: &System, method: Method, path: &str) -> RequestBuilder {
    sys.http.request(method, sys.url(path))
}

async fn post_event(sys: &System, key: &str, body: &Value) -> Answer {
    send(
        request(sys, Method::POST, "/v1/events")
            .bearer_auth(key)
            .json(body),
    )
    .await
}

/// Asserts `body` is an RFC 9457 problem with `status` and answers the `errors[].field`s, in order.
fn problem_fields(body: &Value, status: StatusCode) -> Vec<String> {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("not a problem: {body}"));
    for member in ["type", "title", "detail"] {
        assert!(
            object.get(member).and_then(Value::as_str).is_some(),
            "problem without a string {member}: {body}"
        );
    }
    assert!(!body["type"].as_str().unwrap().is_empty(), "{body}");
    assert!(!body["title"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["status"], json!(status.as_u16()), "{body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("problem without errors[]: {body}"));
    errors
        .iter()
        .map(|error| {
            let keys: BTreeSet<&str> = error
                .as_object()
                .unwrap_or_else(|| panic!("error is not an object: {body}"))
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, BTreeSet::from(["field", "message"]), "{body}");
            let message = error["message"].as_str().expect("message is a string");
            assert!(!message.is_empty(), "{body}");
            error["field"]
                .as_str()
                .expect("field is a string")
                .to_owned()
        })
        .collect()
}

/// Asserts a whole answer is problem+json with `status`; answers the listed fields.
fn assert_problem(answer: &Answer, status: StatusCode) -> Vec<String> {
    assert_eq!(answer.status, status, "{}", answer.body);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type:?} for {}",
        answer.body
    );
    problem_fields(&answer.body, status)
}

/// Asserts a `422` listing exactly `fields` (in any order).
fn assert_invalid(answer: &Answer, fields: &[&str]) {
    let listed: BTreeSet<String> = assert_problem(answer, StatusCode::UNPROCESSABLE_ENTITY)
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = fields.iter().map(|f| (*f).to_owned()).collect();
    assert_eq!(listed, expected, "{}", answer.body);
}

/// A valid event of `event_type` whose `data` has `field` set to `value`, or removed when `None`.
fn event_with(event_type: &str, field: &str, value: Option<Value>) -> Value {
    let mut body = event(event_type, "agent_1");
    let data = body["data"].as_object_mut().unwrap();
    match value {
        Some(value) => data.insert(field.to_owned(), value),
        None => data.remove(field),
    };
    body
}

/// A value of the wrong JSON type for `kind`.
fn wrong_type(kind: FieldKind) -> Value {
    match kind {
        FieldKind::Count | FieldKind::Number { .. } => json!("12"),
        FieldKind::StringList => json!("not_a_list"),
        FieldKind::Identifier
        | FieldKind::Text
        | FieldKind::Enum(_)
        | FieldKind::Timestamp
        | FieldKind::E164
        | FieldKind::Language => json!(42),
    }
}

/// A receiver subscribed to every event type of the tenant of `key`; answers it and the secret.
async fn subscribed_receiver(sys: &System, key: &str) -> (TestReceiver, String) {
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    (receiver, secret)
}

/// Takes `n` deliveries, verifying each signature; answers their `webhook-id`s.
async fn take_deliveries(receiver: &TestReceiver, secret: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let got = receiver
            .recv_within(SOON)
            .await
            .unwrap_or_else(|| panic!("delivery {} of {n} did not arrive", i + 1));
        got.verify(secret).expect("signature verifies");
        let id = got.header("webhook-id").expect("webhook-id").to_owned();
        assert_eq!(got.json()["id"], json!(id));
        ids.push(id);
    }
    ids
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_event_type_rejects_missing_wrongly_typed_and_unknown_data_fields_by_path() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    assert_eq!(catalog::all().len(), 10);
    for spec in catalog::all() {
        let name = spec.name;
        // The unchanged example is accepted, so every rejection below is the one field's doing.
        let ok = post_event(&sys, &key, &event(name, "agent_1")).await;
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{name}: {}", ok.body);

        for field in spec.fields {
            let path = format!("data.{}", field.name);
            if field.required {
                let missing = post_event(&sys, &key, &event_with(name, field.name, None)).await;
                assert_invalid(&missing, &[&path]);
            } else {
                let absent = post_event(&sys, &key, &event_with(name, field.name, None)).await;
                assert_eq!(absent.status, StatusCode::ACCEPTED, "{name}.{}", field.name);
            }
            let wrong = event_with(name, field.name, Some(wrong_type(field.kind)));
            assert_invalid(&post_event(&sys, &key, &wrong).await, &[&path]);
            // Optional fields may be absent, never null.
            let null = event_with(name, field.name, Some(Value::Null));
            assert_invalid(&post_event(&sys, &key, &null).await, &[&path]);
        }

        let unknown = event_with(name, "colour", Some(json!("red")));
        assert_invalid(&post_event(&sys, &key, &unknown).await, &["data.colour"]);

        // Several problems at once: every one is listed.
        let mut several = json!({"type": name, "agent_id": "agent_1", "call_id": "call_1",
            "data": {"colour": "red", "shade": 3}});
        let mut expected: Vec<String> = spec
            .fields
            .iter()
            .filter(|f| f.required)
            .map(|f| format!("data.{}", f.name))
            .collect();
        expected.extend(["data.colour".to_owned(), "data.shade".to_owned()]);
        if let Some(field) = spec.fields.iter().find(|f| !f.required) {
            several["data"][field.name] = wrong_type(field.kind);
            expected.push(format!("data.{}", field.name));
        }
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_invalid(&post_event(&sys, &key, &several).await, &expected);
    }
}

#[tokio::test]
async fn out_of_range_and_malformed_data_values_are_rejected_naming_the_field() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let cases: &[(&str, &str, Value, &str)] = &[
        (
            "intent.detected",
            "confidence",
            json!(1.5),
            "data.confidence",
        ),
        (
            "intent.detected",
            "confidence",
            json!(-0.01),
            "data.confidence",
        ),
        ("intent.detected", "intent", json!(""), "data.intent"),
        ("sentiment.scored", "score", json!(-2), "data.score"),
        ("sentiment.scored", "score", json!(1.01), "data.score"),
        ("sentiment.scored", "label", json!("great"), "data.label"),
        ("qa.scored", "max_score", json!(40.0), "data.max_score"), // below the example's 42.5
        ("qa.scored", "score", json!(-1), "data.score"),
        ("call.ended", "duration_ms", json!(-1), "data.duration_ms"),
        ("call.ended", "duration_ms", json!(1.5), "data.duration_ms"),
        (
            "call.ended",
            "end_reason",
            json!("hung_up"),
            "data.end_reason",
        ),
        (
            "call.ended",
            "ended_at",
            json!("yesterday"),
            "data.ended_at",
        ),
        (
            "call.started",
            "direction",
            json!("sideways"),
            "data.direction",
        ),
        ("call.started", "from", json!("4155550123"), "data.from"),
        ("call.started", "to", json!("+0123"), "data.to"),
        ("call.started", "to", json!("+1415555012345678"), "data.to"),
        (
            "call.started",
            "started_at",
            json!("2026-13-01T00:00:00Z"),
            "data.started_at",
        ),
        (
            "transcript.ready",
            "language",
            json!("english"),
            "data.language",
        ),
        (
            "transcript.ready",
            "language",
            json!("en_US"),
            "data.language",
        ),
        (
            "transcript.ready",
            "segment_count",
            json!(-3),
            "data.segment_count",
        ),
        ("transfer.completed", "status", json!("done"), "data.status"),
        ("transfer.requested", "reason", json!(""), "data.reason"),
        ("call.failed", "message", json!(""), "data.message"),
        ("outcome.tagged", "tags", json!(["ok", 7]), "data.tags[1]"),
        ("outcome.tagged", "outcome", json!(""), "data.outcome"),
    ];
    for (event_type, field, value, path) in cases {
        let body = event_with(event_type, field, Some(value.clone()));
        let answer = post_event(&sys, &key, &body).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{event_type}.{field} = {value}"
        );
        assert_invalid(&answer, &[*path]);
    }
}

#[tokio::test]
async fn values_on_the_boundaries_of_their_ranges_are_accepted() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let cases: &[(&str, &str, Value)] = &[
        ("intent.detected", "confidence", json!(0)),
        ("intent.detected", "confidence", json!(1.0)),
        ("sentiment.scored", "score", json!(-1)),
        ("sentiment.scored", "score", json!(1)),
        ("qa.scored", "max_score", json!(42.5)), // equal to the example's score
        ("call.ended", "duration_ms", json!(0)),
        ("transcript.ready", "language", json!("zh-Hant-TW")),
        ("transcript.ready", "language", json!("es-419")),
        ("call.started", "from", json!("+491701234567")),
        ("outcome.tagged", "tags", json!([])),
    ];
    for (event_type, field, value) in cases {
        let body = event_with(event_type, field, Some(value.clone()));
        let answer = post_event(&sys, &key, &body).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{event_type}.{field} = {value}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn ids_that_break_the_id_pattern_are_rejected_and_a_dot_never_gets_in() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let long = "a".repeat(65);
    let cases: &[(&str, Value)] = &[
        ("id", json!("evt.1")),
        ("id", json!("a b")),
        ("id", json!("")),
        ("id", json!(long)),
        ("id", json!(42)),
        ("agent_id", json!("agent.7")),
        ("agent_id", json!("")),
        ("agent_id", json!(long)),
        ("agent_id", json!(7)),
        ("call_id", json!("call.1")),
        ("call_id", json!("call/1")),
        ("call_id", json!(null)),
    ];
    for (field, value) in cases {
        let mut body = event("call.failed", "agent_1");
        body[*field] = value.clone();
        let answer = post_event(&sys, &key, &body).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} = {value}"
        );
        assert_invalid(&answer, &[*field]);
    }
    for (field, missing) in [("agent_id", "agent_id"), ("call_id", "call_id")] {
        let mut body = event("call.failed", "agent_1");
        body.as_object_mut().unwrap().remove(field);
        assert_invalid(&post_event(&sys, &key, &body).await, &[missing]);
    }
    // The longest ids the pattern allows are fine.
    let max = "Z9_-".repeat(16);
    let mut body = event("call.failed", &max);
    body["call_id"] = json!(max);
    body["id"] = json!(max);
    let accepted = post_event(&sys, &key, &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(accepted.body["id"], json!(max));
}

#[tokio::test]
async fn unknown_top_level_fields_unknown_types_and_broken_envelopes_are_rejected() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;

    let mut body = event("call.started", "agent_1");
    body["colour"] = json!("red");
    assert_invalid(&post_event(&sys, &key, &body).await, &["colour"]);

    let mut body = event("call.started", "agent_1");
    body["type"] = json!("call.exploded");
    assert_invalid(&post_event(&sys, &key, &body).await, &["type"]);

    let mut body = event("call.started", "agent_1");
    body["type"] = json!("call");
    assert_invalid(&post_event(&sys, &key, &body).await, &["type"]);

    let mut body = event("call.started", "agent_1");
    body.as_object_mut().unwrap().remove("type");
    assert_invalid(&post_event(&sys, &key, &body).await, &["type"]);

    let mut body = event("call.started", "agent_1");
    body["type"] = json!(["call.started"]);
    assert_invalid(&post_event(&sys, &key, &body).await, &["type"]);

    let mut body = event("call.started", "agent_1");
    body.as_object_mut().unwrap().remove("data");
    assert_invalid(&post_event(&sys, &key, &body).await, &["data"]);

    let mut body = event("call.started", "agent_1");
    body["data"] = json!(["inbound"]);
    assert_invalid(&post_event(&sys, &key, &body).await, &["data"]);

    let mut body = event("call.started", "agent_1");
    body["occurred_at"] = json!("last tuesday");
    assert_invalid(&post_event(&sys, &key, &body).await, &["occurred_at"]);

    // Data of another type under a valid type name is judged against the named type.
    let mut body = event("call.started", "agent_1");
    body["data"] = event("call.failed", "agent_1")["data"].clone();
    assert_invalid(
        &post_event(&sys, &key, &body).await,
        &[
            "data.direction",
            "data.from",
            "data.to",
            "data.started_at",
            "data.failure_code",
            "data.message",
        ],
    );

    // Everything wrong at once is listed at once.
    let body = json!({"type": "nope", "agent_id": "a.b", "id": "x.y", "extra": 1, "data": {}});
    assert_invalid(
        &post_event(&sys, &key, &body).await,
        &["type", "agent_id", "call_id", "id", "extra"],
    );

    // A JSON body that is not an object is well-formed but invalid.
    let answer = post_event(&sys, &key, &json!(["call.started"])).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies, limits, auth, routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_answered_400_problem_json() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    for path in ["/v1/events", "/v1/events/batch"] {
        for raw in [r#"{"type": "call.started","#, "", "not json", r#"{"a":1}{"#] {
            let answer = send(
                request(&sys, Method::POST, path)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(raw),
            )
            .await;
            assert_problem(&answer, StatusCode::BAD_REQUEST);
        }
    }
}

/// `{"pad":"xxx…"}` of exactly `len` bytes.
fn padded_body(len: usize) -> String {
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(len - 10));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_body_over_256_kib_is_answered_413_problem_json_and_one_at_the_limit_is_read() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let limit = 256 * 1024;
    let post_raw = |body: String| {
        send(
            request(&sys, Method::POST, "/v1/events")
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body),
        )
    };

    let over = post_raw(padded_body(limit + 1)).await;
    assert_problem(&over, StatusCode::PAYLOAD_TOO_LARGE);

    let much_over = post_raw(padded_body(4 * limit)).await;
    assert_problem(&much_over, StatusCode::PAYLOAD_TOO_LARGE);

    // Exactly at the limit the body is read and judged on its content.
    let at = post_raw(padded_body(limit)).await;
    let fields = assert_problem(&at, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(fields.contains(&"pad".to_owned()), "{}", at.body);
}

#[tokio::test]
async fn a_missing_or_invalid_api_key_is_answered_401_problem_json_on_every_v1_route() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let mut mangled = key.clone();
    let last = mangled.pop().unwrap();
    mangled.push(if last == 'A' { 'B' } else { 'A' });

    let routes: Vec<(Method, &str, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/events",
            Some(event("call.started", "agent_1")),
        ),
        (
            Method::POST,
            "/v1/events/batch",
            Some(json!({"events": [event("call.started", "agent_1")]})),
        ),
        (Method::GET, "/v1/event-types", None),
        (Method::GET, "/v1/subscriptions", None),
        (
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["*"]})),
        ),
        (Method::GET, "/v1/subscriptions/sub_unknown", None),
    ];
    let credentials: Vec<Option<String>> = vec![
        None,
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer owk_not_a_real_key".to_owned()),
        Some(format!("Bearer {mangled}")),
        Some(format!("Basic {key}")),
        Some(format!("Bearer {ADMIN_TOKEN}")),
        Some(key.clone()),
    ];
    for (method, path, body) in &routes {
        for credential in &credentials {
            let mut req = request(&sys, method.clone(), path);
            if let Some(value) = credential {
                req = req.header("authorization", value);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let answer = send(req).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {credential:?}: {}",
                answer.body
            );
            assert_problem(&answer, StatusCode::UNAUTHORIZED);
            assert!(answer.header("www-authenticate").is_some());
        }
        // And the real key gets past authentication on the same route.
        let mut req = request(&sys, method.clone(), path).bearer_auth(&key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let answer = send(req).await;
        assert_ne!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Nothing from the refused calls was stored: the one authorised event got the first sequence.
    let answer = post_event(&sys, &key, &event("call.started", "agent_1")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.body["sequence"], json!(3), "{}", answer.body);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_answered_with_problem_json() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    for path in ["/v1/nope", "/v1/events/batch/extra", "/nope", "/v2/events"] {
        let answer = send(request(&sys, Method::GET, path).bearer_auth(&key)).await;
        assert_problem(&answer, StatusCode::NOT_FOUND);
    }
    let answer = send(request(&sys, Method::GET, "/v1/nope")).await;
    assert!(
        answer.status == StatusCode::NOT_FOUND || answer.status == StatusCode::UNAUTHORIZED,
        "{}",
        answer.status
    );
    assert_problem(&answer, answer.status);

    let answer = send(request(&sys, Method::DELETE, "/v1/event-types").bearer_auth(&key)).await;
    assert_problem(&answer, StatusCode::METHOD_NOT_ALLOWED);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn repeating_a_producer_id_answers_duplicate_with_the_same_id_and_sequence_and_delivers_once()
{
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;

    let mut body = event("intent.detected", "agent_1");
    body["id"] = json!("order_42-created");
    let first = post_event(&sys, &key, &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["id"], json!("order_42-created"));
    assert_eq!(first.body["duplicate"], json!(false));
    let sequence = first.body["sequence"].as_u64().expect("sequence");

    // The repeat may even differ in its data: the id decides.
    let mut again = body.clone();
    again["data"]["confidence"] = json!(0.5);
    for repeat in [&body, &again] {
        let second = post_event(&sys, &key, repeat).await;
        assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);
        assert_eq!(second.body["id"], json!("order_42-created"));
        assert_eq!(second.body["duplicate"], json!(true));
        assert_eq!(second.body["sequence"], json!(sequence));
    }

    let ids = take_deliveries(&receiver, &secret, 1).await;
    assert_eq!(ids, ["order_42-created"]);
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "a duplicate caused a second delivery"
    );

    // A different id is a different event.
    body["id"] = json!("order_43-created");
    let other = post_event(&sys, &key, &body).await;
    assert_eq!(other.body["duplicate"], json!(false), "{}", other.body);
    assert_ne!(other.body["sequence"], json!(sequence));
    assert_eq!(
        take_deliveries(&receiver, &secret, 1).await,
        ["order_43-created"]
    );
}

#[tokio::test]
async fn repeating_an_idempotency_key_answers_the_same_derived_id_as_a_duplicate() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    let body = event("call.ended", "agent_1");
    let post_with_key = |idempotency_key: String| {
        send(
            request(&sys, Method::POST, "/v1/events")
                .bearer_auth(&key)
                .header("Idempotency-Key", idempotency_key)
                .json(&body),
        )
    };

    let first = post_with_key("req-7f3a".to_owned()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["duplicate"], json!(false));
    let id = first.body["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("evt_") && id.len() == 30, "{id}");

    let second = post_with_key("req-7f3a".to_owned()).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);
    assert_eq!(second.body["id"], json!(id));
    assert_eq!(second.body["duplicate"], json!(true));
    assert_eq!(second.body["sequence"], first.body["sequence"]);

    assert_eq!(take_deliveries(&receiver, &secret, 1).await, [id.as_str()]);
    assert!(receiver.expect_none(QUIET).await.is_none());

    // Another key, or none at all, is another event.
    let other = post_with_key("req-8e4b".to_owned()).await;
    assert_eq!(other.body["duplicate"], json!(false));
    assert_ne!(other.body["id"], json!(id));
    let (a, b) = (
        post_event(&sys, &key, &body).await,
        post_event(&sys, &key, &body).await,
    );
    assert_eq!(a.body["duplicate"], json!(false));
    assert_eq!(b.body["duplicate"], json!(false));
    assert_ne!(a.body["id"], b.body["id"]);

    // An unusable key is named in a 422.
    let too_long = post_with_key("k".repeat(256)).await;
    assert_invalid(&too_long, &["Idempotency-Key"]);
}

#[tokio::test]
async fn the_same_producer_id_from_two_tenants_is_not_a_duplicate() {
    let sys = System::start().await;
    let acme = sys.tenant_key("acme").await;
    let globex = sys.tenant_key("globex").await;
    let (acme_receiver, acme_secret) = subscribed_receiver(&sys, &acme).await;
    let (globex_receiver, globex_secret) = subscribed_receiver(&sys, &globex).await;

    let mut body = event("outcome.tagged", "agent_1");
    body["id"] = json!("shared_id_1");
    let a = post_event(&sys, &acme, &body).await;
    let g = post_event(&sys, &globex, &body).await;
    for answer in [&a, &g] {
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        assert_eq!(answer.body["id"], json!("shared_id_1"));
        assert_eq!(answer.body["duplicate"], json!(false));
    }
    assert_ne!(a.body["sequence"], g.body["sequence"]);

    for (receiver, secret, tenant) in [
        (&acme_receiver, &acme_secret, "acme"),
        (&globex_receiver, &globex_secret, "globex"),
    ] {
        let got = receiver.recv_within(SOON).await.expect("delivered");
        got.verify(secret).expect("signature verifies");
        assert_eq!(got.header("webhook-id"), Some("shared_id_1"));
        assert_eq!(got.json()["tenant_id"], json!(tenant));
    }
    for receiver in [&acme_receiver, &globex_receiver] {
        assert!(receiver.expect_none(QUIET).await.is_none());
    }

    // Within one tenant the id is still a duplicate.
    let again = post_event(&sys, &globex, &body).await;
    assert_eq!(again.body["duplicate"], json!(true), "{}", again.body);
    assert_eq!(again.body["sequence"], g.body["sequence"]);
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

async fn post_batch(sys: &System, key: &str, body: &Value) -> Answer {
    send(
        request(sys, Method::POST, "/v1/events/batch")
            .bearer_auth(key)
            .json(body),
    )
    .await
}

#[tokio::test]
async fn a_batch_accepts_its_valid_items_and_reports_each_invalid_one_in_order() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;

    let mut earlier = event("call.failed", "agent_1");
    earlier["id"] = json!("sent_before");
    let earlier_sequence = post_event(&sys, &key, &earlier).await.body["sequence"].clone();
    assert_eq!(
        take_deliveries(&receiver, &secret, 1).await,
        ["sent_before"]
    );

    let mut named = event("call.ended", "agent_2");
    named["id"] = json!("batch_b");
    let mut bad_agent = event("qa.scored", "agent.3");
    bad_agent["type"] = json!("qa.graded");
    let items = json!([
        event("call.started", "agent_1"),
        event_with("intent.detected", "confidence", Some(json!(1.5))),
        named,
        bad_agent,
        earlier,
        event_with("sentiment.scored", "mood", Some(json!("sunny"))),
        event("qa.scored", "agent_4"),
    ]);
    let answer = post_batch(&sys, &key, &json!({"events": items})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 7, "{}", answer.body);

    let accepted = |i: usize| {
        let result = &results[i];
        assert!(result.get("error").is_none(), "item {i}: {result}");
        assert!(result["sequence"].as_u64().is_some(), "item {i}: {result}");
        result["id"].as_str().expect("id").to_owned()
    };
    let rejected = |i: usize| -> Vec<String> {
        let result = &results[i];
        assert!(result.get("id").is_none(), "item {i}: {result}");
        problem_fields(&result["error"], StatusCode::UNPROCESSABLE_ENTITY)
    };

    let first = accepted(0);
    assert!(first.starts_with("evt_"), "{first}");
    assert_eq!(results[0]["duplicate"], json!(false));
    assert_eq!(rejected(1), ["data.confidence"]);
    assert_eq!(accepted(2), "batch_b");
    assert_eq!(results[2]["duplicate"], json!(false));
    let fields: BTreeSet<String> = rejected(3).into_iter().collect();
    assert_eq!(
        fields,
        BTreeSet::from(["type".to_owned(), "agent_id".to_owned()])
    );
    assert_eq!(accepted(4), "sent_before");
    assert_eq!(results[4]["duplicate"], json!(true));
    assert_eq!(results[4]["sequence"], earlier_sequence);
    assert_eq!(rejected(5), ["data.mood"]);
    let last = accepted(6);
    assert_eq!(results[6]["duplicate"], json!(false));

    let sequences: BTreeSet<u64> = [0, 2, 6]
        .iter()
        .map(|i| results[*i]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences.len(), 3, "distinct sequences");

    let delivered: BTreeSet<String> = take_deliveries(&receiver, &secret, 3)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        delivered,
        BTreeSet::from([first, "batch_b".to_owned(), last])
    );
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "only the new valid items are delivered"
    );
}

#[tokio::test]
async fn a_batch_without_events_or_with_more_than_500_is_refused_whole() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, _secret) = subscribed_receiver(&sys, &key).await;

    let too_many: Vec<Value> = (0..501)
        .map(|i| event("call.started", &format!("agent_{i}")))
        .collect();
    let answer = post_batch(&sys, &key, &json!({"events": too_many})).await;
    assert_invalid(&answer, &["events"]);

    assert_invalid(&post_batch(&sys, &key, &json!({})).await, &["events"]);
    assert_invalid(
        &post_batch(&sys, &key, &json!({"events": {"type": "call.started"}})).await,
        &["events"],
    );
    assert_invalid(
        &post_batch(&sys, &key, &json!({"events": []})).await,
        &["events"],
    );
    let answer = post_batch(
        &sys,
        &key,
        &json!({"events": [event("call.started", "agent_1")], "extra": true}),
    )
    .await;
    assert_invalid(&answer, &["extra"]);
    let answer = post_batch(&sys, &key, &json!([event("call.started", "agent_1")])).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);

    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "a refused batch stores nothing"
    );
}

#[tokio::test]
async fn a_batch_of_500_events_may_exceed_the_single_event_limit_but_not_5_mib() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;

    let message = "m".repeat(600);
    let items: Vec<Value> = (0..500)
        .map(|i| {
            let mut item = event("call.failed", &format!("agent_{i}"));
            item["data"]["message"] = json!(message);
            item
        })
        .collect();
    let body = json!({"events": items});
    assert!(body.to_string().len() > 256 * 1024);
    let answer = post_batch(&sys, &key, &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 500);
    let sequences: BTreeSet<u64> = results
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap_or_else(|| panic!("{r}")))
        .collect();
    assert_eq!(sequences.len(), 500, "every item stored once");

    let over = send(
        request(&sys, Method::POST, "/v1/events/batch")
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(padded_body(5 * 1024 * 1024 + 1)),
    )
    .await;
    assert_problem(&over, StatusCode::PAYLOAD_TOO_LARGE);
}

// ---------------------------------------------------------------------------------------------
// The catalog
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn event_types_lists_all_ten_types_with_schema_and_example_in_one_page() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (status, body) = sys.get("/v1/event-types", &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["next_cursor"], Value::Null);
    assert!(body.as_object().unwrap().contains_key("next_cursor"));
    let types: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|t| t["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "call.started",
            "call.ended",
            "call.failed",
            "transcript.ready",
            "intent.detected",
            "sentiment.scored",
            "transfer.requested",
            "transfer.completed",
            "outcome.tagged",
            "qa.scored",
        ]
    );
    for item in body["data"].as_array().unwrap() {
        assert!(!item["description"].as_str().unwrap_or_default().is_empty());
        let schema = &item["schema"];
        assert_eq!(schema["type"], json!("object"), "{item}");
        assert_eq!(schema["additionalProperties"], json!(false), "{item}");
        let properties = schema["properties"].as_object().expect("properties");
        let example = item["example"].as_object().expect("example");
        for field in example.keys() {
            assert!(properties.contains_key(field), "{item}");
        }
        for required in schema["required"].as_array().expect("required") {
            assert!(example.contains_key(required.as_str().unwrap()), "{item}");
        }
    }
}

#[tokio::test]
async fn every_catalog_example_is_accepted_and_its_schema_agrees_with_the_validator() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (status, body) = sys.get("/v1/event-types", &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;

    let mut accepted = BTreeSet::new();
    for item in body["data"].as_array().expect("data") {
        let name = item["type"].as_str().unwrap();
        let example = &item["example"];
        let post =
            json!({"type": name, "agent_id": "agent_1", "call_id": "call_1", "data": example});
        let answer = post_event(&sys, &key, &post).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{name}: {}",
            answer.body
        );
        accepted.insert(answer.body["id"].as_str().unwrap().to_owned());

        // What the schema calls required, the validator requires; nothing else.
        let required: Vec<&str> = item["schema"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        for field in item["schema"]["properties"].as_object().unwrap().keys() {
            let mut without = post.clone();
            without["data"].as_object_mut().unwrap().remove(field);
            let answer = post_event(&sys, &key, &without).await;
            if required.contains(&field.as_str()) {
                assert_invalid(&answer, &[&format!("data.{field}")]);
            } else {
                assert_eq!(answer.status, StatusCode::ACCEPTED, "{name}.{field}");
                accepted.insert(answer.body["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(accepted.len() > 10, "some fields are optional");

    // Every accepted event, and nothing else, is delivered.
    let delivered: BTreeSet<String> = take_deliveries(&receiver, &secret, accepted.len())
        .await
        .into_iter()
        .collect();
    assert_eq!(delivered, accepted);
    assert!(receiver.expect_none(QUIET).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_api_refuses_tenant_keys_and_missing_tokens() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    for bearer in [Some(key.as_str()), None, Some("not-the-admin-token")] {
        for (method, path) in [
            (Method::POST, "/v1/admin/tenants/acme/api-keys"),
            (Method::DELETE, "/v1/admin/api-keys/key_anything"),
        ] {
            let mut req = request(&sys, method.clone(), path).json(&json!({}));
            if let Some(bearer) = bearer {
                req = req.bearer_auth(bearer);
            }
            let answer = send(req).await;
            assert!(
                answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN,
                "{method} {path} with {bearer:?}: {}",
                answer.status
            );
            assert_problem(&answer, answer.status);
        }
    }
}

#[tokio::test]
async fn a_tenant_id_off_the_pattern_is_answered_422_naming_tenant_id() {
    let sys = System::start().await;
    let too_long = "a".repeat(64);
    for tenant in [
        "Acme",
        "-acme",
        "_acme",
        "a.b",
        "ac%20me",
        too_long.as_str(),
    ] {
        let (status, body) = sys
            .post(
                &format!("/v1/admin/tenants/{tenant}/api-keys"),
                ADMIN_TOKEN,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{tenant}: {body}");
        assert_eq!(
            problem_fields(&body, StatusCode::UNPROCESSABLE_ENTITY),
            ["tenant_id"]
        );
    }
    let longest = "z".repeat(63);
    for tenant in ["a", "0day", "acme_corp-eu", longest.as_str()] {
        let (status, body) = sys
            .post(
                &format!("/v1/admin/tenants/{tenant}/api-keys"),
                ADMIN_TOKEN,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{tenant}: {body}");
        assert_eq!(body["tenant_id"], json!(tenant));
        let issued = body["key"].as_str().unwrap();
        let answer = post_event(&sys, issued, &event("call.started", "agent_1")).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{tenant}");
    }
}

#[tokio::test]
async fn revoking_an_unknown_api_key_is_answered_404_problem_json() {
    let sys = System::start().await;
    for id in ["key_01JDQ7Z3K8M2VX4N6P9R5T0WYB", "nope"] {
        let answer = send(
            request(&sys, Method::DELETE, &format!("/v1/admin/api-keys/{id}"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_problem(&answer, StatusCode::NOT_FOUND);
    }

    // A real key is revoked once; a second revocation finds nothing.
    let (status, issued) = sys
        .post("/v1/admin/tenants/acme/api-keys", ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/v1/admin/api-keys/{}", issued["id"].as_str().unwrap());
    let (status, _) = sys.call(Method::DELETE, &path, ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let again = send(request(&sys, Method::DELETE, &path).bearer_auth(ADMIN_TOKEN)).await;
    assert_problem(&again, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// NATS outage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn while_nats_is_down_events_get_503_with_retry_after_and_are_accepted_again_after() {
    let mut sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let (receiver, secret) = subscribed_receiver(&sys, &key).await;
    sys.send_event(&key, event("call.started", "agent_1")).await;
    take_deliveries(&receiver, &secret, 1).await;

    sys.nats.kill().await.unwrap();

    let mut refused = Vec::new();
    let mut attempt = 0;
    let unavailable = eventually(Duration::from_secs(10), "a 503 from ingest", || {
        attempt += 1;
        let mut body = event("call.started", "agent_1");
        body["id"] = json!(format!("during_outage_{attempt}"));
        let sys = &sys;
        let key = &key;
        async move {
            let started = std::time::Instant::now();
            let answer = post_event(sys, key, &body).await;
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "ingest hung for {:?}",
                started.elapsed()
            );
            assert_ne!(
                answer.status,
                StatusCode::ACCEPTED,
                "accepted with NATS down"
            );
            (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some((body, answer))
        }
    })
    .await
    .unwrap();
    let (body, answer) = unavailable;
    refused.push(body["id"].as_str().unwrap().to_owned());
    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);

    // Once the outage is noticed, the answer is immediate.
    let started = std::time::Instant::now();
    let mut body = event("call.ended", "agent_1");
    body["id"] = json!("during_outage_fast");
    let answer = post_event(&sys, &key, &body).await;
    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    refused.push("during_outage_fast".to_owned());

    // A batch stores none of its items: either the whole batch is a 503, or every item is.
    let items: Vec<Value> = (0..2)
        .map(|i| {
            let mut item = event("call.failed", "agent_1");
            item["id"] = json!(format!("batch_during_outage_{i}"));
            refused.push(format!("batch_during_outage_{i}"));
            item
        })
        .collect();
    let answer = post_batch(&sys, &key, &json!({"events": items})).await;
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.header("retry-after").is_some());
    } else {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let results = answer.body["results"].as_array().expect("results");
        assert_eq!(results.len(), 2);
        for result in results {
            assert!(result.get("id").is_none(), "{result}");
            problem_fields(&result["error"], StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    sys.nats.restart().await.unwrap();

    let mut attempt = 0;
    let accepted_id = eventually(Duration::from_secs(20), "a 202 after restart", || {
        attempt += 1;
        let mut body = event("call.failed", "agent_1");
        body["id"] = json!(format!("after_restart_{attempt}"));
        let sys = &sys;
        let key = &key;
        async move {
            let answer = post_event(sys, key, &body).await;
            match answer.status {
                StatusCode::ACCEPTED => Some(answer.body["id"].as_str().unwrap().to_owned()),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("unexpected {other}: {}", answer.body),
            }
        }
    })
    .await
    .unwrap();

    let got = receiver
        .recv_within(Duration::from_secs(20))
        .await
        .expect("the event accepted after the restart is delivered");
    got.verify(&secret).unwrap();
    assert_eq!(got.header("webhook-id"), Some(accepted_id.as_str()));
    if let Some(extra) = receiver.expect_none(QUIET).await {
        let id = extra.header("webhook-id").unwrap_or_default().to_owned();
        assert!(
            !refused.contains(&id),
            "an event answered 503 was delivered: {id}"
        );
    }
}

#[tokio::test]
async fn past_the_in_flight_limit_requests_are_shed_with_503_and_probes_keep_answering() {
    use tokio::io::AsyncWriteExt as _;
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let ingest = spawn_ingest_with(&sys.nats, |s| s.max_in_flight_requests = 1).await;
    let url = |path: &str| format!("http://{}{path}", ingest.addr);
    // A request whose body never finishes holds the only slot.
    let mut slow = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"type\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let http = reqwest::Client::new();
    let shed = testkit::eventually(SOON, "a request to be shed", || async {
        let resp = http
            .post(url("/v1/events"))
            .bearer_auth(&key)
            .json(&event("call.started", "a1"))
            .send()
            .await
            .ok()?;
        (resp.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(resp)
    })
    .await
    .unwrap();
    assert!(shed.headers().get("retry-after").is_some());
    assert_eq!(shed.headers()["content-type"], "application/problem+json");
    let ready = http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "probes are never shed");
    // Once the slow request goes away, the slot is free again.
    drop(slow);
    testkit::eventually(SOON, "requests to be served again", || async {
        let resp = http
            .post(url("/v1/events"))
            .bearer_auth(&key)
            .json(&event("call.started", "a1"))
            .send()
            .await
            .ok()?;
        (resp.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await
    .unwrap();
}
