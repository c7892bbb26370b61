//! Publishing an accepted event to JetStream and waiting for its PubAck.
//!
//! A `202` promises the event is stored, so nothing is answered before the PubAck. While the
//! connection is down the answer is an immediate `503`, not a wait. A PubAck that does not
//! come is asked for again (same message id) until `publish_timeout`; then the `503` carries
//! the event's id, since the event may be stored. After the PubAck the event's
//! id is indexed (`common::event_index`), also before answering.

use std::time::Duration;

use async_nats::jetstream::{
    context::PublishErrorKind, message::PublishMessage as Publish, publish::PublishAck,
};
use prost::Message as _;
use proto::{subjects, v1::Event, validate::NewEvent};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::{app::AppState, error::ApiError};

/// What the producer is told about an accepted event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accepted {
    pub id: String,
    pub sequence: u64,
    pub duplicate: bool,
}

/// The event to store for a validated request. The id is the producer's, else one derived
/// from the `Idempotency-Key` (so a repeat gets the same id), else a fresh `evt_<ulid>`.
pub fn build_event(tenant: &str, new: NewEvent, idempotency_key: Option<&str>) -> Event {
    let id = new.id.unwrap_or_else(|| match idempotency_key {
        Some(key) => {
            let digest = Sha256::digest(format!("{tenant}\n{key}").as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            format!("evt_{}", ulid::Ulid::from_bytes(first))
        }
        None => format!("evt_{}", ulid::Ulid::new()),
    });
    let accepted_at = proto::time::now();
    Event {
        id,
        tenant_id: tenant.to_owned(),
        agent_id: new.agent_id,
        call_id: new.call_id,
        r#type: new.event_type,
        occurred_at: Some(new.occurred_at.unwrap_or(accepted_at)),
        accepted_at: Some(accepted_at),
        data: Some(new.data),
    }
}

/// How long one try waits for its PubAck before publishing again.
const ACK_TRY: Duration = Duration::from_secs(1);

/// Publishes until a PubAck answers, for at most `publish_timeout`: a PubAck lost in a leader
/// change is asked for again with the same `Nats-Msg-Id`, so a repeat is deduplicated, never
/// stored twice. Whether an event whose every try went unanswered is stored is unknown: the
/// error says so and carries its id, with which the producer repeats safely.
async fn publish_until_confirmed(
    state: &AppState,
    subject: String,
    publish: Publish,
    id: &str,
) -> Result<PublishAck, ApiError> {
    let deadline = Instant::now() + state.settings.publish_timeout;
    let mut unanswered = false;
    let mut room_made = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(left.min(ACK_TRY), async {
            state
                .js
                .send_publish(subject.clone(), publish.clone())
                .await?
                .await
        })
        .await;
        let error = match outcome {
            Ok(Ok(ack)) => return Ok(ack),
            Ok(Err(error)) if error.kind() == PublishErrorKind::TimedOut => {
                anyhow::anyhow!(error)
            }
            // Refused as full: room is made by removing events already fanned out, and the
            // event is published again; refused when there are none (`room`).
            Ok(Err(error)) if !unanswered && !room_made && full(&error) => {
                room_made = true;
                match state.room.make(crate::room::LOW_WATER).await {
                    Ok(crate::room::Room::Made { .. }) => continue,
                    Ok(crate::room::Room::Backlogged) => return Err(ApiError::Backlogged),
                    Err(cause) => return Err(ApiError::Unavailable(cause.context(error))),
                }
            }
            Ok(Err(error)) if !unanswered && full(&error) => return Err(ApiError::Backlogged),
            // Refused (no stream, ...): not stored. After an unanswered try that
            // is still unknown, since that one may have been.
            Ok(Err(error)) if !unanswered => return Err(ApiError::Unavailable(error.into())),
            Ok(Err(error)) => anyhow::anyhow!(error),
            Err(_) => anyhow::anyhow!("timed out waiting for the pub ack"),
        };
        unanswered = true;
        if Instant::now() >= deadline || !common::nats::is_connected(&state.client) {
            return Err(ApiError::Unconfirmed {
                id: id.to_owned(),
                source: error,
            });
        }
        tracing::debug!(event_id = %id, error = %error, "no pub ack yet, publishing again");
    }
}

/// Whether JetStream refused a publish because the stream is at its cap.
fn full(error: &async_nats::jetstream::context::PublishError) -> bool {
    common::nats::is_full(&anyhow::anyhow!(error.to_string()))
}

/// Stores `event`, deduplicated by its tenant-scoped id within the dedupe window.
pub async fn publish(state: &AppState, event: &Event) -> Result<Accepted, ApiError> {
    if !common::nats::is_connected(&state.client) {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "not connected to nats"
        )));
    }
    let subject = subjects::event_subject(&event.tenant_id, &event.agent_id, &event.r#type);
    let mut publish = Publish::build().payload(event.encode_to_vec().into());
    // The caller's span (`ingest.publish`) becomes the fan-out's parent.
    if let Some(headers) = common::trace_context::current_headers() {
        publish = publish.headers(headers);
    }
    let publish = publish.message_id(subjects::event_msg_id(&event.tenant_id, &event.id));
    let ack = publish_until_confirmed(state, subject, publish, &event.id).await?;
    // Index the id before answering, so `GET /v1/events/{id}` finds it right after the `202`
    // (an id ingest assigned needs no entry: it is found by its time). A duplicate's PubAck
    // carries the original's sequence: writing it again repairs an entry lost when the first
    // attempt timed out after storing. Best-effort: the event is stored.
    if ack.sequence > 0
        && let Err(error) = common::event_index::record(&state.js, event, ack.sequence).await
    {
        tracing::warn!(event_id = %event.id, sequence = ack.sequence, error = %format!("{error:#}"), "event stored but not indexed by id");
    }
    Ok(Accepted {
        id: event.id.clone(),
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}
