//! `ApiError`: every error answer, as RFC 9457 problem+json.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use proto::validate::FieldError;
use serde_json::json;

/// What went wrong with a request, mapped to one status code each.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("the event store is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Shed at `WEBHOOKS_MAX_IN_FLIGHT_REQUESTS`: no cause to capture and nothing to log, so a
    /// refusal costs next to nothing however many come (with `RUST_BACKTRACE=1` an
    /// `anyhow` cause captured and logged a backtrace per refusal: 9.6 GB of log and 229
    /// events/s in scenario 4b).
    #[error("too many requests in flight; try again shortly")]
    Overloaded,
    /// The events stream is full of events not yet fanned out: room is made only by removing
    /// events already delivered to every subscription (`room`), and there are none to remove.
    #[error(
        "the event store is full of events not yet delivered to their subscriptions; nothing was accepted, try again shortly"
    )]
    Backlogged,
    /// No PubAck came in time: the event may or may not be stored.
    #[error(
        "the event store did not confirm event {id} in time, so it may be stored; repeat the request with \"id\": \"{id}\" (a repeat is deduplicated)"
    )]
    Unconfirmed {
        id: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("{detail}")]
    Rejected { status: StatusCode, detail: String },
    #[error(
        "the tenant is over its rate of {per_second} events per second; retry in {retry_after} s"
    )]
    RateLimited { retry_after: u64, per_second: u32 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// One offending field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_)
            | Self::Unconfirmed { .. }
            | Self::Overloaded
            | Self::Backlogged => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rejected { status, .. } => *status,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::MalformedJson(_) => ("malformed-json", "Malformed JSON"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::NotFound => ("not-found", "Not Found"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload Too Large"),
            Self::Invalid(_) => ("validation", "Validation Failed"),
            Self::Unavailable(_)
            | Self::Unconfirmed { .. }
            | Self::Overloaded
            | Self::Backlogged => ("unavailable", "Service Unavailable"),
            Self::Rejected { status, .. } => (
                "bad-request",
                status.canonical_reason().unwrap_or("Bad Request"),
            ),
            Self::RateLimited { .. } => ("rate-limited", "Too Many Requests"),
            Self::Internal(_) => ("internal", "Internal Server Error"),
        }
    }

    /// The problem document, also used inside batch results.
    pub fn problem(&self) -> serde_json::Value {
        let (slug, title) = self.slug_and_title();
        let errors: Vec<serde_json::Value> = match self {
            Self::Invalid(errors) => errors
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect(),
            _ => Vec::new(),
        };
        let detail = match self {
            Self::Invalid(errors) => format!("{} invalid field(s)", errors.len()),
            // The cause of a 500 is logged, never shown.
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut problem = json!({
            "type": format!("https://docs.open.example/problems/{slug}"),
            "title": title,
            "status": self.status().as_u16(),
            "detail": detail,
            "errors": errors,
        });
        if let Self::Unconfirmed { id, .. } = self {
            problem["id"] = json!(id);
        }
        problem
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) | Self::Unavailable(e) | Self::Unconfirmed { source: e, .. } => {
                // The chain in one line (`{:#}`); never `Debug`, which adds any captured
                // backtrace to every log line.
                tracing::error!(error.message = %e, error.cause_chain = %format!("{e:#}"), status = status.as_u16(), "request failed");
            }
            _ => {}
        }
        let body = self.problem().to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::RateLimited { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        } else if status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl ApiError {
    /// A body that could not be read: too large (`413`) or otherwise broken.
    pub fn from_body_rejection(
        rejection: axum::extract::rejection::BytesRejection,
        limit: usize,
    ) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge { limit }
        } else {
            Self::Rejected {
                status: rejection.status(),
                detail: rejection.body_text(),
            }
        }
    }
}
