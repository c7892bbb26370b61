//! The load generator: closed loop (N requests in flight, single events or batches) and open
//! loop (a fixed rate). Event ids are chosen here (`e<n>`), so receipts match sends by id.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Size of one event's JSON, as the issue asks.
pub const EVENT_BYTES: usize = 500;

/// The type of every event the load generator sends.
pub const EVENT_TYPE: &str = "call.failed";

/// An [`EVENT_TYPE`] event of exactly [`EVENT_BYTES`] bytes, for agent `agent_<agent>`.
pub fn event_json(id: &str, agent: usize) -> String {
    let head = format!(
        r#"{{"id":"{id}","type":"{EVENT_TYPE}","agent_id":"agent_{agent:03}","call_id":"call_{id}","data":{{"failure_code":"sip_503","message":""#
    );
    let tail = r#""}}"#;
    let pad = EVENT_BYTES.saturating_sub(head.len() + tail.len()).max(1);
    let mut s = String::with_capacity(EVENT_BYTES);
    s.push_str(&head);
    // Printable filler, so the message is ordinary text.
    for i in 0..pad {
        s.push(if i % 8 == 7 { ' ' } else { 'x' });
    }
    s.push_str(tail);
    s
}

/// What the sender recorded, shared with the report.
pub struct Sent {
    pub start: Instant,
    /// Nanoseconds since `start` at which event n was sent (open loop: scheduled).
    pub send_ns: Vec<AtomicU64>,
    pub accepted: Vec<AtomicBool>,
    /// Nanoseconds since `start` at which the last 202 (or batch 200) came back.
    pub last_ack_ns: AtomicU64,
    pub http_errors: AtomicU64,
    pub retries: AtomicU64,
}

impl Sent {
    pub fn new(start: Instant, events: usize) -> Arc<Self> {
        Arc::new(Sent {
            start,
            send_ns: (0..events).map(|_| AtomicU64::new(0)).collect(),
            accepted: (0..events).map(|_| AtomicBool::new(false)).collect(),
            last_ack_ns: AtomicU64::new(0),
            http_errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn acked(&self) {
        self.last_ack_ns.fetch_max(self.now(), Relaxed);
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted.iter().filter(|a| a.load(Relaxed)).count()
    }
}

#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub api: String,
    /// One API key per tenant; event n goes to tenant `n % keys.len()`.
    pub keys: Arc<Vec<String>>,
    /// Events go to agents `0..agents` round robin.
    pub agents: usize,
}

impl Target {
    /// The (tenant, agent) of event `n`: both round robin. The one place that decides it, for
    /// the sender and for the expected deliveries alike.
    pub fn place(&self, n: usize) -> (usize, usize) {
        (n % self.keys.len().max(1), n % self.agents.max(1))
    }

    /// The API key of event `n`'s tenant.
    pub fn key(&self, n: usize) -> &str {
        self.keys.get(self.place(n).0).map_or("", String::as_str)
    }

    /// Posts one event, retrying (same id, so idempotent) on transport errors, 429 and 5xx.
    async fn post_one(&self, sent: &Sent, n: usize) {
        let body = event_json(&format!("e{n}"), self.place(n).1);
        for attempt in 0..20 {
            if attempt > 0 {
                sent.retries.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let r = self
                .client
                .post(format!("{}/v1/events", self.api))
                .bearer_auth(self.key(n))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 202 => {
                    let _ = r.bytes().await;
                    sent.accepted[n].store(true, Relaxed);
                    sent.acked();
                    return;
                }
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    sent.http_errors.fetch_add(1, Relaxed);
                }
                Ok(r) => {
                    sent.http_errors.fetch_add(1, Relaxed);
                    eprintln!("event e{n}: {} {:?}", r.status(), r.text().await);
                    return;
                }
                Err(_) => {
                    sent.http_errors.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Posts events `from..to` as one batch, with the key of `from`'s tenant (so batches are for
    /// one tenant: the runner refuses batches with several); retries the whole batch
    /// (idempotent ids) on transport errors, 429 and 5xx.
    async fn post_batch(&self, sent: &Sent, from: usize, to: usize) {
        let mut body = String::with_capacity((to - from) * (EVENT_BYTES + 1) + 16);
        body.push_str(r#"{"events":["#);
        for n in from..to {
            if n > from {
                body.push(',');
            }
            body.push_str(&event_json(&format!("e{n}"), self.place(n).1));
        }
        body.push_str("]}");
        let now = sent.now();
        for n in from..to {
            sent.send_ns[n].store(now, Relaxed);
        }
        for attempt in 0..20 {
            if attempt > 0 {
                sent.retries.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let r = self
                .client
                .post(format!("{}/v1/events/batch", self.api))
                .bearer_auth(self.key(from))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 200 => {
                    let Ok(v) = r.json::<Value>().await else {
                        sent.http_errors.fetch_add(1, Relaxed);
                        continue;
                    };
                    let results = v["results"].as_array().cloned().unwrap_or_default();
                    for (i, item) in results.iter().enumerate() {
                        if item.get("sequence").is_some() && from + i < to {
                            sent.accepted[from + i].store(true, Relaxed);
                        } else {
                            sent.http_errors.fetch_add(1, Relaxed);
                        }
                    }
                    sent.acked();
                    return;
                }
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    sent.http_errors.fetch_add(1, Relaxed);
                }
                Ok(r) => {
                    sent.http_errors.fetch_add(1, Relaxed);
                    eprintln!("batch e{from}..e{to}: {} {:?}", r.status(), r.text().await);
                    return;
                }
                Err(_) => {
                    sent.http_errors.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// Closed loop: `in_flight` workers each post the next event until `events` are sent.
pub async fn closed_single(t: &Target, sent: &Arc<Sent>, events: usize, in_flight: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (t, sent, next) = (t.clone(), sent.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= events {
                        break;
                    }
                    sent.send_ns[n].store(sent.now(), Relaxed);
                    t.post_one(&sent, n).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// Closed loop of batches: `in_flight` workers each post the next batch of `batch` events.
pub async fn closed_batch(
    t: &Target,
    sent: &Arc<Sent>,
    events: usize,
    batch: usize,
    in_flight: usize,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (t, sent, next) = (t.clone(), sent.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(batch, Relaxed);
                    if from >= events {
                        break;
                    }
                    t.post_batch(&sent, from, (from + batch).min(events)).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// Open loop: event n is due at `n / rate` seconds and is sent then, however many requests are
/// still in flight (up to 4,096, a safety cap); its send time is the scheduled one, so a stalled
/// system shows in the latency instead of slowing the sender (no coordinated omission).
pub async fn open_loop(t: &Target, sent: &Arc<Sent>, events: usize, rate: f64) {
    let cap = Arc::new(tokio::sync::Semaphore::new(4096));
    let t0 = tokio::time::Instant::now();
    let base = sent.now();
    let mut tasks = Vec::with_capacity(events);
    for n in 0..events {
        let due = Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(t0 + due).await;
        sent.send_ns[n].store(base + due.as_nanos() as u64, Relaxed);
        let Ok(permit) = cap.clone().acquire_owned().await else {
            break;
        };
        let (t, sent) = (t.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            t.post_one(&sent, n).await;
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
