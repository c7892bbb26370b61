//! The admin API: issuing and revoking tenant API keys (admin token only).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bytes::Bytes;
use prost::Message as _;
use serde_json::{Value, json};

use crate::{app::AppState, auth, auth::Admin, error::ApiError};

/// `^[a-z0-9][a-z0-9_-]{0,62}$`
pub(crate) fn tenant_id_is_valid(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[utoipa::path(
    post,
    path = "/v1/admin/tenants/{tenant_id}/api-keys",
    operation_id = "create_api_key",
    tag = "admin",
    params(
        ("tenant_id" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,62}$", description = "The tenant (created implicitly)."),
    ),
    responses(
        (status = 201, description = "The key, shown once.", body = crate::openapi::ApiKeyCreated),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("admin_token" = [])),
)]
pub async fn create_key(
    _admin: Admin,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !tenant_id_is_valid(&tenant_id) {
        return Err(ApiError::field(
            "tenant_id",
            "must match ^[a-z0-9][a-z0-9_-]{0,62}$",
        ));
    }
    let issued = auth::issue(&tenant_id);
    let revision = state
        .stores
        .api_keys
        .put(
            &issued.record.id,
            Bytes::from(issued.record.encode_to_vec()),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    // Read-your-writes on this replica; the others learn of it through their watch.
    state.keys.apply(common::watch::Change::Put {
        key: issued.record.id.clone(),
        revision,
        value: issued.record.clone(),
    });
    let body = json!({"id": issued.record.id, "tenant_id": tenant_id, "key": issued.key});
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/api-keys/{id}",
    operation_id = "revoke_api_key",
    tag = "admin",
    params(
        ("id" = String, Path, pattern = "^key_[0-9A-Z]{26}$", description = "The key id."),
    ),
    responses(
        (status = 204, description = "Revoked on every replica within seconds."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
        (status = 503, response = crate::openapi::Unavailable),
    ),
    security(("admin_token" = [])),
)]
pub async fn revoke_key(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.keys.get(&id).is_none() {
        return Err(ApiError::NotFound);
    }
    state
        .stores
        .api_keys
        .purge_with_ttl(&id, state.settings.shared.delete_marker_ttl)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    // Key ids are never reused, so the deletion can outrank every revision at once.
    state.keys.apply(common::watch::Change::Delete {
        key: id,
        revision: u64::MAX,
    });
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::tenant_id_is_valid;

    #[test]
    fn tenant_ids_follow_the_contract_pattern() {
        for ok in ["acme", "a", "0day", "acme_corp-eu"] {
            assert!(tenant_id_is_valid(ok), "{ok}");
        }
        for bad in ["", "Acme", "-acme", "_a", "a.b", &"a".repeat(64)] {
            assert!(!tenant_id_is_valid(bad), "{bad}");
        }
    }
}
