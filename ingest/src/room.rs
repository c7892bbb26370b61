//! The events stream is a retention log, not a gate.
//!
//! `WEBHOOK_EVENTS` keeps events for `WEBHOOKS_EVENT_RETENTION` under a byte cap
//! (`WEBHOOKS_EVENTS_MAX_BYTES`), and refuses a new event when full (`discard: new`). Left at
//! that, a full stream refused every event until its oldest aged out: a week of `503`s after
//! half an hour at 1,000 events/s. Here room is made instead, by purging the oldest events the
//! fan-out has settled, those at or below its consumer's ack floor: the feed's and replay's
//! reach shrinks (`webhooks_events_retained_seconds` says how far back it goes), and an event
//! not yet fanned out is never dropped. So ingest refuses an event only when the events not yet
//! fanned out fill the stream themselves ([`Room::Backlogged`]), and a healthy system accepts
//! events for ever.
//!
//! Why a purge and not `discard: old`: JetStream drops the oldest message at its cap whether a
//! consumer has it or not, so an event accepted with a `202` but not yet fanned out would be
//! lost. A purge up to the ack floor is JetStream's own, bounded by what the fan-out settled.
//!
//! Room is made in two places: [`keep`] runs every second in each ingest replica and purges
//! down to [`LOW_WATER`] once the stream is past [`HIGH_WATER`], so publishes rarely meet a full
//! stream; and a publish that is refused as full asks [`Room::make`] and tries once more.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, context::ConsumerInfoErrorKind};
use prometheus_client::metrics::gauge::Gauge;
use proto::subjects;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Fullness past which [`keep`] makes room.
pub const HIGH_WATER: f64 = 0.9;
/// Fullness room is made down to.
pub const LOW_WATER: f64 = 0.8;
/// How often [`keep`] looks.
const KEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether there is room for another event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Under [`LOW_WATER`], or brought under it (`purged` settled events removed for it).
    Made { purged: u64 },
    /// The events not yet fanned out fill the stream: nothing may be removed to make room.
    Backlogged,
}

/// What the stream holds, and how much of it the fan-out has settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub cap: u64,
    pub bytes: u64,
    pub messages: u64,
    pub first: u64,
    pub last: u64,
    /// The fan-out consumer's ack floor: every event at or below it is settled.
    pub floor: u64,
}

impl Fill {
    /// The sequence to purge up to (exclusive) to bring the stream down to `down_to` of its
    /// cap, never past the ack floor; `None` when it is there already.
    pub fn purge_to(&self, down_to: f64) -> Option<u64> {
        let target = (self.cap as f64 * down_to) as u64;
        if self.cap == 0 || self.bytes <= target {
            return None;
        }
        let average = (self.bytes / self.messages.max(1)).max(1);
        let to_remove = (self.bytes - target).div_ceil(average);
        Some((self.first + to_remove).min(self.floor + 1))
    }

    /// The share of the cap that events not yet fanned out take (estimated at the stream's
    /// average size).
    pub fn backlog_ratio(&self) -> f64 {
        if self.cap == 0 {
            return 0.0;
        }
        let unsettled = self
            .last
            .saturating_sub(self.floor.max(self.first.saturating_sub(1)));
        let average = self.bytes as f64 / self.messages.max(1) as f64;
        unsettled as f64 * average / self.cap as f64
    }
}

/// Makes room in the events stream; one at a time per replica.
pub struct Keeper {
    js: jetstream::Context,
    making: Mutex<()>,
    /// `webhooks_events_retained_seconds`: how far back the stream reaches.
    retained_seconds: Ratio,
    /// `webhooks_events_fanout_backlog_ratio`: events not yet fanned out, as a share of the cap.
    backlog_ratio: Ratio,
}

/// A gauge of a fraction (or seconds).
pub type Ratio = Gauge<f64, std::sync::atomic::AtomicU64>;

impl Keeper {
    /// Makes room in `js`'s events stream, reporting in the two gauges given.
    pub fn new(js: jetstream::Context, retained_seconds: Ratio, backlog_ratio: Ratio) -> Self {
        Self {
            js,
            making: Mutex::new(()),
            retained_seconds,
            backlog_ratio,
        }
    }

