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
    let new = proto::validate::parse_event(body).map_err(ApiError::Invalid)?;
    let event = publisher::build_event(tenant, new, key);
    let span = tracing::info_span!("ingest.publish", event_id = %event.id, event_type = %event.r#type, tenant = %tenant);
    publisher::publish(state, &event).instrument(span).await
}

pub async fn create(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body = json_body(body, state.settings.event_body_limit)?;
    let key = idempotency_key(&headers)?;
    let accepted = accept(&state, &tenant, &body, key).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn batch(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let max = state.settings.batch_max_events;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::field(
            "events",
            format!("must hold 1 to {max} events"),
        ));
    }
    // With no connection nothing can be stored: say so once, for the whole batch.
    if !common::nats::is_connected(&state.client) {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "not connected to nats"
        )));
    }
    // Every item is published at once; the PubAcks are awaited together.
    let results =
        futures::future::join_all(items.iter().map(|item| accept(&state, &tenant, item, None)))
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
