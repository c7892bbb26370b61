//! Fans events out to matching subscriptions and delivers them as signed webhooks. The only
//! process that calls a subscriber's URL, so the SSRF guard, timeouts and signing live here.
//!
//! # Layout
//! - [`config`]: `Settings`, checked at load (ack wait longer than the HTTP timeout).
//! - [`app`]: `App::build` / `App::run`, the health endpoints, draining.
//! - [`subscriptions`]: the in-memory index kept current by a KV watch; the matcher.
//! - [`pull`]: the pull loop both consumers share (bounded, cancellable, hands back on stop).
//! - [`budget`]: the memory budgets for payloads held (events in fan-out, tasks pulled).
//! - [`fanout`]: events consumer → one delivery task per (event, subscription).
//! - [`deliver`]: deliveries consumer → admit, sign, POST, record, then ack, retry or
//!   dead-letter; why the attempt number travels in the task.
//! - [`dead_letter`]: storing dead letters; one the stream refuses waits, never re-attempted.
//! - [`retry`]: `RetryPolicy`, the pure decision after an attempt.
//! - [`gate`]: per-endpoint admission: in-flight bound, circuit breaker, rate limit.
//! - [`health`]: failing-since tracking and automatic disabling.
//! - [`rejects`]: setting aside messages that are not what their subject promises.
//! - [`signing`]: Standard Webhooks signatures, several during a rotation.
//! - [`metrics`]: the Prometheus metrics on `/metrics`.
//! - [`http_client`]: the pooled client, no redirects, capped response reads.
//! - [`test_send`]: answers test-send requests with one signed sample delivery, unrecorded.

pub mod app;
pub mod budget;
pub mod config;
pub mod dead_letter;
pub mod deliver;
pub mod fanout;
pub mod gate;
pub mod health;
pub mod http_client;
pub mod metrics;
pub mod pull;
pub mod rejects;
pub mod retry;
pub mod signing;
pub mod subscriptions;
pub mod test_send;
pub mod waiting;
pub mod waiting_budget;

pub use app::App;
pub use config::Settings;
