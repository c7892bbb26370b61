//! The events consumer: match each event, make each matching subscription's first attempt
//! straight from here when its endpoint can take it now (see `Deliverer::direct`), queue a
//! delivery task for the others, and ack the event only once every outcome is durable: a 2xx,
//! a queued retry or task (PubAck'ed), or a stored dead letter.
//!
//! Attempting first and writing a task only when needed saves the task's publish, pull and ack
//! on the common path where the endpoint is healthy (docs/benchmarks.md has the figures).
//! `WEBHOOKS_DIRECT_FIRST_ATTEMPT=false` queues every delivery as a task instead.
//!
//! # Partial failure
//! A store that fails (a PubAck lost in a leader election, a full stream) is tried again here
//! a few times. If a match still cannot be settled, the event is handed back, and the matches
//! that were settled are recorded first (KV `webhooks_fanout_progress`), so the redelivered
//! fan-out skips them: a healthy endpoint is not sent its event again because another match
//! failed. After `fanout_max_deliveries` (`WEBHOOKS_FANOUT_MAX_DELIVERIES`) the remaining matches are dead-lettered as
//! `system_error` (redrive them once the cause is fixed): the loop always ends, on the record.
//!
//! Task ids are `event_id:subscription_id`, so a fan-out that is redelivered (after a crash
//! between the PubAcks and the ack) publishes duplicates that JetStream drops; a first attempt
//! made directly is made again in that case (at least once). The envelope is serialised here,
//! once per event; deliveries only sign it.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, kv, message::PublishMessage};
use prost::Message as _;
use proto::{
    envelope, subjects,
    v1::{Delivery, DeliveryOrigin, Event},
};
use tracing::Instrument as _;

use crate::{deliver::Entry, subscriptions::Index};

/// Tasks one event publishes before awaiting their PubAcks (see `app::pub_acks_in_flight`).
pub const QUEUE_CHUNK: usize = 64;
/// Bytes of tasks one event publishes before awaiting their PubAcks: large events queue
/// fewer than [`QUEUE_CHUNK`] at a time, so a chunk fits the queue budget.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// What one match of an event in fan-out holds besides the shared envelope, about: its
/// task, its admission and attempt futures and the request's headers (scenario 11).
const PER_MATCH_BYTES: usize = 4 * 1024;
/// Tries at queuing a task before the match counts as unsettled.
const QUEUE_TRIES: u32 = 4;
/// A task's bytes beyond its payload (ids, type, times), as an upper bound.
const TASK_OVERHEAD: usize = 1024;

/// Tasks of an event whose envelope is `payload` bytes published at once.
fn queue_chunk_len(payload: usize) -> usize {
    (QUEUE_BYTES / (payload + TASK_OVERHEAD)).clamp(1, QUEUE_CHUNK)
}

/// Shared by the fan-out tasks.
pub struct Fanout {
    pub js: jetstream::Context,
    pub index: Index,
    pub links_base_url: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Makes first attempts directly (when `direct_first_attempt`) and dead letters.
    pub deliverer: Arc<crate::deliver::Deliverer>,
    pub direct_first_attempt: bool,
    /// Deliveries of one event after which its unsettled matches are dead-lettered.
    pub max_deliveries: i64,
    /// Settled matches of fan-outs handed back (see the module's documentation).
    pub progress: kv::Store,
    /// Bytes of tasks being encoded and published at once, all events together (`budget`).
    pub queue_budget: Arc<crate::budget::Budget>,
}

impl crate::pull::Handler for Fanout {
    /// The charge is held until the event is settled: its attempts share its envelope.
    async fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        charge: Option<crate::budget::Charge>,
    ) {
        Fanout::handle(self, message, permit, charge).await;
    }

    /// The event, its envelope (about as large) and what each match holds while it is
    /// admitted and attempted: its task and its futures, the request among them. The matches
    /// are counted from the subject (`webhooks.events.<tenant>.<agent>.<type>`), which the
    /// handler checks against the event.
    fn cost(&self, message: &jetstream::Message) -> usize {
        let mut tokens = message.subject.splitn(5, '.').skip(2);
        let matches = match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(tenant), Some(agent), Some(event_type)) => {
                self.index.matches(tenant, event_type, agent).len()
            }
            _ => 0,
        };
        2 * message.payload.len() + matches * PER_MATCH_BYTES
    }
}

