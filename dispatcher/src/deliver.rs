//! The deliveries consumer: admit, sign, POST, record the attempt, and then ack, retry or
//! dead-letter.
//!
//! # Attempt counting
//! The attempt number travels in the task (`Delivery.attempt`), not in JetStream's delivery
//! count. A retry is a new task for the next attempt with `not_before` set from the schedule,
//! filed in the waiting room (see `waiting`) and PubAck'ed before the old one is acked. So an
//! open circuit, a rate limit or a busy endpoint can set a task aside as often as it needs to
//! without burning the endpoint's attempts.
//!
//! # Waiting costs nothing
//! Nothing waits in a consumer: a task whose endpoint cannot take it now (busy, open circuit,
//! rate limit, its tenant's share in use) is filed in the waiting room for its turn on the
//! endpoint's clock (`Gate::defer`) and acked, so it comes back once, when a slot is likely
//! free, instead of being handed back every 250 ms; only waits under a second are slept here.
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use prost::Message as _;
use proto::{
    subjects::{self, http as headers},
    v1::{Attempt, Delivery},
};
use tracing::Instrument as _;

use crate::{
    dead_letter::Death,
    fanout::ack,
    gate::{Admission, Gate, Refusal},
    health::Health,
    http_client,
    metrics::{Metrics, Reason},
    retry::{self, Class, Decision, RetryPolicy},
    subscriptions::{Index, Live, Lookup, Unsignable},
};

/// How often a task for a subscription this replica has not seen yet is handed back before it
/// is dead-lettered as a system error.
const UNKNOWN_SUBSCRIPTION_RETRIES: i64 = 30;
/// JetStream deliveries of one message after which it is dead-lettered as a system error.
const SAFETY_NET_DELIVERIES: i64 = 10_000;
/// Tries at storing an outcome (a retry, a deferral) before the task is handed back: rides out
/// a leader election or a PubAck timeout without making the attempt again.
const STORE_TRIES: u32 = 6;
/// The longest a fan-out waits for a place in a fast endpoint's full line (see
/// [`Deliverer::admit_direct`]). Without it, scenario 2 (a 1 ms endpoint, more offered than it
/// takes) sent half its deliveries round as tasks and delivered 6,300/s instead of 9,800/s;
/// at 50 ms, two of four runs of scenario 4b (5,000 events/s, at this machine's limit) sent a
/// backlog round as tasks and delivered some 77–90 s late, at 250 ms none of three.
pub const FANOUT_PLACE_WAIT: Duration = Duration::from_millis(250);
/// Longest error text kept in attempt records and dead letters.
const MAX_ERROR_CHARS: usize = 512;

/// Shared by the delivery tasks.
pub struct Deliverer {
    pub js: jetstream::Context,
    pub index: Index,
    pub http: reqwest::Client,
    pub url_policy: common::urls::UrlPolicy,
    pub gate: Gate,
    pub health: Health,
    pub waiting: Arc<crate::waiting::Waiting>,
    pub ack_wait: Duration,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the replica stops: a task waiting in line is handed back.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// What became of one attempt.
#[derive(Debug)]
pub struct Tried {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    /// The first bytes of the receiver's answer (empty when there was none).
    pub body: bytes::Bytes,
}

impl crate::pull::Handler for Deliverer {
    async fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        charge: Option<crate::budget::Charge>,
    ) {
        // Held to the end, unless the task waits in line (the line has bounds of its own):
        // `max_in_flight` bounds the deliveries pulled and running at once. The charge is
        // held to the end in every case: a task in line holds its payload too.
        Deliverer::handle(self, message, permit, charge).await;
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_ERROR_CHARS) {
        s.truncate(i);
    }
    s
}

/// Admission asked for one delivery.
pub enum Entry {
    Now(Admission),
    /// Its endpoint (or its tenant's share) is busy: it may wait here for the next slot.
    Line(crate::gate::Place),
    Refused(Refusal),
}

