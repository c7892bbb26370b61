//! Security: TLS to receivers (extra CA roots, untrusted certificates are retryable failures),
//! the per-tenant ingest rate limit, and hostile HTTP input that must never crash, hang or lose
//! an event.

use std::num::NonZeroU32;
use std::time::Duration;

use prost::Message as _;
use proto::{
    subjects,
    v1::{self, IngestReply, event::Data, ingest_reply},
};
use reqwest::{Method, RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use testkit::{NatsServer, TestCa, TestReceiver, eventually};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Loopback allowed (v4 and v6, whatever `localhost` resolves to), `http://` not.
fn https_only(policy: &mut common::urls::UrlPolicy) {
    policy.allow_http = false;
    policy.allowed_private = vec![
        "127.0.0.0/8".parse().expect("cidr"),
        "::1/128".parse().expect("cidr"),
    ];
}

/// NATS, an https-only ingest and an https-only dispatcher that `tweak` adjusts.
async fn https_system(tweak: impl FnOnce(&mut dispatcher::Settings)) -> System {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let ingest = spawn_ingest_with(&nats, |s| https_only(&mut s.shared.url_policy)).await;
    let dispatcher = spawn_dispatcher_with(&nats, |s| {
        https_only(&mut s.shared.url_policy);
        tweak(s);
    })
    .await;
    System {
        ingest,
        dispatcher: Some(dispatcher),
        http: reqwest::Client::new(),
        nats,
    }
}

/// An answer with its headers and raw body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem+json answer with `status`.
    fn assert_problem(&self, status: StatusCode, case: &str) {
        assert_eq!(self.status, status, "{case}: {}", self.body);
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/problem+json"),
            "{case}: content-type {content_type:?}"
        );
        assert_eq!(self.body["status"], json!(status.as_u16()), "{case}");
        for member in ["type", "title", "detail"] {
            assert!(
                self.body[member].as_str().is_some_and(|s| !s.is_empty()),
                "{case}: problem without {member}: {}",
                self.body
            );
        }
        assert!(self.body["errors"].is_array(), "{case}: {}", self.body);
    }

    /// The `errors[].field`s of a problem.
    fn fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn send(req: RequestBuilder) -> Answer {
    let resp = tokio::time::timeout(SOON, req.send())
        .await
        .expect("answered in time")
        .expect("request sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body read");
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// `POST path` with raw bytes as the body and `content-type: application/json`.
async fn post_raw(sys: &System, key: &str, path: &str, body: impl Into<reqwest::Body>) -> Answer {
    send(
        sys.http
            .request(Method::POST, sys.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Every event id of the tenant's feed, oldest first.
async fn feed_ids(sys: &System, key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let path = match &after {
            Some(cursor) => format!("/v1/events?limit=1000&after={cursor}"),
            None => "/v1/events?limit=1000".to_owned(),
        };
        let (status, page) = sys.get(&path, key).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().expect("data");
        if data.is_empty() {
            return ids;
        }
        ids.extend(
            data.iter()
                .map(|e| e["id"].as_str().expect("id").to_owned()),
        );
        after = page["next_cursor"].as_str().map(str::to_owned);
    }
    panic!("the feed does not end");
}

// ---------------------------------------------------------------------------------------------
// TLS to receivers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_https_receiver_whose_ca_is_configured_gets_signed_deliveries() {
    let ca = TestCa::new().unwrap();
    let cert = ca.localhost().unwrap();
    let receiver = TestReceiver::start_tls(vec![], &cert.cert_pem, &cert.key_pem)
        .await
        .unwrap();
    assert!(receiver.url().starts_with("https://localhost:"));
    let ca_file = ca.pem_path().to_owned();
    let sys = https_system(|s| s.extra_ca_certs = Some(ca_file)).await;
    let key = sys.tenant_key("acme").await;

    // http:// is refused by this https-only system; the https URL is taken.
    let (status, _) = sys
        .post(
            "/v1/subscriptions",
            &key,
            json!({"url": receiver.url().replace("https://", "http://"), "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (sub, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let id = sys.send_event(&key, event("call.started", "agent_1")).await;
    let got = receiver
        .recv_within(SOON)
        .await
        .expect("delivered over TLS");
    got.verify(&secret).expect("signature verifies");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    assert_eq!(got.json()["type"], "call.started");

    let attempts = eventually(SOON, "the attempt is logged", || async {
        let (_, page) = sys
            .get(&format!("/v1/subscriptions/{sub}/attempts"), &key)
            .await;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        (!data.is_empty()).then_some(data)
    })
    .await
    .unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["outcome"], "succeeded", "{attempts:?}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_retryable_failure_that_heals_once_the_ca_is_trusted() {
    let ca = TestCa::new().unwrap();
    let cert = ca.localhost().unwrap();
    let receiver = TestReceiver::start_tls(vec![], &cert.cert_pem, &cert.key_pem)
        .await
        .unwrap();
    // Only the built-in (public) roots: the test CA is unknown.
    let mut sys = https_system(|_| {}).await;
    let key = sys.tenant_key("acme").await;
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({
                "url": receiver.url(),
                "event_types": ["*"],
                "retry": {"max_attempts": 30, "schedule_ms": [300]},
            }),
        )
        .await;
    let id = sys.send_event(&key, event("call.started", "agent_1")).await;

    let failed = eventually(SOON, "two failed attempts", || async {
        let (_, page) = sys
            .get(&format!("/v1/subscriptions/{sub}/attempts"), &key)
            .await;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        (data.len() >= 2).then_some(data)
    })
    .await
    .unwrap();
    for attempt in &failed {
        assert_eq!(attempt["outcome"], "failed", "{attempt}");
        assert_eq!(attempt["event_id"], json!(id), "{attempt}");
        let error = attempt["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains("certificate"), "{attempt}");
    }
    // The handshake failed, so no request ever reached the receiver.
    assert_eq!(receiver.count(), 0);
    // Retryable: nothing was dead-lettered, least of all as a permanent failure.
    let (status, dead) = sys.get("/v1/dead-letters", &key).await;
    assert_eq!(status, StatusCode::OK, "{dead}");
    assert_eq!(dead["data"], json!([]), "{dead}");

    // A dispatcher that trusts the CA takes over the pending retry and delivers it.
    sys.dispatcher.take().unwrap().stop().await.unwrap();
    let ca_file = ca.pem_path().to_owned();
    sys.dispatcher = Some(
        spawn_dispatcher_with(&sys.nats, |s| {
            https_only(&mut s.shared.url_policy);
            s.extra_ca_certs = Some(ca_file);
        })
        .await,
    );
    let got = receiver
        .recv_within(Duration::from_secs(30))
        .await
        .expect("delivered once the CA is trusted");
    got.verify(&secret).expect("signature verifies");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    let attempt: u32 = got
        .header("webhook-attempt")
        .and_then(|a| a.parse().ok())
        .expect("webhook-attempt");
    assert!(attempt >= 3, "attempt {attempt}");
    assert!(receiver.expect_none(QUIET).await.is_none());
}

#[tokio::test]
async fn a_bad_extra_ca_file_refuses_to_start_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for path in [dir.path().join("missing.pem"), not_pem, broken] {
        let mut settings = dispatcher::Settings::new(common::config::SharedSettings::default());
        settings.metrics_listen = "127.0.0.1:0".parse().unwrap();
        settings.extra_ca_certs = Some(path.clone());
        let error = dispatcher::App::build(settings)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path:?} was accepted"));
        assert!(
            error.to_string().contains("WEBHOOKS_EXTRA_CA_CERTS"),
            "{path:?}: {error:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Per-tenant rate limit
// ---------------------------------------------------------------------------------------------

fn nats_call_started(agent: &str) -> v1::Event {
    v1::Event {
        r#type: "call.started".to_owned(),
        agent_id: agent.to_owned(),
        call_id: "call_1".to_owned(),
        data: Some(Data::CallStarted(v1::CallStarted {
            direction: "inbound".to_owned(),
            from: "+14155550100".to_owned(),
            to: "+14155550199".to_owned(),
            started_at: proto::time::parse_rfc3339("2026-11-28T15:20:10.000Z"),
        })),
        ..Default::default()
    }
}

async fn nats_send(client: &async_nats::Client, tenant: &str) -> IngestReply {
    let reply = tokio::time::timeout(
        SOON,
        client.request(
            subjects::ingest_subject(tenant),
            nats_call_started("agent_1").encode_to_vec().into(),
        ),
    )
    .await
    .expect("nats reply in time")
    .expect("nats request");
    IngestReply::decode(reply.payload).expect("IngestReply")
}

/// Seconds of a `Retry-After` header, asserted to be a whole number ≥ 1.
fn retry_after(answer: &Answer) -> u64 {
    let seconds: u64 = answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", answer.headers));
    assert!(seconds >= 1);
    seconds
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let ingest = spawn_ingest_with(&nats, |s| {
        s.tenant_rate_limit = NonZeroU32::new(5).unwrap();
    })
    .await;
    let sys = System {
        ingest,
        dispatcher: None,
        http: reqwest::Client::new(),
        nats,
    };
    let acme = sys.tenant_key("acme").await;
    let globex = sys.tenant_key("globex").await;

    // Ten at once: the bucket holds five (one more may trickle in on a slow machine).
    let answers = futures::future::join_all((0..10).map(|i| {
        send(
            sys.http
                .post(sys.url("/v1/events"))
                .bearer_auth(&acme)
                .json(&event("call.started", &format!("agent_{i}"))),
        )
    }))
    .await;
    let mut accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .map(|a| a.body["id"].as_str().expect("id").to_owned())
        .collect();
    assert!((5..=6).contains(&accepted.len()), "{}", accepted.len());
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != StatusCode::ACCEPTED)
        .collect();
    assert_eq!(limited.len(), 10 - accepted.len());
    let mut wait = 1;
    for answer in &limited {
        answer.assert_problem(StatusCode::TOO_MANY_REQUESTS, "over the rate");
        wait = wait.max(retry_after(answer));
    }

    // The whole batch is refused while the tenant lacks its tokens; so is the NATS path.
    let batch = json!({"events": [event("call.ended", "agent_1"), event("call.ended", "agent_2")]});
    let answer = post_raw(&sys, &acme, "/v1/events/batch", batch.to_string()).await;
    answer.assert_problem(StatusCode::TOO_MANY_REQUESTS, "batch over the rate");
    retry_after(&answer);
    let client = async_nats::connect(sys.nats.url()).await.unwrap();
    match nats_send(&client, "acme").await.result {
        Some(ingest_reply::Result::Rejected(rejected)) => {
            assert_eq!(rejected.status, 429, "{rejected:?}");
        }
        other => panic!("expected a 429 rejection, got {other:?}"),
    }

    // Another tenant has its own bucket.
    sys.send_event(&globex, event("call.started", "agent_1"))
        .await;

    // Refused events were not stored.
    let mut stored = feed_ids(&sys, &acme).await;
    stored.sort();
    accepted.sort();
    assert_eq!(stored, accepted);

    // After the wait the tenant is served again, over HTTP, in batches and over NATS.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let again = sys
        .send_event(&acme, event("call.started", "agent_x"))
        .await;
    let answer = post_raw(&sys, &acme, "/v1/events/batch", batch.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert!(
        results.iter().all(|r| r["sequence"].is_u64()),
        "{results:?}"
    );
    match nats_send(&client, "acme").await.result {
        Some(ingest_reply::Result::Accepted(_)) => {}
        other => panic!("expected acceptance, got {other:?}"),
    }
    let stored = feed_ids(&sys, &acme).await;
    assert_eq!(stored.len(), accepted.len() + 4, "{stored:?}");
    assert!(stored.contains(&again));

    // A batch larger than the bucket could never pass: a 422, not a 429 to retry forever.
    let big: Vec<Value> = (0..6)
        .map(|i| event("call.started", &format!("a{i}")))
        .collect();
    let answer = post_raw(
        &sys,
        &acme,
        "/v1/events/batch",
        json!({"events": big}).to_string(),
    )
    .await;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "batch over the burst");
    assert_eq!(answer.fields(), ["events"]);
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// `depth` nested arrays around `null`.
fn nested_arrays(depth: usize) -> String {
    format!("{}null{}", "[".repeat(depth), "]".repeat(depth))
}

/// `depth` nested objects `{"a":…}` around `1`.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// A valid call.started body with `data` replaced by the raw JSON `data`.
fn with_raw_data(data: &str) -> String {
    format!(r#"{{"type":"call.started","agent_id":"agent_1","call_id":"call_1","data":{data}}}"#)
}

/// A hostile request: what it is, the path, the body, the answer and the fields it must list.
type Case<'a> = (&'a str, &'a str, Vec<u8>, StatusCode, &'a [&'a str]);

#[tokio::test]
async fn hostile_bodies_get_a_clear_4xx_and_the_service_keeps_accepting_events() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let big = "x".repeat(200 * 1024);
    let many_fields = format!(
        "{{{}}}",
        (0..20_000)
            .map(|i| format!(r#""f{i}":0"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let many_data_fields = with_raw_data(&many_fields);
    let mut invalid_utf8 = with_raw_data("{}").into_bytes();
    invalid_utf8.splice(36..36, [0xff, 0xfe, 0xc3]);
    let mut raw_nul_in_string = with_raw_data("{}").into_bytes();
    raw_nul_in_string.insert(36, 0);
    let mut raw_nul_outside = with_raw_data("{}").into_bytes();
    raw_nul_outside.insert(1, 0);
    let batch_501 = json!({"events": vec![event("call.started", "agent_1"); 501]}).to_string();
    let six_mib_batch = json!({"events": [{"pad": "y".repeat(6 * 1024 * 1024)}]}).to_string();

    let mut body = event("call.started", "agent_1");
    body["id"] = json!("\u{0}");
    let nul_id = body.to_string();
    let mut body = event("call.started", "agent_1");
    body["agent_id"] = json!("agent\u{0}1");
    body["call_id"] = json!("\u{0}");
    let nul_ids = body.to_string();
    let mut body = event("call.started", "agent_1");
    body["agent_id"] = json!(big);
    let big_agent = body.to_string();
    let mut body = event("call.failed", "agent_1");
    body["data"]["message"] = json!(big);
    let big_message = body.to_string();
    let mut body = event("call.started", "agent_1");
    body[big.as_str()] = json!(1);
    let big_field_name = body.to_string();
    let big_field = [big.as_str()];

    use StatusCode as S;
    let cases: Vec<Case> = vec![
        ("empty body", "/v1/events", vec![], S::BAD_REQUEST, &[]),
        (
            "whitespace only",
            "/v1/events",
            b" \n\t ".to_vec(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "truncated JSON",
            "/v1/events",
            br#"{"type":"call.started","agent_id":"a"#.to_vec(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "truncated batch",
            "/v1/events/batch",
            br#"{"events":[{"#.to_vec(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "wrong types everywhere",
            "/v1/events",
            br#"{"type":1,"agent_id":[],"call_id":{},"id":true,"occurred_at":5,"data":"x"}"#
                .to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &["type", "agent_id", "call_id", "id", "occurred_at", "data"],
        ),
        (
            "an array",
            "/v1/events",
            b"[]".to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &[""],
        ),
        (
            "a string",
            "/v1/events",
            br#""event""#.to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &[""],
        ),
        (
            "null",
            "/v1/events",
            b"null".to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &[""],
        ),
        (
            "a number",
            "/v1/events",
            b"42".to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &[""],
        ),
        (
            "wrong batch type",
            "/v1/events/batch",
            br#"{"events":{"type":"call.started"}}"#.to_vec(),
            S::UNPROCESSABLE_ENTITY,
            &["events"],
        ),
        (
            "wrong data types",
            "/v1/events",
            with_raw_data(r#"{"direction":7,"from":[],"to":{},"started_at":false}"#).into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["data.direction", "data.from", "data.to", "data.started_at"],
        ),
        (
            "a 200 KB agent_id",
            "/v1/events",
            big_agent.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["agent_id"],
        ),
        (
            "a 200 KB data string",
            "/v1/events",
            big_message.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["data.message"],
        ),
        (
            "a 200 KB field name",
            "/v1/events",
            big_field_name.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &big_field,
        ),
        (
            "10,000 nested arrays",
            "/v1/events",
            nested_arrays(10_000).into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "10,000 nested objects",
            "/v1/events",
            nested_objects(10_000).into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "10,000 levels inside data",
            "/v1/events",
            with_raw_data(&nested_objects(10_000)).into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "10,000 levels inside a batch item",
            "/v1/events/batch",
            format!(
                r#"{{"events":[{}]}}"#,
                with_raw_data(&nested_arrays(10_000))
            )
            .into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "invalid UTF-8",
            "/v1/events",
            invalid_utf8,
            S::BAD_REQUEST,
            &[],
        ),
        (
            "a lone surrogate escape",
            "/v1/events",
            with_raw_data(r#"{"from":"\ud800"}"#).into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "an escaped NUL id",
            "/v1/events",
            nul_id.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["id"],
        ),
        (
            "escaped NULs in agent_id and call_id",
            "/v1/events",
            nul_ids.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["agent_id", "call_id"],
        ),
        (
            "a raw NUL inside a string",
            "/v1/events",
            raw_nul_in_string,
            S::BAD_REQUEST,
            &[],
        ),
        (
            "a raw NUL outside strings",
            "/v1/events",
            raw_nul_outside,
            S::BAD_REQUEST,
            &[],
        ),
        (
            "a number out of range",
            "/v1/events",
            with_raw_data(r#"{"duration_ms":1e400}"#).into_bytes(),
            S::BAD_REQUEST,
            &[],
        ),
        (
            "20,000 top-level fields",
            "/v1/events",
            many_fields.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &[],
        ),
        (
            "20,000 data fields",
            "/v1/events",
            many_data_fields.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &[],
        ),
        (
            "a batch of 501",
            "/v1/events/batch",
            batch_501.into_bytes(),
            S::UNPROCESSABLE_ENTITY,
            &["events"],
        ),
        (
            "a 6 MiB batch",
            "/v1/events/batch",
            six_mib_batch.into_bytes(),
            S::PAYLOAD_TOO_LARGE,
            &[],
        ),
    ];

    let mut sent = Vec::new();
    for (case, path, body, status, fields) in cases {
        let answer = post_raw(&sys, &key, path, body).await;
        answer.assert_problem(status, case);
        if !fields.is_empty() {
            let listed = answer.fields();
            for field in fields {
                assert!(
                    listed.iter().any(|l| l == field),
                    "{case}: {field} not in {listed:?}"
                );
            }
        }
        // The service is still there and still stores events.
        sent.push(sys.send_event(&key, event("call.started", "agent_1")).await);
    }

    // Content-Type is not checked: the body is JSON or it is not.
    let valid = event("call.started", "agent_2").to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = sys
            .http
            .post(sys.url("/v1/events"))
            .bearer_auth(&key)
            .body(valid.clone());
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        let answer = send(req).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{content_type:?}: {}",
            answer.body
        );
        sent.push(answer.body["id"].as_str().expect("id").to_owned());
    }
    let answer = send(
        sys.http
            .post(sys.url("/v1/events"))
            .bearer_auth(&key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("type=call.started&agent_id=agent_1"),
    )
    .await;
    answer.assert_problem(StatusCode::BAD_REQUEST, "a form body");

    // A header that is not visible ASCII.
    let answer = send(
        sys.http
            .post(sys.url("/v1/events"))
            .bearer_auth(&key)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(b"k\xff\xfe").unwrap(),
            )
            .json(&event("call.started", "agent_1")),
    )
    .await;
    answer.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "a non-ASCII Idempotency-Key",
    );

    // Every event that was accepted is stored, and nothing else is.
    assert_eq!(feed_ids(&sys, &key).await, sent);
    let (status, _) = sys.get("/readyz", "").await;
    assert_eq!(status, StatusCode::OK);
}