impl Fanout {
    /// The pull permit is given back once each match is admitted, has a place in its
    /// endpoint's line, or is to be queued: from then on the event waits only on its
    /// endpoints, within the line's bounds (per endpoint by its pace, per tenant by its share,
    /// per replica), and a slow endpoint does not keep other events from being fanned out. A
    /// match whose wait in line runs out (or whose replica stops) is queued as a task.
    ///
    /// A tenant holding its share of the fan-out's memory budget has its event's matches
    /// queued at once, none waiting in line: its events in line cannot hold up the fan-out of
    /// every other tenant's.
    async fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut charge: Option<crate::budget::Charge>,
    ) {
        let event = match Event::decode(message.payload.as_ref()) {
            Ok(event) => event,
            Err(error) => {
                let reason = format!("not a protobuf Event: {error}");
                return crate::rejects::set_aside(&self.js, "events", &message, &reason).await;
            }
        };
        if let Err(reason) = crate::rejects::check_event(&message.subject, &event) {
            return crate::rejects::set_aside(&self.js, "events", &message, &reason).await;
        }
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or_default();
        let span = tracing::info_span!("dispatch.fanout", otel.kind = "consumer", event_id = %event.id, event_type = %event.r#type, tenant = %event.tenant_id, agent = %event.agent_id, matched = tracing::field::Empty);
        // The ingest's publish span, from the event message's `traceparent`.
        common::trace_context::set_parent_from_nats(&span, message.headers.as_ref());
        async {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let key = subjects::event_index_key(&event.tenant_id, &event.id);
            let mut settled = if delivered > 1 {
                self.settled(&key).await
            } else {
                HashSet::new()
            };
            let matches: Vec<_> = self
                .index
                .matches(&event.tenant_id, &event.r#type, &event.agent_id)
                .into_iter()
                .filter(|live| !settled.contains(&live.sub.id))
                .collect();
            tracing::Span::current().record("matched", matches.len());
            if matches.is_empty() {
                self.forget(delivered, &key).await;
                ack(&message, AckKind::Ack).await;
                return;
            }
            let payload: bytes::Bytes = envelope::render(&event, &self.links_base_url).into();
            if delivered > self.max_deliveries {
                drop(permit);
                return self
                    .give_up(&message, &event, sequence, &payload, matches, &key)
                    .await;
            }
            let over_share = charge
                .as_mut()
                .is_some_and(|c| c.hold_for(&event.tenant_id).is_err());
            let direct_first_attempt = self.direct_first_attempt && !over_share;
            let admitted = futures::future::join_all(matches.into_iter().map(|live| {
                let task = task_of(&event, sequence, &payload, &live);
                async move {
                    let entry = if direct_first_attempt {
                        self.deliverer.admit_direct(&live).await
                    } else {
                        None
                    };
                    (live, task, entry)
                }
            }))
            .await;
            let mut direct = Vec::new();
            let mut queued = Vec::new();
            for (live, task, entry) in admitted {
                match entry {
                    Some(Entry::Refused(_)) | None => queued.push(task),
                    Some(entry) => direct.push((live, task, entry)),
                }
            }
            drop(permit);
            let total = (direct.len() + queued.len()) as u64;
            let attempts =
                futures::future::join_all(direct.into_iter().map(|(live, task, entry)| {
                    let message = &message;
                    async move {
                        let admission = match entry {
                            Entry::Now(admission) => admission,
                            Entry::Line(place) => {
                                match self.deliverer.wait_in_line(&live, place).await {
                                    Ok(admission) => admission,
                                    // Not admitted in time, or stopping: queued like any other.
                                    Err(_) => return Err(task),
                                }
                            }
                            Entry::Refused(_) => return Err(task),
                        };
                        let ok = self
                            .deliverer
                            .direct(message, &live, &task, admission)
                            .await;
                        Ok((live.sub.id.clone(), ok))
                    }
                }));
            let (mut stored, outcomes) =
                tokio::join!(self.queue(&message, &event, queued), attempts);
            let (mut tried, mut late) = (Vec::new(), Vec::new());
            for outcome in outcomes {
                match outcome {
                    Ok(done) => tried.push(done),
                    Err(task) => late.push(task),
                }
            }
            let direct_count = tried.len() as u64;
            if !late.is_empty() {
                stored.extend(self.queue(&message, &event, late).await);
            }
            let mut unsettled = 0usize;
            for (id, ok) in stored.into_iter().chain(tried) {
                if ok {
                    settled.insert(id);
                } else {
                    unsettled += 1;
                }
            }
            if unsettled == 0 {
                self.metrics.events_fanned_out.inc();
                self.metrics.tasks_queued.inc_by(total);
                self.metrics.direct_first_attempts.inc_by(direct_count);
                self.forget(delivered, &key).await;
                ack(&message, AckKind::Ack).await;
                return;
            }
            tracing::warn!(
                unsettled,
                "some outcomes were not stored, event handed back"
            );
            self.record(&key, &settled).await;
            let delay = Duration::from_secs(delivered.clamp(1, 30) as u64);
            ack(&message, AckKind::Nak(Some(delay))).await;
        }
        .instrument(span)
        .await
    }

    /// Queues `tasks` ([`QUEUE_CHUNK`] PubAcks at a time, each failed one tried again up to
    /// [`QUEUE_TRIES`] times) and answers, for each, its subscription and whether it is stored.
    async fn queue(
        &self,
        progress: &jetstream::Message,
        event: &Event,
        tasks: Vec<Delivery>,
    ) -> Vec<(String, bool)> {
        // Every task carries this span's trace context: each attempt's span is its child.
        let trace_headers = common::trace_context::current_headers();
        let mut out = Vec::with_capacity(tasks.len());
        let chunk_len = queue_chunk_len(tasks.first().map_or(0, |t| t.payload.len()));
        for chunk in tasks.chunks(chunk_len) {
            let mut left: Vec<&Delivery> = chunk.iter().collect();
            let mut pause = Duration::from_millis(200);
            for tries in 1..=QUEUE_TRIES {
                let results = self
                    .queue_chunk(progress, event, &left, &trace_headers)
                    .await;
                let mut failed = Vec::new();
                for (task, ok) in left.into_iter().zip(results) {
                    if ok {
                        out.push((task.subscription_id.clone(), true));
                    } else {
                        failed.push(task);
                    }
                }
                left = failed;
                if left.is_empty() {
                    break;
                }
                if tries < QUEUE_TRIES {
                    ack(progress, AckKind::Progress).await;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
            out.extend(left.into_iter().map(|t| (t.subscription_id.clone(), false)));
        }
        out
    }

    /// Publishes `tasks` and answers whether each is stored. Their encoded bytes are charged
    /// to the queue budget until their PubAcks are in (the client holds them until then).
    async fn queue_chunk(
        &self,
        progress: &jetstream::Message,
        event: &Event,
        tasks: &[&Delivery],
        trace_headers: &Option<async_nats::HeaderMap>,
    ) -> Vec<bool> {
        let bytes = tasks.iter().map(|t| t.payload.len() + TASK_OVERHEAD).sum();
        let _charge = self.queue_budget.charge(Some(progress), bytes).await;
        let mut pending = Vec::with_capacity(tasks.len());
        for task in tasks {
            let mut publish = PublishMessage::build().payload(task.encode_to_vec().into());
            if let Some(headers) = &trace_headers {
                publish = publish.headers(headers.clone());
            }
            let publish =
                publish.message_id(subjects::delivery_msg_id(&event.id, &task.subscription_id));
            let subject = subjects::delivery_subject(&event.tenant_id, &task.subscription_id);
            pending.push(self.js.send_publish(subject, publish).await.ok());
        }
        let mut out = Vec::with_capacity(pending.len());
        for ack in pending {
            out.push(match ack {
                Some(ack) => ack.await.is_ok(),
                None => false,
            });
        }
        out
    }

    /// The matches an earlier delivery of this event settled.
    async fn settled(&self, key: &str) -> HashSet<String> {
        match self.progress.get(key).await {
            Ok(Some(value)) => String::from_utf8_lossy(&value)
                .lines()
                .map(str::to_owned)
                .collect(),
            Ok(None) => HashSet::new(),
            Err(error) => {
                tracing::warn!(error = %error, "settled matches not read; all are tried again");
                HashSet::new()
            }
        }
    }

    /// Records the settled matches before the event is handed back.
    async fn record(&self, key: &str, settled: &HashSet<String>) {
        let mut ids: Vec<&str> = settled.iter().map(String::as_str).collect();
        ids.sort_unstable();
        if let Err(error) = self.progress.put(key, ids.join("\n").into()).await {
            tracing::warn!(error = %error, "settled matches not recorded; they will be tried again");
        }
    }

    /// Drops the record of a fan-out that is now complete (only a redelivered one can have one).
    async fn forget(&self, delivered: i64, key: &str) {
        if delivered > 1
            && let Err(error) = self.progress.purge(key).await
        {
            tracing::debug!(error = %error, "settled matches not cleared; they expire");
        }
    }

    /// After `max_deliveries`: dead-letters every match still unsettled as a
    /// `system_error` and ends the event. A dead letter that cannot be stored either is logged
    /// and counted (`webhooks_fanout_abandoned`): the event stays in the events stream, to replay.
    async fn give_up(
        &self,
        message: &jetstream::Message,
        event: &Event,
        sequence: u64,
        payload: &bytes::Bytes,
        matches: Vec<Arc<crate::subscriptions::Live>>,
        key: &str,
    ) {
        let why = format!(
            "fan-out could not store this delivery after {} tries",
            self.max_deliveries
        );
        for live in matches {
            let task = task_of(event, sequence, payload, &live);
            if !self.deliverer.give_up(&task, &why).await {
                tracing::error!(event_id = %event.id, subscription_id = %live.sub.id, "delivery abandoned: neither queued nor dead-lettered");
                self.metrics.fanout_abandoned.inc();
            }
        }
        self.forget(2, key).await;
        ack(message, AckKind::Term).await;
    }
}

/// The first attempt's task of `event` for `live`.
fn task_of(
    event: &Event,
    sequence: u64,
    payload: &bytes::Bytes,
    live: &crate::subscriptions::Live,
) -> Delivery {
    Delivery::first_attempt(event, sequence, &live.sub.id, payload, DeliveryOrigin::Live)
}

/// Acks, logging a failure: an ack that does not arrive means a redelivery, which the
/// at-least-once design already absorbs.
pub(crate) async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(error = %error, "ack failed");
    }
}
