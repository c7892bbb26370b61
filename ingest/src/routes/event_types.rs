//! `GET /v1/event-types`: the catalog, generated from the validator's own definitions.

use axum::Json;
use proto::catalog;
use serde_json::{Value, json};

pub async fn list() -> Json<Value> {
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
