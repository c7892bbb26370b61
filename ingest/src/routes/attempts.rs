//! Delivery attempts: the log of one subscription or one event, and a subscription's stats.
//!
//! The dispatcher records every attempt on `webhooks.attempts.<tenant>.<subscription>`; these
//! handlers read that stream page by page through [`common::pages`]. A list cursor is the
//! stream sequence of the last record of the previous page, as a decimal string.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Json,
    extract::{Path, Query, State},
};
use common::pages::{self, Start};
use prost::Message as _;
use proto::{
    subjects,
    v1::{Attempt, Subscription},
};
use serde_json::{Value, json};

use super::Page;
use crate::{app::AppState, auth::Tenant, error::ApiError};

/// The most attempt records one `GET /v1/events/{id}/attempts` call looks at.
const EVENT_SCAN_CAP: usize = 10_000;
/// How far before an assigned event id's timestamp the event's attempts are looked for.
const EVENT_SCAN_SLACK: Duration = Duration::from_secs(60);
/// The most attempt records one stats call looks at.
const STATS_SCAN_CAP: usize = 100_000;
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tenant's subscription `id`; anything else (another tenant's, a malformed id) is a `404`.
pub(super) fn subscription(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Arc<Subscription>, ApiError> {
    if !proto::validate::is_valid_id(id) {
        return Err(ApiError::NotFound);
    }
    state
        .subscriptions
        .get(&subjects::subscription_key(tenant, id))
        .ok_or(ApiError::NotFound)
}

/// A stream sequence cursor (`after`), `0` when absent.
pub(super) fn sequence_cursor(after: Option<&str>) -> Result<u64, ApiError> {
    match after {
        None => Ok(0),
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| ApiError::field("after", "must be a next_cursor of a previous page")),
    }
}

/// A failed read of a stream: NATS is down or slow.
pub(super) fn unavailable(e: anyhow::Error) -> ApiError {
    ApiError::Unavailable(e)
}

fn view(a: &Attempt) -> Value {
    json!({
        "event_id": a.event_id,
        "subscription_id": a.subscription_id,
        "attempt": a.attempt.max(1),
        "outcome": if a.succeeded { "succeeded" } else { "failed" },
        "status_code": (a.status_code > 0).then_some(a.status_code),
        "error": (!a.error.is_empty()).then_some(&a.error),
        "latency_ms": a.latency_ms,
        "at": a.at.as_ref().map(proto::time::format_rfc3339),
    })
}

fn decode(sequence: u64, payload: &[u8]) -> Option<Attempt> {
    match Attempt::decode(payload) {
        Ok(a) => Some(a),
        Err(error) => {
            tracing::warn!(%error, sequence, "skipping an undecodable attempt record");
            None
        }
    }
}

/// `GET /v1/subscriptions/{id}/attempts`.
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/attempts",
    operation_id = "list_subscription_attempts",
    tag = "attempts",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
        ("after" = Option<String>, Query, pattern = "^[0-9]{0,19}$", description = "The `next_cursor` of a previous page."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The subscription's delivery attempts, oldest first.", body = crate::openapi::AttemptPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn by_subscription(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let sub = subscription(&state, &tenant, &id)?;
    let page = Page::from_query(&query, 100, 1000)?;
    let after = sequence_cursor(page.after.as_deref())?;
    let read = pages::read(
        &state.js,
        subjects::ATTEMPTS_STREAM,
        &subjects::attempts_subject(&tenant, &sub.id),
        Start::After(after),
        page.limit,
    )
    .await
    .map_err(unavailable)?;
    let data: Vec<Value> = read
        .items
        .iter()
        .filter_map(|(seq, payload)| decode(*seq, payload))
        .map(|a| view(&a))
        .collect();
    let next = read
        .more
        .then(|| read.items.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

/// Where an event's attempts can start: shortly before an assigned id's timestamp, else the
/// beginning of the log. A timestamp in the future (a producer's id that only looks assigned;
/// a ULID reaches the year 10889) is no hint at all.
fn event_start(event_id: &str) -> Start {
    event_id
        .strip_prefix("evt_")
        .and_then(|u| ulid::Ulid::from_string(u).ok())
        .map(|u| u.datetime())
        .filter(|t| *t <= SystemTime::now())
        .and_then(|t| t.checked_sub(EVENT_SCAN_SLACK))
        .map_or(Start::After(0), Start::Time)
}

/// `GET /v1/events/{id}/attempts`: scans the tenant's attempt log from the event's time, at
/// most [`EVENT_SCAN_CAP`] records per call; `next_cursor` continues the scan.
#[utoipa::path(
    get,
    path = "/v1/events/{id}/attempts",
    operation_id = "list_event_attempts",
    tag = "attempts",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "An event id."),
        ("after" = Option<String>, Query, pattern = "^[0-9]{0,19}$", description = "The `next_cursor` of a previous page."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The event's delivery attempts, to every subscription.", body = crate::openapi::AttemptPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn by_event(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !proto::validate::is_valid_id(&id) {
        return Err(ApiError::NotFound);
    }
    let page = Page::from_query(&query, 100, 1000)?;
    let start = match page.after.as_deref() {
        Some(raw) => Start::After(sequence_cursor(Some(raw))?),
        None => event_start(&id),
    };
    let mut found = Vec::new();
    let scanned = pages::scan(
        &state.js,
        subjects::ATTEMPTS_STREAM,
        &subjects::attempts_subject(&tenant, ">"),
        start,
        EVENT_SCAN_CAP,
        |seq, payload| {
            if let Some(a) = decode(seq, &payload).filter(|a| a.event_id == id) {
                found.push(view(&a));
            }
            found.len() < page.limit
        },
    )
    .await
    .map_err(unavailable)?;
    // The scan stopped at the page's last match or at the cap; either way it goes on from the
    // last record it looked at.
    let next = scanned
        .more
        .then(|| scanned.last_sequence.map(|s| s.to_string()))
        .flatten();
    Ok(Json(json!({"data": found, "next_cursor": next})))
}

