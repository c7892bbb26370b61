//! Replays: `POST /v1/events/{id}/replay` and `POST /v1/subscriptions/{id}/replay`.
//!
//! A replay queues ordinary delivery tasks (origin `replay`, attempt 1, the envelope rendered
//! now) in the replays lane (`subjects::task_subject(DeliveryOrigin::Replay, …)`), which the
//! dispatcher works through with its own consumer and concurrency, so a large replay never
//! delays live deliveries. From there a task takes the normal path: signed with the original
//! `webhook-id` (the event id), retried on the subscription's schedule, dead-lettered at the end.
//! Message ids are `replay:<request ulid>:<event>:<subscription>`: every call is an explicit
//! resend, and one call never queues the same pair twice. Every task's PubAck is awaited before
//! the `202`; if one fails the answer is `503` and the tasks already queued stay queued (the
//! receiver dedupes on `webhook-id` if the caller retries).
//!
//! A subscription's replay reads the tenant's events from `since` in acceptance order (from
//! the stream's store time, with a few seconds of slack for clocks), keeps those whose
//! `accepted_at` is in `[since, until]` (`until` defaults to the time of the call) and that match
//! both the subscription's filters and the requested `event_types`, and stops at the first event
//! accepted more than the slack after `until`. One call queues at most [`MAX_REPLAYED`]
//! deliveries and examines at most [`MAX_EXAMINED`] events in range; past either bound it
//! answers `"truncated": true` and `"next_since"`, the acceptance time to call again with.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::message::PublishMessage as Publish;
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use common::pages::{self, Start};
use prost::Message as _;
use proto::{
    envelope, subjects,
    v1::{Delivery, DeliveryOrigin, Event, Subscription},
    validate::FieldError,
};
use serde_json::{Map, Value, json};

use super::{attempts, feed, json_body};
use crate::{app::AppState, auth::Tenant, error::ApiError};

/// The most deliveries one subscription replay queues.
pub const MAX_REPLAYED: usize = 100_000;
/// The most events in range one subscription replay examines.
pub const MAX_EXAMINED: usize = 1_000_000;
/// Events read and tasks queued per round of a subscription replay.
const PAGE: usize = 1000;
/// Tolerated disagreement between acceptance times and the stream's store times (clocks of
/// different hosts, concurrent ingest replicas).
const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// A replay task for `event` (at `sequence`) to `subscription`, carrying `payload`.
fn task(event: &Event, sequence: u64, subscription: &str, payload: &bytes::Bytes) -> Delivery {
    Delivery::first_attempt(
        event,
        sequence,
        subscription,
        payload,
        DeliveryOrigin::Replay,
    )
}

