//! Test harness for Open Webhooks: a real NATS server, a scripted signature-checking receiver, polling.
//!
//! # Layout
//!
//! - [`nats`]: [`NatsServer`], one throwaway `nats-server -js` per test, so tests never share
//!   streams or consumers and fault tests can kill and restart the broker.
//! - [`cluster`]: [`NatsCluster`], a three-node JetStream cluster on loopback whose nodes can be
//!   killed one by one.
//! - [`receiver`]: [`TestReceiver`], an HTTP endpoint that answers with a scripted sequence of
//!   statuses and records every request, and [`Received`], which checks signatures with the
//!   independent `standardwebhooks` crate rather than our own signer.
//! - [`otlp`]: [`OtlpReceiver`], a real OTLP trace receiver (HTTP and gRPC) recording the spans
//!   the service processes export.
//! - [`wait`]: [`eventually`], bounded polling for conditions that become true asynchronously.
//! - [`tls`]: [`TestCa`], a throwaway CA issuing receiver certificates, and the rustls listener
//!   behind [`TestReceiver::start_tls`].
//! - [`browser`]: [`Browser`], headless Chromium over WebDriver (its own chromedriver), with
//!   helpers that find controls by label and buttons by text, poll, take screenshots and check
//!   labels, horizontal scrolling and console errors.
//! - `src/bin/demo_receiver.rs`: a standalone verifying receiver for the README demo.

pub mod browser;
pub mod cluster;
pub mod nats;
pub mod otlp;
pub mod receiver;
pub mod tls;
pub mod wait;

pub use browser::Browser;
pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use otlp::{ExportedSpan, OtlpReceiver};
pub use receiver::{Received, TestReceiver};
pub use tls::TestCa;
pub use wait::eventually;

use std::sync::Once;

/// Installs a test-friendly tracing subscriber once per test binary.
///
/// Tests stay quiet by default so failures are readable; set `TEST_LOG=1` (and optionally
/// `RUST_LOG`, default `info`) to see the services' logs, captured per test by libtest.
pub fn init_test_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Another subscriber may already be installed by the test itself; keep it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