/// What one attempt decided, before it is settled.
enum Verdict {
    Done,
    Retry {
        delay: Duration,
        status: Option<u16>,
        error: String,
    },
    Dead(Death),
}

/// The span of one attempt; its parent is set by the caller.
fn deliver_span(task: &Delivery, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "dispatch.deliver",
        otel.kind = "client",
        event_id = %task.event_id,
        event_type = %task.event_type,
        tenant = %task.tenant_id,
        subscription_id = %task.subscription_id,
        attempt,
        status = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

impl Deliverer {
    async fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut charge: Option<crate::budget::Charge>,
    ) {
        let (sequence, delivered, lane) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered, i.stream.to_owned()))
            .unwrap_or((0, 1, String::new()));
        let task = match Delivery::decode(message.payload.clone()) {
            Ok(task) => task,
            Err(error) => {
                let reason = format!("not a protobuf Delivery: {error}");
                return crate::rejects::set_aside(&self.js, "deliveries", &message, &reason).await;
            }
        };
        if let Err(reason) = crate::rejects::check_delivery(&message.subject, &task) {
            return crate::rejects::set_aside(&self.js, "deliveries", &message, &reason).await;
        }
        let attempt = task.attempt.max(1);
        if task.pending_death.is_some() {
            return self.dead_letter_pending(&message, sequence, task).await;
        }
        let previous = |error: &str| {
            let status = (task.last_status_code > 0).then_some(task.last_status_code as u16);
            Death::system(attempt - 1, status, error.to_owned())
        };
        if delivered > SAFETY_NET_DELIVERIES {
            return self
                .dead_letter(
                    &message,
                    sequence,
                    &task,
                    previous("handed back too many times"),
                )
                .await;
        }
        let live = match self.index.get(&task.subscription_id) {
            Lookup::Live(live) => live,
            Lookup::Deleted => {
                tracing::debug!(subscription_id = %task.subscription_id, "subscription deleted, delivery dropped");
                self.metrics.delivered("dropped");
                return ack(&message, AckKind::Ack).await;
            }
            Lookup::Unknown if delivered < UNKNOWN_SUBSCRIPTION_RETRIES => {
                self.handed_back("unknown_subscription");
                return ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            Lookup::Unknown => {
                return self
                    .dead_letter(&message, sequence, &task, previous("subscription unknown"))
                    .await;
            }
        };
        if live.sub.tenant_id != task.tenant_id {
            let reason = "subscription belongs to another tenant";
            return crate::rejects::set_aside(&self.js, "deliveries", &message, reason).await;
        }
        if !live.sub.enabled {
            if live.sub.disabled_reason.is_empty() {
                // The owner disabled it: it receives nothing and queues nothing.
                self.metrics.delivered("dropped");
                return ack(&message, AckKind::Ack).await;
            }
            let death = Death {
                reason: "subscription_disabled",
                failed_by: "endpoint",
                error: format!("subscription disabled: {}", live.sub.disabled_reason),
                ..previous("")
            };
            return self.dead_letter(&message, sequence, &task, death).await;
        }
        if let Some(wait) = task.not_before.as_ref().and_then(|t| {
            proto::time::to_system(t)
                .duration_since(SystemTime::now())
                .ok()
        }) && wait > Duration::from_millis(5)
        {
            if wait <= crate::waiting::SHORT_WAIT {
                tokio::time::sleep(wait).await;
            } else {
                // Filed in its lane early (a clock ahead of ours, or an older version):
                // it waits in the waiting room, not here.
                let id = subjects::defer_msg_id(&lane, sequence);
                return self.set_aside(&message, &task, id, "not_before").await;
            }
        }
        // A tenant holding its share of the replica's payload memory has its task set aside
        // like one holding its share of the slots: other tenants' tasks are still pulled.
        if let Some(charge) = charge.as_mut()
            && charge.hold_for(&live.sub.tenant_id).is_err()
        {
            let refusal = Refusal::TenantBusy(Duration::from_secs(1));
            let mut later = task.clone();
            let delay = self.gate.defer(&live.sub.tenant_id, &live.sub.id, refusal);
            later.not_before = Some(proto::time::from_system(SystemTime::now() + delay));
            let id = subjects::defer_msg_id(&lane, sequence);
            return self.set_aside(&message, &later, id, "memory_share").await;
        }
        let verdict = match &live.signer {
            Ok(_) => {
                let admission = match self.admit(&message, &live, permit).await {
                    Ok(admission) => admission,
                    Err(None) => return,
                    Err(Some(refusal)) => {
                        let mut later = task.clone();
                        let delay = self.gate.defer(&live.sub.tenant_id, &live.sub.id, refusal);
                        later.not_before =
                            Some(proto::time::from_system(SystemTime::now() + delay));
                        tracing::debug!(subscription_id = %live.sub.id, ?refusal, ?delay, "not admitted, set aside");
                        let id = subjects::defer_msg_id(&lane, sequence);
                        return self.set_aside(&message, &later, id, refusal.reason()).await;
                    }
                };
                self.observe_due(&task, attempt);
                let span = deliver_span(&task, attempt);
                // The fan-out's span, from the task's `traceparent` (a retry keeps the first
                // one's), so every attempt of an event joins the event's trace.
                common::trace_context::set_parent_from_nats(&span, message.headers.as_ref());
                self.try_once(&message, &live, &task, attempt, admission, span)
                    .await
            }
            Err(unsignable) => self.not_signed(&live, &task, attempt, unsignable).await,
        };
        match verdict {
            Verdict::Done => ack(&message, AckKind::Ack).await,
            Verdict::Retry {
                delay,
                status,
                error,
            } => {
                let next = self.next_attempt(&task, attempt + 1, delay, status, error);
                let headers = common::trace_context::copy(message.headers.as_ref());
                let id = subjects::retry_msg_id(&lane, sequence);
                match self.store_retry(&message, &next, headers, id).await {
                    Ok(()) => ack(&message, AckKind::Ack).await,
                    // No room to wait in: the attempt that was made is on the record, in a
                    // dead letter, rather than made again at the same number forever.
                    Err(error) if crate::waiting::no_room(&error) => {
                        let death = Death::no_room(attempt, status, &error);
                        self.dead_letter(&message, sequence, &task, death).await
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "retry not stored, task handed back");
                        ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                }
            }
            Verdict::Dead(death) => self.dead_letter(&message, sequence, &task, death).await,
        }
    }

    /// Admits a queued task now, or after waiting in line when its endpoint or its tenant's
    /// share is only busy. `Err(Some)` sets it aside; `Err(None)` means the replica is stopping
    /// and the task has been handed back.
    async fn admit(
        &self,
        message: &jetstream::Message,
        live: &Live,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Admission, Option<Refusal>> {
        let place = match self.enter(live) {
            Entry::Now(admission) => return Ok(admission),
            Entry::Refused(refusal) => return Err(Some(refusal)),
            Entry::Line(place) => place,
        };
        drop(permit);
        let admitted = self.wait_in_line(live, place).await;
        if matches!(admitted, Err(None)) {
            self.handed_back("stopping");
            ack(message, AckKind::Nak(Some(crate::pull::HAND_BACK_DELAY))).await;
        }
        admitted
    }

    /// Admission for `live` now, or a place in line when its endpoint or its tenant's share is
    /// only busy and the line has room.
    pub fn enter(&self, live: &Live) -> Entry {
        match self.admit_now(live) {
            Ok(entry) => entry,
            Err(busy) => match self
                .gate
                .line(&live.sub.tenant_id, &live.sub.id, self.patience())
            {
                Some(place) => Entry::Line(place),
                None => Entry::Refused(busy),
            },
        }
    }

    /// Admission for `live` now, or a refusal that stands (`Ok`), or, `Err`, the refusal of an
    /// endpoint or tenant that is only busy: the task may wait in line.
    fn admit_now(&self, live: &Live) -> Result<Entry, Refusal> {
        let (tenant, rate) = (&live.sub.tenant_id, live.sub.rate_limit_per_s);
        match self.gate.admit_for(tenant, &live.sub.id, rate) {
            Ok(admission) => Ok(Entry::Now(admission)),
            Err(busy @ (Refusal::Busy(_) | Refusal::TenantBusy(_))) => Err(busy),
            Err(refusal) => Ok(Entry::Refused(refusal)),
        }
    }

    /// How long a task waits in line at most: a third of the ack wait, because the attempt's
    /// own progress acks start a third later, so the message is never redelivered while it
    /// waits.
    fn patience(&self) -> Duration {
        self.ack_wait / 3
    }

    /// Waits in `place` for a slot of `live`'s endpoint. `Err(Some)`: not admitted in time (or
    /// the circuit opened meanwhile); `Err(None)`: the replica is stopping.
    pub async fn wait_in_line(
        &self,
        live: &Live,
        place: crate::gate::Place,
    ) -> Result<Admission, Option<Refusal>> {
        let rate = live.sub.rate_limit_per_s;
        self.metrics.in_line.inc();
        let admitted = tokio::select! {
            admitted = self.gate.wait_in_line(place, rate, self.patience()) => admitted.map_err(Some),
            () = self.stopping.cancelled() => Err(None),
        };
        self.metrics.in_line.dec();
        admitted
    }

    /// How a live event's first attempt may be made straight from the fan-out: now, or after
    /// waiting in line (see [`Deliverer::enter`]); refused (or `None`: a disabled or
    /// unsignable subscription), it is queued as a task. A full line that moves fast is waited
    /// on for a place, at most [`FANOUT_PLACE_WAIT`] (`Gate::line_within`), with the fan-out's
    /// pull permit held: so a fast endpoint's backlog waits in the events stream, where
    /// waiting costs nothing, rather than going round as tasks, while a slow endpoint's is
    /// queued at once. The pull permit is given back before the wait in line itself.
    pub async fn admit_direct(&self, live: &Live) -> Option<Entry> {
        if !live.sub.enabled || live.signer.is_err() {
            return None;
        }
        let busy = match self.admit_now(live) {
            Ok(entry) => return Some(entry),
            Err(busy) => busy,
        };
        let (tenant, id) = (&live.sub.tenant_id, &live.sub.id);
        let place = self
            .gate
            .line_within(tenant, id, self.patience(), FANOUT_PLACE_WAIT)
            .await;
        Some(place.map_or(Entry::Refused(busy), Entry::Line))
    }

    /// Files `task` in the waiting room under `msg_id` and acks `message`; handed back if it
    /// cannot be stored.
    async fn set_aside(
        &self,
        message: &jetstream::Message,
        task: &Delivery,
        msg_id: String,
        reason: &'static str,
    ) {
        self.handed_back(reason);
        let headers = common::trace_context::copy(message.headers.as_ref());
        match self.store_retry(message, task, headers, msg_id).await {
            Ok(()) => ack(message, AckKind::Ack).await,
            // Its tenant over its waiting budget (or the room full): the task stays in its
            // lane, offered again as a full lane's are.
            Err(error) if crate::waiting::no_room(&error) => {
                tracing::debug!(error = %error, "no room to set the task aside, handed back");
                ack(message, AckKind::Nak(Some(crate::waiting::FULL_LANE_WAIT))).await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "task not set aside, handed back");
                ack(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }

    /// The first attempt of a live task made straight from the fan-out, with `progress` (the
    /// event's message) kept alive while it runs. True once the outcome is durable: delivered,
    /// its retry queued, or its dead letter stored; false hands the event back.
    ///
    /// The retry gets the id the fan-out would have given the task (`event:subscription`), so
    /// an event fanned out again after a crash cannot queue it twice.
    pub async fn direct(
        &self,
        progress: &jetstream::Message,
        live: &Live,
        task: &Delivery,
        admission: Admission,
    ) -> bool {
        let span = deliver_span(task, 1);
        match self
            .try_once(progress, live, task, 1, admission, span)
            .await
        {
            Verdict::Done => true,
            Verdict::Retry {
                delay,
                status,
                error,
            } => {
                let next = self.next_attempt(task, 2, delay, status, error);
                let headers = common::trace_context::current_headers();
                let id = subjects::delivery_msg_id(&task.event_id, &task.subscription_id);
                match self.store_retry(progress, &next, headers, id).await {
                    Ok(()) => true,
                    Err(error) if crate::waiting::no_room(&error) => {
                        let death = Death::no_room(1, status, &error);
                        self.dead_letter_first(task, &death).await
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "retry not stored, event handed back");
                        false
                    }
                }
            }
            Verdict::Dead(death) => self.dead_letter_first(task, &death).await,
        }
    }

    /// One admitted attempt: POST, record it, update the endpoint's health and decide what
    /// comes next. Settling the decision (ack, queue, dead-letter) is the caller's.
    async fn try_once(
        &self,
        progress: &jetstream::Message,
        live: &Live,
        task: &Delivery,
        attempt: u32,
        admission: Admission,
        span: tracing::Span,
    ) -> Verdict {
        self.metrics.in_flight.inc();
        let tried = self
            .attempt_with_progress(progress, live, task, attempt)
            .instrument(span.clone())
            .await;
        self.metrics.in_flight.dec();
        self.metrics
            .attempt_duration
            .observe(tried.latency.as_secs_f64());
        if let Some(status) = tried.status {
            span.record("status", status);
            span.record("http.response.status_code", status);
        }
        self.record_attempt(task, attempt, &tried).await;
        let class = retry::classify(tried.status);
        let outcome = if class == Class::Success {
            "succeeded"
        } else {
            "failed"
        };
        self.metrics
            .attempts
            .get_or_create(&crate::metrics::Outcome { outcome })
            .inc();
        span.record("outcome", outcome);
        if class != Class::Success {
            span.record("otel.status_code", "error");
        }
        admission.finish(class == Class::Retryable);

        let mut decision =
            RetryPolicy::of(&live.sub).decide(attempt, class, tried.retry_after, retry::jitter());
        match class {
            Class::Success => self.health.record_success(&live.sub).await,
            Class::Retryable => {
                if self.health.record_failure(&live.sub).await {
                    decision = Decision::Disable;
                }
            }
            Class::Gone | Class::Permanent => {}
        }
        let error = truncate(tried.error.clone().unwrap_or_default());
        let failed = |reason| Death {
            reason,
            failed_by: "endpoint",
            attempts: attempt,
            status: tried.status,
            error: error.clone(),
        };
        match decision {
            Decision::Done => {
                self.observe_latency(task);
                self.metrics.delivered("succeeded");
                Verdict::Done
            }
            Decision::Retry(delay) => {
                tracing::info!(parent: &span, error = %error, ?delay, "attempt failed, retry queued");
                Verdict::Retry {
                    delay,
                    status: tried.status,
                    error,
                }
            }
            Decision::DeadLetter(reason) => Verdict::Dead(failed(reason)),
            Decision::Disable => {
                let why = if class == Class::Gone {
                    "endpoint answered 410 Gone"
                } else {
                    "failing without success for too long"
                };
                if let Err(e) = self
                    .health
                    .disable(&task.tenant_id, &task.subscription_id, why)
                    .await
                {
                    tracing::warn!(error = %e, "could not disable subscription");
                }
                Verdict::Dead(failed("subscription_disabled"))
            }
        }
    }

    /// How late a task with a due time is attempted (once admitted).
    fn observe_due(&self, task: &Delivery, attempt: u32) {
        let Some(due) = task.not_before.as_ref().map(proto::time::to_system) else {
            return;
        };
        let late = SystemTime::now().duration_since(due).unwrap_or_default();
        let kind = if attempt > 1 { "retry" } else { "deferred" };
        self.metrics
            .due_lateness
            .get_or_create(&crate::metrics::DueKind { kind })
            .observe(late.as_secs_f64());
    }

    /// An attempt that cannot be made because this replica cannot sign for the subscription:
    /// nothing is sent, the attempt is recorded with the reason, and the delivery is retried on
    /// the subscription's schedule (another replica, or this one once its key is fixed, may
    /// sign it) and finally dead-lettered as `system_error`, ready to be redriven. The
    /// endpoint's health is not touched: the fault is ours.
    async fn not_signed(
        &self,
        live: &Live,
        task: &Delivery,
        attempt: u32,
        unsignable: &Unsignable,
    ) -> Verdict {
        let error = format!("not sent: {unsignable}");
        let tried = Tried {
            status: None,
            error: Some(error.clone()),
            retry_after: None,
            latency: Duration::ZERO,
            body: bytes::Bytes::new(),
        };
        self.record_attempt(task, attempt, &tried).await;
        match RetryPolicy::of(&live.sub).decide(attempt, Class::Retryable, None, retry::jitter()) {
            Decision::Retry(delay) => Verdict::Retry {
                delay,
                status: None,
                error,
            },
            _ => Verdict::Dead(Death::system(attempt, None, error)),
        }
    }

    /// Runs one attempt, telling JetStream it is still in progress while it runs, so a slow
    /// receiver is not sent a second copy.
    async fn attempt_with_progress(
        &self,
        message: &jetstream::Message,
        live: &Live,
        task: &Delivery,
        attempt: u32,
    ) -> Tried {
        let send = self.attempt(live, task, attempt);
        tokio::pin!(send);
        let period = (self.ack_wait / 3).max(Duration::from_millis(100));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                tried = &mut send => return tried,
                _ = ticks.tick() => ack(message, AckKind::Progress).await,
            }
        }
    }

    /// One signed POST of the task's payload.
    pub async fn attempt(&self, live: &Live, task: &Delivery, attempt: u32) -> Tried {
        let started = std::time::Instant::now();
        let fail = |error: String| Tried {
            status: None,
            error: Some(error),
            retry_after: None,
            latency: started.elapsed(),
            body: bytes::Bytes::new(),
        };
        let url = match self.url_policy.check_syntax(&live.sub.url) {
            Ok(url) => url,
            Err(error) => return fail(error.to_string()),
        };
        // Host names are checked by the resolver; literal addresses never reach it.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(error) = self
                .url_policy
                .check_addr(url.host_str().unwrap_or_default(), ip)
        {
            return fail(error.to_string());
        }
        let signer = match &live.signer {
            Ok(signer) => signer,
            Err(unsignable) => return fail(unsignable.to_string()),
        };
        let now = unix_now();
        let signature = signer.sign(&task.event_id, now, &task.payload);
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(headers::WEBHOOK_ID, &task.event_id)
            .header(headers::WEBHOOK_TIMESTAMP, now.to_string())
            .header(headers::WEBHOOK_SIGNATURE, signature)
            .header(headers::WEBHOOK_ATTEMPT, attempt.to_string());
        // `traceparent` of this attempt's span (reserved: a subscription cannot set it).
        for (name, value) in common::trace_context::http_headers(&tracing::Span::current()) {
            request = request.header(name, value);
        }
        for (name, value) in &live.sub.headers {
            request = request.header(name, value);
        }
        match http_client::send(request.body(task.payload.clone())).await {
            Ok(response) => {
                let ok = (200..300).contains(&response.status);
                let retry_after = if matches!(response.status, 429 | 503) {
                    response
                        .retry_after
                        .as_deref()
                        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
                } else {
                    None
                };
                let error = match (ok, response.body_error) {
                    (false, _) => Some(format!("receiver answered {}", response.status)),
                    (true, Some(body)) => Some(format!("answer's body not read: {body}")),
                    (true, None) => None,
                };
                Tried {
                    status: Some(response.status),
                    error,
                    retry_after,
                    latency: response.latency,
                    body: response.body,
                }
            }
            Err(error) => fail(http_client::describe(&error)),
        }
    }

    /// Appends the attempt to the attempt log. A lost record costs history, not a delivery,
    /// so a failure here is logged and the delivery goes on.
    async fn record_attempt(&self, task: &Delivery, attempt: u32, tried: &Tried) {
        let record = Attempt {
            event_id: task.event_id.clone(),
            subscription_id: task.subscription_id.clone(),
            tenant_id: task.tenant_id.clone(),
            attempt,
            succeeded: tried.status.is_some_and(|s| (200..300).contains(&s)),
            status_code: tried.status.map(u32::from).unwrap_or(0),
            error: truncate(tried.error.clone().unwrap_or_default()),
            latency_ms: u32::try_from(tried.latency.as_millis()).unwrap_or(u32::MAX),
            at: Some(proto::time::now()),
            event_type: task.event_type.clone(),
            due: task.not_before,
        };
        let subject = subjects::attempts_subject(&task.tenant_id, &task.subscription_id);
        // Only the send is awaited here; the PubAck is awaited off the delivery's path, so a
        // delivery's slot is not held for a second round trip to JetStream.
        match self
            .js
            .publish(subject, record.encode_to_vec().into())
            .await
        {
            Ok(pending) => {
                tokio::spawn(async move {
                    if let Err(error) = pending.await {
                        tracing::warn!(error = %error, "attempt record not stored");
                    }
                });
            }
            Err(error) => tracing::warn!(error = %error, "attempt record not stored"),
        }
    }

    /// The task for attempt `next`, due after `delay`.
    fn next_attempt(
        &self,
        task: &Delivery,
        next: u32,
        delay: Duration,
        status: Option<u16>,
        error: String,
    ) -> Delivery {
        let mut next_task = task.clone();
        next_task.attempt = next;
        next_task.not_before = Some(proto::time::from_system(SystemTime::now() + delay));
        next_task.last_status_code = status.map(u32::from).unwrap_or(0);
        next_task.last_error = error;
        next_task
    }

    /// Files a task (a retry, or one set aside) in the waiting room under `msg_id`, with the
    /// first attempt's trace context. A failed store is tried again here a few times, with
    /// `progress` kept alive, so a PubAck lost in a leader election does not make the attempt
    /// again.
    async fn store_retry(
        &self,
        progress: &jetstream::Message,
        next: &Delivery,
        headers: Option<async_nats::HeaderMap>,
        msg_id: String,
    ) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .waiting
                .put(next, headers.clone(), msg_id.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) if tries >= STORE_TRIES || crate::waiting::no_room(&error) => {
                    return Err(error);
                }
                Err(error) => {
                    tracing::debug!(error = %error, tries, "task not stored yet, trying again");
                    ack(progress, AckKind::Progress).await;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    /// Acceptance to 2xx, for live deliveries only: a replay's acceptance is long past.
    fn observe_latency(&self, task: &Delivery) {
        if task.origin() != proto::v1::DeliveryOrigin::Live {
            return;
        }
        if let Some(latency) = task.accepted_at.as_ref().and_then(|t| {
            SystemTime::now()
                .duration_since(proto::time::to_system(t))
                .ok()
        }) {
            self.metrics.delivery_latency.observe(latency.as_secs_f64());
        }
    }

    pub(crate) fn handed_back(&self, reason: &'static str) {
        self.metrics
            .handed_back
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub(crate) async fn publish(
        &self,
        subject: String,
        publish: PublishMessage,
    ) -> anyhow::Result<()> {
        self.js.send_publish(subject, publish).await?.await?;
        Ok(())
    }
}
