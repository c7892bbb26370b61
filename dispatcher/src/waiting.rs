//! The waiting room: where a delivery waits for its time (a retry's backoff, an open
//! circuit's cool-down, a busy or rate-limited endpoint's next free slot) without holding any
//! consumer capacity or any memory in a dispatcher.
//!
//! A waiting task is stored in `WEBHOOK_WAITING` under the subject of its time *bucket*
//! (`webhooks.waiting.<bucket, Unix ms>`), and each occupied bucket has one JetStream message
//! schedule (`webhooks.ticks.at.<bucket>`, `Nats-Schedule: @at <bucket time>`) that fires a
//! tick onto `webhooks.ticks.due` when the bucket is due. The shared `dispatcher-ticks`
//! consumer hands each tick to one replica, which reads the bucket with a short-lived consumer,
//! moves every task on (to its lane's ready stream, or to a finer bucket) and purges what it
//! moved. So the deliveries consumers only ever see due work, and a waiting task costs disk,
//! not a slot of `max_ack_pending` (ARCHITECTURE.md records the measurements behind this).
//!
//! Buckets are fine (250 ms) for the next five minutes, a minute wide up to six hours ahead,
//! and an hour wide beyond; a coarse bucket fires *before* its tasks are due and re-files them
//! into finer ones. So the number of subjects (and schedules) stays under about 1,600 however
//! many deliveries wait, a task moves at most three times, and it is handed to its lane within
//! a fine bucket (250 ms) of its due time.

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, pull},
        message::PublishMessage,
        stream::LastRawMessageErrorKind,
    },
};
use futures::StreamExt as _;
use prost::Message as _;
use proto::{subjects, v1::Delivery};

use crate::{
    fanout::ack,
    waiting_budget::{OverBudget, WaitingBudget},
};

/// Whether `error` says there was no room: the stream (or the lane) full, or the tenant over
/// its waiting budget.
pub fn no_room(error: &anyhow::Error) -> bool {
    common::nats::is_full(error) || error.is::<OverBudget>()
}

/// Waits shorter than this are not filed: the task goes to its lane now and the deliverer
/// sleeps the rest (bounded by its in-flight permits).
pub const SHORT_WAIT: Duration = Duration::from_millis(1000);
const FINE_MS: u64 = 250;
const FINE_HORIZON_MS: u64 = 5 * 60 * 1000;
const MINUTE_MS: u64 = 60 * 1000;
const MINUTE_HORIZON_MS: u64 = 6 * 3600 * 1000;
const HOUR_MS: u64 = 3600 * 1000;
/// How long a due task whose lane is full waits before it is offered again.
pub const FULL_LANE_WAIT: Duration = Duration::from_secs(5);
/// Tasks published before their PubAcks are awaited, when a bucket is moved.
const MOVE_CHUNK: usize = 256;

/// The bucket a task due at `due_ms` is filed under at `now_ms`, or `None` when it is due
/// within [`SHORT_WAIT`] and goes to its lane at once. A fine bucket is the due time rounded
/// up (never early); a coarse one is rounded down, so it fires before its tasks are due and
/// re-files them; it is used only when it is at least [`SHORT_WAIT`] away.
pub fn bucket_for(due_ms: u64, now_ms: u64) -> Option<u64> {
    let short = SHORT_WAIT.as_millis() as u64;
    let wait = due_ms.saturating_sub(now_ms);
    if wait < short {
        return None;
    }
    for (horizon, width) in [(MINUTE_HORIZON_MS, HOUR_MS), (FINE_HORIZON_MS, MINUTE_MS)] {
        if wait > horizon {
            let bucket = due_ms / width * width;
            if bucket >= now_ms + short {
                return Some(bucket);
            }
        }
    }
    Some(due_ms.div_ceil(FINE_MS) * FINE_MS)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn due_ms(task: &Delivery) -> u64 {
    task.not_before
        .as_ref()
        .map(|t| unix_ms(proto::time::to_system(t)))
        .unwrap_or(0)
}

/// The RFC 3339 time of a bucket, as `@at` wants it.
fn bucket_time(bucket_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(bucket_ms);
    proto::time::format_rfc3339(&proto::time::from_system(t))
}

/// Files tasks where they wait, and moves due buckets on.
pub struct Waiting {
    js: jetstream::Context,
    /// Buckets whose tick this replica has scheduled and that are not yet due: their tick need
    /// not be published again. One entry per bucket, never per task; pruned as buckets pass.
    ticks: Mutex<BTreeSet<u64>>,
    budget: WaitingBudget,
}

/// Whether filing a task asks its tenant's budget first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filing {
    /// A task new to the waiting room: a retry, a set-aside, a pending dead letter.
    New,
    /// A task moved on from a due bucket: counted already.
    Moved,
}

