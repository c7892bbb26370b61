//! The event-id index: `<tenant>.<event id>` → the event's sequence in the events stream.
//!
//! A subject carries no event id, so finding one event (`GET /v1/events/{id}`, a single-event
//! replay) needs this index. Ingest writes an entry after the PubAck and before answering `202`,
//! so a lookup right after the answer finds the event. The bucket's max age is the events'
//! retention, so entries expire with their events.
//!
//! The index is best-effort: if a write fails (logged by the caller), the event is still
//! stored, fanned out and listed in the feed (`GET /v1/events`), but not found by id. A repeated
//! publish of the same event (a producer's retry, answered `"duplicate": true`) writes the
//! entry again and so repairs it.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream::DirectGetErrorKind};
use bytes::Bytes;
use prost::Message as _;
use proto::{subjects, v1::Event};

/// The longest wait for one answer from JetStream.
const WAIT: Duration = Duration::from_secs(5);

/// The stored value of a sequence: 8 bytes, big-endian.
pub fn encode(sequence: u64) -> Bytes {
    Bytes::copy_from_slice(&sequence.to_be_bytes())
}

/// The sequence of a stored value; `None` for anything that is not one.
pub fn decode(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value)
        .ok()
        .map(u64::from_be_bytes)
        .filter(|s| *s > 0)
}

/// Records that `tenant`'s event `event_id` is at `sequence`.
pub async fn record(
    index: &kv::Store,
    tenant: &str,
    event_id: &str,
    sequence: u64,
) -> anyhow::Result<()> {
    let key = subjects::event_index_key(tenant, event_id);
    tokio::time::timeout(WAIT, index.put(&key, encode(sequence)))
        .await
        .context("timed out writing the event index")?
        .context("writing the event index")?;
    Ok(())
}

/// The sequence of `tenant`'s event `event_id`, if indexed.
pub async fn lookup(
    index: &kv::Store,
    tenant: &str,
    event_id: &str,
) -> anyhow::Result<Option<u64>> {
    if !proto::validate::is_valid_id(event_id) {
        return Ok(None);
    }
    let key = subjects::event_index_key(tenant, event_id);
    let value = tokio::time::timeout(WAIT, index.get(key))
        .await
        .context("timed out reading the event index")?
        .context("reading the event index")?;
    Ok(value.as_deref().and_then(decode))
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

/// `tenant`'s event `event_id` with its sequence; `None` when unknown, expired, or another
/// tenant's.
pub async fn load(
    js: &jetstream::Context,
    index: &kv::Store,
    tenant: &str,
    event_id: &str,
) -> anyhow::Result<Option<(u64, Event)>> {
    let Some(sequence) = lookup(index, tenant, event_id).await? else {
        return Ok(None);
    };
    Ok(read(js, tenant, sequence)
        .await?
        .filter(|event| event.id == event_id)
        .map(|event| (sequence, event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_round_trips_through_eight_big_endian_bytes() {
        let bytes = encode(0x0102_0304_0506_0708);
        assert_eq!(bytes.as_ref(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode(&bytes), Some(0x0102_0304_0506_0708));
    }

    #[test]
    fn anything_else_is_no_sequence() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"12345"), None);
        assert_eq!(decode(&encode(0)), None);
    }
}
