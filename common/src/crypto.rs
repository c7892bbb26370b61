//! Encryption at rest of subscription signing secrets.
//!
//! A signing secret is sealed with XChaCha20-Poly1305 under the master key
//! (`WEBHOOKS_MASTER_KEY`, base64 of 32 random bytes), with a fresh random 24-byte nonce per
//! seal and the subscription id as associated data, so a sealed secret copied into another
//! subscription's record does not open. The sealed format is
//!
//! ```text
//! [version = 1][key id: 4 bytes = SHA-256(key)[..4]][nonce: 24 bytes][ciphertext + 16-byte tag]
//! ```
//!
//! Key rotation: `WEBHOOKS_MASTER_KEY_PREVIOUS` (comma-separated, same format) lists older keys
//! that still open what they sealed; only the current key seals. The key id in the header picks
//! the key, so opening never has to try them all.
//!
//! Key material never appears in `Debug` output: a [`Key`] prints only its id.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    KeyInit as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, Payload},
};
use proto::v1::SigningSecret;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
pub use zeroize::Zeroizing;

use crate::config::{ConfigError, Env};

/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// The only sealed format so far.
pub const VERSION: u8 = 1;
/// Length of the key id in a sealed value.
pub const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// The fixed key used in dev mode (`WEBHOOKS_DEV_MODE=true`) when no master key is set.
///
/// **Insecure by design**: it is public (it is right here), so anything sealed with it is as
/// good as plaintext. It exists so a laptop demo runs without configuration; outside dev mode it
/// is refused.
pub const INSECURE_DEV_KEY: &[u8; KEY_LEN] = b"open-webhooks-INSECURE-dev-key!!";

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Sealed under a key that is neither the current nor a previous master key.
    #[error("sealed under unknown master key {key_id}")]
    UnknownKey { key_id: String },
    /// Truncated, of an unknown version, tampered with, or sealed for other associated data.
    #[error("sealed value is corrupt: {reason}")]
    Corrupt { reason: &'static str },
}

impl CryptoError {
    fn corrupt(reason: &'static str) -> Self {
        Self::Corrupt { reason }
    }
}

/// One master key, ready to seal and open. `Debug` shows only its id; the key is zeroed on drop.
#[derive(Clone)]
pub struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let key = chacha20poly1305::Key::from(*bytes);
        Self {
            id,
            cipher: XChaCha20Poly1305::new(&key),
        }
    }

    /// A key from base64 of exactly 32 bytes. The error never repeats the input.
    pub fn from_base64(text: &str) -> Result<Self, &'static str> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| "must be base64 (standard alphabet, padded) of 32 random bytes")?,
        );
        let bytes: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| "must decode to exactly 32 bytes")?,
        );
        Ok(Self::from_bytes(&bytes))
    }

    /// A fresh random key (tests, tooling).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self::from_bytes(&bytes)
    }

    /// The first 4 bytes of SHA-256 of the key: names it in sealed values and logs.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// The id as 8 hex digits.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id={}, ***)", self.id_hex())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The current master key (seals and opens) and previous ones (open only).
#[derive(Clone, Debug)]
pub struct MasterKeys {
    current: Key,
    previous: Vec<Key>,
    insecure_dev: bool,
}

impl MasterKeys {
    /// `current` seals; `current` and `previous` open.
    pub fn new(current: Key, previous: Vec<Key>) -> Self {
        Self {
            current,
            previous,
            insecure_dev: false,
        }
    }

    /// A fresh random current key and no previous ones (tests).
    pub fn generate() -> Self {
        Self::new(Key::generate(), Vec::new())
    }

    /// The documented, insecure dev-mode key ([`INSECURE_DEV_KEY`]).
    pub fn insecure_dev() -> Self {
        Self {
            current: Key::from_bytes(INSECURE_DEV_KEY),
            previous: Vec::new(),
            insecure_dev: true,
        }
    }

    /// Whether this is the insecure dev-mode key.
    pub fn is_insecure_dev(&self) -> bool {
        self.insecure_dev
    }

    /// The key that seals.
    pub fn current(&self) -> &Key {
        &self.current
    }

    /// The keys that still open but no longer seal.
    pub fn previous(&self) -> &[Key] {
        &self.previous
    }

