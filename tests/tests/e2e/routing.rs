//! Routing and tenancy: filters, tenants, revoked keys, disabled and edited subscriptions.
//!
//! Subscription changes reach the dispatcher through its KV watch, a moment after the API
//! answers. Rather than sleeping, the tests wait on a [`Barrier`]: a sentinel subscription made
//! after the change, in a tenant of its own. The watch applies changes in bucket order, so once
//! a probe event reaches the sentinel, the dispatcher has applied every earlier change too.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{Received, TestReceiver, eventually};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Waits until the dispatcher has applied every subscription change made so far.
struct Barrier {
    key: String,
    receiver: TestReceiver,
    rounds: AtomicUsize,
}

impl Barrier {
    async fn new(sys: &System) -> Barrier {
        Barrier {
            key: sys.tenant_key("zz-barrier").await,
            receiver: TestReceiver::start(vec![]).await.unwrap(),
            rounds: AtomicUsize::new(0),
        }
    }

    /// Creates a sentinel subscription (a later change than any made before this call), probes
    /// until it receives an event, then deletes it again.
    async fn pass(&self, sys: &System) {
        let agent = format!("probe_{}", self.rounds.fetch_add(1, Ordering::SeqCst));
        let (sentinel, _) = sys
            .subscribe(
                &self.key,
                json!({"url": self.receiver.url(), "event_types": ["*"], "agent_ids": [agent]}),
            )
            .await;
        let (key, receiver, agent) = (self.key.as_str(), &self.receiver, agent.as_str());
        eventually(
            SOON,
            "the dispatcher to see the sentinel subscription",
            || async move {
                sys.send_event(key, event("outcome.tagged", agent)).await;
                while let Some(got) = receiver.recv_within(Duration::from_millis(300)).await {
                    if got.json()["agent_id"] == json!(agent) {
                        return Some(());
                    }
                }
                None
            },
        )
        .await
        .unwrap();
        let (status, body) = sys
            .call(
                Method::DELETE,
                &format!("/v1/subscriptions/{sentinel}"),
                key,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
}

/// Takes exactly `n` deliveries (each within `SOON`), checking every signature with `secret`.
async fn take(receiver: &TestReceiver, n: usize, secret: &str) -> Vec<Received> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let got = receiver
            .recv_within(SOON)
            .await
            .unwrap_or_else(|| panic!("delivery {} of {n} did not arrive", i + 1));
        got.verify(secret).expect("signature verifies");
        out.push(got);
    }
    out
}

fn webhook_ids(deliveries: &[Received]) -> BTreeSet<String> {
    deliveries
        .iter()
        .map(|d| d.header("webhook-id").expect("webhook-id").to_owned())
        .collect()
}

fn types_of(deliveries: &[Received]) -> Vec<String> {
    let mut types: Vec<String> = deliveries
        .iter()
        .map(|d| d.json()["type"].as_str().expect("type").to_owned())
        .collect();
    types.sort();
    types
}

fn set<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

/// Fails if any of `receivers` gets anything more during one shared quiet period.
async fn assert_quiet(receivers: &[(&str, &TestReceiver)]) {
    let waits = receivers.iter().map(|(name, r)| async move {
        if let Some(extra) = r.expect_none(QUIET).await {
            panic!(
                "{name} got an unexpected delivery: {} {}",
                extra.header("webhook-id").unwrap_or("?"),
                extra.json()["type"]
            );
        }
    });
    futures::future::join_all(waits).await;
}

