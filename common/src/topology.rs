//! The JetStream streams and KV buckets, created or updated idempotently at start.
//!
//! Every stream has a byte cap as well as an age, so a small disk never fills. The caps scale
//! with `WEBHOOKS_EVENTS_MAX_BYTES` (default 1 GiB): the events, deliveries, replays, dead-letter
//! and attempt streams get that much each, the rejects stream a quarter, the event index half,
//! and each config bucket 256 MiB, about 6.5 times the setting in all. JetStream reserves a
//! stream's cap when the stream is created, so the server's storage limit must have room for it. Where dropping
//! the oldest data would lose work that is not finished (events not yet fanned out, queued
//! deliveries, dead letters), a full stream refuses new messages instead: the producer gets a
//! `503` and nothing accepted is ever dropped. Only the attempt log discards its oldest records.
//!
//! The deliveries, replays and dead-letter streams are shared by every tenant, and their
//! subjects end in `<tenant>.<subscription>`, so JetStream's per-subject limit is a budget per
//! subscription (`WEBHOOKS_MAX_QUEUED_PER_SUBSCRIPTION`, with `discard_new_per_subject`): one
//! endpoint's backlog or dead letters are refused once over it, and every other subscription
//! still has room. What a refusal does is the dispatcher's: a task the fan-out cannot queue is
//! tried again and then dead-lettered as `system_error`, a dead letter waits in the waiting
//! room until there is room (`dead_letter`), a due task stays in the waiting room until its
//! lane takes it.

use std::time::Duration;

