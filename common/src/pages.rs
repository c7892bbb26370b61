//! Reading one page of a stream, filtered by subject: the lists of dead letters and attempts.
//!
//! Each read creates an ephemeral ordered consumer (no acks, memory storage, one replica) that
//! starts at a sequence or a time, pulls at most one page's worth of messages per request and is
//! deleted when the page is read; so a page costs its own size, never the stream's. An empty
//! range answers at once: the consumer's pending count at creation says there is nothing to
//! wait for. Every wait is bounded.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use bytes::Bytes;
use futures::StreamExt as _;

/// The longest wait for any single answer from the server.
const WAIT: Duration = Duration::from_secs(5);
/// The most messages one pull request asks for.
const MAX_BATCH: usize = 1000;

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this stream sequence; `After(0)` reads from the beginning. A list cursor is the
    /// sequence of the last item of the previous page.
    After(u64),
    /// At the first message stored at or after this time.
    Time(SystemTime),
}

/// One page: `(stream sequence, payload)` in stream order, and whether more messages matched
/// the filter after the last one.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<(u64, Bytes)>,
    pub more: bool,
}

/// What a [`scan`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Messages passed to the visitor.
    pub count: usize,
    /// The stream sequence of the last of them.
    pub last_sequence: Option<u64>,
    /// Whether more messages matched the filter after the last one.
    pub more: bool,
}

/// Reads up to `limit` messages of `stream` whose subject matches `filter`, from `start`.
pub async fn read(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: Start,
    limit: usize,
) -> anyhow::Result<Page> {
    let mut items = Vec::with_capacity(limit.min(MAX_BATCH));
    let scanned = scan(js, stream, filter, start, limit, |sequence, payload| {
        items.push((sequence, payload));
        true
    })
    .await?;
    Ok(Page {
        items,
        more: scanned.more,
    })
}

/// Passes up to `max` messages of `stream` whose subject matches `filter`, from `start`, to
/// `visit` in stream order; stops early when `visit` answers `false`.
pub async fn scan<F>(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: Start,
    max: usize,
    mut visit: F,
) -> anyhow::Result<Scanned>
where
    F: FnMut(u64, Bytes) -> bool,
{
    let mut scanned = Scanned::default();
    if max == 0 {
        return Ok(scanned);
    }
    let deliver_policy = match start {
        Start::After(0) => DeliverPolicy::All,
        Start::After(sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: sequence.saturating_add(1),
        },
        Start::Time(time) => DeliverPolicy::ByStartTime {
            start_time: time.into(),
        },
    };
    let handle = js
        .get_stream_no_info(stream)
        .await
        .with_context(|| format!("opening stream {stream}"))?;
    let config = OrderedConfig {
        filter_subject: filter.to_owned(),
        deliver_policy,
        max_batch: i64::try_from(max.min(MAX_BATCH)).unwrap_or(1),
        max_expires: WAIT,
        ..Default::default()
    };
    let consumer = tokio::time::timeout(WAIT, handle.create_consumer(config))
        .await
        .with_context(|| format!("timed out creating a reader on {stream}"))?
        .with_context(|| format!("creating a reader on {stream}"))?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let result = if pending == 0 {
        Ok(scanned)
    } else {
        let probe = consumer.clone();
        match consumer.messages().await {
            Ok(mut messages) => loop {
                match tokio::time::timeout(WAIT, messages.next()).await {
                    Ok(Some(Ok(message))) => {
                        let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
                        let (sequence, left) = (info.stream_sequence, info.pending);
                        scanned.count += 1;
                        scanned.last_sequence = Some(sequence);
                        let go_on = visit(sequence, message.message.payload.clone());
                        scanned.more = left > 0;
                        if left == 0 || !go_on || scanned.count >= max {
                            break Ok(scanned);
                        }
                    }
                    Ok(Some(Err(e))) => {
                        break Err(anyhow::Error::new(e).context(format!("reading {stream}")));
                    }
                    Ok(None) => break Ok(scanned),
                    // Messages counted at creation may have been deleted since (a redriven
                    // dead letter): ask whether anything is still pending before failing.
                    Err(_) => match tokio::time::timeout(WAIT, probe.get_info()).await {
                        Ok(Ok(info)) if info.num_pending == 0 => {
                            scanned.more = false;
                            break Ok(scanned);
                        }
                        _ => break Err(anyhow::anyhow!("timed out reading {stream}")),
                    },
                }
            },
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {stream}"))),
        }
    };
    // The consumer would expire on its own after 30 s of inactivity; deleting it now keeps
    // many reads from piling up on the server.
    tokio::spawn(async move {
        if let Err(error) = handle.delete_consumer(&name).await {
            tracing::debug!(%error, consumer = %name, "deleting a page reader failed");
        }
    });
    result
}
