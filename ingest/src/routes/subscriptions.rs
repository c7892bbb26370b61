//! Subscriptions: CRUD on the subscriptions KV bucket, scoped by tenant, and the secret.
//!
//! Writes go to KV (create-if-absent, compare-and-set updates); reads come from this replica's
//! mirror of the bucket, which applies its own writes at once. Another tenant's subscription is
//! indistinguishable from a missing one (`404`).

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
};
use base64::Engine as _;
use common::watch::Change;
use prost::Message as _;
use proto::{
    catalog, subjects,
    v1::{RetryPolicy, SigningSecret, Subscription},
    validate::FieldError,
};
use rand::RngCore as _;
use serde_json::{Value, json};

use super::{Page, json_body};
use crate::{app::AppState, auth::Tenant, error::ApiError};

const MAX_EVENT_TYPES: usize = 64;
const MAX_AGENT_IDS: usize = 1000;
const MAX_HEADERS: usize = 20;
const MAX_ATTEMPTS: u64 = 30;
const MAX_DELAY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Headers a subscription may not set: the signature's, the transport's, and ours.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// The JSON view of a subscription (without the secret).
fn view(sub: &Subscription) -> Value {
    let retry = sub.retry.as_ref().map(|r| {
        json!({
            "max_attempts": (r.max_attempts > 0).then_some(r.max_attempts),
            "schedule_ms": (!r.schedule_ms.is_empty()).then_some(&r.schedule_ms),
        })
    });
    json!({
        "id": sub.id,
        "url": sub.url,
        "event_types": sub.event_types,
        "agent_ids": (!sub.agent_ids.is_empty()).then_some(&sub.agent_ids),
        "description": sub.description,
        "enabled": sub.enabled,
        "headers": sub.headers,
        "retry": retry,
        "rate_limit_per_s": (sub.rate_limit_per_s > 0).then_some(sub.rate_limit_per_s),
        "disabled_reason": (!sub.disabled_reason.is_empty()).then_some(&sub.disabled_reason),
        "created_at": sub.created_at.as_ref().map(proto::time::format_rfc3339),
        "updated_at": sub.updated_at.as_ref().map(proto::time::format_rfc3339),
    })
}

fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A path id that cannot address another tenant's key or a wildcard.
fn checked_id(id: &str) -> Result<&str, ApiError> {
    let ok = id
        .strip_prefix("sub_")
        .is_some_and(|u| u.len() == 26 && u.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok { Ok(id) } else { Err(ApiError::NotFound) }
}

/// Applies the fields of a create or patch body to `sub`, listing every offending field.
async fn apply_fields(
    state: &AppState,
    sub: &mut Subscription,
    body: &Value,
    creating: bool,
) -> Result<(), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "url"
                | "event_types"
                | "agent_ids"
                | "description"
                | "enabled"
                | "headers"
                | "retry"
                | "rate_limit_per_s"
        ) {
            err(key, "unknown field");
        }
    }
    if creating {
        for required in ["url", "event_types"] {
            if !obj.contains_key(required) {
                err(required, "is required");
            }
        }
    }
    if let Some(v) = obj.get("url") {
        match v.as_str() {
            None => err("url", "must be a string"),
            Some(raw) => match state.settings.shared.url_policy.check(raw).await {
                Ok(url) => sub.url = url.to_string(),
                Err(e) => err("url", &e.to_string()),
            },
        }
    }
    if let Some(v) = obj.get("event_types") {
        match v.as_array() {
            Some(list) if !list.is_empty() && list.len() <= MAX_EVENT_TYPES => {
                let mut types = Vec::new();
                for (i, t) in list.iter().enumerate() {
                    match t.as_str() {
                        Some(p) if catalog::type_pattern_is_valid(p) => types.push(p.to_owned()),
                        _ => err(
                            &format!("event_types[{i}]"),
                            "must be a known event type, a `prefix.*` pattern, or `*`",
                        ),
                    }
                }
                types.sort();
                types.dedup();
                sub.event_types = types;
            }
            _ => err(
                "event_types",
                &format!("must be an array of 1 to {MAX_EVENT_TYPES} event types"),
            ),
        }
    }
    if let Some(v) = obj.get("agent_ids") {
        match v {
            Value::Null => sub.agent_ids.clear(),
            Value::Array(list) if !list.is_empty() && list.len() <= MAX_AGENT_IDS => {
                let mut ids = Vec::new();
                for (i, a) in list.iter().enumerate() {
                    match a.as_str() {
                        Some(id) if proto::validate::is_valid_id(id) => ids.push(id.to_owned()),
                        _ => err(
                            &format!("agent_ids[{i}]"),
                            "must match ^[A-Za-z0-9_-]{1,64}$",
                        ),
                    }
                }
                ids.sort();
                ids.dedup();
                sub.agent_ids = ids;
            }
            _ => err(
                "agent_ids",
                &format!("must be null or an array of 1 to {MAX_AGENT_IDS} agent ids"),
            ),
        }
    }
    if let Some(v) = obj.get("description") {
        match v {
            Value::Null => sub.description.clear(),
            Value::String(s) if s.chars().count() <= 1024 => sub.description = s.clone(),
            _ => err("description", "must be a string of at most 1024 characters"),
        }
    }
    if let Some(v) = obj.get("enabled") {
        match v.as_bool() {
            Some(enabled) => {
                sub.enabled = enabled;
                if enabled {
                    sub.disabled_reason.clear();
                }
            }
            None => err("enabled", "must be a boolean"),
        }
    }
    if let Some(v) = obj.get("headers") {
        match v {
            Value::Null => sub.headers.clear(),
            Value::Object(map) if map.len() <= MAX_HEADERS => {
                let mut headers = BTreeMap::new();
                for (name, value) in map {
                    let field = format!("headers.{name}");
                    let lower = name.to_ascii_lowercase();
                    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        err(&field, "is not a valid header name");
                    } else if lower.starts_with("webhook-")
                        || RESERVED_HEADERS.contains(&lower.as_str())
                    {
                        err(&field, "is reserved");
                    } else {
                        match value.as_str().map(axum::http::HeaderValue::from_str) {
                            Some(Ok(_)) => {
                                headers
                                    .insert(lower, value.as_str().unwrap_or_default().to_owned());
                            }
                            _ => err(&field, "must be a valid header value string"),
                        }
                    }
                }
                sub.headers = headers;
            }
            _ => err(
                "headers",
                &format!("must be an object of at most {MAX_HEADERS} string headers"),
            ),
        }
    }
    if let Some(v) = obj.get("retry") {
        match v {
            Value::Null => sub.retry = None,
            Value::Object(map) => {
                let mut retry = RetryPolicy::default();
                for key in map
                    .keys()
                    .filter(|k| *k != "max_attempts" && *k != "schedule_ms")
                {
                    err(&format!("retry.{key}"), "unknown field");
                }
                match map.get("max_attempts") {
                    None | Some(Value::Null) => {}
                    Some(n) => match n.as_u64() {
                        Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => retry.max_attempts = n as u32,
                        _ => err("retry.max_attempts", "must be an integer from 1 to 30"),
                    },
                }
                match map.get("schedule_ms") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(list)) if list.len() <= 30 => {
                        for (i, d) in list.iter().enumerate() {
                            match d.as_u64() {
                                Some(ms) if ms <= MAX_DELAY_MS => retry.schedule_ms.push(ms),
                                _ => err(
                                    &format!("retry.schedule_ms[{i}]"),
                                    "must be an integer of milliseconds, at most 7 days",
                                ),
                            }
                        }
                    }
                    Some(_) => err("retry.schedule_ms", "must be an array of at most 30 delays"),
                }
                sub.retry = Some(retry);
            }
            _ => err("retry", "must be an object or null"),
        }
    }
    if let Some(v) = obj.get("rate_limit_per_s") {
        match v {
            Value::Null => sub.rate_limit_per_s = 0,
            _ => match v.as_u64() {
                Some(n) if (1..=100_000).contains(&n) => sub.rate_limit_per_s = n as u32,
                _ => err(
                    "rate_limit_per_s",
                    "must be null or an integer from 1 to 100000",
                ),
            },
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errors))
    }
}

