//! Finding one event by its id (`GET /v1/events/{id}`, a single-event replay) without a
//! subject, key or in-memory entry per event.
//!
//! A subject carries no event id. Before issue 14 every event wrote a KV key, so a subject, and
//! nats-server kept about 1 KiB of memory per retained event (500,000 events: +458 MiB). Now:
//!
//! - **An id ingest assigned** (`evt_<ULID>`, minted just before the event was accepted) is
//!   found by its time: the ULID carries the millisecond it was made, so the tenant's events are
//!   read from just before it (`pages::scan` from a time, filtered by the tenant's subjects)
//!   until it is found or the events read were accepted well after it. Nothing is written.
//! - **Any other id** (a producer's own, or one derived from an `Idempotency-Key`, whose ULID
//!   time is a hash) gets an entry in `WEBHOOK_EVENT_IDS` under one of 64 subjects of its
//!   tenant (`webhooks.ids.<tenant>.<shard>`, the shard from the id's hash). A lookup reads
//!   that one subject. The server's per-subject state grows with tenants (64 each), never with
//!   events, and a lookup costs a sixty-fourth of the tenant's indexed events.
//!
//! Which way an event goes is decided by [`found_by_time`], the same test for writing and
//! reading. Entries expire with the events (the stream's max age is the retention). Events
//! indexed in the old KV bucket are still found there until they expire.
//!
//! The index is best-effort: if a write fails (logged by the caller), the event is still stored,
//! fanned out and listed in the feed, but not found by id. A repeated publish of the same event
//! (a producer's retry, answered `"duplicate": true`) writes the entry again and so repairs it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, message::PublishMessage, stream::DirectGetErrorKind};
use prost::Message as _;
use proto::{subjects, v1::Event};
use sha2::{Digest as _, Sha256};

use crate::pages::{self, Start};

/// The longest wait for one answer from JetStream.
const WAIT: Duration = Duration::from_secs(5);
/// An assigned id's ULID time is within this of its event's acceptance (both are read from
/// ingest's clock one after the other).
const MINTED_WITHIN_MS: i64 = 1_000;
/// How far the clock of the ingest replica that minted an id may be from the NATS server's.
const CLOCK_SKEW: Duration = Duration::from_secs(2);
/// Events read by time before giving up: a tenant's events in the few seconds around the id.
const MAX_READ_BY_TIME: usize = 50_000;
/// Entries of one index subject read before giving up.
const MAX_READ_BY_SHARD: usize = 1_000_000;

