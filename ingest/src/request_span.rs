//! The `ingest.request` span around every API request: the root of an event's trace, or a
//! child of the producer's trace when the request carries a W3C `traceparent`.
//!
//! Probes (`/healthz`, `/readyz`) and scrapes (`/metrics`) get no span, so they do not fill the
//! trace backend with one trace each.

use axum::{extract::Request, middleware::Next, response::Response};
use proto::subjects::{HEADER_TRACEPARENT, HEADER_TRACESTATE};
use tracing::{Instrument as _, field::Empty};

/// Paths that are not traced.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Axum middleware (`axum::middleware::from_fn`) running the request in its span.
pub async fn layer(request: Request, next: Next) -> Response {
    if UNTRACED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let span = tracing::info_span!(
        "ingest.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    let headers = request.headers();
    common::trace_context::set_parent_from_http(
        &span,
        [HEADER_TRACEPARENT, HEADER_TRACESTATE]
            .into_iter()
            .filter_map(|name| Some((name, headers.get(name)?.to_str().ok()?))),
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}
