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
}
