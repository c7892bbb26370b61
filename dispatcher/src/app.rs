//! `App::build` (connect, ensure topology, load subscriptions, create consumers, bind the
//! health port) and `App::run` (fan out and deliver until cancelled, then drain).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use common::watch::{self, Mirror, Ready};
use futures::TryFutureExt as _;
use proto::subjects;
use serde_json::{Value, json};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Settings,
    deliver::Deliverer,
    fanout::Fanout,
    gate::{Gate, GateConfig},
    health::Health,
    metrics::Metrics,
    subscriptions::Index,
};

/// A built, not yet running, dispatcher.
pub struct App {
    settings: Settings,
    client: async_nats::Client,
    js: jetstream::Context,
    stores: common::topology::Stores,
    failing: Arc<Mirror<proto::v1::EndpointHealth>>,
    index: Index,
    ready: Ready,
    fanout_consumer: PullConsumer,
    deliver_consumer: PullConsumer,
    replay_consumer: PullConsumer,
    ticks_consumer: PullConsumer,
    listener: tokio::net::TcpListener,
    background: CancellationToken,
}

#[derive(Clone)]
struct Probe {
    metrics: Arc<Metrics>,
    deliverer: Arc<Deliverer>,
    client: async_nats::Client,
    js: jetstream::Context,
    ready: Ready,
    draining: CancellationToken,
}