fn kv_unavailable(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Unavailable(e.into())
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions",
    operation_id = "create_subscription",
    tag = "subscriptions",
    request_body(content = crate::openapi::CreateSubscription, content_type = "application/json", description = "The endpoint and its filters."),
    responses(
        (status = 201, description = "Created; the secret is shown in this response (and at `GET …/secret`).", body = crate::openapi::CreatedSubscription),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn create(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_body(body, state.settings.event_body_limit)?;
    let now = proto::time::now();
    let secret = new_secret();
    let id = format!("sub_{}", ulid::Ulid::new());
    // Sealed under the master key: the bucket never holds the plaintext.
    let sealed = state
        .settings
        .shared
        .master_keys
        .seal_secret(&id, &secret, None);
    let mut sub = Subscription {
        id,
        tenant_id: tenant.to_string(),
        enabled: true,
        secrets: vec![sealed],
        created_at: Some(now),
        updated_at: Some(now),
        ..Default::default()
    };
    apply_fields(&state, &mut sub, &body, true).await?;
    let key = subjects::subscription_key(&tenant, &sub.id);
    let revision = state
        .stores
        .subscriptions
        .create(&key, Bytes::from(sub.encode_to_vec()))
        .await
        .map_err(kv_unavailable)?;
    let mut out = view(&sub);
    out["secret"] = json!(secret);
    state.subscriptions.apply(Change::Put {
        key,
        revision,
        value: sub,
    });
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    operation_id = "list_subscriptions",
    tag = "subscriptions",
    params(
        ("after" = Option<String>, Query, description = "The `next_cursor` of a previous page."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 100)."),
    ),
    responses(
        (status = 200, description = "The tenant's subscriptions.", body = crate::openapi::SubscriptionPage),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 422, response = crate::openapi::Unprocessable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn list(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let page = Page::from_query(&query, 100, 1000)?;
    let prefix = format!("{tenant}.");
    let mut subs = state
        .subscriptions
        .range(&prefix, page.after.as_deref(), page.limit + 1);
    let more = subs.len() > page.limit;
    subs.truncate(page.limit);
    let next = if more {
        subs.last().map(|s| s.id.clone())
    } else {
        None
    };
    let data: Vec<Value> = subs.iter().map(|s| view(s)).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

pub(super) fn find(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<std::sync::Arc<Subscription>, ApiError> {
    let id = checked_id(id)?;
    state
        .subscriptions
        .get(&subjects::subscription_key(tenant, id))
        .ok_or(ApiError::NotFound)
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}",
    operation_id = "get_subscription",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    responses(
        (status = 200, description = "The subscription.", body = crate::openapi::Subscription),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("tenant_key" = [])),
)]
pub async fn get(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sub = find(&state, &tenant, &id)?;
    Ok(Json(view(&sub)))
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/secret",
    operation_id = "get_subscription_secret",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    responses(
        (status = 200, description = "The current signing secret.", body = crate::openapi::SigningSecret),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("tenant_key" = [])),
)]
pub async fn secret(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sub = find(&state, &tenant, &id)?;
    let current = match sub.secrets.first() {
        Some(s) => open_secret(&state, &sub.id, s)?,
        None => Default::default(),
    };
    Ok(Json(json!({"secret": current.as_str()})))
}

/// The plaintext of one of the subscription's signing secrets. One that does not open (sealed
/// under a master key no longer configured, or damaged) is a `500` whose cause is logged, never
/// the secret.
fn open_secret(
    state: &AppState,
    subscription_id: &str,
    secret: &SigningSecret,
) -> Result<common::crypto::Zeroizing<String>, ApiError> {
    state
        .settings
        .shared
        .master_keys
        .open_secret(subscription_id, secret)
        .map_err(|e| {
            ApiError::Internal(
                anyhow::Error::new(e)
                    .context(format!("opening a signing secret of {subscription_id}")),
            )
        })
}

/// Seals every signing secret of `sub` under the current master key: legacy plaintext ones and
/// those sealed under a previous key. One that does not open stays as it is (and is logged), so
/// the write still goes through; a rotation without grace drops it.
fn reseal_secrets(state: &AppState, sub: &mut Subscription) {
    let keys = &state.settings.shared.master_keys;
    for secret in &mut sub.secrets {
        if let Err(error) = keys.reseal_secret(&sub.id, secret) {
            tracing::warn!(
                subscription_id = %sub.id,
                %error,
                "a signing secret does not open with the configured master keys; left as it is"
            );
        }
    }
}

/// Reads the tenant's subscription `id`, lets `change` edit it and stores it with
/// compare-and-set, starting over when another writer got in between. Answers what was stored,
/// which this replica's mirror applies at once.
async fn modify<F, Fut>(
    state: &AppState,
    tenant: &str,
    id: &str,
    mut change: F,
) -> Result<Subscription, ApiError>
where
    F: FnMut(Subscription) -> Fut,
    Fut: std::future::Future<Output = Result<Subscription, ApiError>>,
{
    let key = subjects::subscription_key(tenant, checked_id(id)?);
    let store = &state.stores.subscriptions;
    for _ in 0..5 {
        let entry = store
            .entry(&key)
            .await
            .map_err(kv_unavailable)?
            .ok_or(ApiError::NotFound)?;
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return Err(ApiError::NotFound);
        }
        let sub =
            Subscription::decode(entry.value.as_ref()).map_err(|e| ApiError::Internal(e.into()))?;
        let mut sub = change(sub).await?;
        reseal_secrets(state, &mut sub);
        sub.updated_at = Some(proto::time::now());
        match store
            .update(&key, Bytes::from(sub.encode_to_vec()), entry.revision)
            .await
        {
            Ok(revision) => {
                state.subscriptions.apply(Change::Put {
                    key,
                    revision,
                    value: sub.clone(),
                });
                return Ok(sub);
            }
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                continue;
            }
            Err(e) => return Err(kv_unavailable(e)),
        }
    }
    Err(ApiError::Rejected {
        status: StatusCode::CONFLICT,
        detail: "the subscription kept changing; try again".into(),
    })
}

/// Read, change and compare-and-set, retried when another writer got in between.
#[utoipa::path(
    patch,
    path = "/v1/subscriptions/{id}",
    operation_id = "update_subscription",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    request_body(content = crate::openapi::UpdateSubscription, content_type = "application/json", description = "The fields to change."),
    responses(
        (status = 200, description = "The changed subscription.", body = crate::openapi::Subscription),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn update(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body, state.settings.event_body_limit)?;
    let (state_ref, body) = (&state, &body);
    let sub = modify(state_ref, &tenant, &id, |mut sub| async move {
        apply_fields(state_ref, &mut sub, body, false).await?;
        Ok(sub)
    })
    .await?;
    Ok(Json(view(&sub)))
}

/// The default grace period of a rotated-out secret: one day.
const DEFAULT_GRACE_S: u64 = 24 * 3600;
/// The longest grace period: seven days.
const MAX_GRACE_S: u64 = 7 * 24 * 3600;
/// Rotated-out secrets kept signing at once, at most; older ones are dropped, so a burst of
/// rotations cannot grow every `webhook-signature` without bound.
const MAX_OLD_SECRETS: usize = 4;

/// A JSON body that may be absent (an empty body reads as `{}`).
pub(super) fn optional_json_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Value, ApiError> {
    match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(json!({})),
        other => json_body(other, limit),
    }
}

