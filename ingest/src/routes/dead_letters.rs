//! Dead letters: list, one, and redrive (one, or all of a subscription's).
//!
//! A dead letter is a `DeadLetter` on `webhooks.dlq.<tenant>.<subscription>`; its public id is
//! `dl_<stream sequence>`, and a list cursor is the id of the last item of the previous page.
//! A redrive publishes the delivery again as a fresh task (attempt 1, origin `redrive`, message
//! id `redrive:<sequence>`), awaits the PubAck, and only then deletes the dead letter: a crash in
//! between leaves it listed, and redriving it again within the dedupe window stores no second
//! task. Another tenant's dead letter is a `404`, like a missing one.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::{
    self, ErrorCode, message::PublishMessage as Publish, stream::DeleteMessageErrorKind,
    stream::DirectGetErrorKind,
};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
};
use common::pages::{self, Start};
use prost::Message as _;
use proto::{
    subjects,
    v1::{DeadLetter, DeliveryOrigin},
};
use serde_json::{Value, json};

use super::{Page, attempts, json_body};
use crate::{app::AppState, auth::Tenant, error::ApiError};

/// The longest wait for one answer from JetStream.
const WAIT: Duration = Duration::from_secs(5);
/// Dead letters redriven per page of a bulk redrive.
const REDRIVE_PAGE: usize = 100;

fn view(sequence: u64, dl: &DeadLetter) -> Value {
    let delivery = dl.delivery.clone().unwrap_or_default();
    json!({
        "id": subjects::dead_letter_id(sequence),
        "event_id": delivery.event_id,
        "subscription_id": delivery.subscription_id,
        "event_type": delivery.event_type,
        "attempts": dl.attempts,
        "last_status_code": (dl.last_status_code > 0).then_some(dl.last_status_code),
        "last_error": (!dl.last_error.is_empty()).then_some(&dl.last_error),
        "reason": dl.reason,
        "failed_by": dl.failed_by,
        "dead_at": dl.dead_at.as_ref().map(proto::time::format_rfc3339),
    })
}

fn decode(sequence: u64, payload: &[u8]) -> Option<DeadLetter> {
    match DeadLetter::decode(payload) {
        Ok(dl) => Some(dl),
        Err(error) => {
            tracing::warn!(%error, sequence, "skipping an undecodable dead letter");
            None
        }
    }
}

/// The sequence of a list cursor (a dead-letter id), `0` when absent.
fn cursor(after: Option<&str>) -> Result<u64, ApiError> {
    match after {
        None => Ok(0),
        Some(raw) => subjects::dead_letter_sequence(raw)
            .ok_or_else(|| ApiError::field("after", "must be a next_cursor of a previous page")),
    }
}

async fn dlq(state: &AppState) -> Result<jetstream::stream::Stream<()>, ApiError> {
    state
        .js
        .get_stream_no_info(subjects::DLQ_STREAM)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

/// `GET /v1/dead-letters?subscription_id=&limit=&after=`.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    operation_id = "list_dead_letters",
    tag = "dead-letters",
    params(
        ("subscription_id" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{0,64}$", description = "Only this subscription's (empty: every subscription)."),
        ("after" = Option<String>, Query, pattern = "^(dl_[0-9]{1,19})?$", description = "The `next_cursor` of a previous page."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The tenant's dead letters, oldest first.", body = crate::openapi::DeadLetterPage),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn list(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::from_query(&query, 100, 1000)?;
    let after = cursor(page.after.as_deref())?;
    let filter = match query.get("subscription_id").filter(|s| !s.is_empty()) {
        // Another tenant's subscription id filters on this tenant's subjects: nothing matches.
        Some(sub) if proto::validate::is_valid_id(sub) => subjects::dlq_subject(&tenant, sub),
        Some(_) => {
            return Err(ApiError::field(
                "subscription_id",
                "must be a subscription id",
            ));
        }
        None => subjects::dlq_subject(&tenant, ">"),
    };
    let read = pages::read(
        &state.js,
        subjects::DLQ_STREAM,
        &filter,
        Start::After(after),
        page.limit,
    )
    .await
    .map_err(attempts::unavailable)?;
    let data: Vec<Value> = read
        .items
        .iter()
        .filter_map(|(seq, payload)| decode(*seq, payload).map(|dl| view(*seq, &dl)))
        .collect();
    let next = read
        .more
        .then(|| {
            read.items
                .last()
                .map(|(seq, _)| subjects::dead_letter_id(*seq))
        })
        .flatten();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

/// The tenant's dead letter `id`, with its sequence.
async fn load(state: &AppState, tenant: &str, id: &str) -> Result<(u64, DeadLetter), ApiError> {
    let sequence = subjects::dead_letter_sequence(id).ok_or(ApiError::NotFound)?;
    let stream = dlq(state).await?;
    let message = match tokio::time::timeout(WAIT, stream.direct_get(sequence)).await {
        Err(_) => {
            return Err(ApiError::Unavailable(anyhow::anyhow!(
                "timed out reading a dead letter"
            )));
        }
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => return Err(ApiError::NotFound),
        Ok(Err(e)) => return Err(ApiError::Unavailable(e.into())),
        Ok(Ok(message)) => message,
    };
    // The subject, not the payload, decides whose it is: `webhooks.dlq.<tenant>.<subscription>`.
    let own = message
        .subject
        .strip_prefix(subjects::dlq_subject(tenant, "").as_str())
        .is_some_and(|sub| !sub.is_empty() && !sub.contains('.'));
    if !own {
        return Err(ApiError::NotFound);
    }
    let dl =
        DeadLetter::decode(message.payload.as_ref()).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((sequence, dl))
}

/// `GET /v1/dead-letters/{id}`.
#[utoipa::path(
    get,
    path = "/v1/dead-letters/{id}",
    operation_id = "get_dead_letter",
    tag = "dead-letters",
    params(
        ("id" = String, Path, pattern = "^dl_[0-9]{1,19}$", description = "A dead-letter id."),
    ),
    responses(
        (status = 200, description = "The dead letter.", body = crate::openapi::DeadLetter),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn get(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (sequence, dl) = load(&state, &tenant, &id).await?;
    Ok(Json(view(sequence, &dl)))
}

/// Queues the dead letter at `sequence` again as a fresh delivery, then deletes it. Answers
/// whether this call removed it (`false`: someone else redrove it meanwhile).
async fn redrive_one(
    state: &AppState,
    stream: &jetstream::stream::Stream<()>,
    tenant: &str,
    sequence: u64,
    dl: DeadLetter,
) -> Result<bool, ApiError> {
    let mut delivery = dl.delivery.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("dead letter {sequence} holds no delivery"))
    })?;
    if !proto::validate::is_valid_id(&delivery.subscription_id) {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "dead letter {sequence} names no valid subscription"
        )));
    }
    delivery.tenant_id = tenant.to_owned();
    delivery.attempt = 1;
    delivery.not_before = None;
    delivery.last_status_code = 0;
    delivery.last_error.clear();
    delivery.origin = DeliveryOrigin::Redrive as i32;
    let subject =
        subjects::task_subject(DeliveryOrigin::Redrive, tenant, &delivery.subscription_id);
    let publish = Publish::build()
        .payload(delivery.encode_to_vec().into())
        .message_id(subjects::redrive_msg_id(sequence));
    let ack = async {
        let pending = state.js.send_publish(subject, publish).await?;
        Ok::<_, anyhow::Error>(pending.await?)
    };
    tokio::time::timeout(state.settings.publish_timeout, ack)
        .await
        .map_err(|_| ApiError::Unavailable(anyhow::anyhow!("timed out waiting for the pub ack")))?
        .map_err(ApiError::Unavailable)?;
    match tokio::time::timeout(WAIT, stream.delete_message(sequence)).await {
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "timed out deleting a redriven dead letter"
        ))),
        Ok(Ok(deleted)) => Ok(deleted),
        Ok(Err(e)) => match e.kind() {
            DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(false)
            }
            _ => Err(ApiError::Unavailable(e.into())),
        },
    }
}

