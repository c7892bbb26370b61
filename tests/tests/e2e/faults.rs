//! Faults with real processes: a dispatcher SIGKILLed mid-delivery, nats-server killed and
//! restarted with deliveries pending, three dispatchers sharing the work, a SIGTERM drain.
//!
//! Ingest runs in-process (it is not the one being killed); dispatchers are the real binary
//! (see `procs`). Every request the receiver gets is checked with the independent
//! `standardwebhooks` crate. The retry schedule is short and the HTTP timeout 3 s, so work a
//! dead process held comes back after the deliveries consumer's 9 s ack wait.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{NatsServer, TestReceiver, eventually};

use crate::helpers::*;
use crate::procs::{Proc, counter};

/// Deadline for every accepted event to reach the receiver after a fault.
const ALL_DELIVERED_WITHIN: Duration = Duration::from_secs(45);
const DELIVERIES_SUCCEEDED: &str = "webhooks_deliveries_total";
const SUCCEEDED: &str = "outcome=\"succeeded\"";

/// NATS and an in-process ingest; dispatchers are started by each test as processes.
async fn system() -> System {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let ingest = spawn_ingest(&nats).await;
    System {
        ingest,
        dispatcher: None,
        http: reqwest::Client::new(),
        nats,
    }
}

/// Subscribes `receiver` to every event type with a short retry schedule; answers the secret.
async fn subscribe_all(sys: &System, key: &str, receiver: &TestReceiver, delay_ms: u64) -> String {
    let (_, secret) = sys
        .subscribe(
            key,
            json!({
                "url": receiver.url(),
                "event_types": ["*"],
                "retry": {"max_attempts": 30, "schedule_ms": [delay_ms]},
            }),
        )
        .await;
    secret
}

/// Posts `n` events through the batch API (500 a call); answers the accepted ids in order.
async fn post_events(sys: &System, key: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let mut item = event("call.started", "agent_1");
                item["id"] = json!(format!("{tag}_{i:05}"));
                item
            })
            .collect();
        let (status, body) = sys
            .post("/v1/events/batch", key, json!({"events": items}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for result in body["results"].as_array().expect("results") {
            assert_eq!(result["duplicate"], json!(false), "{result}");
            ids.push(result["id"].as_str().expect("accepted id").to_owned());
        }
    }
    assert_eq!(ids.len(), n);
    ids
}

/// What a receiver saw, per event id: every request verified, counted, with its statuses.
#[derive(Default)]
pub(crate) struct Tally {
    /// Event id → the statuses the receiver answered its requests with, in arrival order.
    pub(crate) seen: BTreeMap<String, Vec<u16>>,
    pub(crate) requests: usize,
}

impl Tally {
    /// Takes requests until every id in `expected` got a 2xx, or panics after `within`.
    pub(crate) async fn until_delivered(
        &mut self,
        receiver: &TestReceiver,
        secret: &str,
        expected: &BTreeSet<String>,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        while self.missing(expected).next().is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_within(left).await {
                Some(got) => self.take(&got, secret),
                None => {
                    let missing: Vec<&String> = self.missing(expected).collect();
                    panic!(
                        "{} of {} accepted events not delivered within {within:?} \
                         (receiver saw {} requests), e.g. {:?}",
                        missing.len(),
                        expected.len(),
                        receiver.count(),
                        &missing[..missing.len().min(5)]
                    );
                }
            }
        }
    }

    /// Takes whatever arrives until the receiver has been quiet for `quiet`.
    pub(crate) async fn until_quiet(
        &mut self,
        receiver: &TestReceiver,
        secret: &str,
        quiet: Duration,
    ) {
        while let Some(got) = receiver.recv_within(quiet).await {
            self.take(&got, secret);
        }
    }

    /// Takes the requests already recorded, without waiting for more.
    async fn taken_so_far(&mut self, receiver: &TestReceiver, secret: &str) {
        while self.requests < receiver.count() {
            let got = receiver
                .recv_within(Duration::from_secs(1))
                .await
                .expect("a counted request is recorded");
            self.take(&got, secret);
        }
    }

    fn take(&mut self, got: &testkit::Received, secret: &str) {
        got.verify(secret).expect("every request is signed");
        let id = got.header("webhook-id").expect("webhook-id").to_owned();
        assert_eq!(got.json()["id"], json!(id), "webhook-id names the event");
        self.seen.entry(id).or_default().push(got.status.as_u16());
        self.requests += 1;
    }

    fn delivered(&self, id: &str) -> bool {
        self.seen
            .get(id)
            .is_some_and(|s| s.iter().any(|c| (200..300).contains(c)))
    }

    fn missing<'a>(&'a self, expected: &'a BTreeSet<String>) -> impl Iterator<Item = &'a String> {
        expected.iter().filter(|id| !self.delivered(id))
    }

    /// Successful requests beyond the first, per event: what a receiver must deduplicate.
    pub(crate) fn duplicates(&self) -> usize {
        self.seen
            .values()
            .map(|s| s.iter().filter(|c| (200..300).contains(*c)).count())
            .map(|ok| ok.saturating_sub(1))
            .sum()
    }
}

