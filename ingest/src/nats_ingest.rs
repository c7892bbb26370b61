//! The upstream NATS path: protobuf `Event` requests on `webhooks.ingest.<tenant>`, answered
//! with a protobuf `IngestReply`.
//!
//! Same rules as `POST /v1/events`: the tenant (here the subject's last token) must be a valid
//! tenant id, the event passes [`proto::validate::check_event`], the stored event is built by
//! [`publisher::build_event`] and stored by [`publisher::publish`] (PubAck before the reply),
//! so the two paths share validation and idempotency. Every failure is a `Rejected` reply with
//! the status the HTTP path would answer; nothing on a message's path panics.
//!
//! Requests are handled concurrently (at most [`MAX_IN_FLIGHT`] at once), so one slow publish
//! never stalls the others. All replicas subscribe in queue group
//! [`subjects::INGEST_QUEUE`], so exactly one answers each request.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::http::StatusCode;
use futures::StreamExt as _;
use prost::Message as _;
use proto::{
    subjects,
    v1::{Accepted, Event, FieldError, IngestReply, Rejected, ingest_reply},
    validate,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{app::AppState, error::ApiError, metrics::Via, publisher, routes::tenant_id_is_valid};

/// Requests handled at once; further ones wait in the subscription's buffer.
pub const MAX_IN_FLIGHT: usize = 256;

/// How long a drain waits for requests already sent to this replica to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The subscription, made in `App::build` so a NATS problem fails the start, served by `run`.
pub struct NatsIngest {
    subscriber: async_nats::Subscriber,
}

impl NatsIngest {
    /// Subscribes to every ingest subject in the shared queue group.
    pub async fn subscribe(client: &async_nats::Client) -> anyhow::Result<NatsIngest> {
        let subscriber = client
            .queue_subscribe(subjects::INGEST_SUBJECTS, subjects::INGEST_QUEUE.to_owned())
            .await
            .with_context(|| format!("subscribing to {}", subjects::INGEST_SUBJECTS))?;
        Ok(NatsIngest { subscriber })
    }

    /// Answers requests until `token` is cancelled; then stops taking new ones (the queue group
    /// sends them to other replicas), answers those already here, and returns.
    pub async fn serve(self, state: AppState, token: CancellationToken) {
        let mut subscriber = self.subscriber;
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut draining = false;
        loop {
            let message = if draining {
                match tokio::time::timeout(DRAIN_TIMEOUT, subscriber.next()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!("nats ingest drain timed out");
                        break;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    () = token.cancelled() => {
                        draining = true;
                        if let Err(error) = subscriber.drain().await {
                            tracing::warn!(error = %error, "nats ingest drain failed");
                            break;
                        }
                        continue;
                    }
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                }
            };
            // Waits while MAX_IN_FLIGHT requests are being handled: backpressure, not a drop.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            while let Some(done) = tasks.try_join_next() {
                log_panic(done);
            }
            let state = state.clone();
            tasks.spawn(async move {
                handle(&state, message).await;
                drop(permit);
            });
        }
        while let Some(done) = tasks.join_next().await {
            log_panic(done);
        }
        tracing::info!("nats ingest stopped");
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(error = %error, "nats ingest request task failed");
    }
}

/// Answers one request; a request nobody waits for is logged and dropped.
async fn handle(state: &AppState, message: async_nats::Message) {
    let Some(reply_to) = message.reply.clone() else {
        tracing::warn!(subject = %message.subject, "nats ingest request without a reply subject ignored");
        return;
    };
    // The producer's trace continues when its request carries a `traceparent` header.
    let span = tracing::info_span!("ingest.request", otel.kind = "server", messaging.system = "nats", messaging.destination.name = %message.subject);
    common::trace_context::set_parent_from_nats(&span, message.headers.as_ref());
    let result = match ingest(state, &message.subject, &message.payload)
        .instrument(span)
        .await
    {
        Ok(accepted) => ingest_reply::Result::Accepted(Accepted {
            id: accepted.id,
            sequence: accepted.sequence,
            duplicate: accepted.duplicate,
        }),
        Err(error) => ingest_reply::Result::Rejected(rejected(&error)),
    };
    let reply = IngestReply {
        result: Some(result),
    };
    if let Err(error) = state
        .client
        .publish(reply_to, reply.encode_to_vec().into())
        .await
    {
        tracing::warn!(error = %error, subject = %message.subject, "nats ingest reply failed");
    }
}