/// Publishes `tasks` to the replays lane at once and awaits every PubAck.
async fn queue(state: &AppState, request: &str, tasks: &[Delivery]) -> Result<usize, ApiError> {
    if tasks.is_empty() {
        return Ok(0);
    }
    let work = async {
        let mut pending = Vec::with_capacity(tasks.len());
        for task in tasks {
            let subject = subjects::task_subject(
                DeliveryOrigin::Replay,
                &task.tenant_id,
                &task.subscription_id,
            );
            let publish = Publish::build()
                .payload(task.encode_to_vec().into())
                .message_id(subjects::replay_msg_id(
                    request,
                    &task.event_id,
                    &task.subscription_id,
                ));
            pending.push(state.js.send_publish(subject, publish).await?);
        }
        for ack in pending {
            ack.await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(state.settings.publish_timeout * 2, work)
        .await
        .map_err(|_| ApiError::Unavailable(anyhow::anyhow!("timed out queueing replays")))?
        .map_err(ApiError::Unavailable)?;
    Ok(tasks.len())
}

/// A JSON object body; an empty body reads as `{}`.
fn object_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let value = match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Value::Object(Map::new()),
        other => json_body(other, state.settings.event_body_limit)?,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::field("", "must be a JSON object")),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A replay to a subscription its owner (or the system) disabled is refused, not parked.
fn ensure_enabled(sub: &Subscription, field: &str) -> Result<(), ApiError> {
    if sub.enabled {
        return Ok(());
    }
    Err(ApiError::field(
        field,
        "the subscription is disabled; enable it before replaying to it",
    ))
}

/// `POST /v1/events/{id}/replay` body `{"subscription_id"?}` → `202 {"deliveries": n}`.
///
/// With `subscription_id`, to that subscription whatever its filters (an explicit resend);
/// without, to every enabled subscription of the tenant whose filters select the event.
#[utoipa::path(
    post,
    path = "/v1/events/{id}/replay",
    operation_id = "replay_event",
    tag = "events",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "An event id."),
    ),
    request_body(content = Option<crate::openapi::EventReplayRequest>, content_type = "application/json", description = "Optional; an empty body replays to every matching subscription."),
    responses(
        (status = 202, description = "Deliveries queued (with the original `webhook-id`).", body = crate::openapi::EventReplayed),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn event(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = object_body(&state, body)?;
    let mut errors: Vec<FieldError> = body
        .keys()
        .filter(|k| *k != "subscription_id")
        .map(|k| invalid(k, "unknown field"))
        .collect();
    let wanted = match body.get("subscription_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(invalid("subscription_id", "must be a string"));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let (sequence, event) = feed::load(&state, &tenant, &id).await?;
    let targets: Vec<String> = match wanted {
        Some(sub_id) => {
            let sub = attempts::subscription(&state, &tenant, &sub_id)?;
            ensure_enabled(&sub, "subscription_id")?;
            vec![sub.id.clone()]
        }
        None => state
            .subscriptions
            .range(&subjects::subscription_key(&tenant, ""), None, usize::MAX)
            .into_iter()
            .filter(|sub| sub.enabled && *sub.tenant_id == *tenant)
            .filter(|sub| {
                proto::catalog::filters_match(
                    &sub.event_types,
                    &sub.agent_ids,
                    &event.r#type,
                    &event.agent_id,
                )
            })
            .map(|sub| sub.id.clone())
            .collect(),
    };
    let payload = envelope::render(&event, &state.settings.shared.links_base_url).into();
    let tasks: Vec<Delivery> = targets
        .iter()
        .map(|sub| task(&event, sequence, sub, &payload))
        .collect();
    let request = ulid::Ulid::new().to_string();
    let queued = queue(&state, &request, &tasks).await?;
    tracing::info!(event_id = %event.id, deliveries = queued, "event replayed");
    Ok((StatusCode::ACCEPTED, Json(json!({"deliveries": queued}))))
}

fn time_field(
    body: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<SystemTime> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let parsed = proto::time::parse_rfc3339(s).map(|t| proto::time::to_system(&t));
            if parsed.is_none() {
                errors.push(invalid(field, "must be an RFC 3339 time"));
            }
            parsed
        }
        Some(_) => {
            errors.push(invalid(field, "must be an RFC 3339 time"));
            None
        }
    }
}

/// What a subscription replay asks for.
struct Range {
    since: SystemTime,
    until: SystemTime,
    event_types: Option<Vec<String>>,
}

fn parse_range(body: &Map<String, Value>) -> Result<Range, ApiError> {
    let mut errors: Vec<FieldError> = body
        .keys()
        .filter(|k| !matches!(k.as_str(), "since" | "until" | "event_types"))
        .map(|k| invalid(k, "unknown field"))
        .collect();
    let since = time_field(body, "since", &mut errors);
    if !body.contains_key("since") || body.get("since") == Some(&Value::Null) {
        errors.push(invalid("since", "is required"));
    }
    let until = time_field(body, "until", &mut errors);
    if let (Some(since), Some(until)) = (&since, &until)
        && until <= since
    {
        errors.push(invalid("until", "must be later than since"));
    }
    let event_types = match body.get("event_types") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut types = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(p) if proto::catalog::type_pattern_is_valid(p) => types.push(p.to_owned()),
                    _ => errors.push(invalid(
                        &format!("event_types[{i}]"),
                        "must be an event type, a `prefix.*` pattern or `*`",
                    )),
                }
            }
            Some(types)
        }
        Some(_) => {
            errors.push(invalid(
                "event_types",
                "must be a non-empty array of event types or patterns",
            ));
            None
        }
    };
    match (since, errors.is_empty()) {
        (Some(since), true) => Ok(Range {
            since,
            until: until.unwrap_or_else(SystemTime::now),
            event_types,
        }),
        _ => Err(ApiError::Invalid(errors)),
    }
}

