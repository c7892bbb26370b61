//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! The HMAC key state is prepared once per secret when the subscription is loaded, so a
//! delivery only clones it and hashes the message. During a rotation every live secret signs,
//! and the signatures are joined with spaces.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A secret that is not `whsec_<base64>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("signing secret is not whsec_<base64>")]
pub struct BadSecret;

/// The prepared keys of one subscription, newest first, each with its expiry (Unix seconds).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<(HmacSha256, Option<i64>)>,
}

impl Signer {
    /// Prepares `(secret, expires_at)` pairs.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, Option<i64>)>,
    ) -> Result<Self, BadSecret> {
        let keys = secrets
            .into_iter()
            .map(|(secret, expires)| {
                let raw = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
                let key = STANDARD.decode(raw).map_err(|_| BadSecret)?;
                let mac = HmacSha256::new_from_slice(&key).map_err(|_| BadSecret)?;
                Ok((mac, expires))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(BadSecret);
        }
        Ok(Self { keys })
    }

    /// The `webhook-signature` value for one attempt at Unix time `timestamp`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut out = String::with_capacity(self.keys.len() * 48);
        for (mac, expires) in &self.keys {
            if expires.is_some_and(|e| e <= timestamp) {
                continue;
            }
            let mut mac = mac.clone();
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            STANDARD.encode_string(mac.finalize().into_bytes(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let signer = Signer::new([(SECRET, None)]).unwrap();
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_signs_with_every_live_secret_and_drops_expired_ones() {
        let old = "whsec_dGhlLW9sZC1zZWNyZXQtdGhlLW9sZC1zZWNyZXQ=";
        let signer = Signer::new([(SECRET, None), (old, Some(2_000))]).unwrap();
        assert_eq!(signer.sign("m", 1_000, b"{}").split(' ').count(), 2);
        assert_eq!(signer.sign("m", 2_000, b"{}").split(' ').count(), 1);
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(Signer::new([("nope", None)]).err(), Some(BadSecret));
        assert_eq!(Signer::new([("whsec_***", None)]).err(), Some(BadSecret));
        assert_eq!(Signer::new([]).err(), Some(BadSecret));
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the secret, id, time and body, the independent `standardwebhooks` crate
        /// accepts what we sign, and rejects it once a byte of the body changes.
        #[test]
        fn every_signature_verifies_with_the_independent_implementation(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            id in "[A-Za-z0-9_-]{1,64}",
            // Payloads are JSON, so UTF-8; the reference verifier refuses anything else.
            body in ".{0,512}".prop_map(String::into_bytes),
            flip in any::<prop::sample::Index>(),
        ) {
            let secret = format!("whsec_{}", STANDARD.encode(&key));
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            let signature = Signer::new([(secret.as_str(), None)]).unwrap().sign(&id, now, &body);
            let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("webhook-id", id.parse().unwrap());
            headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
            headers.insert("webhook-signature", signature.parse().unwrap());
            prop_assert!(verifier.verify(&body, &headers).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 0x01;
                prop_assert!(verifier.verify(&tampered, &headers).is_err());
            }
        }
    }
}