/// Validates and stores one request's event, and counts the outcome.
async fn ingest(
    state: &AppState,
    subject: &str,
    payload: &[u8],
) -> Result<publisher::Accepted, ApiError> {
    let (tenant, event) = checked(state, subject, payload)
        .inspect_err(|e| state.metrics.rejected(Via::Nats, e, 1))?;
    let span = tracing::info_span!("ingest.publish", otel.kind = "producer", event_id = %event.id, event_type = %event.r#type, tenant = %tenant, agent = %event.agent_id, via = "nats");
    let started = std::time::Instant::now();
    let result = publisher::publish(state, &event).instrument(span).await;
    state
        .metrics
        .published(Via::Nats, &event.r#type, started.elapsed(), &result, |a| {
            a.duplicate
        });
    result
}

/// The tenant and the event to store for a request, or why there is none.
fn checked<'s>(
    state: &AppState,
    subject: &'s str,
    payload: &[u8],
) -> Result<(&'s str, Event), ApiError> {
    let tenant = subject.rsplit('.').next().unwrap_or_default();
    if !tenant_id_is_valid(tenant) {
        return Err(ApiError::field(
            "tenant_id",
            "must match ^[a-z0-9][a-z0-9_-]{0,62}$",
        ));
    }
    state.rate_limit.check(tenant, 1)?;
    if payload.is_empty() {
        return Err(bad_request(
            "the payload is empty; expected a protobuf webhooks.v1.Event",
        ));
    }
    let limit = state.settings.event_body_limit;
    if payload.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let event = Event::decode(payload).map_err(|error| {
        bad_request(format!(
            "the payload is not a protobuf webhooks.v1.Event: {error}"
        ))
    })?;
    let mut errors = Vec::new();
    if !event.tenant_id.is_empty() && event.tenant_id != tenant {
        errors.push(validate::FieldError {
            field: "tenant_id".to_owned(),
            message: format!("must be empty or the subject's tenant, {tenant}"),
        });
    }
    let checked = validate::check_event(event);
    let new = match checked {
        Ok(new) if errors.is_empty() => new,
        Ok(_) => return Err(ApiError::Invalid(errors)),
        Err(more) => {
            errors.extend(more);
            return Err(ApiError::Invalid(errors));
        }
    };
    Ok((tenant, publisher::build_event(tenant, new, None)))
}

fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::BAD_REQUEST,
        detail: detail.into(),
    }
}

/// The reply for an error: the problem document the HTTP path would answer, as protobuf.
fn rejected(error: &ApiError) -> Rejected {
    if let ApiError::Unavailable(cause)
    | ApiError::Internal(cause)
    | ApiError::Unconfirmed { source: cause, .. } = error
    {
        tracing::error!(error.message = %cause, error.cause_chain = %format!("{cause:#}"), status = error.status().as_u16(), "nats ingest request failed");
    }
    let problem = error.problem();
    let text = |key: &str| {
        problem
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let errors = match error {
        ApiError::Invalid(errors) => errors
            .iter()
            .map(|e| FieldError {
                field: e.field.clone(),
                message: e.message.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    Rejected {
        status: u32::from(error.status().as_u16()),
        title: text("title"),
        detail: text("detail"),
        errors,
        id: text("id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_error_becomes_a_422_listing_every_field() {
        let error = ApiError::Invalid(vec![
            validate::FieldError {
                field: "agent_id".to_owned(),
                message: "is required".to_owned(),
            },
            validate::FieldError {
                field: "data.confidence".to_owned(),
                message: "must be at most 1".to_owned(),
            },
        ]);
        let reply = rejected(&error);
        assert_eq!(reply.status, 422);
        assert!(!reply.title.is_empty());
        let fields: Vec<&str> = reply.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["agent_id", "data.confidence"]);
    }

    #[test]
    fn a_malformed_payload_becomes_a_400_with_a_title_and_detail() {
        let reply = rejected(&bad_request("not protobuf"));
        assert_eq!(reply.status, 400);
        assert!(!reply.title.is_empty());
        assert_eq!(reply.detail, "not protobuf");
        assert!(reply.errors.is_empty());
    }

    #[test]
    fn an_unavailable_store_becomes_a_503() {
        let reply = rejected(&ApiError::Unavailable(anyhow::anyhow!("down")));
        assert_eq!(reply.status, 503);
    }
}