    /// What the stream holds now; the gauges follow.
    async fn fill(&self) -> anyhow::Result<Fill> {
        let stream = self.js.get_stream(subjects::EVENTS_STREAM).await?;
        let (config, state) = (&stream.cached_info().config, &stream.cached_info().state);
        let floor = match stream.consumer_info(subjects::FANOUT_CONSUMER).await {
            Ok(consumer) => consumer.ack_floor.stream_sequence,
            // No dispatcher has ever started: nothing is fanned out.
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        let fill = Fill {
            cap: config.max_bytes.max(0) as u64,
            bytes: state.bytes,
            messages: state.messages,
            first: state.first_sequence,
            last: state.last_sequence,
            floor,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let retained = if state.messages == 0 {
            0.0
        } else {
            ((now - state.first_timestamp.unix_timestamp_nanos()) as f64 / 1e9).max(0.0)
        };
        self.retained_seconds.set(retained);
        self.backlog_ratio.set(fill.backlog_ratio());
        Ok(fill)
    }

    /// Brings the stream under `down_to` of its cap by purging settled events, if it is over.
    pub async fn make(&self, down_to: f64) -> anyhow::Result<Room> {
        let _one = self.making.lock().await;
        let fill = self.fill().await?;
        let Some(to) = fill.purge_to(down_to) else {
            return Ok(Room::Made { purged: 0 });
        };
        if to <= fill.first {
            return Ok(Room::Backlogged);
        }
        let stream = self.js.get_stream_no_info(subjects::EVENTS_STREAM).await?;
        let purged = stream.purge().sequence(to).await?.purged;
        tracing::info!(
            purged,
            up_to = to,
            floor = fill.floor,
            "events already fanned out removed to make room"
        );
        Ok(Room::Made { purged })
    }
}

/// Every [`KEEP_EVERY`] until `token` is cancelled: room down to [`LOW_WATER`] once the stream
/// is past [`HIGH_WATER`], and the gauges kept current.
pub async fn keep(keeper: Arc<Keeper>, token: CancellationToken) {
    let mut every = tokio::time::interval(KEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = every.tick() => {}
        }
        let made = match keeper.fill().await {
            Ok(fill) if fill.purge_to(HIGH_WATER).is_some() => keeper.make(LOW_WATER).await,
            Ok(_) => continue,
            Err(error) => Err(error),
        };
        match made {
            Ok(Room::Backlogged) => {
                tracing::warn!("the events stream is full of events not yet fanned out")
            }
            Ok(Room::Made { .. }) => {}
            Err(error) => tracing::debug!(error = %format!("{error:#}"), "events stream not read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(bytes: u64, first: u64, last: u64, floor: u64) -> Fill {
        Fill {
            cap: 1000,
            bytes,
            messages: last - first + 1,
            first,
            last,
            floor,
        }
    }

    #[test]
    fn under_the_mark_nothing_is_removed() {
        assert_eq!(fill(800, 1, 80, 80).purge_to(LOW_WATER), None);
        assert_eq!(fill(500, 1, 50, 0).purge_to(HIGH_WATER), None);
    }

    #[test]
    fn the_oldest_settled_events_go_down_to_the_mark() {
        // 100 events of 10 bytes, all fanned out: 20 go to reach 80 %.
        assert_eq!(fill(1000, 1, 100, 100).purge_to(LOW_WATER), Some(21));
    }

    #[test]
    fn nothing_past_the_ack_floor_is_ever_removed() {
        // Only the first 5 are fanned out.
        assert_eq!(fill(1000, 1, 100, 5).purge_to(LOW_WATER), Some(6));
        // None is: the purge would remove nothing (`to` == `first`).
        assert_eq!(fill(1000, 11, 110, 10).purge_to(LOW_WATER), Some(11));
    }

    #[test]
    fn the_backlog_is_what_lies_past_the_floor() {
        assert!((fill(1000, 1, 100, 100).backlog_ratio() - 0.0).abs() < 1e-9);
        assert!((fill(1000, 1, 100, 50).backlog_ratio() - 0.5).abs() < 1e-9);
        // A floor below the first stored event counts from the first.
        assert!((fill(1000, 11, 110, 0).backlog_ratio() - 1.0).abs() < 1e-9);
    }
}