    /// `WEBHOOKS_MASTER_KEY` and `WEBHOOKS_MASTER_KEY_PREVIOUS`; with `WEBHOOKS_DEV_MODE=true`
    /// a missing master key falls back to [`INSECURE_DEV_KEY`], with a warning. Outside dev mode
    /// a missing key, a malformed one, or the dev key itself refuses to start.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const NAME: &str = "WEBHOOKS_MASTER_KEY";
        const PREVIOUS: &str = "WEBHOOKS_MASTER_KEY_PREVIOUS";
        let dev_mode: bool = env.parse("WEBHOOKS_DEV_MODE", false)?;
        let previous = env
            .string(PREVIOUS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                Key::from_base64(s).map_err(|message| ConfigError::Invalid {
                    name: PREVIOUS,
                    message: format!("entry {}: {message}", i + 1),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match env.string(NAME) {
            Some(text) => {
                let current = Key::from_base64(&text).map_err(|message| ConfigError::Invalid {
                    name: NAME,
                    message: message.into(),
                })?;
                let dev_id = Key::from_bytes(INSECURE_DEV_KEY).id();
                if !dev_mode && current.id() == dev_id {
                    return Err(ConfigError::Invalid {
                        name: NAME,
                        message: "is the public insecure dev key; generate a real one".into(),
                    });
                }
                let previous = previous
                    .into_iter()
                    .filter(|k| k.id() != current.id())
                    .collect();
                Self::new(current, previous)
            }
            None if dev_mode => {
                tracing::warn!(
                    "!!! WEBHOOKS_DEV_MODE: no WEBHOOKS_MASTER_KEY set, signing secrets are sealed \
                     with the PUBLIC INSECURE dev key; never run like this with real data !!!"
                );
                let mut keys = Self::insecure_dev();
                keys.previous = previous;
                keys
            }
            None => return Err(ConfigError::Missing { name: NAME }),
        };
        tracing::info!(
            current = %keys.current.id_hex(),
            previous = ?keys.previous.iter().map(Key::id_hex).collect::<Vec<_>>(),
            "master keys loaded"
        );
        Ok(keys)
    }

    /// Seals `plaintext` under the current key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = XNonce::from(nonce);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Only fails for messages of gigabytes; a signing secret is 30 bytes.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens what [`seal`](Self::seal) made with `aad`, under the current or a previous key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::corrupt("too short"));
        }
        if sealed[0] != VERSION {
            return Err(CryptoError::corrupt("unknown version"));
        }
        let key_id = &sealed[1..1 + KEY_ID_LEN];
        let nonce = XNonce::try_from(&sealed[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| CryptoError::corrupt("bad nonce"))?;
        let payload = || Payload {
            msg: &sealed[HEADER_LEN..],
            aad,
        };
        let mut known = false;
        for key in std::iter::once(&self.current).chain(&self.previous) {
            if key.id != key_id {
                continue;
            }
            known = true;
            if let Ok(plaintext) = key.cipher.decrypt(&nonce, payload()) {
                return Ok(plaintext);
            }
        }
        if known {
            Err(CryptoError::corrupt("authentication failed"))
        } else {
            Err(CryptoError::UnknownKey {
                key_id: hex(key_id),
            })
        }
    }

    /// The key id a sealed value names, if it has a header.
    pub fn sealed_key_id(sealed: &[u8]) -> Option<[u8; KEY_ID_LEN]> {
        (sealed.len() >= HEADER_LEN && sealed[0] == VERSION)
            .then(|| sealed[1..1 + KEY_ID_LEN].try_into().ok())
            .flatten()
    }

    /// A signing secret of subscription `subscription_id`, sealed: `secret` stays empty.
    pub fn seal_secret(
        &self,
        subscription_id: &str,
        plaintext: &str,
        expires_at: Option<prost_types::Timestamp>,
    ) -> SigningSecret {
        SigningSecret {
            secret: String::new(),
            sealed: self.seal(subscription_id.as_bytes(), plaintext.as_bytes()),
            expires_at,
        }
    }

    /// The plaintext of a signing secret of subscription `subscription_id`: opens `sealed`, or,
    /// for a record written before secrets were sealed, answers the legacy plaintext field.
    pub fn open_secret(
        &self,
        subscription_id: &str,
        secret: &SigningSecret,
    ) -> Result<Zeroizing<String>, CryptoError> {
        if secret.sealed.is_empty() {
            let legacy = &secret.secret;
            if legacy.is_empty() {
                return Err(CryptoError::corrupt("neither sealed nor plaintext"));
            }
            return Ok(Zeroizing::new(legacy.clone()));
        }
        let bytes = Zeroizing::new(self.open(subscription_id.as_bytes(), &secret.sealed)?);
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| CryptoError::corrupt("not UTF-8"))
    }

