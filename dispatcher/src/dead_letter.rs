//! Dead letters: a delivery that will not be attempted again is stored in `WEBHOOK_DLQ`, and
//! only then is its task terminated.
//!
//! When the dead-letter stream refuses the letter (full, or no PubAck in time), the task is
//! filed in the waiting room carrying its death (`Delivery.pending_death`) and the letter's
//! idempotency id. It comes back [`DEAD_LETTER_AGAIN`] later to be dead-lettered again, never
//! to be attempted again: the final attempt is made once, however long the stream stays full
//! (it was re-POSTed every 5 s before). Only when the waiting room refuses it too is the task
//! handed back as it was.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use prost::Message as _;
use proto::{
    subjects,
    v1::{DeadLetter, Delivery, PendingDeath},
};

use crate::{
    deliver::{Deliverer, truncate},
    fanout::ack,
    metrics::Reason,
};

/// How long a dead letter the stream refused waits before it is stored again.
pub const DEAD_LETTER_AGAIN: Duration = Duration::from_secs(10);
/// How long a task is handed back for when neither its dead letter nor its wait can be stored.
const HAND_BACK: Duration = Duration::from_secs(5);

/// Why a task is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub reason: &'static str,
    pub failed_by: &'static str,
    pub attempts: u32,
    pub status: Option<u16>,
    pub error: String,
}

impl Death {
    /// A fault of ours (`system_error`, failed by the system) after `attempts` attempts.
    pub fn system(attempts: u32, status: Option<u16>, error: String) -> Self {
        Death {
            reason: "system_error",
            failed_by: "system",
            attempts,
            status,
            error,
        }
    }

    /// The death of a delivery whose retry found no room in the waiting room: the room full,
    /// or its tenant over its budget there.
    pub fn no_room(attempts: u32, status: Option<u16>, error: &anyhow::Error) -> Self {
        let error = format!("retry not stored, no room in the waiting room: {error:#}");
        Death::system(attempts, status, truncate(error))
    }

    fn pending(&self, dead_letter_msg_id: &str) -> PendingDeath {
        PendingDeath {
            reason: self.reason.to_owned(),
            failed_by: self.failed_by.to_owned(),
            attempts: self.attempts,
            last_status_code: self.status.map(u32::from).unwrap_or(0),
            last_error: self.error.clone(),
            dead_letter_msg_id: dead_letter_msg_id.to_owned(),
        }
    }

    /// Back from a task; a reason this version does not know reads as `system_error`.
    fn from_pending(p: &PendingDeath) -> Self {
        let reason = match p.reason.as_str() {
            "attempts_exhausted" => "attempts_exhausted",
            "permanent_failure" => "permanent_failure",
            "subscription_disabled" => "subscription_disabled",
            _ => "system_error",
        };
        Death {
            reason,
            failed_by: if p.failed_by == "endpoint" {
                "endpoint"
            } else {
                "system"
            },
            attempts: p.attempts,
            status: u16::try_from(p.last_status_code).ok().filter(|s| *s > 0),
            error: p.last_error.clone(),
        }
    }
}

impl Deliverer {
    /// Dead-letters the first attempt of `task` as a `system_error` that no attempt was made
    /// for (a fan-out that could not store its outcome, `why`). True once it is stored.
    pub async fn give_up(&self, task: &Delivery, why: &str) -> bool {
        let death = Death::system(0, None, why.to_owned());
        let id = subjects::first_dead_letter_msg_id(&task.event_id, &task.subscription_id);
        self.store_dead_letter(task, &death, &id).await.is_ok()
    }

    /// Dead-letters the task in `message` (at `sequence` of its lane) and terminates it; a
    /// letter the stream refuses waits in the waiting room (see the module).
    pub(crate) async fn dead_letter(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        task: &Delivery,
        death: Death,
    ) {
        let lane = message.info().map(|i| i.stream).unwrap_or_default();
        let id = subjects::dead_letter_msg_id(lane, sequence);
        self.dead_letter_as(message, task, &death, &id, &id).await;
    }

    /// A task that came back only to store its dead letter (`Delivery.pending_death`).
    pub(crate) async fn dead_letter_pending(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        mut task: Delivery,
    ) {
        let Some(pending) = task.pending_death.take() else {
            return;
        };
        let death = Death::from_pending(&pending);
        let lane = message.info().map(|i| i.stream).unwrap_or_default();
        let this_try = subjects::dead_letter_msg_id(lane, sequence);
        let id = if pending.dead_letter_msg_id.is_empty() {
            this_try.clone()
        } else {
            pending.dead_letter_msg_id
        };
        self.dead_letter_as(message, &task, &death, &id, &this_try)
            .await;
    }

