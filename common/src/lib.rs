//! What both services share at run time; `proto` holds what they share on the wire.
//!
//! # Layout
//! - [`config`]: the environment variables both binaries read (NATS, topology, URL rules).
//! - [`crypto`]: sealing signing secrets at rest under the master key (XChaCha20-Poly1305),
//!   with key rotation.
//! - [`nats`]: connecting, with credentials and connection-state logging.
//! - [`topology`]: streams and KV buckets, created idempotently by whichever service starts first.
//! - [`event_index`]: event id → stream sequence (a KV bucket), and reading one event by id.
//! - [`pages`]: one page of a stream filtered by subject (dead letters, attempts), through an
//!   ephemeral ordered consumer, so a page costs its size and not the stream's.
//! - [`watch`]: a KV bucket mirrored into memory through a watch, so config changes reach every
//!   replica without a restart.
//! - [`urls`]: the rules a target URL must pass (scheme, SSRF guard); checked on create by
//!   `ingest` and again on every delivery by `dispatcher`.
//! - [`telemetry`]: logs and OpenTelemetry traces (OTLP export configured by `OTEL_*`).
//! - [`trace_context`]: W3C trace context in NATS and HTTP headers, joining one event's spans.
//! - [`shutdown`]: SIGTERM/SIGINT into a cancellation token.

pub mod config;
pub mod crypto;
pub mod event_index;
pub mod nats;
pub mod pages;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace_context;
pub mod urls;
pub mod watch;
