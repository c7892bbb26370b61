//! `GET /v1/events` (the incremental-sync feed) and `GET /v1/events/{id}`.
//!
//! The feed reads the events stream in acceptance (stream) order through [`common::pages`],
//! filtered by subject (`webhooks.events.<tenant>.<agent|*>.<type|>>`), so a page costs its own
//! size. Its cursor is a stream sequence as a decimal string, opaque to clients: the sequence of
//! the last item of a page. Every answer carries a `next_cursor`, the last page too (its last
//! item's position) and an empty page (the cursor it was given, or `"0"`), so a receiver can
//! resume from it later and get exactly what was accepted since. Without `after` the feed
//! starts at the oldest retained event of the tenant.
//!
//! An event by id is found through `common::event_index`: an id ingest assigned by its time,
//! any other through the index stream, then a direct read by sequence.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use common::pages::{self, Start};
use prost::Message as _;
use proto::{envelope, subjects, v1::Event, validate::FieldError};
use serde_json::{Value, json};

use super::{Page, attempts};
use crate::{app::AppState, auth::Tenant, error::ApiError};

/// The tenant's event `id` with its stream sequence; anything else is a `404`.
pub(super) async fn load(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<(u64, Event), ApiError> {
    let publish_within = state.settings.publish_timeout;
    common::event_index::load(
        &state.js,
        &state.stores.event_index,
        tenant,
        id,
        publish_within,
    )
    .await
    .map_err(ApiError::Unavailable)?
    .ok_or(ApiError::NotFound)
}

/// `GET /v1/events/{id}` → the envelope, exactly as receivers get it.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    operation_id = "get_event",
    tag = "events",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "An event id."),
    ),
    responses(
        (status = 200, description = "The event's envelope, exactly as receivers get it.", body = crate::openapi::Envelope),
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
    let (_, event) = load(&state, &tenant, &id).await?;
    Ok(Json(envelope::to_value(
        &event,
        &state.settings.shared.links_base_url,
    )))
}

fn invalid(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// `GET /v1/events?after=&limit=&type=&agent_id=` → `{"data":[envelope…],"next_cursor"}`.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "list_events",
    tag = "events",
    params(
        ("after" = Option<String>, Query, pattern = "^[0-9]{0,19}$", description = "The `next_cursor` of a previous page; absent or empty: from the oldest retained event."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)."),
        ("type" = Option<crate::openapi::EventTypeFilter>, Query, description = "Only events of this type (empty: every type)."),
        ("agent_id" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{0,64}$", description = "Only this agent's events (empty: every agent)."),
    ),
    responses(
        (status = 200, description = "The tenant's events in acceptance order; always a `next_cursor`.", body = crate::openapi::EventPage),
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
    let mut errors = Vec::new();
    let page = match Page::from_query(&query, 100, 1000) {
        Ok(page) => Some(page),
        Err(ApiError::Invalid(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(other) => return Err(other),
    };
    let after = match page.as_ref().and_then(|p| p.after.as_deref()) {
        None => 0,
        Some(raw) => match raw.parse::<u64>() {
            Ok(sequence) if raw.bytes().all(|b| b.is_ascii_digit()) => sequence,
            _ => {
                errors.push(invalid("after", "must be a next_cursor of a previous page"));
                0
            }
        },
    };
    let event_type = query.get("type").filter(|t| !t.is_empty());
    if let Some(t) = event_type
        && proto::catalog::find(t).is_none()
    {
        errors.push(invalid("type", "must be a known event type"));
    }
    let agent = query.get("agent_id").filter(|a| !a.is_empty());
    if let Some(a) = agent
        && !proto::validate::is_valid_id(a)
    {
        errors.push(invalid("agent_id", "must match ^[A-Za-z0-9_-]{1,64}$"));
    }
    let (Some(page), true) = (page, errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let filter = subjects::events_filter(
        &tenant,
        agent.map(String::as_str),
        event_type.map(String::as_str),
    );
    let read = pages::read(
        &state.js,
        subjects::EVENTS_STREAM,
        &filter,
        Start::After(after),
        page.limit,
    )
    .await
    .map_err(attempts::unavailable)?;
    let links = &state.settings.shared.links_base_url;
    let data: Vec<Value> = read
        .items
        .iter()
        .filter_map(
            |(sequence, payload)| match Event::decode(payload.as_ref()) {
                Ok(event) if *event.tenant_id == *tenant => Some(envelope::to_value(&event, links)),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, sequence, "skipping an undecodable event in the feed");
                    None
                }
            },
        )
        .collect();
    // The position after the last item read (skipped ones included), else where we started.
    let next = read.items.last().map_or(after, |(sequence, _)| *sequence);
    Ok(Json(json!({"data": data, "next_cursor": next.to_string()})))
}