/// A call to any ingest replica: status, content type and JSON body (`Null` when none).
async fn call_at(
    sys: &System,
    addr: SocketAddr,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let mut req = sys
        .http
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(bearer);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.bytes().await.expect("body read");
    (
        status,
        content_type,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The `field`s of a problem's `errors`.
fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Issues a key through the admin API; answers its id and the key.
async fn issue_key(sys: &System, addr: SocketAddr, tenant: &str) -> (String, String) {
    let (status, _, body) = call_at(
        sys,
        addr,
        Method::POST,
        &format!("/v1/admin/tenants/{tenant}/api-keys"),
        ADMIN_TOKEN,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tenant_id"], json!(tenant));
    (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn event_type_filters_match_exact_names_prefixes_and_the_wildcard() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let (exact_rx, prefix_rx, all_rx) = (
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    );
    let (_, exact_secret) = sys
        .subscribe(
            &key,
            json!({"url": exact_rx.url(), "event_types": ["call.started"]}),
        )
        .await;
    let (_, prefix_secret) = sys
        .subscribe(
            &key,
            json!({"url": prefix_rx.url(), "event_types": ["call.*"]}),
        )
        .await;
    let (_, all_secret) = sys
        .subscribe(&key, json!({"url": all_rx.url(), "event_types": ["*"]}))
        .await;
    barrier.pass(&sys).await;

    let mut sent = Vec::new();
    for ty in [
        "call.started",
        "call.ended",
        "call.failed",
        "qa.scored",
        "transcript.ready",
    ] {
        sent.push((ty, sys.send_event(&key, event(ty, "agent_1")).await));
    }
    let id_of = |ty: &str| sent.iter().find(|(t, _)| *t == ty).unwrap().1.clone();

    let exact = take(&exact_rx, 1, &exact_secret).await;
    assert_eq!(types_of(&exact), ["call.started"]);
    assert_eq!(
        exact[0].header("webhook-id"),
        Some(id_of("call.started").as_str())
    );

    let prefix = take(&prefix_rx, 3, &prefix_secret).await;
    assert_eq!(
        types_of(&prefix),
        ["call.ended", "call.failed", "call.started"]
    );
    let all = take(&all_rx, 5, &all_secret).await;
    assert_eq!(
        types_of(&all),
        [
            "call.ended",
            "call.failed",
            "call.started",
            "qa.scored",
            "transcript.ready"
        ]
    );
    // Each delivery carries the id of the event of its type.
    for got in prefix.iter().chain(&all) {
        let ty = got.json()["type"].as_str().unwrap().to_owned();
        assert_eq!(got.header("webhook-id"), Some(id_of(&ty).as_str()));
        assert_eq!(got.json()["id"], json!(id_of(&ty)));
    }
    assert_quiet(&[
        ("call.started", &exact_rx),
        ("call.*", &prefix_rx),
        ("*", &all_rx),
    ])
    .await;
}

#[tokio::test]
async fn agent_filters_deliver_only_the_listed_agents_and_no_filter_delivers_all() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let (a1_rx, a1a2_rx, any_rx) = (
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    );
    let (_, a1_secret) = sys
        .subscribe(
            &key,
            json!({"url": a1_rx.url(), "event_types": ["*"], "agent_ids": ["a1"]}),
        )
        .await;
    let (_, a1a2_secret) = sys
        .subscribe(
            &key,
            json!({"url": a1a2_rx.url(), "event_types": ["call.*"], "agent_ids": ["a2", "a1"]}),
        )
        .await;
    let (_, any_secret) = sys
        .subscribe(&key, json!({"url": any_rx.url(), "event_types": ["*"]}))
        .await;
    barrier.pass(&sys).await;

    let e1 = sys.send_event(&key, event("call.started", "a1")).await;
    let e2 = sys.send_event(&key, event("call.started", "a2")).await;
    let e3 = sys.send_event(&key, event("qa.scored", "a1")).await;
    let e4 = sys.send_event(&key, event("call.ended", "a3")).await;
    let e5 = sys.send_event(&key, event("call.ended", "a10")).await;

    let a1 = take(&a1_rx, 2, &a1_secret).await;
    assert_eq!(webhook_ids(&a1), set([&e1, &e3]));
    assert!(a1.iter().all(|d| d.json()["agent_id"] == json!("a1")));
    let a1a2 = take(&a1a2_rx, 2, &a1a2_secret).await;
    assert_eq!(webhook_ids(&a1a2), set([&e1, &e2]));
    let any = take(&any_rx, 5, &any_secret).await;
    assert_eq!(webhook_ids(&any), set([&e1, &e2, &e3, &e4, &e5]));
    let agents: BTreeSet<String> = any
        .iter()
        .map(|d| d.json()["agent_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(agents, ["a1", "a10", "a2", "a3"].map(String::from).into());
    assert_quiet(&[("a1", &a1_rx), ("a1+a2", &a1a2_rx), ("any", &any_rx)]).await;
}

#[tokio::test]
async fn one_event_fans_out_to_every_matching_subscription_once_with_its_own_signature() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let receivers = [
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    ];
    let filters = [
        json!({"event_types": ["call.started"]}),
        json!({"event_types": ["call.*"], "agent_ids": ["agent_7"]}),
        json!({"event_types": ["*"]}),
    ];
    let mut secrets = Vec::new();
    for (receiver, filter) in receivers.iter().zip(filters) {
        let mut body = filter;
        body["url"] = json!(receiver.url());
        secrets.push(sys.subscribe(&key, body).await.1);
    }
    assert_eq!(
        secrets.iter().collect::<HashSet<_>>().len(),
        3,
        "every subscription has its own secret"
    );
    barrier.pass(&sys).await;

    let id = sys.send_event(&key, event("call.started", "agent_7")).await;
    let mut bodies = Vec::new();
    for (i, receiver) in receivers.iter().enumerate() {
        let got = take(receiver, 1, &secrets[i]).await.remove(0);
        assert_eq!(got.header("webhook-id"), Some(id.as_str()));
        assert_eq!(got.header("webhook-attempt"), Some("1"));
        let other = &secrets[(i + 1) % 3];
        assert!(
            got.verify(other).is_err(),
            "a delivery must not verify with another subscription's secret"
        );
        bodies.push(got.body.clone());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every subscription gets the same envelope"
    );
    let named: Vec<(&str, &TestReceiver)> = receivers.iter().map(|r| ("a receiver", r)).collect();
    assert_quiet(&named).await;
}

#[tokio::test]
async fn tenants_see_only_their_own_events_and_subscriptions() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key_a = sys.tenant_key("tenant-a").await;
    let key_b = sys.tenant_key("tenant-b").await;
    let (rx_a, rx_b) = (
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    );
    let (sub_a, secret_a) = sys
        .subscribe(
            &key_a,
            json!({"url": rx_a.url(), "event_types": ["*"], "description": "A's"}),
        )
        .await;
    let (sub_b, secret_b) = sys
        .subscribe(&key_b, json!({"url": rx_b.url(), "event_types": ["*"]}))
        .await;
    barrier.pass(&sys).await;

    let a1 = sys
        .send_event(&key_a, event("call.started", "shared_agent"))
        .await;
    let b1 = sys
        .send_event(&key_b, event("call.started", "shared_agent"))
        .await;
    let a2 = sys
        .send_event(&key_a, event("qa.scored", "shared_agent"))
        .await;

    let got_a = take(&rx_a, 2, &secret_a).await;
    assert_eq!(webhook_ids(&got_a), set([&a1, &a2]));
    assert!(
        got_a
            .iter()
            .all(|d| d.json()["tenant_id"] == json!("tenant-a"))
    );
    let got_b = take(&rx_b, 1, &secret_b).await;
    assert_eq!(webhook_ids(&got_b), set([&b1]));
    assert_eq!(got_b[0].json()["tenant_id"], json!("tenant-b"));

    // B cannot tell A's subscription from one that does not exist.
    let missing = "sub_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let (_, _, not_found) = call_at(
        &sys,
        sys.ingest.addr,
        Method::GET,
        &format!("/v1/subscriptions/{missing}"),
        &key_b,
        None,
    )
    .await;
    for (method, path, body) in [
        (Method::GET, format!("/v1/subscriptions/{sub_a}"), None),
        (
            Method::GET,
            format!("/v1/subscriptions/{sub_a}/secret"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/subscriptions/{sub_a}"),
            Some(json!({"enabled": false, "url": rx_b.url()})),
        ),
        (Method::DELETE, format!("/v1/subscriptions/{sub_a}"), None),
    ] {
        let (status, content_type, problem) =
            call_at(&sys, sys.ingest.addr, method.clone(), &path, &key_b, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(problem, not_found, "{method} {path}");
    }

    // A's subscription is untouched and still delivers.
    let (status, sub) = sys.get(&format!("/v1/subscriptions/{sub_a}"), &key_a).await;
    assert_eq!(status, StatusCode::OK, "{sub}");
    assert_eq!(sub["enabled"], json!(true));
    assert_eq!(sub["url"], json!(rx_a.url()));
    let (_, secret) = sys
        .get(&format!("/v1/subscriptions/{sub_a}/secret"), &key_a)
        .await;
    assert_eq!(secret["secret"], json!(secret_a));

    // Each list holds its own tenant's subscriptions only.
    let (status, list_b) = sys.get("/v1/subscriptions", &key_b).await;
    assert_eq!(status, StatusCode::OK, "{list_b}");
    let ids_b: Vec<&str> = list_b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids_b, [sub_b.as_str()]);
    let (_, list_a) = sys.get("/v1/subscriptions", &key_a).await;
    let ids_a: Vec<&str> = list_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids_a, [sub_a.as_str()]);

    let a3 = sys
        .send_event(&key_a, event("call.ended", "shared_agent"))
        .await;
    let got = take(&rx_a, 1, &secret_a).await;
    assert_eq!(webhook_ids(&got), set([&a3]));
    assert_quiet(&[("tenant A", &rx_a), ("tenant B", &rx_b)]).await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_seconds_and_its_accepted_events_are_still_delivered() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let (key_id, key) = issue_key(&sys, sys.ingest.addr, "acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    barrier.pass(&sys).await;

    let mut accepted = BTreeSet::new();
    for ty in ["call.started", "transcript.ready", "call.ended"] {
        accepted.insert(sys.send_event(&key, event(ty, "agent_1")).await);
    }

    // Only the admin token may revoke.
    let (status, _) = sys
        .call(
            Method::DELETE,
            &format!("/v1/admin/api-keys/{key_id}"),
            &key,
            None,
        )
        .await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status}"
    );
    let (status, body) = sys
        .call(
            Method::DELETE,
            &format!("/v1/admin/api-keys/{key_id}"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let revoked_at = Instant::now();
    let (sys_ref, key_ref) = (&sys, key.as_str());
    eventually(
        Duration::from_secs(5),
        "the revoked key to be refused",
        || async move {
            let (status, _, _) = call_at(
                sys_ref,
                sys_ref.ingest.addr,
                Method::GET,
                "/v1/subscriptions",
                key_ref,
                None,
            )
            .await;
            (status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    let (status, content_type, problem) = call_at(
        &sys,
        sys.ingest.addr,
        Method::POST,
        "/v1/events",
        &key,
        Some(event("call.started", "agent_1")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["status"], json!(401));

    let got = take(&receiver, accepted.len(), &secret).await;
    assert_eq!(webhook_ids(&got), accepted);
    assert_quiet(&[("receiver", &receiver)]).await;

    // A revoked key stays revoked: revoking it again finds nothing.
    let (status, _) = sys
        .call(
            Method::DELETE,
            &format!("/v1/admin/api-keys/{key_id}"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_disabled_subscription_receives_nothing_until_it_is_enabled_again() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let (control_rx, target_rx, never_rx) = (
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    );
    let filter = json!(["call.started"]);
    let (_, control_secret) = sys
        .subscribe(
            &key,
            json!({"url": control_rx.url(), "event_types": filter}),
        )
        .await;
    let (target, target_secret) = sys
        .subscribe(&key, json!({"url": target_rx.url(), "event_types": filter}))
        .await;
    let (never, _) = sys
        .subscribe(
            &key,
            json!({"url": never_rx.url(), "event_types": filter, "enabled": false}),
        )
        .await;
    let (_, body) = sys.get(&format!("/v1/subscriptions/{never}"), &key).await;
    assert_eq!(body["enabled"], json!(false));
    barrier.pass(&sys).await;

    let e1 = sys.send_event(&key, event("call.started", "agent_1")).await;
    assert_eq!(
        webhook_ids(&take(&target_rx, 1, &target_secret).await),
        set([&e1])
    );

    let (status, body) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{target}"),
            &key,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], json!(false));
    barrier.pass(&sys).await;

    let e2 = sys.send_event(&key, event("call.started", "agent_1")).await;
    let e3 = sys.send_event(&key, event("call.started", "agent_2")).await;
    // The control proves these events went through the dispatcher.
    let control = take(&control_rx, 3, &control_secret).await;
    assert_eq!(webhook_ids(&control), set([&e1, &e2, &e3]));
    assert_quiet(&[("disabled", &target_rx), ("created disabled", &never_rx)]).await;

    let (status, body) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{target}"),
            &key,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], json!(true));
    barrier.pass(&sys).await;

    let e4 = sys.send_event(&key, event("call.started", "agent_1")).await;
    assert_eq!(
        webhook_ids(&take(&target_rx, 1, &target_secret).await),
        set([&e4])
    );
    assert_eq!(
        webhook_ids(&take(&control_rx, 1, &control_secret).await),
        set([&e4])
    );
    assert_quiet(&[
        ("re-enabled", &target_rx),
        ("created disabled", &never_rx),
        ("control", &control_rx),
    ])
    .await;
}

/// One event the producer got a `202` for.
#[derive(Clone)]
struct Sent {
    id: String,
    event_type: &'static str,
    /// Just before the request went out.
    sent_at: Instant,
}

#[tokio::test]
async fn a_subscription_edited_while_events_flow_switches_types_without_losing_earlier_events() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["call.started"]}),
        )
        .await;
    barrier.pass(&sys).await;

    // A producer alternating call.started and qa.scored every 20 ms, for at most 15 s.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = CancellationToken::new();
    let producer = {
        let (http, url, key) = (sys.http.clone(), sys.url("/v1/events"), key.clone());
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..750 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let event_type = if i % 2 == 0 {
                    "call.started"
                } else {
                    "qa.scored"
                };
                let sent_at = Instant::now();
                let resp = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&event(event_type, "agent_1"))
                    .send()
                    .await
                    .expect("event sent");
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
                let body: Value = resp.json().await.expect("json");
                let id = body["id"].as_str().expect("id").to_owned();
                sent.lock().unwrap().push(Sent {
                    id,
                    event_type,
                    sent_at,
                });
            }
        })
    };

    let mut delivered = take(&receiver, 5, &secret).await;
    assert_eq!(types_of(&delivered), ["call.started"; 5]);

    // Everything accepted up to here was accepted before the edit.
    let before: Vec<Sent> = sent.lock().unwrap().clone();
    let (status, body) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{sub}"),
            &key,
            Some(json!({"event_types": ["qa.scored"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_types"], json!(["qa.scored"]));

    // The first qa.scored delivery shows the dispatcher applied the edit; any event sent after
    // it arrived is matched against the edited subscription.
    let propagated_at = loop {
        let got = take(&receiver, 1, &secret).await.remove(0);
        let is_qa = got.json()["type"] == json!("qa.scored");
        let at = got.at;
        delivered.push(got);
        if is_qa {
            break at;
        }
    };
    let sent_ref = &sent;
    eventually(
        SOON,
        "20 more events after the edit took effect",
        || async move {
            let sent = sent_ref.lock().unwrap();
            (sent.iter().filter(|s| s.sent_at > propagated_at).count() >= 20).then_some(())
        },
    )
    .await
    .unwrap();
    stop.cancel();
    producer.await.expect("producer finished");

    while let Some(got) = receiver.recv_within(QUIET).await {
        got.verify(&secret).expect("signature verifies");
        delivered.push(got);
    }
    let delivered_ids = webhook_ids(&delivered);
    let sent = sent.lock().unwrap().clone();
    let before_ids: HashSet<&str> = before.iter().map(|s| s.id.as_str()).collect();

    for s in &before {
        match s.event_type {
            "call.started" => assert!(
                delivered_ids.contains(&s.id),
                "call.started {} accepted before the edit was lost",
                s.id
            ),
            _ => assert!(
                !delivered_ids.contains(&s.id),
                "qa.scored {} accepted before the edit was delivered",
                s.id
            ),
        }
    }
    let after: Vec<&Sent> = sent.iter().filter(|s| s.sent_at > propagated_at).collect();
    assert!(after.len() >= 20);
    for s in after {
        assert!(!before_ids.contains(s.id.as_str()));
        match s.event_type {
            "qa.scored" => assert!(
                delivered_ids.contains(&s.id),
                "qa.scored {} sent after the edit took effect was not delivered",
                s.id
            ),
            _ => assert!(
                !delivered_ids.contains(&s.id),
                "call.started {} sent after the edit took effect was delivered",
                s.id
            ),
        }
    }
    // Nothing arrives that was never sent.
    let sent_ids: HashSet<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    assert!(
        delivered_ids
            .iter()
            .all(|id| sent_ids.contains(id.as_str()))
    );
}

#[tokio::test]
async fn subscriptions_can_be_created_read_listed_patched_and_deleted() {
    let sys = System::start().await;
    let barrier = Barrier::new(&sys).await;
    let key = sys.tenant_key("acme").await;
    let (receiver, control_rx) = (
        TestReceiver::start(vec![]).await.unwrap(),
        TestReceiver::start(vec![]).await.unwrap(),
    );

    let (status, created) = sys
        .post(
            "/v1/subscriptions",
            &key,
            json!({
                "url": receiver.url(),
                "event_types": ["qa.scored", "call.*"],
                "description": "main",
                "headers": {"X-Team": "voice"},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let suffix = id.strip_prefix("sub_").expect("sub_ prefix");
    assert!(
        !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["url"], json!(receiver.url()));
    assert_eq!(created["enabled"], json!(true));
    assert_eq!(created["description"], json!("main"));
    let mut types: Vec<String> = serde_json::from_value(created["event_types"].clone()).unwrap();
    types.sort();
    assert_eq!(types, ["call.*", "qa.scored"]);

    let (status, got) = sys.get(&format!("/v1/subscriptions/{id}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(
        got.get("secret").is_none(),
        "GET must not show the secret: {got}"
    );
    assert!(!got.to_string().contains(&secret));
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(got, without_secret);
    let (status, shown) = sys
        .get(&format!("/v1/subscriptions/{id}/secret"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["secret"], json!(secret));

    // Pagination over exactly three subscriptions.
    let (other_id, control_secret) = sys
        .subscribe(
            &key,
            json!({"url": control_rx.url(), "event_types": ["call.started"]}),
        )
        .await;
    let (third_id, _) = sys
        .subscribe(
            &key,
            json!({"url": control_rx.url(), "event_types": ["qa.scored"], "enabled": false}),
        )
        .await;
    let (status, page1) = sys.get("/v1/subscriptions?limit=2", &key).await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    assert_eq!(page1["data"].as_array().unwrap().len(), 2, "{page1}");
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next_cursor")
        .to_owned();
    let (status, page2) = sys
        .get(&format!("/v1/subscriptions?limit=2&after={cursor}"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{page2}");
    assert_eq!(page2["data"].as_array().unwrap().len(), 1, "{page2}");
    assert_eq!(page2["next_cursor"], Value::Null);
    let listed: Vec<String> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .map(|s| {
            assert!(s.get("secret").is_none(), "lists must not show secrets");
            s["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), 3, "no subscription listed twice: {listed:?}");
    assert_eq!(listed_set, set([&id, &other_id, &third_id]));
    let (_, everything) = sys.get("/v1/subscriptions", &key).await;
    assert_eq!(everything["data"].as_array().unwrap().len(), 3);
    assert_eq!(everything["next_cursor"], Value::Null);

    // PATCH validates, leaves the subscription as it was when invalid, and applies when valid.
    let (status, problem) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"event_types": ["call.nope"], "description": "never applied"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem), ["event_types[0]"]);
    let (_, unchanged) = sys.get(&format!("/v1/subscriptions/{id}"), &key).await;
    assert_eq!(unchanged["description"], json!("main"));
    let (status, patched) = sys
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            &key,
            Some(json!({"description": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["description"], json!("renamed"));
    assert_eq!(patched["event_types"], created["event_types"]);
    let (_, reread) = sys.get(&format!("/v1/subscriptions/{id}"), &key).await;
    assert_eq!(reread, patched);
    barrier.pass(&sys).await;

    // It delivers, signed with that secret and carrying its own header...
    let e1 = sys.send_event(&key, event("call.started", "agent_1")).await;
    let got = take(&receiver, 1, &secret).await.remove(0);
    assert_eq!(got.header("webhook-id"), Some(e1.as_str()));
    assert_eq!(got.header("x-team"), Some("voice"));
    assert_eq!(
        webhook_ids(&take(&control_rx, 1, &control_secret).await),
        set([&e1])
    );

    // ...until it is deleted: then it is gone, and so are its deliveries.
    let path = format!("/v1/subscriptions/{id}");
    let (status, _) = sys.call(Method::DELETE, &path, &key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, path) in [
        (Method::GET, path.clone()),
        (Method::GET, format!("{path}/secret")),
        (Method::PATCH, path.clone()),
        (Method::DELETE, path.clone()),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"description": "x"}));
        let (status, problem) = sys.call(method.clone(), &path, &key, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
    }
    let (_, everything) = sys.get("/v1/subscriptions", &key).await;
    assert_eq!(everything["data"].as_array().unwrap().len(), 2);
    barrier.pass(&sys).await;
    let e2 = sys.send_event(&key, event("call.started", "agent_1")).await;
    assert_eq!(
        webhook_ids(&take(&control_rx, 1, &control_secret).await),
        set([&e2])
    );
    assert_quiet(&[("deleted", &receiver), ("control", &control_rx)]).await;
}

#[tokio::test]
async fn subscription_bodies_and_urls_that_break_the_rules_are_refused_with_422() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    // The production defaults: https only, no private, loopback or link-local targets.
    let strict = spawn_ingest_with(&sys.nats, |s| {
        s.shared.url_policy = common::urls::UrlPolicy::default();
    })
    .await;
    let (sys_ref, strict_addr, key_ref) = (&sys, strict.addr, key.as_str());
    eventually(SOON, "the key to reach the strict ingest", || async move {
        let (status, _, _) = call_at(
            sys_ref,
            strict_addr,
            Method::GET,
            "/v1/subscriptions",
            key_ref,
            None,
        )
        .await;
        (status == StatusCode::OK).then_some(())
    })
    .await
    .unwrap();
    let create = |body: Value| async move {
        call_at(
            sys_ref,
            strict_addr,
            Method::POST,
            "/v1/subscriptions",
            key_ref,
            Some(body),
        )
        .await
    };

    for url in [
        "http://93.184.216.34/hook",
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "ftp://93.184.216.34/",
        "not a url",
    ] {
        let (status, content_type, problem) =
            create(json!({"url": url, "event_types": ["*"]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(error_fields(&problem), ["url"], "{url}: {problem}");
    }
    // The loopback target the permissive test ingest allows is refused here.
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (status, _, problem) = create(json!({"url": receiver.url(), "event_types": ["*"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem), ["url"]);

    // A public https URL passes, and a PATCH to a private one is refused the same way.
    let (status, _, created) = create(json!({
        "url": "https://93.184.216.34/hook",
        "event_types": ["qa.scored"],
        "enabled": false,
    }))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, _, problem) = call_at(
        &sys,
        strict_addr,
        Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        &key,
        Some(json!({"url": "https://10.1.2.3/hook"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem), ["url"]);
    let (_, _, unchanged) = call_at(
        &sys,
        strict_addr,
        Method::GET,
        &format!("/v1/subscriptions/{id}"),
        &key,
        None,
    )
    .await;
    assert_eq!(unchanged["url"], json!("https://93.184.216.34/hook"));

    let public = "https://93.184.216.34/hook";
    let (status, _, problem) =
        create(json!({"url": public, "event_types": ["*"], "colour": "red"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem), ["colour"]);

    let (status, _, problem) = create(json!({"description": "no target"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: BTreeSet<String> = error_fields(&problem).into_iter().collect();
    assert_eq!(fields, ["event_types", "url"].map(String::from).into());

    for header in ["webhook-id", "Webhook-Signature", "content-type", "Host"] {
        let (status, _, problem) = create(json!({
            "url": public,
            "event_types": ["*"],
            "headers": {header: "x"},
        }))
        .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{header}: {problem}"
        );
        assert_eq!(error_fields(&problem), [format!("headers.{header}")]);
    }

    let (status, _, problem) =
        create(json!({"url": public, "event_types": ["call.nope", "*", "call.*", "nope.*"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem), ["event_types[0]", "event_types[3]"]);

    // Nothing invalid was stored.
    let (_, _, list) = call_at(
        &sys,
        strict_addr,
        Method::GET,
        "/v1/subscriptions",
        &key,
        None,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    strict.stop().await.unwrap();
}

#[tokio::test]
async fn subscriptions_and_keys_made_on_one_replica_reach_the_others() {
    let mut sys = System::start().await;
    let ingest2 = spawn_ingest(&sys.nats).await;
    let dispatcher2 = spawn_dispatcher(&sys.nats).await;
    let (one, two) = (sys.ingest.addr, ingest2.addr);
    let dispatcher1 = sys.dispatcher.take().unwrap();

    // A key issued on replica one works on replica two.
    let (key_id, key) = issue_key(&sys, one, "acme").await;
    let (sys_ref, key_ref) = (&sys, key.as_str());
    eventually(SOON, "the key to work on replica two", || async move {
        let (status, _, _) = call_at(
            sys_ref,
            two,
            Method::GET,
            "/v1/subscriptions",
            key_ref,
            None,
        )
        .await;
        (status == StatusCode::OK).then_some(())
    })
    .await
    .unwrap();

    // A subscription created on replica one is readable on replica two.
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (status, _, created) = call_at(
        &sys,
        one,
        Method::POST,
        "/v1/subscriptions",
        &key,
        Some(json!({"url": receiver.url(), "event_types": ["call.started"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let path = format!("/v1/subscriptions/{id}");
    let path_ref = path.as_str();
    let on_two = eventually(
        SOON,
        "the subscription to be readable on replica two",
        || async move {
            let (status, _, body) =
                call_at(sys_ref, two, Method::GET, path_ref, key_ref, None).await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await
    .unwrap();
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(on_two, expected);
    let (_, _, shown) = call_at(
        &sys,
        two,
        Method::GET,
        &format!("{path}/secret"),
        &key,
        None,
    )
    .await;
    assert_eq!(shown["secret"], json!(secret));

    // With the first dispatcher gone, the second one delivers it: it learnt of the
    // subscription through its watch, after it had started.
    dispatcher1.stop().await.unwrap();
    let receiver_ref = &receiver;
    let got = eventually(SOON, "a delivery through dispatcher two", || async move {
        let (status, _, _) = call_at(
            sys_ref,
            two,
            Method::POST,
            "/v1/events",
            key_ref,
            Some(event("call.started", "agent_1")),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        receiver_ref.recv_within(Duration::from_millis(300)).await
    })
    .await
    .unwrap();
    got.verify(&secret).expect("signature verifies");

    // A change made on replica two reaches replica one.
    let (status, _, patched) = call_at(
        &sys,
        two,
        Method::PATCH,
        &path,
        &key,
        Some(json!({"description": "from two"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    eventually(SOON, "the edit to reach replica one", || async move {
        let (_, _, body) = call_at(sys_ref, one, Method::GET, path_ref, key_ref, None).await;
        (body["description"] == json!("from two")).then_some(())
    })
    .await
    .unwrap();

    // A deletion on replica two and a revocation on replica one reach the other replica.
    let (status, _, _) = call_at(&sys, two, Method::DELETE, &path, &key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(SOON, "the deletion to reach replica one", || async move {
        let (status, _, _) = call_at(sys_ref, one, Method::GET, path_ref, key_ref, None).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await
    .unwrap();
    let (status, _, _) = call_at(
        &sys,
        one,
        Method::DELETE,
        &format!("/v1/admin/api-keys/{key_id}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(5),
        "the revocation to reach replica two",
        || async move {
            let (status, _, _) = call_at(
                sys_ref,
                two,
                Method::GET,
                "/v1/subscriptions",
                key_ref,
                None,
            )
            .await;
            (status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await
    .unwrap();

    dispatcher2.stop().await.unwrap();
    ingest2.stop().await.unwrap();
}