    /// Stores the letter under `id`; when it is refused, the task waits under an id made of
    /// `this_try` (the message being settled), never the same twice: a wait filed under the id
    /// of an earlier one would be taken for its duplicate and dropped.
    async fn dead_letter_as(
        &self,
        message: &jetstream::Message,
        task: &Delivery,
        death: &Death,
        id: &str,
        this_try: &str,
    ) {
        if self.store_dead_letter(task, death, id).await.is_ok() {
            return ack(message, AckKind::Term).await;
        }
        let headers = common::trace_context::copy(message.headers.as_ref());
        match self.file_pending(task, death, id, this_try, headers).await {
            Ok(()) => ack(message, AckKind::Ack).await,
            Err(error) => {
                tracing::error!(error = %error, "dead letter not stored and no room to wait, task handed back");
                ack(message, AckKind::Nak(Some(HAND_BACK))).await;
            }
        }
    }

    /// The dead letter of a first attempt made straight from the fan-out. True once it is
    /// stored or waiting in the waiting room; false hands the event back.
    pub(crate) async fn dead_letter_first(&self, task: &Delivery, death: &Death) -> bool {
        let id = subjects::first_dead_letter_msg_id(&task.event_id, &task.subscription_id);
        if self.store_dead_letter(task, death, &id).await.is_ok() {
            return true;
        }
        let headers = common::trace_context::current_headers();
        match self.file_pending(task, death, &id, &id, headers).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(error = %error, "dead letter not stored and no room to wait, event handed back");
                false
            }
        }
    }

    /// Files `task` in the waiting room to store its dead letter (`id`) later, under an id
    /// made of `this_try`.
    async fn file_pending(
        &self,
        task: &Delivery,
        death: &Death,
        id: &str,
        this_try: &str,
        headers: Option<async_nats::HeaderMap>,
    ) -> anyhow::Result<()> {
        let mut later = task.clone();
        later.pending_death = Some(death.pending(id));
        later.not_before = Some(proto::time::from_system(
            SystemTime::now() + DEAD_LETTER_AGAIN,
        ));
        self.handed_back("dead_letter_pending");
        self.waiting
            .put(&later, headers, subjects::pending_death_msg_id(this_try))
            .await
    }

    /// Stores the dead letter of `task` under `msg_id` (logged either way).
    async fn store_dead_letter(
        &self,
        task: &Delivery,
        death: &Death,
        msg_id: &str,
    ) -> Result<(), ()> {
        let letter = DeadLetter {
            delivery: Some(task.clone()),
            attempts: death.attempts,
            last_status_code: death.status.map(u32::from).unwrap_or(0),
            last_error: death.error.clone(),
            dead_at: Some(proto::time::now()),
            reason: death.reason.to_owned(),
            failed_by: death.failed_by.to_owned(),
        };
        let publish = PublishMessage::build()
            .payload(letter.encode_to_vec().into())
            .message_id(msg_id);
        let subject = subjects::dlq_subject(&task.tenant_id, &task.subscription_id);
        match self.publish(subject, publish).await {
            Ok(()) => {
                tracing::warn!(event_id = %task.event_id, subscription_id = %task.subscription_id, reason = death.reason, "delivery dead-lettered");
                self.metrics.delivered("dead_lettered");
                self.metrics
                    .dead_letters
                    .get_or_create(&Reason {
                        reason: death.reason,
                    })
                    .inc();
                Ok(())
            }
            Err(error) => {
                tracing::error!(error = %error, "dead letter not stored");
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_death_comes_back_as_it_went() {
        let death = Death {
            reason: "attempts_exhausted",
            failed_by: "endpoint",
            attempts: 10,
            status: Some(503),
            error: "503 Service Unavailable".into(),
        };
        let pending = death.pending("dlq:WEBHOOK_DELIVERIES:7");
        assert_eq!(pending.dead_letter_msg_id, "dlq:WEBHOOK_DELIVERIES:7");
        assert_eq!(Death::from_pending(&pending), death);
        let unknown = PendingDeath {
            reason: "from_a_newer_version".into(),
            failed_by: "someone".into(),
            ..pending
        };
        let back = Death::from_pending(&unknown);
        assert_eq!((back.reason, back.failed_by), ("system_error", "system"));
    }
}