impl App {
    /// Connects, creates what is missing and waits for the subscription index to load, so a
    /// replica never fans out with a partial picture.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        settings.check()?;
        let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
            .await
            .with_context(|| format!("binding {}", settings.metrics_listen))?;
        let client = common::nats::connect(&settings.shared, "dispatcher").await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(pub_acks_in_flight(&settings))
            .build(client.clone());
        let stores = common::topology::ensure(&js, &settings.shared).await?;
        let background = CancellationToken::new();
        let index = Index::new(settings.shared.master_keys.clone());
        let mut ready = watch::spawn(
            stores.subscriptions.clone(),
            index.clone(),
            background.clone(),
        );
        let failing = Arc::new(Mirror::default());
        let mut failing_ready =
            watch::spawn(stores.health.clone(), failing.clone(), background.clone());
        for r in [&mut ready, &mut failing_ready] {
            anyhow::ensure!(
                r.wait(common::topology::PATIENCE).await,
                "kv mirrors did not load"
            );
        }
        let fanout_consumer = consumer(
            &js,
            subjects::EVENTS_STREAM,
            pull::Config {
                durable_name: Some(subjects::FANOUT_CONSUMER.into()),
                description: Some("fan-out of events into delivery tasks".into()),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                // First attempts run in the fan-out (with progress acks), so its ack wait is
                // the deliveries'.
                ack_wait: settings.ack_wait,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
        let deliver_consumer = consumer(
            &js,
            subjects::DELIVERIES_STREAM,
            deliver_config(
                subjects::DELIVER_CONSUMER,
                "signed delivery of each live task",
                &settings,
            ),
        )
        .await?;
        let replay_consumer = consumer(
            &js,
            subjects::REPLAYS_STREAM,
            deliver_config(
                subjects::REPLAY_CONSUMER,
                "signed delivery of replayed and redriven tasks",
                &settings,
            ),
        )
        .await?;
        let ticks_consumer = consumer(
            &js,
            subjects::TICKS_STREAM,
            pull::Config {
                durable_name: Some(subjects::TICKS_CONSUMER.into()),
                description: Some("due buckets of the waiting room, moved on".into()),
                filter_subject: subjects::TICKS_DUE_SUBJECT.into(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1_000,
                ..Default::default()
            },
        )
        .await?;
        Ok(App {
            settings,
            client,
            js,
            stores,
            failing,
            index,
            ready,
            fanout_consumer,
            deliver_consumer,
            replay_consumer,
            ticks_consumer,
            listener,
            background,
        })
    }

    /// The bound health/metrics address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Runs until `token` is cancelled or a loop fails, then stops pulling, lets in-flight work
    /// finish for up to `shutdown_grace`, and closes. Whatever is still unacked is redelivered
    /// by JetStream to another replica (or this one, restarted).
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let App {
            settings,
            client,
            js,
            stores,
            failing,
            index,
            ready,
            fanout_consumer,
            deliver_consumer,
            replay_consumer,
            ticks_consumer,
            listener,
            background,
        } = self;
        let token = token.child_token();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        let waiting = Arc::new(crate::waiting::Waiting::new(
            js.clone(),
            settings.max_waiting_per_tenant,
            metrics.waiting_over_budget.clone(),
        ));
        let deliverer = Arc::new(Deliverer {
            js: js.clone(),
            index: index.clone(),
            http: crate::http_client::build(&settings)?,
            url_policy: settings.shared.url_policy.clone(),
            gate: Gate::new(GateConfig {
                per_endpoint: settings.per_endpoint_in_flight,
                breaker_threshold: settings.breaker_threshold,
                breaker_cooldown: settings.breaker_cooldown,
                breaker_max_cooldown: settings.breaker_max_cooldown,
                per_tenant: settings.per_tenant_in_flight,
                line: settings.max_in_line,
            }),
            health: Health {
                bucket: stores.health.clone(),
                subscriptions: stores.subscriptions.clone(),
                failing,
                index: index.clone(),
                disable_after: settings.disable_after,
                delete_marker_ttl: settings.shared.delete_marker_ttl,
            },
            waiting: waiting.clone(),
            ack_wait: settings.ack_wait,
            metrics: metrics.clone(),
            stopping: token.clone(),
        });
        let ticks = Arc::new(crate::waiting::Ticks {
            waiting,
            metrics: metrics.clone(),
        });
        let budgets = crate::budget::Budgets::new(&settings, &metrics);
        let fanout = Arc::new(Fanout {
            js: js.clone(),
            index: index.clone(),
            links_base_url: settings.shared.links_base_url.clone(),
            metrics: metrics.clone(),
            deliverer: deliverer.clone(),
            direct_first_attempt: settings.direct_first_attempt,
            max_deliveries: settings.fanout_max_deliveries,
            progress: stores.fanout_progress.clone(),
            queue_budget: budgets.queue.clone(),
        });
        tokio::spawn(poll_jetstream(
            js.clone(),
            [
                (subjects::FANOUT_CONSUMER, fanout_consumer.clone()),
                (subjects::DELIVER_CONSUMER, deliver_consumer.clone()),
                (subjects::REPLAY_CONSUMER, replay_consumer.clone()),
            ],
            metrics.clone(),
            background.clone(),
        ));
        let health = Probe {
            metrics,
            deliverer: deliverer.clone(),
            client: client.clone(),
            js,
            ready,
            draining: token.clone(),
        };
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(health);
        let http_token = background.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_token.cancelled_owned())
                .await
        });

        // A failing loop cancels the token, which stops its siblings too.
        let fail_fast = |t: CancellationToken| {
            move |e: &anyhow::Error| {
                tracing::error!(error = %e, "a dispatcher loop failed");
                t.cancel();
            }
        };
        let loops = async {
            tokio::try_join!(
                crate::pull::run(
                    fanout,
                    fanout_consumer,
                    settings.fanout_concurrency,
                    Some(budgets.fanout.clone()),
                    tracker.clone(),
                    token.clone(),
                    "events"
                )
                .inspect_err(fail_fast(token.clone())),
                crate::pull::run(
                    deliverer.clone(),
                    deliver_consumer,
                    settings.max_in_flight,
                    Some(budgets.deliveries.clone()),
                    tracker.clone(),
                    token.clone(),
                    "deliveries"
                )
                .inspect_err(fail_fast(token.clone())),
                crate::pull::run(
                    deliverer.clone(),
                    replay_consumer,
                    settings.replay_max_in_flight,
                    Some(budgets.deliveries.clone()),
                    tracker.clone(),
                    token.clone(),
                    "replays"
                )
                .inspect_err(fail_fast(token.clone())),
                crate::pull::run(
                    ticks,
                    ticks_consumer,
                    TICK_CONCURRENCY,
                    None,
                    tracker.clone(),
                    token.clone(),
                    "ticks"
                )
                .inspect_err(fail_fast(token.clone())),
                crate::test_send::run(
                    deliverer,
                    client.clone(),
                    settings.shared.links_base_url.clone(),
                    tracker.clone(),
                    token.clone()
                )
                .inspect_err(fail_fast(token.clone())),
            )
            .map(|_| ())
        };
        let result = loops.await;
        tracing::info!("draining: waiting for in-flight work");
        tracker.close();
        if tokio::time::timeout(settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace elapsed; unfinished deliveries go back to JetStream");
        }
        background.cancel();
        let _ = http.await;
        common::nats::close(&client).await;
        result
    }
}

