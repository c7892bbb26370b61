//! The events feed, events by id, and replays (of one event, and of a subscription's range).
//!
//! Replays go through the normal delivery path in a lane of their own: the receiver sees the
//! original `webhook-id`, signed, with `webhook-attempt: 1`, and a failing endpoint retries and
//! dead-letters as usual.

use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Received, TestReceiver, eventually};

use crate::helpers::*;

/// Now as RFC 3339 (milliseconds), for `since`/`until`.
fn now() -> String {
    proto::time::format_rfc3339(&proto::time::from_system(SystemTime::now()))
}

/// A pause long enough that times captured on either side of it order events unambiguously
/// (acceptance times compare at millisecond precision).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Takes exactly `n` deliveries, each verified with `secret`.
async fn take(receiver: &TestReceiver, n: usize, secret: &str) -> Vec<Received> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let one = receiver
            .recv_within(SOON)
            .await
            .unwrap_or_else(|| panic!("delivery {} of {n} did not arrive", i + 1));
        one.verify(secret).expect("signature verifies");
        got.push(one);
    }
    got
}

/// The webhook ids of deliveries, as a set.
fn ids(got: &[Received]) -> HashSet<String> {
    got.iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect()
}

fn set(ids: &[&String]) -> HashSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

/// One feed page: the ids in it and its `next_cursor`.
async fn feed(sys: &System, key: &str, query: &str) -> (Vec<String>, String) {
    let (status, body) = sys.get(&format!("/v1/events?{query}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let cursor = body["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("the feed always has a next_cursor: {body}"))
        .to_owned();
    (ids, cursor)
}

/// Every page from `after` (none: the start) with `limit`, in order; and the last cursor.
async fn feed_all(
    sys: &System,
    key: &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<String>, String) {
    let mut all = Vec::new();
    let mut cursor = after.map(str::to_owned);
    for _ in 0..100 {
        let query = match &cursor {
            Some(c) => format!("limit={limit}&after={c}"),
            None => format!("limit={limit}"),
        };
        let (page, next) = feed(sys, key, &query).await;
        assert!(page.len() <= limit, "a page holds at most `limit` items");
        if page.is_empty() {
            assert_eq!(
                cursor.as_deref().unwrap_or("0"),
                next,
                "an empty page keeps the cursor"
            );
            return (all, next);
        }
        all.extend(page);
        cursor = Some(next);
    }
    panic!("the feed did not end");
}

fn first_error_field(body: &Value) -> &str {
    body["errors"][0]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_event_read_by_id_right_after_its_202_is_the_envelope_its_receiver_got() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let other = sys.tenant_key("globex").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (_, secret) = sys
        .subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;

    let id = sys
        .send_event(&key, event("transcript.ready", "agent_1"))
        .await;
    let (status, by_id) = sys.get(&format!("/v1/events/{id}"), &key).await;
    assert_eq!(status, StatusCode::OK, "{by_id}");

    let got = take(&receiver, 1, &secret).await.remove(0);
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    assert_eq!(
        by_id,
        got.json(),
        "GET by id answers the delivered envelope"
    );

    let (status, body) = sys.get(&format!("/v1/events/{id}"), &other).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's event: {body}"
    );
    let (status, _) = sys.get("/v1/events/evt_nope", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys.get("/v1/events/not.an.id", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A repeated idempotent event is found under its id, once.
    let mut body = event("qa.scored", "agent_1");
    body["id"] = json!("producer-42");
    sys.send_event(&key, body.clone()).await;
    let (status, again) = sys.post("/v1/events", &key, body).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (StatusCode::ACCEPTED, &json!(true))
    );
    let (status, found) = sys.get("/v1/events/producer-42", &key).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["type"], json!("qa.scored"));
}

