//! The fast receiver: answers `204`, counts deliveries per (subscription, `webhook-id`) to find
//! loss and duplicates, records the first receipt time of each, verifies a sample of signatures
//! with the independent `standardwebhooks` crate, and never answers on blackholed paths.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;

/// Which (subscription, event) pairs should be delivered: event `n`'s subscriptions are
/// `subs[offsets[n]..offsets[n + 1]]`, and a pair's position in `subs` is its slot. Only these
/// pairs get counters, so 100,000 subscriptions cost as much as the deliveries expected, not
/// subscriptions × events.
#[derive(Default)]
pub struct Expect {
    offsets: Vec<usize>,
    subs: Vec<usize>,
}

impl Expect {
    /// From the matching subscriptions of each event, in event order.
    pub fn new(targets: impl IntoIterator<Item = Vec<usize>>) -> Self {
        let mut e = Expect {
            offsets: vec![0],
            subs: Vec::new(),
        };
        for t in targets {
            e.subs.extend(t);
            e.offsets.push(e.subs.len());
        }
        e
    }

    pub fn events(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn slots(&self) -> usize {
        self.subs.len()
    }

    /// The slot of (`sub`, event `n`), if `sub` should receive `n`.
    pub fn slot(&self, sub: usize, n: usize) -> Option<usize> {
        let (from, to) = (*self.offsets.get(n)?, *self.offsets.get(n + 1)?);
        (from..to).find(|&i| self.subs[i] == sub)
    }

    /// Every expected pair as (slot, subscription, event).
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.offsets
            .windows(2)
            .enumerate()
            .flat_map(move |(n, w)| (w[0]..w[1]).map(move |i| (i, self.subs[i], n)))
    }

    /// The subscription of slot `i`.
    pub fn sub(&self, i: usize) -> usize {
        self.subs[i]
    }
}

/// What one run's receiver saw. Subscription `k` posts to `/s/{k}`; measured events carry ids
/// `e<n>` (n < `expect.events()`), warm-up events `w<n>`, probes `p<n>`.
pub struct Recv {
    pub start: Instant,
    pub expect: Expect,
    pub subs: usize,
    /// Deliveries per expected (sub, event) pair, by slot (see [`Expect`]).
    pub counts: Vec<AtomicU32>,
    /// Nanoseconds since `start` of the first receipt; 0 = none yet.
    pub first_ns: Vec<AtomicU64>,
    pub blackhole: Vec<bool>,
    /// Distinct expected (sub, event) pairs received.
    pub delivered: AtomicU64,
    /// Receipts of a measured event by a subscription that should not have had it.
    pub misrouted: AtomicU64,
    /// Every request, measured or not.
    pub requests: AtomicU64,
    pub warm: AtomicU64,
    pub probes: AtomicU64,
    pub other: AtomicU64,
    /// Verify one request in `verify_every` (0: none).
    pub verify_every: u64,
    pub secrets: RwLock<Vec<String>>,
    pub verified: AtomicU64,
    pub verify_failed: AtomicU64,
}

impl Recv {
    /// `blackhole[k]`: subscription k never answers; its length is the number of subscriptions.
    pub fn new(start: Instant, expect: Expect, blackhole: Vec<bool>) -> Arc<Self> {
        let slots = expect.slots();
        Arc::new(Recv {
            start,
            expect,
            subs: blackhole.len(),
            counts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            first_ns: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            blackhole,
            delivered: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            other: AtomicU64::new(0),
            verify_every: 97,
            secrets: RwLock::new(Vec::new()),
            verified: AtomicU64::new(0),
            verify_failed: AtomicU64::new(0),
        })
    }
}

async fn receive(
    State(r): State<Arc<Recv>>,
    Path(k): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = r.start.elapsed().as_nanos() as u64;
    if r.blackhole.get(k).copied().unwrap_or(false) {
        // Never answer: the dispatcher's HTTP timeout is the only way out.
        std::future::pending::<()>().await;
    }
    let seen = r.requests.fetch_add(1, Relaxed);
    if r.verify_every > 0 && seen % r.verify_every == 0 {
        let secret = r
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .cloned();
        let ok = secret
            .and_then(|s| standardwebhooks::Webhook::new(&s).ok())
            .is_some_and(|wh| wh.verify(&body, &headers).is_ok());
        if ok {
            r.verified.fetch_add(1, Relaxed);
        } else {
            r.verify_failed.fetch_add(1, Relaxed);
        }
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match id
        .strip_prefix('e')
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| *n < r.expect.events() && k < r.subs)
    {
        Some(n) => match r.expect.slot(k, n) {
            Some(slot) => {
                if r.counts[slot].fetch_add(1, Relaxed) == 0 {
                    r.first_ns[slot].store(now.max(1), Relaxed);
                    r.delivered.fetch_add(1, Relaxed);
                }
            }
            None => {
                r.misrouted.fetch_add(1, Relaxed);
            }
        },
        None if id.starts_with('w') => {
            r.warm.fetch_add(1, Relaxed);
        }
        None if id.starts_with('p') => {
            r.probes.fetch_add(1, Relaxed);
        }
        None => {
            r.other.fetch_add(1, Relaxed);
        }
    }
    StatusCode::NO_CONTENT
}

/// Serves `r` on `listener` until the returned task is aborted.
pub fn serve(r: Arc<Recv>, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let app = Router::new().route("/s/{k}", post(receive)).with_state(r);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("receiver stopped: {e}");
        }
    })
}

/// `bench receiver --listen ADDR [--blackhole]`: a standalone receiver for manual runs; prints
/// the request rate every second. With `--blackhole` it never answers.
pub async fn standalone(listen: &str, blackhole: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let r = Recv::new(Instant::now(), Expect::default(), vec![blackhole; 1024]);
    eprintln!(
        "receiver on http://{}/s/<n> (blackhole: {blackhole})",
        listener.local_addr()?
    );
    let _server = serve(r.clone(), listener);
    let mut last = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = r.requests.load(Relaxed);
        println!("{} requests/s, {now} total", now - last);
        last = now;
    }
}
