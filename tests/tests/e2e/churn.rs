//! Nothing grows with churn (issue 14): 10,000 subscriptions created and deleted leave no
//! entry in any replica's in-memory tables and, once their deletion markers expire, no message
//! or subject in the subscriptions and failing-since buckets.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

const SUBSCRIPTIONS: usize = 10_000;
/// Short, so the markers' expiry is seen here (the default is an hour).
const MARKER_TTL: Duration = Duration::from_secs(2);

/// A replica's `webhooks_mirror_entries` for `mirror`: live keys plus tombstones.
async fn mirror_entries(sys: &System, addr: std::net::SocketAddr, mirror: &str) -> f64 {
    let text = metrics_text(sys, addr).await;
    text.lines()
        .filter(|l| {
            l.starts_with("webhooks_mirror_entries{") && l.contains(&format!("mirror=\"{mirror}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn bucket_messages(sys: &System, bucket: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_created_and_deleted_leave_nothing_behind_on_any_replica() {
    let ttl = |s: &mut common::config::SharedSettings| s.delete_marker_ttl = MARKER_TTL;
    let mut sys = system_with(|s| ttl(&mut s.shared)).await;
    let first = std::mem::replace(
        &mut sys.ingest,
        spawn_ingest_with(&sys.nats, |s| ttl(&mut s.shared)).await,
    );
    first.stop().await.unwrap();
    let second_ingest = spawn_ingest_with(&sys.nats, |s| ttl(&mut s.shared)).await;
    let second_dispatcher = spawn_dispatcher_with(&sys.nats, |s| ttl(&mut s.shared)).await;
    let ingests = [sys.ingest.addr, second_ingest.addr];
    let dispatchers = [
        sys.dispatcher.as_ref().unwrap().addr,
        second_dispatcher.addr,
    ];
    let key = sys.tenant_key("acme").await;

    // Three subscriptions whose endpoint fails: each gets a failing-since record.
    let failing = TestReceiver::start(vec![500; 64]).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = json!({"url": failing.url(), "event_types": ["call.ended"], "retry": {"max_attempts": 1}});
        ids.push(sys.subscribe(&key, body).await.0);
    }
    eventually(SOON, "failing-since records", || async {
        sys.send_event(&key, event("call.ended", "agent_1")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (bucket_messages(&sys, proto::subjects::HEALTH_BUCKET).await >= 3).then_some(())
    })
    .await
    .unwrap();

    // And 10,000 more, 32 requests at a time.
    let created: Vec<String> = futures::stream::iter(0..SUBSCRIPTIONS)
        .map(|i| {
            let (sys, key) = (&sys, &key);
            async move {
                let body =
                    json!({"url": format!("http://127.0.0.1:9/{i}"), "event_types": ["qa.scored"]});
                sys.subscribe(key, body).await.0
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    ids.extend(created);
    for addr in ingests.into_iter().chain(dispatchers) {
        eventually(SOON, "every replica holds them all", || async {
            (mirror_entries(&sys, addr, "subscriptions").await >= SUBSCRIPTIONS as f64)
                .then_some(())
        })
        .await
        .unwrap();
    }

    // Deleted through both ingest replicas.
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let (sys, key) = (&sys, &key);
            let addr = ingests[i % 2];
            async move {
                let resp = sys
                    .http
                    .request(
                        Method::DELETE,
                        format!("http://{addr}/v1/subscriptions/{id}"),
                    )
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    for addr in ingests {
        eventually(SOON, "an ingest's subscription table empty", || async {
            (mirror_entries(&sys, addr, "subscriptions").await == 0.0).then_some(())
        })
        .await
        .unwrap();
    }
    for addr in dispatchers {
        for mirror in ["subscriptions", "health"] {
            eventually(SOON, "a dispatcher's table empty", || async {
                (mirror_entries(&sys, addr, mirror).await == 0.0).then_some(())
            })
            .await
            .unwrap_or_else(|e| panic!("{mirror}: {e}"));
        }
    }
    for bucket in [
        proto::subjects::SUBSCRIPTIONS_BUCKET,
        proto::subjects::HEALTH_BUCKET,
    ] {
        eventually(SOON, "the deletion markers expired", || async {
            (bucket_messages(&sys, bucket).await == 0).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{bucket}: {e}"));
    }
}
