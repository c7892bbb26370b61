//! `App::build` (bind, connect, ensure topology, start mirrors) and `App::run` (serve, drain).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use common::{
    topology::{self, Stores},
    watch::{self, Mirror, Ready},
};
use proto::v1::{ApiKey, Subscription};
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, nats_ingest::NatsIngest, routes};

/// Shared by every handler: one `Arc`, because axum clones the state for every request (and
/// every middleware), and a NATS client or JetStream context clone is several reference counts
/// and a channel sender each (the profile showed their clones and drops per request).
#[derive(Clone)]
pub struct AppState(Arc<State>);

impl std::ops::Deref for AppState {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct State {
    pub settings: Arc<Settings>,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// Behind an `Arc`: axum clones the state for every request, and a KV handle carries its
    /// whole stream config.
    pub stores: Arc<Stores>,
    pub keys: Arc<Mirror<ApiKey>>,
    pub subscriptions: Arc<Mirror<Subscription>>,
    pub mirrors_ready: [Ready; 2],
    /// Set when draining starts, so `/readyz` turns away new traffic first.
    pub draining: Arc<AtomicBool>,
    /// Per-tenant event rate (`WEBHOOKS_TENANT_RATE_LIMIT`), in this replica.
    pub rate_limit: Arc<crate::rate_limit::TenantRateLimit>,
    /// Prometheus metrics of this process (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Makes room in the events stream (`room`).
    pub room: Arc<crate::room::Keeper>,
}

/// A built, not yet serving, ingest service.
pub struct App {
    listener: tokio::net::TcpListener,
    state: AppState,
    background: CancellationToken,
    nats_ingest: NatsIngest,
}

impl App {
    /// Binds the port and connects to NATS, so a bad configuration fails before serving.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let client = common::nats::connect(&settings.shared, "ingest").await?;
        let js = async_nats::jetstream::new(client.clone());
        let stores = topology::ensure(&js, &settings.shared).await?;
        let background = CancellationToken::new();
        let keys = Arc::new(Mirror::default());
        let subscriptions = Arc::new(Mirror::default());
        let mut keys_ready =
            watch::spawn(stores.api_keys.clone(), keys.clone(), background.clone());
        let mut subs_ready = watch::spawn(
            stores.subscriptions.clone(),
            subscriptions.clone(),
            background.clone(),
        );
        // Serve only with a complete picture of keys and subscriptions.
        for ready in [&mut keys_ready, &mut subs_ready] {
            anyhow::ensure!(
                ready.wait(topology::PATIENCE).await,
                "kv mirrors did not catch up"
            );
        }
        let nats_ingest = NatsIngest::subscribe(&client).await?;
        let rate_limit = Arc::new(crate::rate_limit::TenantRateLimit::new(
            settings.tenant_rate_limit,
        ));
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let room = Arc::new(crate::room::Keeper::new(
            js.clone(),
            metrics.events_retained_seconds.clone(),
            metrics.events_fanout_backlog_ratio.clone(),
        ));
        let state = AppState(Arc::new(State {
            rate_limit,
            room,
            settings: Arc::new(settings),
            client,
            js,
            stores: Arc::new(stores),
            keys,
            subscriptions,
            mirrors_ready: [keys_ready, subs_ready],
            draining: Arc::new(AtomicBool::new(false)),
            metrics,
        }));
        Ok(App {
            listener,
            state,
            background,
            nats_ingest,
        })
    }

    /// The bound address (port 0 in tests becomes a real one here).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `token` is cancelled, then drains: readiness fails, in-flight requests
    /// finish, and the NATS connection flushes.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let App {
            listener,
            state,
            background,
            nats_ingest,
        } = self;
        // Upstream NATS requests, answered until `token` is cancelled; in-flight ones finish.
        let nats_token = token.child_token();
        let nats_served = tokio::spawn(nats_ingest.serve(state.clone(), nats_token.clone()));
        tokio::spawn(crate::room::keep(state.room.clone(), background.clone()));
        let draining = state.draining.clone();
        let client = state.client.clone();
        let router =
            routes::router(state).layer(axum::middleware::from_fn(crate::request_span::layer));
        let shutdown = async move {
            token.cancelled().await;
            draining.store(true, Ordering::SeqCst);
        };
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        // Also when the server stopped on its own.
        nats_token.cancel();
        if let Err(error) = nats_served.await {
            tracing::error!(error = %error, "nats ingest task failed");
        }
        background.cancel();
        common::nats::close(&client).await;
        served.context("http server failed")
    }
}
