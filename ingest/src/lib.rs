//! The front door: validates events and stores them in JetStream; the tenant, key and
//! subscription API. It never calls a subscriber's URL: only `dispatcher` does.
//!
//! # Layout
//! - [`config`]: `Settings`, from the environment or built in code by tests.
//! - [`app`]: `App::build` (bind, connect, ensure streams, mirror KV) and `App::run` (serve,
//!   drain on cancel); `AppState`, shared by the handlers.
//! - [`routes`]: the HTTP API, one module per resource.
//! - [`auth`]: API keys (hashed, revocable) and the admin token.
//! - [`nats_ingest`]: upstream producers' protobuf requests on `webhooks.ingest.<tenant>`.
//! - [`publisher`]: building the stored event and waiting for its PubAck.
//! - [`request_span`]: the `ingest.request` span, continuing a producer's `traceparent`.
//! - [`rate_limit`]: the per-tenant event rate (`WEBHOOKS_TENANT_RATE_LIMIT`), per replica.
//! - [`metrics`]: Prometheus metrics, `GET /metrics`.
//! - [`error`]: `ApiError`, answered as problem+json.
//! - [`dashboard`]: the browser dashboard at `/dashboard`, static files embedded in the binary
//!   that call the public API with the user's key.
//! - [`openapi`]: the OpenAPI document (`GET /openapi.json`), generated from the handlers'
//!   annotations and the event catalog.

pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod nats_ingest;
pub mod openapi;
pub mod publisher;
pub mod rate_limit;
pub mod request_span;
pub mod room;
pub mod routes;

pub use app::App;
pub use config::Settings;
