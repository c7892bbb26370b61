//! A three-node NATS cluster that loses a node, and a rolling restart of the dispatchers: what
//! users run on Kubernetes (issue 8).
//!
//! Ingest and two dispatchers are real processes against a real three-node JetStream cluster on
//! loopback, with every stream and bucket at three replicas (`WEBHOOKS_STREAM_REPLICAS=3`). A
//! producer posts a few thousand events the way a real one does: one request each, and a request
//! that fails (a `503` while the cluster elects a new leader, or a timeout) is sent again with the
//! same event id, so the retry is idempotent. In the middle, the events stream's leader node is
//! SIGKILLed. Every accepted event must reach the receiver, and ingest must accept again on its
//! own (its client reconnects to the surviving nodes). Then the dispatchers are restarted one
//! after the other (SIGTERM, drain, a new process) while events flow, and again nothing is lost.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{NatsCluster, TestReceiver};

use crate::faults::Tally;
use crate::helpers::*;
use crate::procs::Proc;

/// How long one event may take to be accepted, retries included, across a node's loss.
const ACCEPTED_WITHIN: Duration = Duration::from_secs(60);
/// How long every accepted event may take to arrive after the producer is done.
const DELIVERED_WITHIN: Duration = Duration::from_secs(60);
const REPLICAS: [(&str, &str); 1] = [("WEBHOOKS_STREAM_REPLICAS", "3")];

/// The public API of an ingest process.
#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        Api {
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    async fn post(
        &self,
        path: &str,
        bearer: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value), String> {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.addr);
        matches!(self.http.get(url).send().await, Ok(r) if r.status() == StatusCode::OK)
    }
}

/// What a producer saw: the accepted ids, and how many requests were refused or failed first.
struct Produced {
    accepted: BTreeSet<String>,
    refused: usize,
}

/// Posts `n` events (ids `<tag>_<i>`), 16 requests at a time, each sent again with the same id
/// until it gets its `202`; `accepted` counts them as they are accepted.
async fn produce(
    api: Api,
    key: String,
    tag: &'static str,
    n: usize,
    accepted: Arc<AtomicUsize>,
) -> Produced {
    let refused = Arc::new(AtomicUsize::new(0));
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let (api, key, accepted, refused) =
                (api.clone(), key.clone(), accepted.clone(), refused.clone());
            async move {
                let id = format!("{tag}_{i:05}");
                let mut body = event("call.started", "agent_1");
                body["id"] = json!(id);
                let deadline = Instant::now() + ACCEPTED_WITHIN;
                loop {
                    match api.post("/v1/events", &key, &body).await {
                        Ok((StatusCode::ACCEPTED, _)) => break,
                        Ok((status, answer)) => {
                            assert!(
                                status == StatusCode::SERVICE_UNAVAILABLE
                                    || status == StatusCode::GATEWAY_TIMEOUT,
                                "only unavailability may refuse an event: {status} {answer}"
                            );
                        }
                        Err(_timeout_or_reset) => {}
                    }
                    refused.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        Instant::now() < deadline,
                        "{id} not accepted within {ACCEPTED_WITHIN:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                accepted.fetch_add(1, Ordering::Relaxed);
                id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    Produced {
        accepted: ids.into_iter().collect(),
        refused: refused.load(Ordering::Relaxed),
    }
}

async fn wait_for(count: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + ACCEPTED_WITHIN;
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "the producer stalled before the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node leading `stream` now, by the stream's cluster info.
async fn stream_leader(cluster: &NatsCluster, stream: &str) -> usize {
    let urls: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|u| u.parse().unwrap())
        .collect();
    let client = async_nats::connect(urls.as_slice()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(stream).await.unwrap();
    let info = stream.info().await.unwrap();
    let cluster_info = info.cluster.as_ref().expect("a clustered stream");
    assert_eq!(info.config.num_replicas, 3, "streams have three replicas");
    let leader = cluster_info.leader.clone().expect("a leader");
    cluster.index_of(&leader).expect("a known node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_stream_and_a_rolling_dispatcher_restart_lose_nothing() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    let ingest = Proc::ingest_at(&urls, &REPLICAS).await;
    let mut dispatchers = [
        Proc::dispatcher_at(&urls, &REPLICAS).await,
        Proc::dispatcher_at(&urls, &REPLICAS).await,
    ];
    let api = Api::new(ingest.addr());
    let (status, body) = api
        .post("/v1/admin/tenants/acme/api-keys", ADMIN_TOKEN, &json!({}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    let receiver = TestReceiver::start(vec![]).await.unwrap();
    let (status, sub) = api
        .post(
            "/v1/subscriptions",
            &key,
            &json!({"url": receiver.url(), "event_types": ["*"], "retry": {"max_attempts": 30, "schedule_ms": [500]}}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    let secret = sub["secret"].as_str().unwrap().to_owned();
    // Both dispatchers see the subscription before the first event (the KV watch, over R3).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Lose the events stream's leader in the middle of 3,000 events.
    let accepted = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(
        api.clone(),
        key.clone(),
        "node",
        3000,
        accepted.clone(),
    ));
    wait_for(&accepted, 1000).await;
    let victim = stream_leader(&cluster, proto::subjects::EVENTS_STREAM).await;
    cluster.kill(victim).await.unwrap();
    let killed_at = accepted.load(Ordering::Relaxed);
    let produced = producer.await.unwrap();
    assert_eq!(
        produced.accepted.len(),
        3000,
        "every event is accepted in the end"
    );
    assert!(
        api.ready().await,
        "ingest recovered on its own:\n{}",
        ingest.log()
    );
    let mut tally = Tally::default();
    tally
        .until_delivered(&receiver, &secret, &produced.accepted, DELIVERED_WITHIN)
        .await;
    eprintln!(
        "node n{victim} (events stream leader) killed after {killed_at} accepted; {} requests refused or failed and retried; {} duplicate deliveries; {:?}",
        produced.refused,
        tally.duplicates(),
        started.elapsed()
    );

    // 2. Restart the dispatchers one after the other while 2,000 more events flow.
    let accepted = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(
        api.clone(),
        key.clone(),
        "roll",
        2000,
        accepted.clone(),
    ));
    for (i, dispatcher) in dispatchers.iter_mut().enumerate() {
        wait_for(&accepted, 400 * (i + 1)).await;
        dispatcher.sigterm().await;
        let status = dispatcher.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "a drained dispatcher exits cleanly: {status}"
        );
        // Its log goes with it; printed now, it is shown if the test fails.
        eprintln!("----- stopped dispatcher's log -----\n{}", dispatcher.log());
        *dispatcher = Proc::dispatcher_at(&urls, &REPLICAS).await;
    }
    let produced = producer.await.unwrap();
    assert_eq!(produced.accepted.len(), 2000);
    tally
        .until_delivered(&receiver, &secret, &produced.accepted, DELIVERED_WITHIN)
        .await;
    tally.until_quiet(&receiver, &secret, QUIET).await;
    assert_eq!(tally.seen.len(), 5000, "only accepted events arrive");
    eprintln!(
        "rolling restart: {} duplicate deliveries in all; {:?}",
        tally.duplicates(),
        started.elapsed()
    );
    assert!(cluster.is_running((victim + 1) % 3));
}