use async_nats::jetstream::{
    self, kv,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use proto::subjects;

use crate::config::SharedSettings;

/// The KV buckets every service needs.
#[derive(Clone)]
pub struct Stores {
    pub subscriptions: kv::Store,
    pub api_keys: kv::Store,
    pub health: kv::Store,
    /// Fan-outs that settled only some matches (see `subjects::FANOUT_PROGRESS_BUCKET`).
    pub fanout_progress: kv::Store,
    /// Event id → stream sequence, for `GET /v1/events/{id}` and single-event replay.
    pub event_index: kv::Store,
}

const MIB: i64 = 1024 * 1024;

/// Creates (or brings up to date) every stream and bucket.
pub async fn ensure(js: &jetstream::Context, s: &SharedSettings) -> anyhow::Result<Stores> {
    let replicas = s.stream_replicas;
    let streams = [
        Config {
            name: subjects::EVENTS_STREAM.into(),
            description: Some("accepted events: fan-out source, replay, feed".into()),
            subjects: vec![subjects::EVENTS_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_age: s.event_retention,
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::New,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
        // The event-id index of ids not found by their time (`event_index`): 64 subjects a
        // tenant, entries of about 50 bytes expiring with the events; discard old, because a
        // lost entry costs only a lookup by id of an event about to expire.
        Config {
            name: subjects::EVENT_IDS_STREAM.into(),
            description: Some("event id -> sequence, for ids not found by their time".into()),
            subjects: vec![subjects::EVENT_IDS_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_age: s.event_retention,
            max_bytes: (s.events_max_bytes / 4).max(16 * MIB),
            discard: DiscardPolicy::Old,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: subjects::DELIVERIES_STREAM.into(),
            description: Some("one task per (event, subscription) until acked".into()),
            subjects: vec![subjects::DELIVERIES_SUBJECTS.into()],
            retention: RetentionPolicy::WorkQueue,
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::New,
            max_messages_per_subject: s.max_queued_per_subscription,
            discard_new_per_subject: true,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: subjects::REPLAYS_STREAM.into(),
            description: Some(
                "replayed and redriven delivery tasks, a lane apart from live ones".into(),
            ),
            subjects: vec![subjects::REPLAYS_SUBJECTS.into()],
            retention: RetentionPolicy::WorkQueue,
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::New,
            max_messages_per_subject: s.max_queued_per_subscription,
            discard_new_per_subject: true,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        // Deliveries waiting for their time, in per-bucket subjects. A stream of its own, so a
        // full deliveries lane never leaves a retry without room; a limits stream read by a
        // short-lived consumer per due bucket and purged up to what was moved.
        Config {
            name: subjects::WAITING_STREAM.into(),
            description: Some("deliveries waiting for their time, one subject per bucket".into()),
            subjects: vec![subjects::WAITING_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::New,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        // The waiting room's alarm clocks: one message schedule per occupied bucket. Small
        // (a bucket is a few bytes), and JetStream requires schedules to discard old.
        Config {
            name: subjects::TICKS_STREAM.into(),
            description: Some(
                "one schedule per occupied waiting bucket, and the fired ticks".into(),
            ),
            subjects: vec![subjects::TICKS_SUBJECTS.into()],
            retention: RetentionPolicy::WorkQueue,
            max_bytes: 64 * MIB,
            discard: DiscardPolicy::Old,
            allow_message_schedules: true,
            allow_rollup: true,
            duplicate_window: s.dedupe_window,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: subjects::DLQ_STREAM.into(),
            description: Some("deliveries that never succeeded, for inspection and redrive".into()),
            subjects: vec![subjects::DLQ_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::New,
            max_messages_per_subject: s.max_queued_per_subscription,
            discard_new_per_subject: true,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
        Config {
            name: subjects::REJECTS_STREAM.into(),
            description: Some("messages set aside: not what their subject promises".into()),
            subjects: vec![subjects::REJECTS_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: (s.events_max_bytes / 4).max(16 * MIB),
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: subjects::ATTEMPTS_STREAM.into(),
            description: Some("delivery attempt log".into()),
            subjects: vec![subjects::ATTEMPTS_SUBJECTS.into()],
            retention: RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: s.events_max_bytes,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        patiently(&format!("creating stream {name}"), || {
            js.create_or_update_stream(config.clone())
        })
        .await?;
    }
    let subscriptions = bucket(js, subjects::SUBSCRIPTIONS_BUCKET, replicas).await?;
    let api_keys = bucket(js, subjects::API_KEYS_BUCKET, replicas).await?;
    let health = bucket(js, subjects::HEALTH_BUCKET, replicas).await?;
    let event_index = event_index_bucket(js, s).await?;
    let progress = kv::Config {
        bucket: subjects::FANOUT_PROGRESS_BUCKET.into(),
        description: "settled matches of fan-outs handed back after a partial failure".into(),
        history: 1,
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 64 * MIB,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let fanout_progress = patiently(
        &format!("creating kv bucket {}", subjects::FANOUT_PROGRESS_BUCKET),
        || js.create_or_update_key_value(progress.clone()),
    )
    .await?;
    Ok(Stores {
        fanout_progress,
        subscriptions,
        api_keys,
        health,
        event_index,
    })
}

/// The event-id index of earlier versions, one key per event: no longer written, still read
/// until its entries expire with their events (see `event_index`). Capped at a quarter of the
/// events stream's bytes, the other quarter of what it had going to `WEBHOOK_EVENT_IDS`.
async fn event_index_bucket(
    js: &jetstream::Context,
    s: &SharedSettings,
) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: subjects::EVENT_INDEX_BUCKET.into(),
        description: "event id -> sequence in the events stream".into(),
        history: 1,
        max_age: s.event_retention,
        max_bytes: (s.events_max_bytes / 4).max(16 * MIB),
        storage: StorageType::File,
        num_replicas: s.stream_replicas,
        ..Default::default()
    };
    patiently(
        &format!("creating kv bucket {}", subjects::EVENT_INDEX_BUCKET),
        || js.create_or_update_key_value(config.clone()),
    )
    .await
}

/// A bucket of records kept by key (subscriptions, API keys, failing-since), with per-message
/// TTLs allowed, so a deleted key's marker can expire (`SharedSettings::delete_marker_ttl`).
/// A bucket created by an earlier version is given that permission (nats-server ≥ 2.11).
async fn bucket(js: &jetstream::Context, name: &str, replicas: usize) -> anyhow::Result<kv::Store> {
    let config = kv::Config {
        bucket: name.into(),
        history: 1,
        max_bytes: 256 * MIB,
        storage: StorageType::File,
        num_replicas: replicas,
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let store = match js.get_key_value(name).await {
        Ok(store) => store,
        Err(_) => {
            return patiently(&format!("creating kv bucket {name}"), || {
                js.create_or_update_key_value(config.clone())
            })
            .await;
        }
    };
    let stream = format!("KV_{name}");
    let mut config = patiently(&format!("reading stream {stream}"), || {
        js.get_stream(&stream)
    })
    .await?
    .cached_info()
    .config
    .clone();
    if !config.allow_message_ttl {
        config.allow_message_ttl = true;
        patiently(&format!("allowing message TTLs in {stream}"), || {
            js.update_stream(config.clone())
        })
        .await?;
    }
    Ok(store)
}

/// How long start-up keeps asking a JetStream that is busy before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Runs a start-up JetStream request, asking again (each second, for up to [`PATIENCE`]) while
/// it fails the way a busy cluster fails: a request that timed out, a 503 while leaders are
/// elected, no peer for a replica while a node is offline. Any other error (a limit, a bad
/// config) fails at once, with `what` as its context.
pub async fn patiently<T, E, F, Fut>(what: &str, mut request: F) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) && started.elapsed() < PATIENCE => {
                tracing::warn!(error = %e, "{what}: jetstream busy, asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
        }
    }
}

/// Whether an error of the JetStream API, or one it wraps, is a cluster being busy.
pub fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::{
        context::{
            AccountError, AccountErrorKind, CreateKeyValueError, CreateKeyValueErrorKind,
            CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
            RequestError, RequestErrorKind,
        },
        stream::{ConsumerError, ConsumerErrorKind},
    };
    // A 503, or no peer for a replica while a node is offline (a cluster forming or losing a
    // node; on a single server R3 fails differently, with "replicas not supported").
    let busy = |j: &jetstream::Error| {
        j.code() == 503 || j.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
    };
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<CreateStreamError>() {
            match e.kind() {
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    return true;
                }
                CreateStreamErrorKind::JetStream(j) => return busy(&j),
                _ => {}
            }
        } else if let Some(e) = e.downcast_ref::<AccountError>() {
            match e.kind() {
                AccountErrorKind::TimedOut | AccountErrorKind::JetStreamUnavailable => return true,
                AccountErrorKind::JetStream(j) => return busy(&j),
                AccountErrorKind::Other => {}
            }
        } else if let Some(e) = e.downcast_ref::<GetStreamError>() {
            if let GetStreamErrorKind::JetStream(j) = e.kind() {
                return busy(&j);
            }
        } else if let Some(e) = e.downcast_ref::<ConsumerError>() {
            match e.kind() {
                ConsumerErrorKind::TimedOut => return true,
                ConsumerErrorKind::JetStream(j) => return busy(&j),
                _ => {}
            }
        } else if let Some(e) = e.downcast_ref::<RequestError>() {
            return matches!(
                e.kind(),
                RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
            );
        } else if let Some(e) = e.downcast_ref::<CreateKeyValueError>()
            && e.kind() == CreateKeyValueErrorKind::TimedOut
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether the events stream answers: what `/readyz` reports besides the connection.
pub async fn streams_ready(js: &jetstream::Context) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            js.get_stream(subjects::EVENTS_STREAM)
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use async_nats::jetstream::context::{
        CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
    };

    fn api_error(code: u16, err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": "from the server"
        }))
        .unwrap()
    }

    #[test]
    fn a_timeout_or_a_busy_cluster_is_asked_again_and_a_refusal_is_not() {
        let timed_out = CreateStreamError::new(CreateStreamErrorKind::TimedOut);
        assert!(is_transient(&timed_out));
        let busy = CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(503, 10008)));
        assert!(is_transient(&busy));
        let no_peer =
            CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(400, 10005)));
        assert!(
            is_transient(&no_peer),
            "a peer offline while the cluster forms"
        );
        let refused =
            CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(400, 10047)));
        assert!(!is_transient(&refused), "insufficient resources is final");
        // A bucket wraps the stream's error; the cause decides.
        let wrapped =
            CreateKeyValueError::with_source(CreateKeyValueErrorKind::JetStream, timed_out);
        assert!(is_transient(&wrapped));
        let wrapped = CreateKeyValueError::with_source(CreateKeyValueErrorKind::JetStream, refused);
        assert!(!is_transient(&wrapped));
    }

    #[tokio::test(start_paused = true)]
    async fn patiently_asks_again_while_busy_and_stops_at_a_refusal() {
        let mut calls = 0;
        let value = patiently("creating stream X", || {
            calls += 1;
            let result = if calls < 3 {
                Err(CreateStreamError::new(CreateStreamErrorKind::TimedOut))
            } else {
                Ok(calls)
            };
            async move { result }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);

        let mut calls = 0;
        let e = patiently("creating stream X", || {
            calls += 1;
            async {
                Err::<(), _>(CreateStreamError::new(CreateStreamErrorKind::JetStream(
                    api_error(400, 10047),
                )))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1, "a refusal is not asked again");
        assert!(format!("{e:#}").starts_with("creating stream X: "), "{e:#}");

        let mut calls = 0;
        let started = tokio::time::Instant::now();
        patiently("creating stream X", || {
            calls += 1;
            async { Err::<(), _>(CreateStreamError::new(CreateStreamErrorKind::TimedOut)) }
        })
        .await
        .unwrap_err();
        assert!(
            started.elapsed() >= PATIENCE,
            "gave up before its patience ran out"
        );
        assert!(calls <= PATIENCE.as_secs() + 2, "{calls} calls");
    }
}