/// `grace_period_s` of a rotation body.
fn grace_period(body: &Value) -> Result<std::time::Duration, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| *k != "grace_period_s")
        .map(|k| FieldError {
            field: k.clone(),
            message: "unknown field".into(),
        })
        .collect();
    let grace = match obj.get("grace_period_s") {
        None | Some(Value::Null) => DEFAULT_GRACE_S,
        Some(v) => match v.as_u64() {
            Some(s) if s <= MAX_GRACE_S => s,
            _ => {
                errors.push(FieldError {
                    field: "grace_period_s".into(),
                    message: format!("must be an integer of seconds from 0 to {MAX_GRACE_S}"),
                });
                0
            }
        },
    };
    if errors.is_empty() {
        Ok(std::time::Duration::from_secs(grace))
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// Puts `new` first; the previous secrets sign alongside it for at most `grace` more (an
/// existing shorter expiry stays), and those already expired, or all of them when `grace` is
/// zero, are dropped.
fn rotate_secrets(
    secrets: &mut Vec<SigningSecret>,
    new: SigningSecret,
    now: std::time::SystemTime,
    grace: std::time::Duration,
) {
    let until = now + grace;
    secrets.retain_mut(|s| {
        let expires = s.expires_at.as_ref().map(proto::time::to_system);
        if expires.is_none_or(|e| e > until) {
            s.expires_at = Some(proto::time::from_system(until));
        }
        expires.map_or(until, |e| e.min(until)) > now
    });
    secrets.truncate(MAX_OLD_SECRETS);
    secrets.insert(0, new);
}

/// `POST /v1/subscriptions/{id}/secret/rotate`: a new current secret; the old one keeps
/// signing for the grace period, so receivers can switch without missing a delivery.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/secret/rotate",
    operation_id = "rotate_subscription_secret",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    request_body(content = Option<crate::openapi::RotateRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 200, description = "The new secret; the old one keeps signing for the grace period.", body = crate::openapi::SigningSecret),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn rotate(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // Unknown subscriptions answer 404 before the body is judged.
    find(&state, &tenant, &id)?;
    let body = optional_json_body(body, state.settings.event_body_limit)?;
    let grace = grace_period(&body)?;
    let secret = new_secret();
    let (new, keys) = (&secret, &state.settings.shared.master_keys);
    modify(&state, &tenant, &id, |mut sub| async move {
        let sealed = keys.seal_secret(&sub.id, new, None);
        rotate_secrets(
            &mut sub.secrets,
            sealed,
            std::time::SystemTime::now(),
            grace,
        );
        Ok(sub)
    })
    .await?;
    Ok(Json(json!({"secret": secret})))
}

#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{id}",
    operation_id = "delete_subscription",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn remove(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let sub = find(&state, &tenant, &id)?;
    let key = subjects::subscription_key(&tenant, &sub.id);
    // A purge with a TTL: every replica's watch sees the deletion, and then nats-server
    // removes the marker, so a deleted subscription leaves no subject behind. Its
    // failing-since record (if any) goes the same way.
    let ttl = state.settings.shared.delete_marker_ttl;
    state
        .stores
        .subscriptions
        .purge_with_ttl(&key, ttl)
        .await
        .map_err(kv_unavailable)?;
    if let Err(error) = state.stores.health.purge_with_ttl(&sub.id, ttl).await {
        tracing::warn!(subscription_id = %sub.id, error = %error, "failing-since record of a deleted subscription not removed");
    }
    // Subscription ids are never reused, so the deletion outranks every revision.
    state.subscriptions.apply(Change::Delete {
        key,
        revision: u64::MAX,
    });
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, SystemTime};

    use super::*;

    fn secret(name: &str, expires: Option<SystemTime>) -> SigningSecret {
        SigningSecret {
            secret: name.into(),
            expires_at: expires.map(proto::time::from_system),
            ..Default::default()
        }
    }

    fn names(secrets: &[SigningSecret]) -> Vec<&str> {
        secrets.iter().map(|s| s.secret.as_str()).collect()
    }

    #[test]
    fn rotation_puts_the_new_secret_first_and_lets_the_old_one_expire_after_the_grace() {
        let now = SystemTime::now();
        let mut secrets = vec![secret("a", None)];
        rotate_secrets(
            &mut secrets,
            secret("b", None),
            now,
            Duration::from_secs(60),
        );
        assert_eq!(names(&secrets), ["b", "a"]);
        assert_eq!(secrets[0].expires_at, None);
        assert_eq!(
            secrets[1].expires_at,
            Some(proto::time::from_system(now + Duration::from_secs(60)))
        );
    }

    #[test]
    fn rotation_drops_expired_secrets_and_every_old_one_without_grace() {
        let now = SystemTime::now();
        let mut secrets = vec![
            secret("b", None),
            secret("a", Some(now - Duration::from_secs(1))),
        ];
        rotate_secrets(
            &mut secrets,
            secret("c", None),
            now,
            Duration::from_secs(60),
        );
        assert_eq!(names(&secrets), ["c", "b"]);
        rotate_secrets(&mut secrets, secret("d", None), now, Duration::ZERO);
        assert_eq!(names(&secrets), ["d"]);
    }

    #[test]
    fn rotation_never_extends_an_expiry_and_keeps_a_bounded_number_of_old_secrets() {
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(10);
        let mut secrets = vec![secret("b", None), secret("a", Some(soon))];
        rotate_secrets(
            &mut secrets,
            secret("c", None),
            now,
            Duration::from_secs(3600),
        );
        assert_eq!(secrets[2].expires_at, Some(proto::time::from_system(soon)));
        for n in 0..10 {
            rotate_secrets(
                &mut secrets,
                secret(&format!("n{n}"), None),
                now,
                Duration::from_secs(60),
            );
        }
        assert_eq!(secrets.len(), MAX_OLD_SECRETS + 1);
        assert_eq!(secrets[0].secret, "n9");
    }

    #[test]
    fn the_grace_period_is_bounded_and_defaults_to_a_day() {
        assert_eq!(
            grace_period(&json!({})).unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            grace_period(&json!({"grace_period_s": 0})).unwrap(),
            Duration::ZERO
        );
        for bad in [json!(-1), json!(604_801), json!("60"), json!(1.5)] {
            assert!(grace_period(&json!({ "grace_period_s": bad })).is_err());
        }
        assert!(grace_period(&json!({"grace": 1})).is_err());
    }
}
