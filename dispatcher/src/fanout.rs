//! The events consumer: match each event, queue one delivery task per matching subscription,
//! and ack the event only after every task has its PubAck.
//!
//! Task ids are `event_id:subscription_id`, so a fan-out that is redelivered (after a crash
//! between the PubAcks and the ack) publishes duplicates that JetStream drops. The envelope is
//! serialised here, once per event; deliveries only sign it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use prost::Message as _;
use proto::{
    envelope, subjects,
    v1::{Delivery, DeliveryOrigin, Event},
};
use tracing::Instrument as _;

use crate::subscriptions::Index;

/// Shared by the fan-out tasks.
pub struct Fanout {
    pub js: jetstream::Context,
    pub index: Index,
    pub links_base_url: String,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl crate::pull::Handler for Fanout {
    fn handle(&self, message: jetstream::Message) -> impl std::future::Future<Output = ()> + Send {
        Fanout::handle(self, message)
    }
}

impl Fanout {
    async fn handle(&self, message: jetstream::Message) {
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
            match self.queue(&event, sequence, payload, &matches).await {
                Ok(()) => {
                    self.metrics.events_fanned_out.inc();
                    self.metrics.tasks_queued.inc_by(matches.len() as u64);
                    ack(&message, AckKind::Ack).await;
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

    async fn queue(
        &self,
        event: &Event,
        sequence: u64,
        payload: bytes::Bytes,
        matches: &[Arc<crate::subscriptions::Live>],
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(matches.len());
        // Every task carries this span's trace context: each attempt's span is its child.
        let trace_headers = common::trace_context::current_headers();
        for live in matches {
            let task = Delivery {
                event_id: event.id.clone(),
                tenant_id: event.tenant_id.clone(),
                subscription_id: live.sub.id.clone(),
                event_type: event.r#type.clone(),
                agent_id: event.agent_id.clone(),
                payload: payload.to_vec(),
                event_sequence: sequence,
                accepted_at: event.accepted_at,
                origin: DeliveryOrigin::Live as i32,
                attempt: 1,
                ..Default::default()
            };
            let mut publish = PublishMessage::build().payload(task.encode_to_vec().into());
            if let Some(headers) = &trace_headers {
                publish = publish.headers(headers.clone());
            }
            let publish = publish.message_id(subjects::delivery_msg_id(&event.id, &live.sub.id));
            let subject = subjects::delivery_subject(&event.tenant_id, &live.sub.id);
            pending.push(self.js.send_publish(subject, publish).await?);
        }
        for ack in pending {
            ack.await?;
        }
        Ok(())
    }
}

/// Acks, logging a failure: an ack that does not arrive means a redelivery, which the
/// at-least-once design already absorbs.
pub(crate) async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(error = %error, "ack failed");
    }
}