/// Messages in a stream right now.
async fn stream_messages(nats: &NatsServer, stream: &str) -> u64 {
    let client = async_nats::connect(nats.url()).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    // `get_stream` answers the stream's info as of now.
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.messages
}

/// Waits until the deliveries work queue is empty: every task was acked, which happens only
/// after a 2xx or a dead letter. A request the receiver recorded does not prove that by itself:
/// its sender may have died before reading the answer, and then the task must come back.
async fn deliveries_settled(nats: &NatsServer) {
    let result = eventually(
        ALL_DELIVERED_WITHIN,
        "every delivery task acked",
        || async {
            (stream_messages(nats, proto::subjects::DELIVERIES_STREAM).await == 0).then_some(())
        },
    )
    .await;
    if let Err(e) = result {
        let left = stream_messages(nats, proto::subjects::DELIVERIES_STREAM).await;
        panic!("{e}: {left} tasks left");
    }
}

/// Waits until the fan-out consumer has acked every event, so every delivery task is queued.
async fn fanout_done(nats: &NatsServer) {
    let client = async_nats::connect(nats.url()).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(proto::subjects::EVENTS_STREAM)
        .await
        .expect("events stream");
    eventually(Duration::from_secs(20), "fan-out to finish", || {
        let stream = &stream;
        async move {
            let info = stream
                .consumer_info(proto::subjects::FANOUT_CONSUMER)
                .await
                .ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await
    .unwrap();
}

/// Each process's `webhooks_deliveries_total{outcome="succeeded"}`, and its `/metrics` text.
async fn succeeded_per_process(dispatchers: &[Proc]) -> (Vec<f64>, Vec<String>) {
    let texts = futures::future::join_all(dispatchers.iter().map(Proc::metrics)).await;
    let counts = texts
        .iter()
        .map(|t| counter(t, DELIVERIES_SUCCEEDED, &[SUCCEEDED]))
        .collect();
    (counts, texts)
}

fn id_set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_delivery_loses_nothing() {
    let started = Instant::now();
    let sys = system().await;
    let key = sys.tenant_key("acme").await;
    // A slow-ish receiver keeps the endpoint's 32 slots busy, so the kill lands mid-request.
    let receiver = TestReceiver::start_with_delay(vec![], Duration::from_millis(50))
        .await
        .unwrap();
    let secret = subscribe_all(&sys, &key, &receiver, 100).await;
    // 32 slots for the 50 ms endpoint (about 640 deliveries/s), so the kill lands mid-stream.
    let mut first =
        Proc::dispatcher(&sys.nats, &[("WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT", "32")]).await;

    let ids = post_events(&sys, &key, 2000, "kill").await;
    // Every task queued before the kill: the crash under test is mid-delivery, not mid-fan-out
    // (a fan-out crash would only add the events consumer's 30 s ack wait to the runtime).
    fanout_done(&sys.nats).await;
    eventually(Duration::from_secs(20), "some deliveries", || async {
        (receiver.count() >= 300).then_some(())
    })
    .await
    .unwrap();
    let status = first.sigkill().await;
    let seen_at_kill = receiver.count();
    assert!(!status.success(), "{status}");
    assert!(
        seen_at_kill < ids.len(),
        "the kill came too late to interrupt anything ({seen_at_kill} requests)"
    );

    let _second = Proc::dispatcher(&sys.nats, &[]).await;
    let mut tally = Tally::default();
    tally
        .until_delivered(&receiver, &secret, &id_set(&ids), ALL_DELIVERED_WITHIN)
        .await;
    deliveries_settled(&sys.nats).await;
    tally.until_quiet(&receiver, &secret, QUIET).await;
    assert_eq!(tally.seen.len(), ids.len(), "only accepted events arrive");
    assert_eq!(
        stream_messages(&sys.nats, proto::subjects::DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    eprintln!(
        "killed after {seen_at_kill} of {} requests; {} requests in all, {} duplicate deliveries; {:?}",
        ids.len(),
        tally.requests,
        tally.duplicates(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_with_deliveries_pending_loses_nothing_and_ingest_answers_503_meanwhile() {
    let started = Instant::now();
    let mut sys = system().await;
    let key = sys.tenant_key("acme").await;
    // The endpoint fails until the outage is over, so tasks are retrying when NATS dies. A 1 s
    // schedule keeps the 30 attempts from running out during the test.
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    receiver.answer_after_script(503).unwrap();
    let secret = subscribe_all(&sys, &key, &receiver, 1000).await;
    // A circuit opened by the 503s would only slow the test down (it costs no attempts).
    let _dispatcher =
        Proc::dispatcher(&sys.nats, &[("WEBHOOKS_BREAKER_THRESHOLD", "1000000")]).await;

    let before = post_events(&sys, &key, 300, "before").await;
    eventually(
        Duration::from_secs(20),
        "every event tried and refused",
        || {
            let n = before.len();
            let receiver = &receiver;
            async move { (receiver.count() >= n).then_some(()) }
        },
    )
    .await
    .unwrap();

    let queued = stream_messages(&sys.nats, proto::subjects::DELIVERIES_STREAM).await;
    assert!(queued > 0, "delivery tasks are pending when NATS dies");
    sys.nats.kill().await.unwrap();
    // Once ingest has noticed the outage (its /readyz says so), every publish is refused.
    eventually(
        Duration::from_secs(10),
        "ingest to notice the outage",
        || {
            let request = sys.http.get(sys.url("/readyz")).send();
            async move {
                let response = request.await.ok()?;
                (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
            }
        },
    )
    .await
    .unwrap();
    let mut refused = Vec::new();
    for i in 0..3 {
        let id = format!("refused_{i}");
        let mut body = event("call.ended", "agent_1");
        body["id"] = json!(id);
        let response = sys
            .http
            .post(sys.url("/v1/events"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        assert!(response.headers().get("retry-after").is_some());
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], json!(503), "{problem}");
        refused.push(id);
    }

    sys.nats.restart().await.unwrap();
    eventually(Duration::from_secs(20), "ingest ready again", || {
        let request = sys.http.get(sys.url("/readyz")).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        }
    })
    .await
    .unwrap();
    let after = post_events(&sys, &key, 100, "after").await;
    receiver.answer_after_script(200).unwrap();

    let expected: BTreeSet<String> = before.iter().chain(&after).cloned().collect();
    let mut tally = Tally::default();
    tally
        .until_delivered(&receiver, &secret, &expected, ALL_DELIVERED_WITHIN)
        .await;
    deliveries_settled(&sys.nats).await;
    tally.until_quiet(&receiver, &secret, QUIET).await;
    for id in &refused {
        assert!(
            !tally.seen.contains_key(id),
            "{id} was answered 503 yet delivered"
        );
    }
    assert_eq!(
        tally.seen.len(),
        expected.len(),
        "only accepted events arrive"
    );
    assert_eq!(
        stream_messages(&sys.nats, proto::subjects::DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    eprintln!(
        "{queued} tasks pending at the kill; {} requests for {} events, {} duplicate deliveries; {:?}",
        tally.requests,
        expected.len(),
        tally.duplicates(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatchers_share_the_work_and_deliver_each_event_exactly_once_without_faults() {
    let started = Instant::now();
    let sys = system().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start_with_delay(vec![], Duration::from_millis(5))
        .await
        .unwrap();
    let secret = subscribe_all(&sys, &key, &receiver, 100).await;
    let dispatchers = [
        Proc::dispatcher(&sys.nats, &[]).await,
        Proc::dispatcher(&sys.nats, &[]).await,
        Proc::dispatcher(&sys.nats, &[]).await,
    ];

    let ids = post_events(&sys, &key, 1500, "shared").await;
    let mut tally = Tally::default();
    tally
        .until_delivered(&receiver, &secret, &id_set(&ids), ALL_DELIVERED_WITHIN)
        .await;
    deliveries_settled(&sys.nats).await;
    tally.until_quiet(&receiver, &secret, QUIET).await;
    assert_eq!(tally.duplicates(), 0, "no duplicates without faults");
    assert_eq!(tally.requests, ids.len(), "one request per event");

    // Every success is counted by the replica that made it, and each replica made some.
    let total = ids.len() as f64;
    let added_up = eventually(Duration::from_secs(10), "the metrics to add up", || {
        let counts = succeeded_per_process(&dispatchers);
        async move {
            let (counts, _) = counts.await;
            (counts.iter().sum::<f64>() == total).then_some(counts)
        }
    })
    .await;
    let per_process = match added_up {
        Ok(counts) => counts,
        Err(e) => {
            let (counts, texts) = succeeded_per_process(&dispatchers).await;
            panic!("{e}: {counts:?}; /metrics:\n{}", texts.join("\n-----\n"));
        }
    };
    for (i, n) in per_process.iter().enumerate() {
        assert!(
            *n > 0.0,
            "dispatcher {i} delivered nothing: {per_process:?}"
        );
    }
    eprintln!(
        "deliveries per dispatcher: {per_process:?}; {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_deliveries_and_hands_back_the_rest() {
    let started = Instant::now();
    let sys = system().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start_with_delay(vec![], Duration::from_secs(1))
        .await
        .unwrap();
    let secret = subscribe_all(&sys, &key, &receiver, 100).await;
    let grace = Duration::from_secs(10);
    // 32 slots for the 1 s endpoint, so at the SIGTERM some deliveries are in flight and most
    // are still queued: both halves of the drain are exercised.
    let mut first = Proc::dispatcher(
        &sys.nats,
        &[
            ("WEBHOOKS_SHUTDOWN_GRACE", "10s"),
            ("WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT", "32"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;

    let ids = post_events(&sys, &key, 200, "drain").await;
    // Events the stopping process had pulled but not yet fanned out come back only after the
    // events consumer's 30 s ack wait; let the fan-out finish so the test is about deliveries.
    fanout_done(&sys.nats).await;
    eventually(Duration::from_secs(20), "deliveries in flight", || async {
        (receiver.count() >= 16).then_some(())
    })
    .await
    .unwrap();
    let sent = Instant::now();
    first.sigterm().await;
    let status = first.wait_exit(grace + Duration::from_secs(5)).await;
    let took = sent.elapsed();
    assert!(status.success(), "drained and exited cleanly: {status}");
    assert!(took < grace, "exited within the grace: {took:?}");
    let first_log = first.log();

    // Every request the first dispatcher made was answered and acked before it exited.
    let seen_at_exit = receiver.count();
    assert!(
        seen_at_exit < ids.len(),
        "something was left to hand back ({seen_at_exit} requests)"
    );
    eventually(
        Duration::from_secs(3),
        "every in-flight request answered",
        || async { (receiver.answered() >= seen_at_exit).then_some(()) },
    )
    .await
    .unwrap();
    let mut tally = Tally::default();
    tally.taken_so_far(&receiver, &secret).await;
    let drained: BTreeSet<String> = tally.seen.keys().cloned().collect();
    assert_eq!(
        tally.requests,
        drained.len(),
        "no duplicates before the stop"
    );

    let _second = Proc::dispatcher(&sys.nats, &[]).await;
    tally
        .until_delivered(&receiver, &secret, &id_set(&ids), ALL_DELIVERED_WITHIN)
        .await;
    deliveries_settled(&sys.nats).await;
    tally.until_quiet(&receiver, &secret, QUIET).await;
    let again: Vec<&String> = tally
        .seen
        .iter()
        .filter(|(_, statuses)| statuses.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        again.is_empty(),
        "deliveries completed during the drain were sent again: {again:?}; the stopped dispatcher's log:\n{first_log}"
    );
    eprintln!(
        "drain took {took:?} with {seen_at_exit} requests made; {:?}",
        started.elapsed()
    );
}

/// What a stopping dispatcher had pulled but not started goes back once, not over and over:
/// handed back at once, a message was pulled again by the same stopping process (its pull
/// requests still open), handed back again, and so on for the whole hand-back window, each
/// time a delivery counted against the fan-out's limit (8). In a rolling restart that
/// dead-lettered events as `system_error` that no fault had touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_dispatcher_hands_each_unstarted_event_back_once() {
    let sys = system().await;
    let key = sys.tenant_key("acme").await;
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    for _ in 0..5 {
        subscribe_all(&sys, &key, &receiver, 100).await;
    }
    // A backlog for one fan-out at a time: at the SIGTERM most events wait in the stream,
    // and the loop has the next in hand.
    post_events(&sys, &key, 3000, "handback").await;
    let mut first = Proc::dispatcher(&sys.nats, &[("WEBHOOKS_FANOUT_CONCURRENCY", "1")]).await;
    first.sigterm().await;
    assert!(first.wait_exit(Duration::from_secs(20)).await.success());

    // Pull what is left as the next replica would, and read how often each was delivered.
    let client = async_nats::connect(sys.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(proto::subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .get_consumer(proto::subjects::FANOUT_CONSUMER)
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(3000)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    let mut deliveries = BTreeMap::<i64, usize>::new();
    while let Some(Ok(message)) = futures::StreamExt::next(&mut batch).await {
        *deliveries
            .entry(message.info().unwrap().delivered)
            .or_default() += 1;
    }
    let left: usize = deliveries.values().sum();
    assert!(left > 100, "a backlog was left: {deliveries:?}");
    // Ours is at most the second: the stopping process had each at most once.
    let most = deliveries.keys().max().copied().unwrap_or(0);
    assert!(
        most <= 2,
        "events delivered {most} times (how many, by times delivered: {deliveries:?})"
    );
}
