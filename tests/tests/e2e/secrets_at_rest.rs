//! Signing secrets at rest and in logs: the subscriptions bucket holds them sealed under the
//! master key, master keys rotate without breaking a subscription, and no secret (signing
//! secret, API key, admin token, master key) reaches a log line or an error body, even with
//! debug logging on.

use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use common::crypto::{Key, MasterKeys};
use prost::Message as _;
use proto::v1::{SigningSecret, Subscription};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{NatsServer, TestReceiver, eventually};

use crate::{helpers::*, procs::Proc};

/// The base64 part of a `whsec_` secret, and the raw key bytes it encodes.
fn secret_parts(secret: &str) -> (String, Vec<u8>) {
    let b64 = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    (b64.to_owned(), raw)
}

/// The raw bytes stored for a subscription, and the record they decode to.
async fn stored(nats: &NatsServer, tenant: &str, id: &str) -> (Vec<u8>, Subscription) {
    let client = async_nats::connect(nats.url())
        .await
        .expect("nats connects");
    let kv = jetstream::new(client)
        .get_key_value(proto::subjects::SUBSCRIPTIONS_BUCKET)
        .await
        .expect("subscriptions bucket");
    let raw = kv
        .get(proto::subjects::subscription_key(tenant, id))
        .await
        .expect("kv get")
        .expect("record present");
    let sub = Subscription::decode(raw.as_ref()).expect("a Subscription");
    (raw.to_vec(), sub)
}