/// `POST /v1/subscriptions/{id}/replay` body `{"since","until"?,"event_types"?}` →
/// `202 {"replayed": n, "truncated": bool, "next_since"?}`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/replay",
    operation_id = "replay_subscription",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    request_body(content = crate::openapi::SubscriptionReplayRequest, content_type = "application/json", description = "The range of acceptance times, and optionally types."),
    responses(
        (status = 202, description = "Deliveries queued for the events accepted in the range.", body = crate::openapi::SubscriptionReplayed),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn subscription(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = object_body(&state, body)?;
    let sub = attempts::subscription(&state, &tenant, &id)?;
    let range = parse_range(&body)?;
    ensure_enabled(&sub, "enabled")?;
    // One agent: read only its subjects.
    let agent = match sub.agent_ids.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    };
    let filter = subjects::events_filter(&tenant, agent, None);
    let wants = |event: &Event| {
        proto::catalog::filters_match(
            &sub.event_types,
            &sub.agent_ids,
            &event.r#type,
            &event.agent_id,
        ) && range.event_types.as_ref().is_none_or(|types| {
            types
                .iter()
                .any(|p| proto::catalog::pattern_matches(p, &event.r#type))
        })
    };
    let (since, until) = (range.since, range.until);
    let stop_after = until + CLOCK_SLACK;
    let links = &state.settings.shared.links_base_url;
    let request = ulid::Ulid::new().to_string();
    let first = since
        .checked_sub(CLOCK_SLACK)
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut start = Start::Time(first);
    let (mut examined, mut replayed) = (0usize, 0usize);
    let mut next_since: Option<SystemTime> = None;
    loop {
        let page = pages::read(&state.js, subjects::EVENTS_STREAM, &filter, start, PAGE)
            .await
            .map_err(attempts::unavailable)?;
        let Some(&(last, _)) = page.items.last() else {
            break;
        };
        let mut tasks = Vec::new();
        let mut done = !page.more;
        for (sequence, payload) in &page.items {
            let event = match Event::decode(payload.as_ref()) {
                Ok(event) if *event.tenant_id == *tenant => event,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, sequence, "skipping an undecodable event in a replay");
                    continue;
                }
            };
            let at = proto::time::to_system(&event.accepted_at.unwrap_or_default());
            if at > stop_after {
                done = true;
                break;
            }
            if at < since || at > until {
                continue;
            }
            if examined >= MAX_EXAMINED || replayed + tasks.len() >= MAX_REPLAYED {
                next_since = Some(at);
                done = true;
                break;
            }
            examined += 1;
            if wants(&event) {
                let payload = envelope::render(&event, links).into();
                tasks.push(task(&event, *sequence, &sub.id, &payload));
            }
        }
        replayed += queue(&state, &request, &tasks).await?;
        if done {
            break;
        }
        start = Start::After(last);
    }
    tracing::info!(subscription_id = %sub.id, replayed, examined, truncated = next_since.is_some(), "subscription replayed");
    let mut answer = json!({"replayed": replayed, "truncated": next_since.is_some()});
    if let Some(next) = next_since {
        answer["next_since"] = json!(proto::time::format_rfc3339(&proto::time::from_system(next)));
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn a_range_needs_since_and_an_until_after_it() {
        let err = parse_range(&body(json!({}))).err().unwrap();
        assert_eq!(fields(err), ["since"]);
        let err = parse_range(&body(json!({
            "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"
        })))
        .err()
        .unwrap();
        assert_eq!(fields(err), ["until"]);
    }

    #[test]
    fn a_range_lists_every_bad_field() {
        let err = parse_range(&body(json!({
            "since": "yesterday", "event_types": ["call.*", "nope"], "extra": 1
        })))
        .err()
        .unwrap();
        let mut got = fields(err);
        got.sort();
        assert_eq!(got, ["event_types[1]", "extra", "since"]);
    }

    #[test]
    fn a_range_without_until_ends_now() {
        let range = parse_range(&body(json!({
            "since": "2026-01-01T00:00:00Z", "event_types": ["call.*"]
        })))
        .unwrap();
        assert!(range.until >= range.since);
        assert_eq!(range.event_types.unwrap(), ["call.*"]);
    }
}