impl Waiting {
    /// `budget`: tasks one tenant may have waiting (0: no budget); each task refused for it
    /// is counted in `over_budget`.
    pub fn new(
        js: jetstream::Context,
        budget: u64,
        over_budget: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            budget: WaitingBudget::new(js.clone(), budget, over_budget),
            js,
            ticks: Mutex::new(BTreeSet::new()),
        }
    }

    /// Stores `task` where it waits for its `not_before` (or in its lane, when that is near)
    /// under `msg_id`, and returns once JetStream has it. Refused with
    /// [`OverBudget`](crate::waiting_budget::OverBudget) when it would wait and its tenant has
    /// its whole budget waiting already (see [`no_room`]).
    pub async fn put(
        &self,
        task: &Delivery,
        headers: Option<HeaderMap>,
        msg_id: String,
    ) -> anyhow::Result<()> {
        self.file(task, headers, msg_id, Filing::New).await
    }

    async fn file(
        &self,
        task: &Delivery,
        headers: Option<HeaderMap>,
        msg_id: String,
        filing: Filing,
    ) -> anyhow::Result<()> {
        let now = unix_ms(SystemTime::now());
        let Some(bucket) = bucket_for(due_ms(task), now) else {
            let lane =
                subjects::task_subject(task.origin(), &task.tenant_id, &task.subscription_id);
            return self.store(lane, task, headers, msg_id).await;
        };
        if filing == Filing::Moved {
            return self
                .store_in_bucket(task, headers, msg_id, bucket, now)
                .await;
        }
        self.budget.reserve(&task.tenant_id).await?;
        let stored = self
            .store_in_bucket(task, headers, msg_id, bucket, now)
            .await;
        self.budget.settle(&task.tenant_id, stored.is_ok());
        stored
    }

    async fn store_in_bucket(
        &self,
        task: &Delivery,
        headers: Option<HeaderMap>,
        msg_id: String,
        bucket: u64,
        now: u64,
    ) -> anyhow::Result<()> {
        self.ensure_tick(bucket, now).await?;
        let subject = subjects::waiting_subject(bucket, &task.tenant_id);
        self.store(subject, task, headers, msg_id).await
    }

    async fn store(
        &self,
        subject: String,
        task: &Delivery,
        headers: Option<HeaderMap>,
        msg_id: String,
    ) -> anyhow::Result<()> {
        let mut publish = PublishMessage::build()
            .payload(task.encode_to_vec().into())
            .message_id(msg_id);
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        self.js.send_publish(subject, publish).await?.await?;
        Ok(())
    }

    /// Schedules the tick of `bucket` unless this replica already has. Another replica may
    /// schedule it too: one schedule per subject, so that only moves it.
    async fn ensure_tick(&self, bucket: u64, now: u64) -> anyhow::Result<()> {
        {
            let mut ticks = self.ticks.lock().unwrap_or_else(|p| p.into_inner());
            // Buckets that are due (or nearly) are forgotten: a task is never filed into one,
            // and if the clock here lags the server's, scheduling again is the safe side.
            *ticks = ticks.split_off(&(now + SHORT_WAIT.as_millis() as u64));
            if ticks.contains(&bucket) {
                return Ok(());
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            subjects::HEADER_SCHEDULE,
            format!("@at {}", bucket_time(bucket)).as_str(),
        );
        headers.insert(
            subjects::HEADER_SCHEDULE_TARGET,
            subjects::TICKS_DUE_SUBJECT,
        );
        self.js
            .publish_with_headers(
                subjects::tick_subject(bucket),
                headers,
                bucket.to_string().into(),
            )
            .await?
            .await?;
        self.ticks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bucket);
        Ok(())
    }

    /// Moves every task of a due `bucket` on: to its lane, or to a finer bucket. Returns how
    /// many were moved. Purges only what it read, so a task filed meanwhile stays for the
    /// bucket's next tick. Moving twice (a tick redelivered) is harmless: the moves carry the
    /// waiting sequence as their message id.
    pub async fn drain(&self, bucket: u64, progress: &jetstream::Message) -> anyhow::Result<usize> {
        let filters = subjects::waiting_bucket_subjects(bucket);
        let stream = self.js.get_stream(subjects::WAITING_STREAM).await?;
        // The stream leader says where the bucket ends. Not the new consumer's pending count:
        // an ephemeral consumer may sit on a replica that lags (a node just lost or back), and
        // a count short of the end would purge nothing past it yet ack the tick, stranding the
        // rest with no tick to come.
        let mut last = 0;
        for filter in &filters {
            match stream.get_last_raw_message_by_subject(filter).await {
                Ok(message) => last = last.max(message.sequence),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if last == 0 {
            return Ok(0);
        }
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                filter_subjects: filters.to_vec(),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let mut moved = 0usize;
        let mut last_sequence = 0u64;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(MOVE_CHUNK)
            .messages()
            .await?;
        let mut pending = Vec::with_capacity(MOVE_CHUNK);
        while last_sequence < last {
            let Some(message) =
                tokio::time::timeout(Duration::from_secs(10), messages.next()).await?
            else {
                anyhow::bail!("bucket consumer ended at {last_sequence} of {last}");
            };
            let message = message?;
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            last_sequence = last_sequence.max(sequence);
            let task = match Delivery::decode(message.payload.clone()) {
                Ok(task) => task,
                Err(error) => {
                    let reason = format!("not a protobuf Delivery: {error}");
                    crate::rejects::set_aside(&self.js, "waiting", &message, &reason).await;
                    moved += 1;
                    continue;
                }
            };
            let headers = message.headers.clone();
            pending.push(async move { self.move_on(&task, headers, sequence).await });
            if pending.len() == MOVE_CHUNK {
                let results = futures::future::join_all(pending.drain(..)).await;
                for r in results {
                    r?;
                    moved += 1;
                }
                ack(progress, AckKind::Progress).await;
            }
        }
        for r in futures::future::join_all(pending.drain(..)).await {
            r?;
            moved += 1;
        }
        drop(messages);
        if last_sequence > 0 {
            for filter in filters {
                stream
                    .purge()
                    .filter(filter)
                    .sequence(last_sequence + 1)
                    .await?;
            }
        }
        if let Err(error) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %error, "bucket consumer not deleted; it expires by itself");
        }
        Ok(moved)
    }

    /// Moves a due task (stored at `sequence` of its bucket) on: to its lane, or, when its
    /// lane refuses it as full (its subscription over its budget, or the whole stream), back
    /// into the waiting room for [`FULL_LANE_WAIT`]; so a full lane never holds up the other
    /// tasks of the bucket, most of them other tenants'.
    async fn move_on(
        &self,
        task: &Delivery,
        headers: Option<HeaderMap>,
        sequence: u64,
    ) -> anyhow::Result<()> {
        let id = subjects::wait_msg_id(sequence);
        match self
            .file(task, headers.clone(), id.clone(), Filing::Moved)
            .await
        {
            Err(error)
                if common::nats::is_full(&error)
                    && bucket_for(due_ms(task), unix_ms(SystemTime::now())).is_none() =>
            {
                tracing::debug!(error = %error, subscription_id = %task.subscription_id, "lane full, the task waits again");
                let later = Delivery {
                    not_before: Some(proto::time::from_system(SystemTime::now() + FULL_LANE_WAIT)),
                    ..task.clone()
                };
                self.file(&later, headers, id, Filing::Moved).await
            }
            moved => moved,
        }
    }
}

