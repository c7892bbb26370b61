//! The pull loop both consumers share: bounded concurrency, cancellation, and handing back
//! what was pulled but not started when the loop stops.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::{Budget, Charge};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// What a loop does with each message. The handler acks, naks or terminates it itself, and
/// holds `permit` (one of the loop's `concurrency`) for as long as the message should count
/// against it: to the end, or less when the rest of its work is bounded elsewhere; and
/// `charge` (its [`Handler::cost`] in the loop's memory budget, if it has one) until it is
/// settled.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
        charge: Option<Charge>,
    ) -> impl Future<Output = ()> + Send;

    /// The bytes handling `message` holds at most: its payload, unless the handler makes
    /// more of it.
    fn cost(&self, message: &jetstream::Message) -> usize {
        message.payload.len()
    }
}

/// Most bytes one pull asks the server for at once, and so the most a replica buffers of a
/// consumer's messages before their handlers charge them: large enough for any one message
/// (a message above a pull's `max_bytes` would never be delivered), small beside the budget.
pub fn batch_bytes(budget: &Budget) -> usize {
    (budget.total() / 8).max(2 * 1024 * 1024)
}

/// How long a stopping loop keeps taking already-pulled messages to hand them back.
const HAND_BACK_WINDOW: Duration = Duration::from_millis(250);
/// How long a handed-back message waits before JetStream delivers it again: longer than the
/// window, so it goes to another replica and never back to this stopping one (its pull still
/// open), which would hand it back again and again, each time a delivery counted against
/// the fan-out's limit.
pub const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// Pulls until `token` is cancelled, running each message on `tracker` with at most
/// `concurrency` at once and, with a `budget`, at most its bytes held. A permit is taken before
/// a message is, and room in the budget before it is started, so nothing waits in this process
/// for a slot beyond one message; on cancel, messages already pulled but not started are
/// handed back (after [`HAND_BACK_DELAY`]), so another replica takes them soon rather than
/// after the ack wait.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    consumer: PullConsumer,
    concurrency: usize,
    budget: Option<Arc<Budget>>,
    tracker: TaskTracker,
    token: CancellationToken,
    what: &'static str,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut stream = consumer
        .stream()
        .max_messages_per_batch(concurrency.min(1000));
    if let Some(budget) = &budget {
        stream = stream.max_bytes_per_batch(batch_bytes(budget));
    }
    let mut messages = stream.messages().await?;
    loop {
        let permit = tokio::select! {
            _ = token.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let message = tokio::select! {
            _ = token.cancelled() => break,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, consumer = what, "consumer error");
                    continue;
                }
                None => anyhow::bail!("{what} consumer stream ended"),
            },
        };
        let charge = match &budget {
            Some(budget) => tokio::select! {
                _ = token.cancelled() => {
                    crate::fanout::ack(&message, AckKind::Nak(Some(HAND_BACK_DELAY))).await;
                    break;
                }
                charge = budget.charge(Some(&message), handler.cost(&message)) => Some(charge),
            },
            None => None,
        };
        let handler = handler.clone();
        tracker.spawn(async move { handler.handle(message, permit, charge).await });
    }
    let deadline = tokio::time::Instant::now() + HAND_BACK_WINDOW;
    let mut handed_back = 0usize;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, messages.next()).await {
        crate::fanout::ack(&message, AckKind::Nak(Some(HAND_BACK_DELAY))).await;
        handed_back += 1;
    }
    tracing::info!(consumer = what, handed_back, "stopped pulling");
    Ok(())
}
