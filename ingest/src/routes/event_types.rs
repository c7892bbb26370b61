//! `GET /v1/event-types`: the catalog, generated from the validator's own definitions.

use axum::Json;
use proto::catalog;
use serde_json::{Value, json};

use crate::auth::Tenant;

/// Like every `/v1` call, it needs an API key; the catalog is the same for every tenant.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    operation_id = "list_event_types",
    tag = "events",
    responses(
        (status = 200, description = "Every event type with its JSON Schema and an example, in one page.", body = crate::openapi::EventTypeList),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("tenant_key" = [])),
)]
pub async fn list(_tenant: Tenant) -> Json<Value> {
    let data: Vec<Value> = catalog::all()
        .iter()
        .map(|spec| {
            json!({
                "type": spec.name,
                "description": spec.description,
                "schema": catalog::schema(spec),
                "example": catalog::example(spec),
            })
        })
        .collect();
    Json(json!({"data": data, "next_cursor": null}))
}