/// Due buckets moved on at once by one replica.
const TICK_CONCURRENCY: usize = 4;

/// PubAcks the JetStream context lets wait at once. A publish beyond it waits for a permit,
/// so a holder that waits for more (a fan-out queuing its tasks) could starve every other: the
/// fan-out queues at most [`crate::fanout::QUEUE_CHUNK`] tasks at a time, and this leaves room
/// for all of them, every delivery's attempt record and retry, and the replay lane.
fn pub_acks_in_flight(settings: &Settings) -> usize {
    settings.fanout_concurrency * crate::fanout::QUEUE_CHUNK
        + 2 * (settings.max_in_flight + settings.replay_max_in_flight)
        + TICK_CONCURRENCY * 256
        + 1024
}

/// A deliveries consumer: explicit acks, an ack wait longer than any attempt, and no
/// `max_deliver`, because the attempt budget is counted in the task itself (see `deliver`).
fn deliver_config(name: &str, description: &str, settings: &Settings) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        description: Some(description.into()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.deliver_max_ack_pending,
        max_deliver: -1,
        ..Default::default()
    }
}

async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
) -> anyhow::Result<PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream = common::topology::patiently(&format!("opening stream {stream}"), || {
        js.get_stream(stream)
    })
    .await?;
    // Create, or bring an existing durable up to date with this version's settings.
    let created = common::topology::patiently(&format!("creating consumer {name}"), || {
        stream.create_consumer(config.clone())
    })
    .await;
    match created {
        Ok(consumer) => Ok(consumer),
        Err(_) => {
            common::topology::patiently(&format!("updating consumer {name}"), || {
                stream.update_consumer(config.clone())
            })
            .await
        }
    }
}

/// How often the consumers' lag is read into the metrics.
const CONSUMER_POLL: Duration = Duration::from_secs(5);

/// Reads each durable consumer's info (pending, ack pending, redelivered) and each stream's
/// (bytes, cap, messages) into the metrics, at once and then every [`CONSUMER_POLL`], until
/// `token` is cancelled.
async fn poll_jetstream(
    js: jetstream::Context,
    consumers: [(&'static str, PullConsumer); 3],
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    let mut ticks = tokio::time::interval(CONSUMER_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (name, consumer) in &consumers {
            match consumer.get_info().await {
                Ok(info) => metrics.consumer(name, &info),
                Err(error) => {
                    tracing::debug!(consumer = name, error = %error, "consumer info not read")
                }
            }
        }
        for name in subjects::STREAMS
            .into_iter()
            .chain(subjects::BUCKET_STREAMS)
        {
            let info = async {
                js.get_stream(name)
                    .await?
                    .get_info()
                    .await
                    .map_err(anyhow::Error::from)
            };
            match info.await {
                Ok(info) => metrics.stream(name, &info),
                Err(error) => {
                    tracing::debug!(stream = name, error = %error, "stream info not read")
                }
            }
        }
    }
}

async fn render_metrics(State(h): State<Probe>) -> impl axum::response::IntoResponse {
    let tracked = h.deliverer.gate.sweep();
    let (open, half_open) = h.deliverer.gate.circuit_counts();
    h.metrics.circuits(open, half_open, tracked);
    h.metrics
        .unsignable_subscriptions
        .set(i64::try_from(h.deliverer.index.unsignable()).unwrap_or(i64::MAX));
    h.metrics.mirror("subscriptions", h.deliverer.index.sizes());
    h.metrics
        .mirror("health", h.deliverer.health.failing.sizes());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Probe>) -> (StatusCode, Json<Value>) {
    let connected = common::nats::is_connected(&h.client);
    let streams = connected && common::topology::streams_ready(&h.js).await;
    let loaded = h.ready.is_ready();
    let draining = h.draining.is_cancelled();
    let ready = connected && streams && loaded && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "nats_connected": connected,
            "streams_ready": streams,
            "config_loaded": loaded,
            "draining": draining,
            // Not a readiness condition (the replica serves every other subscription), but
            // an operator's to fix: see `webhooks_unsignable_subscriptions`.
            "unsignable_subscriptions": h.deliverer.index.unsignable(),
        })),
    )
}
