//! The contract between `ingest`, `dispatcher` and upstream producers: no I/O, no tokio.
//!
//! # Layout
//! - [`v1`]: the prost-generated messages of `webhooks/v1/webhooks.proto` (events, the ten
//!   typed payloads, delivery tasks, subscription and API-key records, the NATS ingest reply).
//! - [`subjects`]: every stream, subject, consumer, KV bucket and header name, spelled once.
//! - [`catalog`]: the ten event types, their fields, JSON Schemas and examples; the validator
//!   and `GET /v1/event-types` are both generated from it, so they cannot drift.
//! - [`validate`]: JSON (HTTP) and protobuf (NATS) input into a checked [`v1::Event`], with every
//!   offending field listed.
//! - [`envelope`]: the JSON envelope a receiver gets, built once per event.
//! - [`time`]: RFC 3339 ⇄ protobuf timestamps.

pub mod catalog;
pub mod envelope;
pub mod subjects;
pub mod time;
pub mod validate;

/// Messages of package `webhooks.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/webhooks.v1.rs"));

    impl Delivery {
        /// The task of `event`'s first attempt to `subscription_id`, carrying the rendered
        /// envelope `payload`: for the live fan-out, a replay or any other `origin`.
        pub fn first_attempt(
            event: &Event,
            sequence: u64,
            subscription_id: &str,
            payload: &bytes::Bytes,
            origin: DeliveryOrigin,
        ) -> Self {
            Delivery {
                event_id: event.id.clone(),
                tenant_id: event.tenant_id.clone(),
                subscription_id: subscription_id.to_owned(),
                event_type: event.r#type.clone(),
                agent_id: event.agent_id.clone(),
                payload: payload.clone(),
                event_sequence: sequence,
                accepted_at: event.accepted_at,
                origin: origin as i32,
                attempt: 1,
                ..Default::default()
            }
        }
    }

    /// Never prints the secret: a legacy plaintext one shows as `***`, a sealed one as its length.
    impl std::fmt::Debug for SigningSecret {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SigningSecret")
                .field("secret", &if self.secret.is_empty() { "" } else { "***" })
                .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
                .field("expires_at", &self.expires_at)
                .finish()
        }
    }
}
