//! `/healthz` (the process answers) and `/readyz` (NATS connected, streams and mirrors ready).

use std::sync::atomic::Ordering;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::app::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is alive.", body = crate::openapi::Health),
    ),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: NATS connected, streams and configuration loaded.", body = crate::openapi::Readiness),
        (status = 503, description = "Not ready (or draining).", body = crate::openapi::Readiness),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let connected = common::nats::is_connected(&state.client);
    let streams = connected && common::topology::streams_ready(&state.js).await;
    let mirrors = state.mirrors_ready.iter().all(|r| r.is_ready());
    let draining = state.draining.load(Ordering::SeqCst);
    let ready = connected && streams && mirrors && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "nats_connected": connected,
        "streams_ready": streams,
        "config_loaded": mirrors,
        "draining": draining,
    });
    (status, Json(body))
}