    /// Re-seals `secret` under the current key when it is a legacy plaintext one or sealed
    /// under a previous key; answers whether it changed. Leaves it as it is when it does not open.
    pub fn reseal_secret(
        &self,
        subscription_id: &str,
        secret: &mut SigningSecret,
    ) -> Result<bool, CryptoError> {
        if Self::sealed_key_id(&secret.sealed) == Some(self.current.id) {
            let had_plaintext = !secret.secret.is_empty();
            secret.secret.clear();
            return Ok(had_plaintext);
        }
        let plaintext = self.open_secret(subscription_id, secret)?;
        *secret = self.seal_secret(subscription_id, &plaintext, secret.expires_at);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef" x2

    #[test]
    fn seal_and_open_round_trip_with_a_fresh_nonce_each_time() {
        let keys = MasterKeys::generate();
        let a = keys.seal(b"sub_1", b"whsec_hello");
        let b = keys.seal(b"sub_1", b"whsec_hello");
        assert_ne!(a, b, "nonces differ");
        assert_eq!(a.len(), HEADER_LEN + b"whsec_hello".len() + TAG_LEN);
        assert_eq!(a[0], VERSION);
        assert_eq!(&a[1..5], &keys.current().id());
        assert_eq!(keys.open(b"sub_1", &a).unwrap(), b"whsec_hello");
        assert_eq!(keys.open(b"sub_1", &b).unwrap(), b"whsec_hello");
        assert!(!a.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn other_associated_data_does_not_open() {
        let keys = MasterKeys::generate();
        let sealed = keys.seal(b"sub_1", b"secret");
        assert!(matches!(
            keys.open(b"sub_2", &sealed),
            Err(CryptoError::Corrupt { .. })
        ));
    }

    #[test]
    fn any_tampered_byte_or_truncation_fails() {
        let keys = MasterKeys::generate();
        let sealed = keys.seal(b"sub_1", b"secret");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = keys.open(b"sub_1", &bad).unwrap_err();
            if (1..5).contains(&i) {
                assert!(matches!(err, CryptoError::UnknownKey { .. }), "byte {i}");
            } else {
                assert!(matches!(err, CryptoError::Corrupt { .. }), "byte {i}");
            }
        }
        assert!(keys.open(b"sub_1", &sealed[..sealed.len() - 1]).is_err());
        assert!(keys.open(b"sub_1", &sealed[..10]).is_err());
        assert!(keys.open(b"sub_1", &[]).is_err());
    }

    #[test]
    fn an_unknown_key_id_is_reported_as_such() {
        let a = MasterKeys::generate();
        let b = MasterKeys::generate();
        let sealed = a.seal(b"sub_1", b"secret");
        assert_eq!(
            b.open(b"sub_1", &sealed),
            Err(CryptoError::UnknownKey {
                key_id: a.current().id_hex()
            })
        );
    }

    #[test]
    fn a_previous_key_opens_and_only_the_current_one_seals() {
        let old = Key::generate();
        let before = MasterKeys::new(old.clone(), Vec::new());
        let sealed = before.seal(b"sub_1", b"secret");
        let after = MasterKeys::new(Key::generate(), vec![old.clone()]);
        assert_eq!(after.open(b"sub_1", &sealed).unwrap(), b"secret");
        let resealed = after.seal(b"sub_1", b"secret");
        assert_eq!(
            MasterKeys::sealed_key_id(&resealed),
            Some(after.current().id())
        );
        assert!(matches!(
            before.open(b"sub_1", &resealed),
            Err(CryptoError::UnknownKey { .. })
        ));
    }

    #[test]
    fn signing_secrets_are_sealed_reopened_and_legacy_ones_resealed() {
        let old = MasterKeys::generate();
        let keys = MasterKeys::new(Key::generate(), vec![old.current().clone()]);
        let sealed = keys.seal_secret("sub_1", "whsec_abc", None);
        let plaintext_field = sealed.secret.clone();
        assert!(plaintext_field.is_empty());
        assert_eq!(*keys.open_secret("sub_1", &sealed).unwrap(), "whsec_abc");
        assert!(keys.open_secret("sub_2", &sealed).is_err());

        let mut legacy = SigningSecret {
            secret: "whsec_legacy".into(),
            ..Default::default()
        };
        assert_eq!(*keys.open_secret("sub_1", &legacy).unwrap(), "whsec_legacy");
        assert!(keys.reseal_secret("sub_1", &mut legacy).unwrap());
        let cleared = legacy.secret.is_empty();
        assert!(cleared);
        assert_eq!(
            MasterKeys::sealed_key_id(&legacy.sealed),
            Some(keys.current().id())
        );
        assert_eq!(*keys.open_secret("sub_1", &legacy).unwrap(), "whsec_legacy");
        assert!(!keys.reseal_secret("sub_1", &mut legacy).unwrap());

        let mut under_old = old.seal_secret("sub_1", "whsec_old", None);
        assert!(keys.reseal_secret("sub_1", &mut under_old).unwrap());
        assert_eq!(
            MasterKeys::sealed_key_id(&under_old.sealed),
            Some(keys.current().id())
        );
        let mut unknown = MasterKeys::generate().seal_secret("sub_1", "whsec_x", None);
        let before = unknown.clone();
        assert!(keys.reseal_secret("sub_1", &mut unknown).is_err());
        assert_eq!(unknown, before);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = Key::from_base64(B64).unwrap();
        let keys = MasterKeys::new(key.clone(), vec![Key::generate()]);
        let text = format!("{keys:?} {key:?} {:?}", MasterKeys::insecure_dev());
        assert!(text.contains(&key.id_hex()), "{text}");
        for needle in [
            B64,
            "0123456789abcdef",
            "MDEyMzQ1",
            "INSECURE-dev-key",
            "48, 49, 50",
        ] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
        // Nor does the cipher's own Debug leak through.
        assert!(!format!("{:#?}", keys).contains("0123"));
    }

    #[test]
    fn keys_come_from_the_environment_and_bad_ones_refuse_to_start() {
        let other = STANDARD.encode([7u8; 32]);
        let env = Env::from_pairs(&[
            ("WEBHOOKS_MASTER_KEY", B64),
            ("WEBHOOKS_MASTER_KEY_PREVIOUS", &format!(" {other} ,")),
        ]);
        let keys = MasterKeys::from_env(&env).unwrap();
        assert_eq!(keys.current().id(), Key::from_base64(B64).unwrap().id());
        assert_eq!(keys.previous().len(), 1);
        assert!(!keys.is_insecure_dev());

        assert!(matches!(
            MasterKeys::from_env(&Env::from_pairs(&[])),
            Err(ConfigError::Missing { .. })
        ));
        let short = STANDARD.encode([1u8; 16]);
        for bad in ["not base64!", short.as_str(), "MDEy"] {
            let err = MasterKeys::from_env(&Env::from_pairs(&[("WEBHOOKS_MASTER_KEY", bad)]))
                .unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }));
            assert!(!err.to_string().contains(bad), "{err}");
        }
        let bad_previous = Env::from_pairs(&[
            ("WEBHOOKS_MASTER_KEY", B64),
            ("WEBHOOKS_MASTER_KEY_PREVIOUS", "nope"),
        ]);
        assert!(MasterKeys::from_env(&bad_previous).is_err());

        let dev = MasterKeys::from_env(&Env::from_pairs(&[("WEBHOOKS_DEV_MODE", "true")])).unwrap();
        assert!(dev.is_insecure_dev());
        let dev_b64 = STANDARD.encode(INSECURE_DEV_KEY);
        assert!(
            MasterKeys::from_env(&Env::from_pairs(&[("WEBHOOKS_MASTER_KEY", &dev_b64)])).is_err(),
            "the public dev key is refused outside dev mode"
        );
        let dev_with_key = MasterKeys::from_env(&Env::from_pairs(&[
            ("WEBHOOKS_DEV_MODE", "true"),
            ("WEBHOOKS_MASTER_KEY", B64),
        ]))
        .unwrap();
        assert!(!dev_with_key.is_insecure_dev());
    }
}
