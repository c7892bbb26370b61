//! The HTTP API: one module per resource, plus the shared body and paging helpers.

pub(crate) mod admin;
pub(crate) mod attempts;
pub(crate) mod dead_letters;
pub(crate) mod event_types;
pub(crate) mod events;
pub(crate) mod feed;
pub(crate) mod health;
pub(crate) mod replay;
pub(crate) mod subscriptions;
pub(crate) mod test_send;

pub(crate) use admin::tenant_id_is_valid;

use std::collections::HashMap;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, rejection::BytesRejection},
    routing::{delete, get, post},
};
use serde_json::Value;

use crate::{app::AppState, error::ApiError};

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(crate::metrics::handler))
        .route(
            "/v1/events",
            post(events::create)
                .layer(DefaultBodyLimit::max(settings.event_body_limit))
                .get(feed::list),
        )
        .route(
            "/v1/events/batch",
            post(events::batch).layer(DefaultBodyLimit::max(settings.batch_body_limit)),
        )
        .route("/v1/event-types", get(event_types::list))
        .route(
            "/v1/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::get)
                .patch(subscriptions::update)
                .delete(subscriptions::remove),
        )
        .route("/v1/subscriptions/{id}/secret", get(subscriptions::secret))
        .route(
            "/v1/subscriptions/{id}/secret/rotate",
            post(subscriptions::rotate),
        )
        .route("/v1/subscriptions/{id}/test", post(test_send::send))
        .route(
            "/v1/subscriptions/{id}/attempts",
            get(attempts::by_subscription),
        )
        .route("/v1/subscriptions/{id}/stats", get(attempts::stats))
        .route("/v1/events/{id}", get(feed::get))
        .route("/v1/events/{id}/replay", post(replay::event))
        .route("/v1/subscriptions/{id}/replay", post(replay::subscription))
        .route("/v1/events/{id}/attempts", get(attempts::by_event))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/redrive", post(dead_letters::redrive_all))
        .route("/v1/dead-letters/{id}", get(dead_letters::get))
        .route("/v1/dead-letters/{id}/redrive", post(dead_letters::redrive))
        .route(
            "/v1/admin/tenants/{tenant_id}/api-keys",
            post(admin::create_key),
        )
        .route("/v1/admin/api-keys/{id}", delete(admin::revoke_key))
        // The browser dashboard (static files, no key, no data): a client of the API above,
        // deliberately not in the OpenAPI document nor in `openapi::ROUTES`.
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                detail: "method not allowed on this resource".into(),
            }
        })
        .layer(DefaultBodyLimit::max(settings.event_body_limit))
        .layer(axum::middleware::map_response(problem_for_plain_errors))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight_requests)),
            shed_load,
        ))
        // Outermost, so it counts the status the client gets.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
        .with_state(state)
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1).", body = Object)),
)]
pub(crate) async fn openapi_json() -> axum::response::Response {
    crate::openapi::response()
}

/// Every error answer is problem+json: a rejection axum answers on its own (a path segment
/// that is not valid UTF-8, say) comes as plain text, and is rewritten here with its status.
async fn problem_for_plain_errors(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut answer = axum::response::IntoResponse::into_response(ApiError::Rejected {
        status,
        detail: if detail.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            detail
        },
    });
    // Keep what axum said besides the body, e.g. `Allow` on a 405.
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    answer
}

/// At most `WEBHOOKS_MAX_IN_FLIGHT_REQUESTS` API requests at once; past that, an immediate
/// `503` with `Retry-After` instead of a queue that grows without bound (the benchmark saw an
/// unbounded ingest reach 3.9 GiB at twice its capacity). Health, metrics and the OpenAPI
/// document are never shed, so probes keep answering under load.
async fn shed_load(
    axum::extract::State(limit): axum::extract::State<std::sync::Arc<tokio::sync::Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    match limit.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::Overloaded),
    }
}

/// A JSON body, or the problem that says why it is not one.
pub(crate) fn json_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| ApiError::from_body_rejection(r, limit))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// `limit` and `after` of a list request.
pub(crate) struct Page {
    pub limit: usize,
    pub after: Option<String>,
}

impl Page {
    pub(crate) fn from_query(
        query: &HashMap<String, String>,
        default: usize,
        max: usize,
    ) -> Result<Page, ApiError> {
        let limit = match query.get("limit") {
            None => default,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        format!("must be an integer from 1 to {max}"),
                    ));
                }
            },
        };
        Ok(Page {
            limit,
            after: query.get("after").filter(|a| !a.is_empty()).cloned(),
        })
    }
}