/// The ticks consumer's handler: one fired tick, one bucket moved on.
pub struct Ticks {
    pub waiting: std::sync::Arc<Waiting>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl crate::pull::Handler for Ticks {
    async fn handle(
        &self,
        message: jetstream::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
        _charge: Option<crate::budget::Charge>,
    ) {
        let bucket = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let Some(bucket) = bucket else {
            tracing::warn!("a tick without a bucket, dropped");
            return ack(&message, AckKind::Term).await;
        };
        match self.waiting.drain(bucket, &message).await {
            Ok(moved) => {
                self.metrics.waiting_moved.inc_by(moved as u64);
                ack(&message, AckKind::Ack).await;
            }
            Err(error) => {
                tracing::warn!(bucket, error = %error, "bucket not moved on, tick handed back");
                ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_near_time_is_not_filed_and_a_fine_bucket_is_never_early() {
        assert_eq!(bucket_for(NOW + 999, NOW), None);
        assert_eq!(bucket_for(NOW - 5000, NOW), None);
        for wait in [1000, 1001, 4999, 5_000, 299_999, 300_000] {
            let bucket = bucket_for(NOW + wait, NOW).unwrap();
            assert!(bucket >= NOW + wait, "{wait}");
            assert!(bucket < NOW + wait + FINE_MS, "{wait}");
            assert_eq!(bucket % FINE_MS, 0);
        }
    }

    #[test]
    fn far_times_share_coarse_buckets_that_fire_before_them() {
        let due = NOW + 2 * 3600 * 1000 + 12_345;
        let bucket = bucket_for(due, NOW).unwrap();
        assert_eq!(bucket % MINUTE_MS, 0);
        assert!(bucket <= due && due - bucket < MINUTE_MS);
        let due = NOW + 20 * 3600 * 1000 + 30 * 60 * 1000 + 12_345;
        let bucket = bucket_for(due, NOW).unwrap();
        assert_eq!(bucket % HOUR_MS, 0);
        assert!(bucket <= due && due - bucket < HOUR_MS);
        // Re-filed when that bucket fires: then a minute bucket, then a fine one.
        let minute = bucket_for(due, bucket).unwrap();
        assert!(minute > bucket && minute <= due && due - minute < MINUTE_MS);
        let fine = bucket_for(due, minute).unwrap();
        assert!(fine >= due && fine - due < FINE_MS);
        assert_eq!(bucket_for(due, fine), None);
    }

    #[test]
    fn the_number_of_buckets_is_bounded_whatever_waits() {
        let mut buckets = BTreeSet::new();
        // Every due time over four days, one a second.
        for s in 0..4 * 24 * 3600u64 {
            buckets.insert(bucket_for(NOW + s * 1000 + 1000, NOW).unwrap());
        }
        assert!(buckets.len() < 1_700, "{}", buckets.len());
    }
}
