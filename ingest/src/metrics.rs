//! Prometheus metrics of ingest, served on `GET /metrics` (Prometheus text format) on the API
//! listener, outside `/v1` and without authentication.
//!
//! Labels are bounded sets: the ingest path (`http`, `nats`), the event types of the catalog
//! (anything else is counted as `unknown`), a fixed list of rejection reasons, and for HTTP
//! requests the matched route template (never the raw path). No ids are ever labels.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::error::ApiError;

/// How an event came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Http,
    Nats,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Nats => "nats",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub path: &'static str,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub path: &'static str,
    pub reason: &'static str,
}

/// A bucket mirrored in memory, and whether the entries count live keys or tombstones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The matched route template (`/v1/subscriptions/{id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

/// Every rejection reason, in the order the docs list them.
pub const REASONS: &[&str] = &[
    "validation",
    "malformed",
    "too_large",
    "rate_limited",
    "unavailable",
    "backlogged",
    "unconfirmed",
    "unauthorized",
    "internal",
];

/// The reason label of an error answered for an event.
pub fn reason(error: &ApiError) -> &'static str {
    match error {
        ApiError::Invalid(_) => "validation",
        ApiError::MalformedJson(_) | ApiError::NotFound => "malformed",
        ApiError::Rejected { status, .. }
            if *status == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            "too_large"
        }
        ApiError::Rejected { .. } => "malformed",
        ApiError::PayloadTooLarge { .. } => "too_large",
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::Unavailable(_) | ApiError::Overloaded => "unavailable",
        ApiError::Backlogged => "backlogged",
        ApiError::Unconfirmed { .. } => "unconfirmed",
        ApiError::Unauthorized => "unauthorized",
        ApiError::Internal(_) => "internal",
    }
}

