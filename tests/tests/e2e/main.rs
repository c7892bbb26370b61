//! The one end-to-end test binary: a real nats-server per test, both services in-process (or,
//! for the fault tests, dispatchers as real processes: `procs`), real HTTP on loopback, and every
//! signature checked by the independent `standardwebhooks` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod procs;

mod auto_disable;
mod churn;
mod cluster;
mod dashboard;
mod dead_letters;
mod delivery;
mod fairness;
mod faults;
mod feed_replay;
mod full_streams;
mod hostile_nats;
mod ingest_api;
mod metrics;
mod nats_ingest;
mod openapi;
mod payload_memory;
mod reliability;
mod retention_log;
mod routing;
mod secrets_at_rest;
mod security;
mod self_service;
mod tracing;
mod truthful;
mod waiting_room;