/// The millisecond an `evt_<ULID>` id was minted, when it parses as one.
fn minted_ms(event_id: &str) -> Option<i64> {
    let ulid = ulid::Ulid::from_string(event_id.strip_prefix("evt_")?).ok()?;
    i64::try_from(ulid.timestamp_ms()).ok()
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `event` is found by its time: its id is an `evt_<ULID>` minted within
/// [`MINTED_WITHIN_MS`] of its acceptance. Those are not indexed.
pub fn found_by_time(event: &Event) -> bool {
    let accepted = event
        .accepted_at
        .as_ref()
        .map(|t| unix_ms(proto::time::to_system(t)));
    match (minted_ms(&event.id), accepted) {
        (Some(minted), Some(accepted)) => (minted - accepted).abs() <= MINTED_WITHIN_MS,
        _ => false,
    }
}

/// The index shard of `event_id`.
pub fn shard(event_id: &str) -> u8 {
    Sha256::digest(event_id.as_bytes())[0] % subjects::EVENT_ID_SHARDS
}

/// An index entry: the sequence (8 bytes, big-endian), then the id.
fn entry(sequence: u64, event_id: &str) -> Vec<u8> {
    let mut entry = sequence.to_be_bytes().to_vec();
    entry.extend_from_slice(event_id.as_bytes());
    entry
}

/// The sequence of an entry for `event_id`; `None` for another id's or anything else.
fn sequence_of(entry: &[u8], event_id: &str) -> Option<u64> {
    let (sequence, id) = entry.split_at_checked(8)?;
    (id == event_id.as_bytes())
        .then(|| u64::from_be_bytes(sequence.try_into().unwrap_or_default()))
        .filter(|s| *s > 0)
}

/// Records that `event` (of its tenant) is at `sequence`, unless it is found by its time.
pub async fn record(js: &jetstream::Context, event: &Event, sequence: u64) -> anyhow::Result<()> {
    if found_by_time(event) {
        return Ok(());
    }
    let subject = subjects::event_id_subject(&event.tenant_id, shard(&event.id));
    // No message id: a repeat (a producer's retry) adds an entry naming the same sequence,
    // which a lookup never gets to, and deduplicating every entry cost the server a map entry
    // each for the dedupe window (scenario 2: 9,800 against 10,800 delivered/s with one).
    let publish = PublishMessage::build().payload(entry(sequence, &event.id).into());
    let stored = async { js.send_publish(subject, publish).await?.await };
    tokio::time::timeout(WAIT, stored)
        .await
        .context("timed out writing the event index")?
        .context("writing the event index")?;
    Ok(())
}

/// The event at `sequence` if it is `tenant`'s; `None` when it is gone or someone else's.
pub async fn read(
    js: &jetstream::Context,
    tenant: &str,
    sequence: u64,
) -> anyhow::Result<Option<Event>> {
    let stream = js
        .get_stream_no_info(subjects::EVENTS_STREAM)
        .await
        .context("opening the events stream")?;
    let message = match tokio::time::timeout(WAIT, stream.direct_get(sequence)).await {
        Err(_) => anyhow::bail!("timed out reading event {sequence}"),
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading an event")),
        Ok(Ok(message)) => message,
    };
    // The subject says whose it is; the payload must agree.
    let prefix = subjects::events_filter(tenant, None, None);
    if !message.subject.starts_with(prefix.trim_end_matches('>')) {
        return Ok(None);
    }
    let event = Event::decode(message.payload.as_ref())
        .with_context(|| format!("decoding event {sequence}"))?;
    Ok((event.tenant_id == tenant).then_some(event))
}

/// `tenant`'s event `event_id` by its time (see the module's notes); `None` when it is not
/// among the tenant's events accepted around the id's time. `publish_within` is how long after
/// its acceptance an event may still be stored (ingest's `publish_timeout`).
async fn by_time(
    js: &jetstream::Context,
    tenant: &str,
    event_id: &str,
    minted: i64,
    publish_within: Duration,
) -> anyhow::Result<Option<(u64, Event)>> {
    let slack = CLOCK_SKEW.as_millis() as i64 + MINTED_WITHIN_MS;
    let from = UNIX_EPOCH + Duration::from_millis((minted - slack).max(0) as u64);
    let until = minted + slack + publish_within.as_millis() as i64;
    let mut found = None;
    let filter = subjects::events_filter(tenant, None, None);
    pages::scan(
        js,
        subjects::EVENTS_STREAM,
        &filter,
        Start::Time(from),
        MAX_READ_BY_TIME,
        |sequence, payload| {
            let Ok(event) = Event::decode(payload.as_ref()) else {
                return true;
            };
            if event.id == event_id && event.tenant_id == tenant {
                found = Some((sequence, event));
                return false;
            }
            let accepted = event
                .accepted_at
                .as_ref()
                .map(|t| unix_ms(proto::time::to_system(t)));
            accepted.is_none_or(|a| a <= until)
        },
    )
    .await?;
    Ok(found)
}

/// The sequence of `tenant`'s event `event_id` in its index shard, if indexed.
async fn by_index(
    js: &jetstream::Context,
    tenant: &str,
    event_id: &str,
) -> anyhow::Result<Option<u64>> {
    let subject = subjects::event_id_subject(tenant, shard(event_id));
    let mut found = None;
    pages::scan(
        js,
        subjects::EVENT_IDS_STREAM,
        &subject,
        Start::After(0),
        MAX_READ_BY_SHARD,
        |_, payload| {
            found = sequence_of(&payload, event_id);
            found.is_none()
        },
    )
    .await?;
    Ok(found)
}

/// The sequence of `tenant`'s event `event_id` in the KV bucket of earlier versions.
async fn by_legacy_key(
    legacy: &kv::Store,
    tenant: &str,
    event_id: &str,
) -> anyhow::Result<Option<u64>> {
    let key = subjects::event_index_key(tenant, event_id);
    let value = tokio::time::timeout(WAIT, legacy.get(key))
        .await
        .context("timed out reading the event index")?
        .context("reading the event index")?;
    Ok(value
        .as_deref()
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
        .filter(|s| *s > 0))
}

/// `tenant`'s event `event_id` with its sequence; `None` when unknown, expired, or another
/// tenant's.
pub async fn load(
    js: &jetstream::Context,
    legacy: &kv::Store,
    tenant: &str,
    event_id: &str,
    publish_within: Duration,
) -> anyhow::Result<Option<(u64, Event)>> {
    if !proto::validate::is_valid_id(event_id) {
        return Ok(None);
    }
    if let Some(minted) = minted_ms(event_id) {
        // Only a time the events stream can still hold is worth reading from (a hashed ULID's
        // time is anywhere in 8,900 years).
        let now = unix_ms(SystemTime::now());
        let plausible =
            minted <= now + CLOCK_SKEW.as_millis() as i64 && minted >= now - 400 * 24 * 3600 * 1000;
        if plausible
            && let Some(found) = by_time(js, tenant, event_id, minted, publish_within).await?
        {
            return Ok(Some(found));
        }
    }
    let sequence = match by_index(js, tenant, event_id).await? {
        Some(sequence) => Some(sequence),
        None => by_legacy_key(legacy, tenant, event_id).await?,
    };
    let Some(sequence) = sequence else {
        return Ok(None);
    };
    Ok(read(js, tenant, sequence)
        .await?
        .filter(|event| event.id == event_id)
        .map(|event| (sequence, event)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(id: &str, accepted_ms: u64) -> Event {
        Event {
            id: id.into(),
            tenant_id: "acme".into(),
            accepted_at: Some(proto::time::from_system(
                UNIX_EPOCH + Duration::from_millis(accepted_ms),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn an_id_minted_at_acceptance_is_found_by_its_time_and_not_indexed() {
        let now = SystemTime::now();
        let id = format!("evt_{}", ulid::Ulid::from_datetime(now));
        assert!(found_by_time(&event(&id, unix_ms(now) as u64 + 3)));
    }

    #[test]
    fn a_producers_id_or_a_hashed_ulid_is_indexed() {
        let now = unix_ms(SystemTime::now()) as u64;
        assert!(!found_by_time(&event("order-7781", now)));
        // A ULID made long before its event was accepted (a producer's, or a hash).
        let old = UNIX_EPOCH + Duration::from_millis(now - 10_000);
        let id = format!("evt_{}", ulid::Ulid::from_datetime(old));
        assert!(!found_by_time(&event(&id, now)));
    }

    #[test]
    fn an_entry_names_its_id_and_sequence() {
        let e = entry(0x0102_0304_0506_0708, "order-7781");
        assert_eq!(sequence_of(&e, "order-7781"), Some(0x0102_0304_0506_0708));
        assert_eq!(sequence_of(&e, "order-7782"), None);
        assert_eq!(sequence_of(&e[..5], "order-7781"), None);
        assert_eq!(sequence_of(&entry(0, "x"), "x"), None);
    }

    #[test]
    fn shards_spread_and_stay_in_range() {
        let shards: std::collections::HashSet<u8> =
            (0..1000).map(|n| shard(&format!("order-{n}"))).collect();
        assert!(shards.iter().all(|s| *s < subjects::EVENT_ID_SHARDS));
        assert!(shards.len() > 60, "{}", shards.len());
    }
}
