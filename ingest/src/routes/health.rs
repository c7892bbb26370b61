//! `/healthz` (the process answers) and `/readyz` (NATS connected, streams and mirrors ready).

use std::sync::atomic::Ordering;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::app::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

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
