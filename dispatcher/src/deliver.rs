//! The deliveries consumer: sign and POST each task, ack on `2xx`.
//!
//! Bounded by one semaphore (`max_in_flight`): the pull loop never waits on a slow receiver
//! beyond that bound. The attempt number is JetStream's delivery count, so it survives a crash.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use prost::Message as _;
use proto::{subjects::http as headers, v1::Delivery};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    fanout::ack,
    http_client,
    subscriptions::{Index, Live, Lookup},
};

/// How often a task for a subscription this replica has not seen yet is retried before it is
/// given up as belonging to a subscription that no longer exists.
const UNKNOWN_SUBSCRIPTION_RETRIES: i64 = 30;

/// Shared by the delivery tasks.
pub struct Deliverer {
    pub index: Index,
    pub http: reqwest::Client,
    pub url_policy: common::urls::UrlPolicy,
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered { status: u16 },
    Failed { status: Option<u16>, error: String },
}

/// Pulls deliveries until `token` is cancelled; in-flight ones finish on `tracker`.
pub async fn run(
    deliverer: Arc<Deliverer>,
    consumer: jetstream::consumer::PullConsumer,
    max_in_flight: usize,
    tracker: TaskTracker,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(max_in_flight.min(1000))
        .messages()
        .await?;
    loop {
        let permit = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            permit = permits.clone().acquire_owned() => permit?,
        };
        let message = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "deliveries consumer error");
                    continue;
                }
                None => anyhow::bail!("deliveries consumer stream ended"),
            },
        };
        let deliverer = deliverer.clone();
        tracker.spawn(async move {
            deliverer.handle(message).await;
            drop(permit);
        });
    }
}

impl Deliverer {
    async fn handle(&self, message: jetstream::Message) {
        let task = match Delivery::decode(message.payload.as_ref()) {
            Ok(task) => task,
            Err(error) => {
                tracing::error!(subject = %message.subject, error = %error, "undecodable delivery set aside");
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        let attempt = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
        let live = match self.index.get(&task.subscription_id) {
            Lookup::Live(live) => live,
            Lookup::Deleted => {
                tracing::info!(subscription_id = %task.subscription_id, "subscription deleted, delivery dropped");
                ack(&message, AckKind::Ack).await;
                return;
            }
            Lookup::Unknown if attempt < UNKNOWN_SUBSCRIPTION_RETRIES => {
                ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
            Lookup::Unknown => {
                tracing::warn!(subscription_id = %task.subscription_id, "subscription never seen, delivery set aside");
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        if !live.sub.enabled {
            // The owner disabled it: it receives nothing and queues nothing.
            ack(&message, AckKind::Ack).await;
            return;
        }
        let span = tracing::info_span!(
            "dispatch.deliver",
            event_id = %task.event_id,
            subscription_id = %task.subscription_id,
            attempt,
            status = tracing::field::Empty,
        );
        let outcome = self
            .attempt(&live, &task, attempt)
            .instrument(span.clone())
            .await;
        match outcome {
            Outcome::Delivered { status } => {
                span.record("status", status);
                ack(&message, AckKind::Ack).await;
            }
            Outcome::Failed { status, error } => {
                if let Some(status) = status {
                    span.record("status", status);
                }
                tracing::info!(parent: &span, error = %error, "delivery attempt failed");
                ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }

    /// One signed POST of the task's payload.
    pub async fn attempt(&self, live: &Live, task: &Delivery, attempt: i64) -> Outcome {
        let url = match self.url_policy.check(&live.sub.url).await {
            Ok(url) => url,
            Err(error) => {
                return Outcome::Failed {
                    status: None,
                    error: error.to_string(),
                };
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = live.signer.sign(&task.event_id, now, &task.payload);
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(headers::WEBHOOK_ID, &task.event_id)
            .header(headers::WEBHOOK_TIMESTAMP, now.to_string())
            .header(headers::WEBHOOK_SIGNATURE, signature)
            .header(headers::WEBHOOK_ATTEMPT, attempt.to_string());
        for (name, value) in &live.sub.headers {
            request = request.header(name, value);
        }
        match http_client::send(request.body(task.payload.clone())).await {
            Ok(response) if (200..300).contains(&response.status) => Outcome::Delivered {
                status: response.status,
            },
            Ok(response) => Outcome::Failed {
                status: Some(response.status),
                error: format!("receiver answered {}", response.status),
            },
            Err(error) => Outcome::Failed {
                status: None,
                error: describe(&error),
            },
        }
    }
}

/// A transport error in a few words, with its cause.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}
