//! `POST /v1/events` and `POST /v1/events/batch`.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use proto::subjects::http::IDEMPOTENCY_KEY;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::json_body;
use crate::{
    app::AppState,
    auth::Tenant,
    error::ApiError,
    metrics::Via,
    publisher::{self, Accepted},
};

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k)),
            _ => Err(ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )),
        },
    }
}

/// Validates one event body and stores it.
async fn accept(
    state: &AppState,
    tenant: &str,
    body: &Value,
    key: Option<&str>,
) -> Result<Accepted, ApiError> {
    let new = proto::validate::parse_event(body)
        .map_err(ApiError::Invalid)
        .inspect_err(|e| state.metrics.rejected(Via::Http, e, 1))?;
    let event = publisher::build_event(tenant, new, key);
    let span = tracing::info_span!("ingest.publish", otel.kind = "producer", event_id = %event.id, event_type = %event.r#type, tenant = %tenant, agent = %event.agent_id);
    let started = std::time::Instant::now();
    let result = publisher::publish(state, &event).instrument(span).await;
    state
        .metrics
        .published(Via::Http, &event.r#type, started.elapsed(), &result, |a| {
            a.duplicate
        });
    result
}

#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "create_event",
    tag = "events",
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes the call idempotent like a producer-chosen `id` (used when the body has none)."),
    ),
    request_body(content = crate::openapi::EventInput, content_type = "application/json", description = "One event."),
    responses(
        (status = 202, description = "Durably stored (PubAck received), or a repeat of an id within the dedupe window (`duplicate: true`).", body = crate::openapi::Accepted),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn create(
    tenant: Result<Tenant, ApiError>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    // Refusals before `accept` are counted here; `accept` counts its own outcome.
    let refused = |e: &ApiError| state.metrics.rejected(Via::Http, e, 1);
    let Tenant(tenant) = tenant.inspect_err(refused)?;
    let body = json_body(body, state.settings.event_body_limit).inspect_err(refused)?;
    state.rate_limit.check(&tenant, 1).inspect_err(refused)?;
    let key = idempotency_key(&headers).inspect_err(refused)?;
    let accepted = accept(&state, &tenant, &body, key).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(
    post,
    path = "/v1/events/batch",
    operation_id = "create_events_batch",
    tag = "events",
    request_body(content = crate::openapi::BatchRequest, content_type = "application/json", description = "1 to 500 events, at most 5 MiB."),
    responses(
        (status = 200, description = "One result per input event, in order: accepted, or its problem.", body = crate::openapi::BatchResults),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 429, response = crate::openapi::TooManyRequests),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn batch(
    tenant: Result<Tenant, ApiError>,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // A refusal of the whole batch counts its events when they are known, else one.
    let mut events = 1;
    let result = batch_of(tenant, &state, body, &mut events).await;
    if let Err(error) = &result {
        state.metrics.rejected(Via::Http, error, events);
    }
    result
}

/// `batch`, with refusals of the whole batch left to the caller to count.
async fn batch_of(
    tenant: Result<Tenant, ApiError>,
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    events: &mut u64,
) -> Result<Json<Value>, ApiError> {
    let Tenant(tenant) = tenant?;
    let mut body = json_body(body, state.settings.batch_body_limit)?;
    let Some(Value::Array(items)) = body.get_mut("events").map(Value::take) else {
        return Err(ApiError::field("events", "must be an array of events"));
    };
    if let Some(extra) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "events"))
    {
        return Err(ApiError::field(extra, "unknown field"));
    }
    *events = items.len().max(1) as u64;
    let max = state.settings.batch_max_events;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::field(
            "events",
            format!("must hold 1 to {max} events"),
        ));
    }
    // All of the batch's tokens or none: a 429 stores none of its events.
    state.rate_limit.check(&tenant, items.len())?;
    // With no connection nothing can be stored: say so once, for the whole batch.
    if !common::nats::is_connected(&state.client) {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "not connected to nats"
        )));
    }
    // Every item is published at once; the PubAcks are awaited together.
    let results =
        futures::future::join_all(items.iter().map(|item| accept(state, &tenant, item, None)))
            .await;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(accepted) => json!(accepted),
            Err(error) => json!({"error": error.problem()}),
        })
        .collect();
    Ok(Json(json!({"results": results})))
}
