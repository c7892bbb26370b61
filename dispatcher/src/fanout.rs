//! The events consumer: match each event, make each matching subscription's first attempt
//! straight from here when its endpoint can take it now (see `Deliverer::direct`), queue a
//! delivery task for the others, and ack the event only once every outcome is durable: a 2xx,
//! a queued retry or task (PubAck'ed), or a stored dead letter.
//!
//! Attempting first and writing a task only when needed saves the task's publish, pull and ack
//! on the common path where the endpoint is healthy (docs/benchmarks.md has the figures).
//! `WEBHOOKS_DIRECT_FIRST_ATTEMPT=false` queues every delivery as a task instead.
//!
//! Task ids are `event_id:subscription_id`, so a fan-out that is redelivered (after a crash
//! between the PubAcks and the ack) publishes duplicates that JetStream drops; a first attempt
//! made directly is made again in that case (at least once). The envelope is serialised here,
//! once per event; deliveries only sign it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use prost::Message as _;
use proto::{
    envelope, subjects,
    v1::{Delivery, DeliveryOrigin, Event},
};
use tracing::Instrument as _;

use crate::subscriptions::Index;

/// Tasks one event publishes before awaiting their PubAcks (see `app::pub_acks_in_flight`).
pub const QUEUE_CHUNK: usize = 64;

/// Shared by the fan-out tasks.
pub struct Fanout {
    pub js: jetstream::Context,
    pub index: Index,
    pub links_base_url: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Makes first attempts directly; `None` queues every delivery.
    pub direct: Option<Arc<crate::deliver::Deliverer>>,
}

impl crate::pull::Handler for Fanout {
    fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send {
        Fanout::handle(self, message, permit)
    }
}

impl Fanout {
    /// The pull permit is given back once the first attempts are admitted: from then on the
    /// event waits only on its endpoints, whose slots bound it, and a slow endpoint does not
    /// keep other events from being fanned out.
    async fn handle(&self, message: jetstream::Message, permit: tokio::sync::OwnedSemaphorePermit) {
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
            let matches = self
                .index
                .matches(&event.tenant_id, &event.r#type, &event.agent_id);
            tracing::Span::current().record("matched", matches.len());
            if matches.is_empty() {
                ack(&message, AckKind::Ack).await;
                return;
            }
            let payload: bytes::Bytes = envelope::render(&event, &self.links_base_url).into();
            let mut direct = Vec::new();
            let mut queued = Vec::new();
            for live in matches {
                let task = task_of(&event, sequence, &payload, &live);
                let admission = match &self.direct {
                    Some(d) => d.admit_direct(&live).await,
                    None => None,
                };
                match admission {
                    Some(admission) => direct.push((live, task, admission)),
                    None => queued.push(task),
                }
            }
            drop(permit);
            let (direct_count, total) = (direct.len() as u64, (direct.len() + queued.len()) as u64);
            let attempts =
                futures::future::join_all(direct.into_iter().map(|(live, task, admission)| {
                    let message = &message;
                    async move {
                        match &self.direct {
                            Some(d) => d.direct(message, &live, &task, admission).await,
                            None => false,
                        }
                    }
                }));
            let (stored, settled) = tokio::join!(self.queue(&event, queued), attempts);
            match stored {
                Ok(()) if settled.iter().all(|s| *s) => {
                    self.metrics.events_fanned_out.inc();
                    self.metrics.tasks_queued.inc_by(total);
                    self.metrics.direct_first_attempts.inc_by(direct_count);
                    ack(&message, AckKind::Ack).await;
                }
                Ok(()) => {
                    tracing::warn!("an outcome was not stored, event handed back");
                    ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "fan-out failed, event handed back");
                    ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Publishes `tasks` and waits for every PubAck, [`QUEUE_CHUNK`] at a time.
    async fn queue(&self, event: &Event, tasks: Vec<Delivery>) -> anyhow::Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        // Every task carries this span's trace context: each attempt's span is its child.
        let trace_headers = common::trace_context::current_headers();
        let mut tasks = tasks.into_iter().peekable();
        while tasks.peek().is_some() {
            self.queue_chunk(event, tasks.by_ref().take(QUEUE_CHUNK), &trace_headers)
                .await?;
        }
        Ok(())
    }

    async fn queue_chunk(
        &self,
        event: &Event,
        tasks: impl Iterator<Item = Delivery>,
        trace_headers: &Option<async_nats::HeaderMap>,
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(QUEUE_CHUNK);
        for task in tasks {
            let mut publish = PublishMessage::build().payload(task.encode_to_vec().into());
            if let Some(headers) = &trace_headers {
                publish = publish.headers(headers.clone());
            }
            let publish =
                publish.message_id(subjects::delivery_msg_id(&event.id, &task.subscription_id));
            let subject = subjects::delivery_subject(&event.tenant_id, &task.subscription_id);
            pending.push(self.js.send_publish(subject, publish).await?);
        }
        for ack in pending {
            ack.await?;
        }
        Ok(())
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