#[tokio::test]
async fn the_feed_pages_in_acceptance_order_and_resumes_from_its_last_cursor() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let other = sys.tenant_key("globex").await;

    let mut posted = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..5 {
        posted.push(
            sys.send_event(&key, event("call.started", &format!("a{i}")))
                .await,
        );
        theirs.push(sys.send_event(&other, event("call.started", "a0")).await);
    }

    let (seen, cursor) = feed_all(&sys, &key, None, 2).await;
    assert_eq!(
        seen, posted,
        "every event once, in acceptance order, no other tenant's"
    );
    let (page, same) = feed(&sys, &key, &format!("after={cursor}")).await;
    assert!(page.is_empty());
    assert_eq!(same, cursor, "an empty page returns the given cursor");

    let later = vec![
        sys.send_event(&key, event("call.ended", "a9")).await,
        sys.send_event(&key, event("qa.scored", "a9")).await,
    ];
    sys.send_event(&other, event("call.ended", "a9")).await;
    let (resumed, _) = feed_all(&sys, &key, Some(&cursor), 1000).await;
    assert_eq!(
        resumed, later,
        "the last cursor resumes with exactly the new events"
    );

    let (their_feed, _) = feed_all(&sys, &other, None, 1000).await;
    assert_eq!(
        their_feed[..5],
        theirs[..],
        "tenants see only their own events"
    );
    assert_eq!(their_feed.len(), 6);

    let nobody = sys.tenant_key("initech").await;
    let (page, cursor) = feed(&sys, &nobody, "").await;
    assert!(page.is_empty());
    assert_eq!(cursor, "0", "an empty feed resumes from the start");
}

#[tokio::test]
async fn the_feed_filters_by_type_and_by_agent() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let started_a1 = sys.send_event(&key, event("call.started", "a1")).await;
    let ended_a1 = sys.send_event(&key, event("call.ended", "a1")).await;
    let started_a2 = sys.send_event(&key, event("call.started", "a2")).await;
    let scored_a2 = sys.send_event(&key, event("qa.scored", "a2")).await;

    let (by_type, _) = feed(&sys, &key, "type=call.started").await;
    assert_eq!(by_type, [started_a1.clone(), started_a2.clone()]);
    let (by_agent, _) = feed(&sys, &key, "agent_id=a2").await;
    assert_eq!(by_agent, [started_a2.clone(), scored_a2]);
    let (both, _) = feed(&sys, &key, "agent_id=a1&type=call.ended").await;
    assert_eq!(both, [ended_a1]);

    // The cursor of a filtered page resumes the filtered feed.
    let (first, cursor) = feed(&sys, &key, "type=call.started&limit=1").await;
    assert_eq!(first, [started_a1]);
    let (rest, _) = feed(&sys, &key, &format!("type=call.started&after={cursor}")).await;
    assert_eq!(rest, [started_a2]);
}

#[tokio::test]
async fn a_bad_cursor_type_agent_or_limit_is_a_422_naming_the_field() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    for (query, field) in [
        ("after=abc", "after"),
        ("after=-1", "after"),
        ("type=call.nope", "type"),
        ("type=call.*", "type"),
        ("agent_id=not.an.agent", "agent_id"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let (status, body) = sys.get(&format!("/v1/events?{query}"), &key).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(first_error_field(&body), field, "{query}: {body}");
    }
}

