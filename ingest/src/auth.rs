//! API keys (tenant) and the admin token: issuing, hashing, checking.
//!
//! A key reads `owk_<key id>_<secret>`. Only SHA-256 of the secret is stored, under the key id;
//! the secret has 256 bits of entropy, so a fast hash is enough. Lookups go to the in-memory
//! mirror of the api-keys bucket, so a revoked key stops working on every replica as soon as
//! the deletion reaches its watch.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine as _;
use common::watch::Mirror;
use proto::v1::ApiKey;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::{app::AppState, error::ApiError};

const KEY_PREFIX: &str = "owk_";
const ID_LEN: usize = 26;

/// A freshly issued key: the record to store and the key to show once.
pub struct Issued {
    pub record: ApiKey,
    pub key: String,
}

/// Issues a new key for `tenant`.
pub fn issue(tenant: &str) -> Issued {
    let id = ulid::Ulid::new().to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Issued {
        record: ApiKey {
            id: format!("key_{id}"),
            tenant_id: tenant.to_owned(),
            secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
            created_at: Some(proto::time::now()),
        },
        key: format!("{KEY_PREFIX}{id}_{secret}"),
    }
}

/// Splits a presented key into the stored record's id and the secret.
fn split(key: &str) -> Option<(String, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = (rest.get(..ID_LEN)?, rest.get(ID_LEN..)?.strip_prefix('_')?);
    Some((format!("key_{id}"), secret))
}

/// The tenant that `key` belongs to, if it is a live key.
pub fn authenticate(keys: &Mirror<ApiKey>, key: &str) -> Option<String> {
    let (id, secret) = split(key)?;
    let record = keys.get(&id)?;
    let presented = Sha256::digest(secret.as_bytes());
    bool::from(presented.as_slice().ct_eq(&record.secret_sha256)).then(|| record.tenant_id.clone())
}

/// Whether `presented` is the admin token, compared in constant time (hashes first, so the
/// comparison does not leak the token's length either).
pub fn is_admin(token: &str, presented: &str) -> bool {
    bool::from(Sha256::digest(token.as_bytes()).ct_eq(&Sha256::digest(presented.as_bytes())))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The tenant of the request's API key; every `/v1` handler but the admin ones takes one.
pub struct Tenant(pub Arc<str>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        authenticate(&state.keys, key)
            .map(|t| Tenant(t.into()))
            .ok_or(ApiError::Unauthorized)
    }
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if is_admin(state.settings.admin_token.expose(), token) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use common::watch::Change;

    #[test]
    fn an_issued_key_authenticates_as_its_tenant_until_deleted() {
        let keys = Mirror::default();
        let issued = issue("acme");
        keys.apply(Change::Put {
            key: issued.record.id.clone(),
            revision: 1,
            value: issued.record.clone(),
        });
        assert_eq!(authenticate(&keys, &issued.key).as_deref(), Some("acme"));
        keys.apply(Change::Delete {
            key: issued.record.id.clone(),
            revision: 2,
        });
        assert_eq!(authenticate(&keys, &issued.key), None);
    }

    #[test]
    fn a_wrong_secret_or_mangled_key_is_refused() {
        let keys = Mirror::default();
        let issued = issue("acme");
        keys.apply(Change::Put {
            key: issued.record.id.clone(),
            revision: 1,
            value: issued.record.clone(),
        });
        let mut wrong = issued.key.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(authenticate(&keys, &wrong), None);
        assert_eq!(authenticate(&keys, "owk_short"), None);
        assert_eq!(authenticate(&keys, ""), None);
        assert!(!issued.key.contains(
            &base64::engine::general_purpose::STANDARD.encode(&issued.record.secret_sha256)
        ));
    }

    #[test]
    fn admin_token_comparison() {
        assert!(is_admin("a-long-admin-token", "a-long-admin-token"));
        assert!(!is_admin("a-long-admin-token", "a-long-admin-tokeN"));
    }
}