/// Every metric of one ingest process.
pub struct Metrics {
    registry: Registry,
    /// Events stored (PubAck received), by ingest path and event type; duplicates included.
    pub accepted: Family<TypeLabels, Counter>,
    /// Events refused, by ingest path and reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Accepted events that repeated an id within the dedupe window (stored once).
    pub duplicates: Family<PathLabels, Counter>,
    /// Seconds from publishing an event to its PubAck (and id index), successful or not.
    pub publish_duration: Histogram,
    /// HTTP requests answered, by method, matched route template and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// How far back the events stream reaches (the feed's and replay's window), in seconds.
    pub events_retained_seconds: crate::room::Ratio,
    /// Events not yet fanned out, as a share of the events stream's cap.
    pub events_fanout_backlog_ratio: crate::room::Ratio,
    /// Entries of the in-memory mirrors (`subscriptions`, `api_keys`): live keys and
    /// tombstones, set at each scrape; tombstones are forgotten once the watch passes them.
    pub mirror_entries: Family<MirrorLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let accepted = Family::<TypeLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let duplicates = Family::<PathLabels, Counter>::default();
        let publish_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let http_requests = Family::<RequestLabels, Counter>::default();
        let events_retained_seconds = crate::room::Ratio::default();
        let events_fanout_backlog_ratio = crate::room::Ratio::default();
        let mut registry = Registry::with_prefix("webhooks");
        registry.register_with_unit(
            "events_retained",
            "How far back the events stream reaches (feed and replay window); shrinks when \
             room is made at its cap",
            Unit::Seconds,
            events_retained_seconds.clone(),
        );
        registry.register(
            "events_fanout_backlog_ratio",
            "Events not yet fanned out, as a share of the events stream's cap (at 1 new events \
             are refused)",
            events_fanout_backlog_ratio.clone(),
        );
        registry.register(
            "events_accepted",
            "Events stored, by ingest path and type (duplicates included)",
            accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused, by ingest path and reason",
            rejected.clone(),
        );
        registry.register(
            "events_duplicate",
            "Accepted events that repeated an id within the dedupe window",
            duplicates.clone(),
        );
        registry.register_with_unit(
            "publish_duration",
            "Duration from publishing an event to its PubAck",
            Unit::Seconds,
            publish_duration.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let mirror_entries = Family::<MirrorLabels, Gauge>::default();
        registry.register(
            "mirror_entries",
            "Entries of this replica's in-memory copies of the subscriptions and API keys \
             buckets, live keys and tombstones",
            mirror_entries.clone(),
        );
        let metrics = Metrics {
            registry,
            mirror_entries,
            accepted,
            rejected,
            duplicates,
            publish_duration,
            http_requests,
            events_retained_seconds,
            events_fanout_backlog_ratio,
        };
        // Every series of the bounded sets exists from the start at 0, so `rate()` and
        // `increase()` see the first event too.
        for via in [Via::Http, Via::Nats] {
            for spec in proto::catalog::all() {
                let _ = metrics.accepted.get_or_create(&TypeLabels {
                    path: via.label(),
                    r#type: spec.name,
                });
            }
            for reason in REASONS {
                let _ = metrics.rejected.get_or_create(&ReasonLabels {
                    path: via.label(),
                    reason,
                });
            }
            let _ = metrics
                .duplicates
                .get_or_create(&PathLabels { path: via.label() });
        }
        metrics
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %error, "metrics encoding failed");
        }
        out
    }

    /// One stored event.
    pub fn accepted(&self, via: Via, event_type: &str, duplicate: bool) {
        let r#type = proto::catalog::find(event_type)
            .map(|spec| spec.name)
            .unwrap_or("unknown");
        self.accepted
            .get_or_create(&TypeLabels {
                path: via.label(),
                r#type,
            })
            .inc();
        if duplicate {
            self.duplicates
                .get_or_create(&PathLabels { path: via.label() })
                .inc();
        }
    }

    /// `n` events refused with `error`.
    pub fn rejected(&self, via: Via, error: &ApiError, n: u64) {
        self.rejected
            .get_or_create(&ReasonLabels {
                path: via.label(),
                reason: reason(error),
            })
            .inc_by(n);
    }

    /// The outcome of publishing one event of `event_type` that took `took`.
    pub fn published<T>(
        &self,
        via: Via,
        event_type: &str,
        took: Duration,
        result: &Result<T, ApiError>,
        duplicate: impl FnOnce(&T) -> bool,
    ) {
        self.publish_duration.observe(took.as_secs_f64());
        match result {
            Ok(accepted) => self.accepted(via, event_type, duplicate(accepted)),
            Err(error) => self.rejected(via, error, 1),
        }
    }

    /// One answered HTTP request; `route` is the matched template, if any.
    pub fn request(&self, method: &axum::http::Method, route: Option<&str>, status: u16) {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route: route.unwrap_or("unmatched").to_owned(),
                status,
            })
            .inc();
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")),
)]
pub async fn handler(
    axum::extract::State(state): axum::extract::State<crate::app::AppState>,
) -> impl axum::response::IntoResponse {
    for (mirror, (live, tombstones)) in [
        ("subscriptions", state.subscriptions.sizes()),
        ("api_keys", state.keys.sizes()),
    ] {
        for (kind, n) in [("live", live), ("tombstone", tombstones)] {
            state
                .metrics
                .mirror_entries
                .get_or_create(&MirrorLabels { mirror, kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// Counts every answered request by its matched route template (never the raw path).
pub async fn count_requests(
    axum::extract::State(state): axum::extract::State<crate::app::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    state
        .metrics
        .request(&method, route.as_deref(), response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_labels_are_bounded() {
        let m = Metrics::default();
        m.accepted(Via::Http, "call.started", false);
        m.accepted(Via::Nats, "call.started", true);
        m.accepted(Via::Http, "made.up", false);
        m.rejected(Via::Http, &ApiError::Unauthorized, 2);
        m.publish_duration.observe(0.002);
        let text = m.render();
        assert!(
            text.contains("webhooks_events_accepted_total{path=\"http\",type=\"call.started\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("webhooks_events_accepted_total{path=\"http\",type=\"unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("webhooks_events_duplicate_total{path=\"nats\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "webhooks_events_rejected_total{path=\"http\",reason=\"unauthorized\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("webhooks_publish_duration_seconds_bucket"),
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");
    }

    #[test]
    fn every_error_has_a_listed_reason() {
        let errors = [
            ApiError::Invalid(Vec::new()),
            ApiError::MalformedJson(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::RateLimited {
                retry_after: 1,
                per_second: 1,
            },
            ApiError::Unavailable(anyhow::anyhow!("down")),
            ApiError::Unauthorized,
            ApiError::Internal(anyhow::anyhow!("bug")),
            ApiError::Rejected {
                status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                detail: String::new(),
            },
        ];
        for error in &errors {
            assert!(REASONS.contains(&reason(error)), "{error:?}");
        }
    }
}