fn window(query: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let Some(raw) = query.get("window") else {
        return Ok(DEFAULT_WINDOW);
    };
    match humantime::parse_duration(raw) {
        Ok(w) if !w.is_zero() && w <= MAX_WINDOW => Ok(w),
        _ => Err(ApiError::field(
            "window",
            "must be a duration such as 1h or 24h, at most 7d",
        )),
    }
}

/// The nearest-rank percentile `q` of `sorted` (not empty).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `GET /v1/subscriptions/{id}/stats?window=24h`: counts by outcome and latency percentiles of
/// the attempts in the window (at most [`STATS_SCAN_CAP`] of them; `truncated` says so).
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/stats",
    operation_id = "subscription_stats",
    tag = "attempts",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
        ("window" = Option<String>, Query, description = "A duration such as `1h` or `24h`, at most `7d` (default `24h`)."),
    ),
    responses(
        (status = 200, description = "Counts by outcome and latency percentiles of the attempts in the window.", body = crate::openapi::SubscriptionStats),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn stats(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let sub = subscription(&state, &tenant, &id)?;
    let window = window(&query)?;
    let since = SystemTime::now()
        .checked_sub(window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let (mut succeeded, mut failed) = (0u64, 0u64);
    let mut latencies = Vec::new();
    let scanned = pages::scan(
        &state.js,
        subjects::ATTEMPTS_STREAM,
        &subjects::attempts_subject(&tenant, &sub.id),
        Start::Time(since),
        STATS_SCAN_CAP,
        |seq, payload| {
            if let Some(a) = decode(seq, &payload) {
                if a.succeeded {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
                latencies.push(a.latency_ms);
            }
            true
        },
    )
    .await
    .map_err(unavailable)?;
    latencies.sort_unstable();
    let latency = (!latencies.is_empty()).then(|| {
        json!({
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last(),
        })
    });
    Ok(Json(json!({
        "subscription_id": sub.id,
        "window_s": window.as_secs(),
        "attempts": succeeded + failed,
        "succeeded": succeeded,
        "failed": failed,
        "latency_ms": latency,
        "truncated": scanned.more && scanned.count >= STATS_SCAN_CAP,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.90), 90);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn an_assigned_event_id_starts_the_scan_a_minute_before_its_time() {
        let ulid = ulid::Ulid::new();
        let Start::Time(t) = event_start(&format!("evt_{ulid}")) else {
            panic!("expected a time start");
        };
        assert_eq!(t + EVENT_SCAN_SLACK, ulid.datetime());
        assert_eq!(event_start("order-17"), Start::After(0));
        // The largest ULID is in the year 10889: no time to start from (nor to panic on).
        assert_eq!(
            event_start("evt_7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            Start::After(0)
        );
        assert_eq!(event_start("evt_not-a-ulid"), Start::After(0));
    }

    #[test]
    fn windows_beyond_seven_days_or_unparseable_are_refused() {
        let q = |w: &str| HashMap::from([("window".to_owned(), w.to_owned())]);
        assert_eq!(window(&HashMap::new()).ok(), Some(DEFAULT_WINDOW));
        assert_eq!(window(&q("1h")).ok(), Some(Duration::from_secs(3600)));
        assert!(window(&q("7d")).is_ok());
        assert!(window(&q("8d")).is_err());
        assert!(window(&q("0s")).is_err());
        assert!(window(&q("soon")).is_err());
    }
}