/// Overwrites a subscription's record in the bucket (to plant legacy or tampered records).
async fn store(nats: &NatsServer, tenant: &str, sub: &Subscription) {
    let client = async_nats::connect(nats.url())
        .await
        .expect("nats connects");
    let kv = jetstream::new(client)
        .get_key_value(proto::subjects::SUBSCRIPTIONS_BUCKET)
        .await
        .expect("subscriptions bucket");
    kv.put(
        proto::subjects::subscription_key(tenant, &sub.id),
        sub.encode_to_vec().into(),
    )
    .await
    .expect("kv put");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The bucket bytes hold neither the secret, nor its base64 part, nor its raw key bytes.
fn assert_no_plaintext(raw: &[u8], secret: &str) {
    let (b64, key) = secret_parts(secret);
    assert!(!contains(raw, secret.as_bytes()), "secret in the bucket");
    assert!(!contains(raw, b64.as_bytes()), "base64 part in the bucket");
    assert!(!contains(raw, &key), "raw key bytes in the bucket");
}

/// Every secret of the record is sealed (and not in plaintext) under `key`.
fn assert_sealed_under(sub: &Subscription, key: &Key) {
    assert!(!sub.secrets.is_empty());
    for s in &sub.secrets {
        assert!(s.secret.is_empty(), "the plaintext field is never written");
        assert!(!s.sealed.is_empty(), "sealed");
        assert_eq!(
            MasterKeys::sealed_key_id(&s.sealed),
            Some(key.id()),
            "sealed under {key:?}"
        );
    }
}

async fn secret_of(sys: &System, key: &str, sub: &str) -> (StatusCode, Value) {
    sys.get(&format!("/v1/subscriptions/{sub}/secret"), key)
        .await
}

/// A system whose services use `keys`.
async fn start_with(nats: NatsServer, keys: &MasterKeys) -> System {
    testkit::init_test_tracing();
    let k = keys.clone();
    let ingest = spawn_ingest_with(&nats, move |s| s.shared.master_keys = k).await;
    let k = keys.clone();
    let dispatcher = spawn_dispatcher_with(&nats, move |s| s.shared.master_keys = k).await;
    System {
        ingest,
        dispatcher: Some(dispatcher),
        http: reqwest::Client::new(),
        nats,
    }
}

/// Replaces both services of `sys` with ones using `keys` (a rolling deploy of a key change).
async fn restart_with(sys: &mut System, keys: &MasterKeys) {
    if let Some(old) = sys.dispatcher.take() {
        old.stop().await.expect("dispatcher drains");
    }
    let k = keys.clone();
    let ingest = spawn_ingest_with(&sys.nats, move |s| s.shared.master_keys = k).await;
    std::mem::replace(&mut sys.ingest, ingest)
        .stop()
        .await
        .expect("ingest drains");
    let k = keys.clone();
    sys.dispatcher =
        Some(spawn_dispatcher_with(&sys.nats, move |s| s.shared.master_keys = k).await);
}

#[tokio::test]
async fn the_bucket_holds_signing_secrets_only_sealed_and_bound_to_their_subscription() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (id, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let (raw, sub) = stored(&sys.nats, "acme", &id).await;
    assert_no_plaintext(&raw, &secret);
    assert_sealed_under(&sub, master_keys().current());
    assert_eq!(sub.secrets[0].sealed.len(), 1 + 4 + 24 + secret.len() + 16);

    // The API and the dispatcher see the plaintext.
    let (status, body) = secret_of(&sys, &key, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secret"], json!(secret));
    let got = a_delivery_where(&sys, &key, &receiver, "a delivery", |_| true).await;
    got.verify(&secret).expect("signed with the secret");

    // A rotation stores both secrets sealed.
    let (status, body) = sys
        .post(
            &format!("/v1/subscriptions/{id}/secret/rotate"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = body["secret"].as_str().unwrap().to_owned();
    let (raw, sub) = stored(&sys.nats, "acme", &id).await;
    assert_eq!(sub.secrets.len(), 2);
    assert_no_plaintext(&raw, &secret);
    assert_no_plaintext(&raw, &rotated);
    assert_sealed_under(&sub, master_keys().current());

    // A sealed secret moved into another subscription's record does not open there.
    let (other, other_secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["qa.scored"]}),
        )
        .await;
    let (_, mut moved) = stored(&sys.nats, "acme", &other).await;
    moved.secrets = sub.secrets.clone();
    store(&sys.nats, "acme", &moved).await;
    let (status, body) = eventually(SOON, "the moved secret is refused", || async {
        let (status, body) = secret_of(&sys, &key, &other).await;
        (status != StatusCode::OK).then_some((status, body))
    })
    .await
    .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let text = body.to_string();
    for s in [&secret, &rotated, &other_secret] {
        assert!(!text.contains(s.as_str()), "{text}");
    }
}

#[tokio::test]
async fn a_legacy_plaintext_record_still_works_and_its_next_write_seals_it() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (id, _) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    // As a record written before secrets were sealed looks.
    let legacy = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (_, mut sub) = stored(&sys.nats, "acme", &id).await;
    sub.secrets = vec![SigningSecret {
        secret: legacy.into(),
        ..Default::default()
    }];
    store(&sys.nats, "acme", &sub).await;

    eventually(SOON, "the legacy secret is served", || async {
        let (status, body) = secret_of(&sys, &key, &id).await;
        (status == StatusCode::OK && body["secret"] == json!(legacy)).then_some(())
    })
    .await
    .unwrap();
    a_delivery_where(
        &sys,
        &key,
        &receiver,
        "signed with the legacy secret",
        |got| got.verify(legacy).is_ok(),
    )
    .await;

    let (status, body) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"description": "touched"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (raw, sub) = stored(&sys.nats, "acme", &id).await;
    assert_no_plaintext(&raw, legacy);
    assert_sealed_under(&sub, master_keys().current());
    let (status, body) = secret_of(&sys, &key, &id).await;
    assert_eq!((status, &body["secret"]), (StatusCode::OK, &json!(legacy)));
    a_delivery_where(&sys, &key, &receiver, "still signed with it", |got| {
        got.verify(legacy).is_ok()
    })
    .await;
}

#[tokio::test]
async fn the_master_key_rotates_without_breaking_a_subscription() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let a = Key::generate();
    let b = Key::generate();
    let mut sys = start_with(nats, &MasterKeys::new(a.clone(), Vec::new())).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (id, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    let (_, sub) = stored(&sys.nats, "acme", &id).await;
    assert_sealed_under(&sub, &a);

    // Step 1: B becomes current, A stays readable.
    restart_with(&mut sys, &MasterKeys::new(b.clone(), vec![a.clone()])).await;
    let (status, body) = secret_of(&sys, &key, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secret"], json!(secret));
    a_delivery_where(
        &sys,
        &key,
        &receiver,
        "signed with the original secret",
        |got| got.verify(&secret).is_ok(),
    )
    .await;
    let (_, sub) = stored(&sys.nats, "acme", &id).await;
    assert_sealed_under(&sub, &a);

    // Step 2: any write re-seals under B; so does a rotation, old secret included.
    let (status, body) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"description": "re-sealed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, sub) = stored(&sys.nats, "acme", &id).await;
    assert_sealed_under(&sub, &b);
    let (status, body) = sys
        .post(
            &format!("/v1/subscriptions/{id}/secret/rotate"),
            &key,
            json!({"grace_period_s": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = body["secret"].as_str().unwrap().to_owned();
    let (raw, sub) = stored(&sys.nats, "acme", &id).await;
    assert_eq!(sub.secrets.len(), 2);
    assert_sealed_under(&sub, &b);
    assert_no_plaintext(&raw, &secret);
    assert_no_plaintext(&raw, &rotated);

    // Step 3: A is dropped; everything still opens.
    restart_with(&mut sys, &MasterKeys::new(b.clone(), Vec::new())).await;
    let (status, body) = secret_of(&sys, &key, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secret"], json!(rotated));
    a_delivery_where(&sys, &key, &receiver, "signed with both secrets", |got| {
        got.verify(&rotated).is_ok() && got.verify(&secret).is_ok()
    })
    .await;

    // Services that know only A cannot open it: a 500 without the secret, and no delivery.
    restart_with(&mut sys, &MasterKeys::new(a.clone(), Vec::new())).await;
    let (status, body) = secret_of(&sys, &key, &id).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(!body.to_string().contains(&rotated), "{body}");
    sys.send_event(&key, event("call.started", "agent_1")).await;
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "an unopenable secret signs nothing"
    );
}

/// The ingest process's HTTP API, answering raw body text (to search it).
struct Api {
    http: reqwest::Client,
    base: String,
    /// Every error body seen.
    errors: Vec<String>,
}

impl Api {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .header("content-type", "application/json");
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        if !status.is_success() {
            self.errors.push(format!("{status} {path}: {text}"));
        }
        (status, text)
    }

    async fn json(
        &mut self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let (status, text) = self
            .call(method, path, bearer, Some(&body.to_string()))
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn no_secret_reaches_a_debug_log_or_an_error_body() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    // Debug for everything, trace for our own crates.
    let debug = [(
        "RUST_LOG",
        "debug,ingest=trace,dispatcher=trace,common=trace",
    )];
    let ingest = Proc::ingest(&nats, &debug).await;
    let dispatcher = Proc::dispatcher(&nats, &debug).await;
    let mut api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", ingest.addr()),
        errors: Vec::new(),
    };

    let (status, issued) = api
        .json(
            Method::POST,
            "/v1/admin/tenants/acme/api-keys",
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    // `owk_<26-character id>_<secret>`: the secret is URL-safe base64 and may hold `_` itself,
    // so it is cut at its fixed offset (a split at the last `_` could leave a few characters
    // that turn up in any log by chance).
    let key_secret = key["owk_".len() + 26 + 1..].to_owned();
    assert_eq!(key_secret.len(), 43, "{key}");

    let ok = TestReceiver::start(vec![]).await.unwrap();
    let failing = TestReceiver::start(vec![]).await.unwrap();
    failing.answer_after_script(500).unwrap();
    let (status, created) = api
        .json(
            Method::POST,
            "/v1/subscriptions",
            &key,
            json!({"url": ok.url(), "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let first = created["secret"].as_str().unwrap().to_owned();
    let (status, created) = api
        .json(
            Method::POST,
            "/v1/subscriptions",
            &key,
            json!({"url": failing.url(), "event_types": ["call.started"],
                   "retry": {"max_attempts": 2, "schedule_ms": [100]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let failing_id = created["id"].as_str().unwrap().to_owned();
    let failing_secret = created["secret"].as_str().unwrap().to_owned();

    let (status, body) = api
        .json(
            Method::POST,
            &format!("/v1/subscriptions/{id}/secret/rotate"),
            &key,
            json!({"grace_period_s": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = body["secret"].as_str().unwrap().to_owned();

    // Deliveries (signed with both secrets), a test send, a failing endpoint.
    let event_body = event("call.started", "agent_1").to_string();
    let got = eventually(SOON, "a delivery signed with both secrets", || {
        let (api, ok, event_body) = (&api, &ok, &event_body);
        let (key, first, second) = (&key, &first, &second);
        async move {
            let resp = api
                .http
                .post(format!("{}/v1/events", api.base))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(event_body.clone())
                .send()
                .await
                .ok()?;
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let got = ok.recv_within(Duration::from_secs(2)).await?;
            (got.verify(second).is_ok() && got.verify(first).is_ok()).then_some(got)
        }
    })
    .await
    .unwrap();
    assert!(got.header("webhook-signature").is_some());
    let (status, answer) = api
        .json(
            Method::POST,
            &format!("/v1/subscriptions/{id}/test"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["delivered"], json!(true), "{answer}");
    let (status, answer) = api
        .json(
            Method::POST,
            &format!("/v1/subscriptions/{failing_id}/test"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status_code"], json!(500), "{answer}");
    api.errors.push(answer.to_string());
    let (status, body) = api
        .json(
            Method::GET,
            &format!("/v1/subscriptions/{id}/secret"),
            &key,
            Value::Null,
        )
        .await;
    assert_eq!((status, &body["secret"]), (StatusCode::OK, &json!(second)));
    eventually(SOON, "the failing endpoint's attempts run out", || async {
        let attempts: Value = api
            .http
            .get(format!(
                "{}/v1/subscriptions/{failing_id}/attempts",
                api.base
            ))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (attempts["data"].as_array()?.len() >= 2).then_some(())
    })
    .await
    .unwrap();

    // Error paths, some carrying a secret in the request.
    let cases: Vec<(Method, String, &str, Option<String>, StatusCode)> = vec![
        (
            Method::POST,
            "/v1/events".into(),
            &key,
            Some(r#"{"type": "#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/subscriptions".into(),
            &key,
            Some(
                json!({"url": "ftp://x", "event_types": ["*"], "secret": second,
                       "headers": {"x-secret": first}})
                .to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PATCH,
            format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"secret": second, "url": "ftp://example.com"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            format!("/v1/subscriptions/{id}/secret/rotate"),
            &key,
            Some(json!({"grace_period_s": "x", "secret": first}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            format!("/v1/subscriptions/{id}/secret"),
            "owk_01ARZ3NDEKTSV4RRFFQ69G5FAV_wrongwrongwrongwrong",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            format!("/v1/subscriptions/{id}/secret"),
            ADMIN_TOKEN,
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/api-keys".into(),
            &key,
            Some("{}".into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/v1/subscriptions/sub_01ARZ3NDEKTSV4RRFFQ69G5FAV/secret".into(),
            &key,
            None,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, bearer, body, expected) in cases {
        let (status, text) = api.call(method, &path, bearer, body.as_deref()).await;
        assert_eq!(status, expected, "{path}: {text}");
    }

    // Give the processes a moment to log what they are doing, then search everything.
    tokio::time::sleep(QUIET).await;
    let logs = [
        ("ingest", ingest.log()),
        ("dispatcher", dispatcher.log()),
        ("nats-server", nats.log()),
    ];
    for (name, log) in &logs[..2] {
        assert!(
            log.contains("DEBUG"),
            "{name} logged at debug level:\n{log}"
        );
    }
    let mut forbidden = vec![
        ("first signing secret", first.clone()),
        ("second signing secret", second.clone()),
        ("failing endpoint's signing secret", failing_secret.clone()),
        ("API key", key.clone()),
        ("API key secret part", key_secret),
        ("admin token", ADMIN_TOKEN.to_owned()),
        ("master key", master_key_base64()),
    ];
    for s in [&first, &second, &failing_secret] {
        forbidden.push(("base64 part of a signing secret", secret_parts(s).0));
    }
    for (what, needle) in &forbidden {
        for (name, log) in &logs {
            assert!(!log.contains(needle.as_str()), "{what} in the {name} log");
        }
        for body in &api.errors {
            assert!(
                !body.contains(needle.as_str()),
                "{what} in an error body: {body}"
            );
        }
    }
    assert!(api.errors.len() >= 9, "{:?}", api.errors);
}

#[tokio::test]
async fn a_dispatcher_that_cannot_open_a_secret_retries_dead_letters_and_says_so() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let ingest_keys = MasterKeys::new(Key::generate(), Vec::new());
    let k = ingest_keys.clone();
    let ingest = spawn_ingest_with(&nats, move |s| s.shared.master_keys = k).await;
    // The dispatcher was deployed with another master key.
    let dispatcher = spawn_dispatcher_with(&nats, |s| {
        s.shared.master_keys = MasterKeys::new(Key::generate(), Vec::new());
    })
    .await;
    let probe = format!("http://{}", dispatcher.addr);
    let mut sys = System {
        ingest,
        dispatcher: Some(dispatcher),
        http: reqwest::Client::new(),
        nats,
    };
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 2, "schedule_ms": [100]}}))
        .await;
    // The replica says so: in /readyz detail (still ready for everyone else) and a metric.
    let ready = eventually(SOON, "readyz to count the subscription", || async {
        let ready: Value = sys
            .http
            .get(format!("{probe}/readyz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["unsignable_subscriptions"] == json!(1)).then_some(ready)
    })
    .await
    .unwrap();
    assert_eq!(ready["status"], json!("ready"), "{ready}");
    let metrics = sys
        .http
        .get(format!("{probe}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nwebhooks_unsignable_subscriptions 1\n"),
        "{metrics}"
    );

    // Its events are not lost: retried, then dead-lettered as a system error; nothing unsigned
    // is sent.
    let id = sys.send_event(&key, event("call.started", "a1")).await;
    let dead = eventually(SOON, "the dead letter", || async {
        let (status, body) = sys
            .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .unwrap();
    assert_eq!(dead["event_id"], json!(id), "{dead}");
    assert_eq!(dead["reason"], json!("system_error"), "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("cannot sign"),
        "{dead}"
    );
    assert!(
        receiver
            .expect_none(Duration::from_millis(200))
            .await
            .is_none()
    );
    let (_, attempts) = sys.get(&format!("/v1/events/{id}/attempts"), &key).await;
    assert_eq!(attempts["data"].as_array().unwrap().len(), 2, "{attempts}");

    // The operator fixes the key and redrives: delivered, signed with the secret.
    let k = ingest_keys.clone();
    sys.restart_dispatcher(move |s| s.shared.master_keys = k)
        .await;
    let dl = dead["id"].as_str().unwrap();
    let (status, body) = sys
        .post(&format!("/v1/dead-letters/{dl}/redrive"), &key, json!({}))
        .await;
    assert!(status.is_success(), "{body}");
    let got = receiver
        .recv_within(SOON)
        .await
        .expect("the redriven delivery");
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    got.verify(&secret).unwrap();
}
