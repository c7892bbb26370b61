//! `POST /v1/subscriptions/{id}/test`: a sample event sent now, with what the receiver answered.
//!
//! Ingest never calls a subscriber URL, so the send is a NATS request on
//! `webhooks.test.<tenant>` answered by exactly one dispatcher (a queue group); the SSRF guard,
//! timeouts and signing stay there. No dispatcher answering within the HTTP timeout plus a
//! margin is a `503`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use prost::Message as _;
use proto::{
    catalog, subjects,
    v1::{TestSendReply, TestSendRequest},
    validate::FieldError,
};
use serde_json::{Value, json};

use super::subscriptions::{find, optional_json_body};
use crate::{app::AppState, auth::Tenant, error::ApiError};

/// The type sent when the body names none.
const DEFAULT_TYPE: &str = "call.started";

/// The event type of a test-send body: `{"type"?}`.
fn requested_type(body: &Value) -> Result<&'static str, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("", "must be a JSON object"));
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| *k != "type")
        .map(|k| FieldError {
            field: k.clone(),
            message: "unknown field".into(),
        })
        .collect();
    let spec = match obj.get("type") {
        None | Some(Value::Null) => catalog::find(DEFAULT_TYPE),
        Some(v) => v.as_str().and_then(catalog::find),
    };
    if spec.is_none() {
        errors.push(FieldError {
            field: "type".into(),
            message: "must be a known event type (see GET /v1/event-types)".into(),
        });
    }
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec.name),
        _ => Err(ApiError::Invalid(errors)),
    }
}

/// The JSON answer: `status_code` and `response_body` are `null` when there was no HTTP
/// answer, `error` when the delivery succeeded.
fn view(reply: &TestSendReply) -> Value {
    let answered = reply.status_code > 0;
    json!({
        "delivered": reply.delivered,
        "status_code": answered.then_some(reply.status_code),
        "latency_ms": reply.latency_ms,
        "response_body": answered.then(|| String::from_utf8_lossy(&reply.response_body).into_owned()),
        "error": (!reply.error.is_empty()).then_some(&reply.error),
    })
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/test",
    operation_id = "test_subscription",
    tag = "subscriptions",
    params(
        ("id" = String, Path, pattern = "^sub_[0-9A-Za-z]{26}$", description = "A subscription id."),
    ),
    request_body(content = Option<crate::openapi::TestSendRequest>, content_type = "application/json", description = "Optional."),
    responses(
        (status = 200, description = "A signed sample event was sent now; what the endpoint answered.", body = crate::openapi::TestSendResult),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("tenant_key" = [])),
)]
pub async fn send(
    Tenant(tenant): Tenant,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let sub = find(&state, &tenant, &id)?;
    let body = optional_json_body(body, state.settings.event_body_limit)?;
    let event_type = requested_type(&body)?;
    let request = TestSendRequest {
        tenant_id: tenant.to_string(),
        subscription_id: sub.id.clone(),
        event_type: event_type.to_owned(),
    };
    let timeout = state.settings.test_send_timeout;
    let answer = state
        .client
        .send_request(
            subjects::test_send_subject(&tenant),
            async_nats::Request::new()
                .payload(request.encode_to_vec().into())
                .timeout(Some(timeout)),
        )
        .await;
    let message = match answer {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(error = %error, subscription_id = %sub.id, "test send not answered");
            return Err(ApiError::Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: format!(
                    "no dispatcher answered the test send within {}s; try again",
                    timeout.as_secs()
                ),
            });
        }
    };
    let reply = TestSendReply::decode(message.payload.as_ref())
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(view(&reply)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_type_defaults_to_call_started_and_must_be_known() {
        assert_eq!(requested_type(&json!({})).unwrap(), "call.started");
        assert_eq!(
            requested_type(&json!({"type": "qa.scored"})).unwrap(),
            "qa.scored"
        );
        for bad in [json!({"type": "call.exploded"}), json!({"type": 3})] {
            match requested_type(&bad) {
                Err(ApiError::Invalid(errors)) => assert_eq!(errors[0].field, "type"),
                other => panic!("{other:?}"),
            }
        }
        assert!(requested_type(&json!({"kind": "call.started"})).is_err());
    }

    #[test]
    fn no_http_answer_reads_as_nulls() {
        let v = view(&TestSendReply {
            error: "connection failed".into(),
            latency_ms: 3,
            ..Default::default()
        });
        assert_eq!(
            v,
            json!({"delivered": false, "status_code": null, "latency_ms": 3, "response_body": null, "error": "connection failed"})
        );
    }
}