/// `POST /v1/dead-letters/{id}/redrive` → `202 {"redriven": 1}`.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/redrive",
    operation_id = "redrive_dead_letter",
    tag = "dead-letters",
    params(
        ("id" = String, Path, pattern = "^dl_[0-9]{1,19}$", description = "A dead-letter id."),
    ),
    responses(
        (status = 202, description = "Queued again with a fresh attempt budget.", body = crate::openapi::Redriven),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn redrive(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (sequence, dl) = load(&state, &tenant, &id).await?;
    let stream = dlq(&state).await?;
    if !redrive_one(&state, &stream, &tenant, sequence, dl).await? {
        return Err(ApiError::NotFound);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"redriven": 1}))))
}

/// `POST /v1/dead-letters/redrive` body `{"subscription_id"}` → `202 {"redriven": n}`: every
/// dead letter of the subscription that existed when the call began (deliveries dead-lettered
/// again meanwhile, e.g. while the subscription is still disabled, wait for the next call).
#[utoipa::path(
    post,
    path = "/v1/dead-letters/redrive",
    operation_id = "redrive_dead_letters",
    tag = "dead-letters",
    request_body(content = crate::openapi::RedriveAllRequest, content_type = "application/json", description = "The subscription."),
    responses(
        (status = 202, description = "Every dead letter of the subscription queued again.", body = crate::openapi::Redriven),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn redrive_all(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_body(body, state.settings.event_body_limit)?;
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    if let Some(extra) = obj.keys().find(|k| *k != "subscription_id") {
        return Err(ApiError::field(extra, "unknown field"));
    }
    let sub_id = match obj.get("subscription_id") {
        None => return Err(ApiError::field("subscription_id", "is required")),
        Some(v) => v
            .as_str()
            .ok_or_else(|| ApiError::field("subscription_id", "must be a string"))?,
    };
    let sub = attempts::subscription(&state, &tenant, sub_id)?;
    let filter = subjects::dlq_subject(&tenant, &sub.id);
    let info = state
        .js
        .get_stream(subjects::DLQ_STREAM)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    let last = info.cached_info().state.last_sequence;
    let stream = dlq(&state).await?;
    let mut after = 0;
    let mut redriven = 0usize;
    loop {
        let page = pages::read(
            &state.js,
            subjects::DLQ_STREAM,
            &filter,
            Start::After(after),
            REDRIVE_PAGE,
        )
        .await
        .map_err(attempts::unavailable)?;
        let Some(&(page_last, _)) = page.items.last() else {
            break;
        };
        let batch = page
            .items
            .into_iter()
            .filter(|(seq, _)| *seq <= last)
            .filter_map(|(seq, payload)| decode(seq, &payload).map(|dl| (seq, dl)));
        let results = futures::future::join_all(
            batch.map(|(seq, dl)| redrive_one(&state, &stream, &tenant, seq, dl)),
        )
        .await;
        for result in results {
            if result? {
                redriven += 1;
            }
        }
        if !page.more || page_last >= last {
            break;
        }
        after = page_last;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"redriven": redriven}))))
}