#[tokio::test]
async fn replaying_an_event_resends_it_with_its_original_webhook_id_to_the_matching_subscriptions()
{
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let other = sys.tenant_key("globex").await;
    let calls = TestReceiver::start(vec![]).await.unwrap();
    let agent = TestReceiver::start(vec![]).await.unwrap();
    let scores = TestReceiver::start(vec![]).await.unwrap();
    let off = TestReceiver::start(vec![]).await.unwrap();
    let (_, calls_secret) = sys
        .subscribe(&key, json!({"url": calls.url(), "event_types": ["call.*"]}))
        .await;
    let (_, agent_secret) = sys
        .subscribe(
            &key,
            json!({"url": agent.url(), "event_types": ["*"], "agent_ids": ["a1"]}),
        )
        .await;
    let (scores_id, scores_secret) = sys
        .subscribe(
            &key,
            json!({"url": scores.url(), "event_types": ["qa.scored"]}),
        )
        .await;
    let (off_id, _) = sys
        .subscribe(
            &key,
            json!({"url": off.url(), "event_types": ["*"], "enabled": false}),
        )
        .await;

    let id = sys.send_event(&key, event("call.started", "a1")).await;
    let live_calls = take(&calls, 1, &calls_secret).await.remove(0);
    take(&agent, 1, &agent_secret).await;

    let (status, body) = sys
        .post(&format!("/v1/events/{id}/replay"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"deliveries": 2}));
    for (receiver, secret) in [(&calls, &calls_secret), (&agent, &agent_secret)] {
        let got = take(receiver, 1, secret).await.remove(0);
        assert_eq!(
            got.header("webhook-id"),
            Some(id.as_str()),
            "the original webhook-id"
        );
        assert_eq!(got.header("webhook-attempt"), Some("1"));
        assert_eq!(got.json()["id"], json!(id));
    }
    assert!(
        scores.expect_none(QUIET).await.is_none(),
        "its filters do not match"
    );
    assert!(
        off.expect_none(Duration::ZERO).await.is_none(),
        "disabled by its owner"
    );

    // To one subscription, whatever its filters: an explicit resend.
    let (status, body) = sys
        .post(
            &format!("/v1/events/{id}/replay"),
            &key,
            json!({"subscription_id": scores_id}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"deliveries": 1}))
    );
    let got = take(&scores, 1, &scores_secret).await.remove(0);
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("webhook-attempt"), Some("1"));
    assert_eq!(
        got.json(),
        live_calls.json(),
        "the same envelope as the live delivery"
    );
    assert!(
        calls.expect_none(QUIET).await.is_none(),
        "only the one asked for"
    );

    let (status, body) = sys
        .post(
            &format!("/v1/events/{id}/replay"),
            &key,
            json!({"subscription_id": off_id}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(first_error_field(&body), "subscription_id");
    let (status, _) = sys
        .post(
            &format!("/v1/events/{id}/replay"),
            &key,
            json!({"subscription_id": "sub_nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = sys
        .post(&format!("/v1/events/{id}/replay"), &other, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's event");
    let (status, _) = sys
        .post("/v1/events/evt_nope/replay", &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replaying_a_subscription_sends_exactly_the_matching_events_accepted_in_range() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    let other = sys.tenant_key("globex").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["call.*", "qa.scored"], "agent_ids": ["a1"]}),
        )
        .await;

    let t0 = now();
    tick().await;
    let e1 = sys.send_event(&key, event("call.started", "a1")).await;
    let _e2 = sys.send_event(&key, event("intent.detected", "a1")).await;
    tick().await;
    let t1 = now();
    tick().await;
    let e3 = sys.send_event(&key, event("call.ended", "a1")).await;
    let e4 = sys.send_event(&key, event("qa.scored", "a1")).await;
    let _e5 = sys.send_event(&key, event("sentiment.scored", "a1")).await;
    let _e6 = sys.send_event(&key, event("call.started", "a2")).await;
    sys.send_event(&other, event("call.started", "a1")).await;
    tick().await;
    let t2 = now();
    tick().await;
    let e7 = sys.send_event(&key, event("call.failed", "a1")).await;

    let live = take(&receiver, 4, &secret).await;
    assert_eq!(ids(&live), set(&[&e1, &e3, &e4, &e7]));
    assert!(receiver.expect_none(QUIET).await.is_none());

    let path = format!("/v1/subscriptions/{sub}/replay");
    let (status, body) = sys
        .post(&path, &key, json!({"since": t1, "until": t2}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["replayed"], json!(2), "{body}");
    let got = take(&receiver, 2, &secret).await;
    assert_eq!(ids(&got), set(&[&e3, &e4]));
    assert!(got.iter().all(|g| g.header("webhook-attempt") == Some("1")));
    assert!(
        receiver.expect_none(QUIET).await.is_none(),
        "nothing outside the range"
    );

    let (status, body) = sys
        .post(
            &path,
            &key,
            json!({"since": t1, "until": t2, "event_types": ["qa.*"]}),
        )
        .await;
    assert_eq!(
        (status, &body["replayed"]),
        (StatusCode::ACCEPTED, &json!(1)),
        "{body}"
    );
    assert_eq!(ids(&take(&receiver, 1, &secret).await), set(&[&e4]));

    let (status, body) = sys.post(&path, &key, json!({"since": t0})).await;
    assert_eq!(
        (status, &body["replayed"]),
        (StatusCode::ACCEPTED, &json!(4)),
        "{body}"
    );
    assert_eq!(body["truncated"], json!(false));
    assert_eq!(
        ids(&take(&receiver, 4, &secret).await),
        set(&[&e1, &e3, &e4, &e7])
    );
    assert!(receiver.expect_none(QUIET).await.is_none());

    for (bad, field) in [
        (json!({}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (json!({"since": t2, "until": t1}), "until"),
        (
            json!({"since": t0, "event_types": ["call.nope"]}),
            "event_types[0]",
        ),
    ] {
        let (status, body) = sys.post(&path, &key, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(first_error_field(&body), field, "{bad}: {body}");
    }
    let (status, _) = sys.post(&path, &other, json!({"since": t0})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's subscription"
    );
    let (status, _) = sys
        .post(
            "/v1/subscriptions/sub_nope/replay",
            &key,
            json!({"since": t0}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_replay_to_a_failing_endpoint_retries_and_then_dead_letters() {
    let sys = System::start().await;
    let key = sys.tenant_key("acme").await;
    // The live delivery succeeds; the replay fails twice, its whole budget.
    let receiver = TestReceiver::start(vec![200, 500, 500]).await.unwrap();
    let (sub, secret) = sys
        .subscribe(
            &key,
            json!({"url": receiver.url(), "event_types": ["*"],
                   "retry": {"max_attempts": 2, "schedule_ms": [50]}}),
        )
        .await;
    let id = sys.send_event(&key, event("outcome.tagged", "a1")).await;
    take(&receiver, 1, &secret).await;

    let (status, body) = sys
        .post(&format!("/v1/events/{id}/replay"), &key, json!({}))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"deliveries": 1}))
    );
    let attempts = take(&receiver, 2, &secret).await;
    let numbers: Vec<_> = attempts
        .iter()
        .map(|a| a.header("webhook-attempt"))
        .collect();
    assert_eq!(numbers, [Some("1"), Some("2")]);
    assert!(
        attempts
            .iter()
            .all(|a| a.header("webhook-id") == Some(id.as_str()))
    );

    let dead = eventually(SOON, "the replay to be dead-lettered", || async {
        let (_, body) = sys
            .get(&format!("/v1/dead-letters?subscription_id={sub}"), &key)
            .await;
        body["data"].as_array().and_then(|d| d.first().cloned())
    })
    .await
    .unwrap();
    assert_eq!(dead["event_id"], json!(id));
    assert_eq!(dead["attempts"], json!(2));
}

#[tokio::test]
async fn a_large_replay_to_a_slow_endpoint_does_not_delay_a_live_delivery_to_another() {
    // Eight deliveries in flight per lane, fewer than one endpoint may take: were the replay
    // queued with live work, the slow endpoint alone would fill the live lane for many seconds.
    testkit::init_test_tracing();
    let nats = testkit::NatsServer::start()
        .await
        .expect("nats-server starts");
    let sys = System {
        ingest: spawn_ingest(&nats).await,
        dispatcher: Some(
            spawn_dispatcher_with(&nats, |s| {
                s.max_in_flight = 8;
                s.replay_max_in_flight = 8;
            })
            .await,
        ),
        http: reqwest::Client::new(),
        nats,
    };
    let key = sys.tenant_key("acme").await;
    let fast = TestReceiver::start(vec![]).await.unwrap();
    let (_, fast_secret) = sys
        .subscribe(&key, json!({"url": fast.url(), "event_types": ["*"]}))
        .await;

    let since = now();
    tick().await;
    let events: Vec<Value> = (0..300).map(|_| event("outcome.tagged", "bulk")).collect();
    let (status, body) = sys
        .post("/v1/events/batch", &key, json!({"events": events}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once the fast endpoint has all 300, every one has been fanned out.
    take(&fast, 300, &fast_secret).await;

    // Created after the fan-out, the slow endpoint gets these events by replay only.
    let slow = TestReceiver::start_with_delay(vec![], Duration::from_millis(500))
        .await
        .unwrap();
    let (slow_sub, _) = sys
        .subscribe(
            &key,
            json!({"url": slow.url(), "event_types": ["outcome.tagged"]}),
        )
        .await;
    let (status, body) = sys
        .post(
            &format!("/v1/subscriptions/{slow_sub}/replay"),
            &key,
            json!({"since": since}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["replayed"], json!(300));
    eventually(SOON, "the replay to reach the slow endpoint", || async {
        (slow.count() > 0).then_some(())
    })
    .await
    .unwrap();

    let started = Instant::now();
    let live = sys.send_event(&key, event("call.started", "live")).await;
    let got = fast
        .recv_within(Duration::from_secs(1))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the live delivery waited behind the replay ({} replayed so far)",
                slow.count()
            )
        });
    let elapsed = started.elapsed();
    got.verify(&fast_secret).unwrap();
    assert_eq!(got.header("webhook-id"), Some(live.as_str()));
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert!(
        slow.answered() < 300,
        "the replay was still running when the live event arrived"
    );
}
