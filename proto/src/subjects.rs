//! The one place where stream, subject, consumer, KV bucket and header names are spelled.
//!
//! Both services create these objects idempotently on start, so they must agree on every
//! name; anything that talks to NATS takes its names from here.

/// Stream holding every accepted event, protobuf-encoded.
pub const EVENTS_STREAM: &str = "WEBHOOK_EVENTS";
/// Subjects of the events stream: `webhooks.events.<tenant>.<agent>.<type>`.
pub const EVENTS_SUBJECTS: &str = "webhooks.events.>";
/// Work-queue stream of per-(event, subscription) delivery tasks.
pub const DELIVERIES_STREAM: &str = "WEBHOOK_DELIVERIES";
/// Subjects of the deliveries stream: `webhooks.deliveries.<tenant>.<subscription>`.
pub const DELIVERIES_SUBJECTS: &str = "webhooks.deliveries.>";
/// Work-queue stream of replayed and redriven delivery tasks: a lane of its own, with its own
/// consumer and concurrency, so a replay of a million events never queues ahead of live ones.
pub const REPLAYS_STREAM: &str = "WEBHOOK_REPLAYS";
/// Subjects of the replays stream: `webhooks.replays.<tenant>.<subscription>`.
pub const REPLAYS_SUBJECTS: &str = "webhooks.replays.>";
/// Stream of dead letters: deliveries that never succeeded.
pub const DLQ_STREAM: &str = "WEBHOOK_DLQ";
/// Subjects of the dead-letter stream: `webhooks.dlq.<tenant>.<subscription>`.
pub const DLQ_SUBJECTS: &str = "webhooks.dlq.>";
/// Stream of messages set aside because they are not what their subject promises (garbage
/// bytes, a protobuf that decodes but contradicts its subject or fails validation): kept with
/// the reason for inspection, never redelivered, never blocking a consumer.
pub const REJECTS_STREAM: &str = "WEBHOOK_REJECTS";
/// Subjects of the rejects stream: `webhooks.rejects.<source stream>`.
pub const REJECTS_SUBJECTS: &str = "webhooks.rejects.>";
/// Why a message was set aside.
pub const HEADER_REJECT_REASON: &str = "Webhooks-Reject-Reason";
/// The subject the message was set aside from.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Webhooks-Original-Subject";
/// Stream of delivery attempt records.
pub const ATTEMPTS_STREAM: &str = "WEBHOOK_ATTEMPTS";
/// Subjects of the attempts stream: `webhooks.attempts.<tenant>.<subscription>`.
pub const ATTEMPTS_SUBJECTS: &str = "webhooks.attempts.>";

/// Stream of deliveries waiting for their time (a retry's backoff, an open circuit's
/// cool-down, a busy or rate-limited endpoint's next free slot), one subject per time bucket
/// and tenant: `webhooks.waiting.<bucket, Unix ms>.<tenant>`, so a tenant's share is counted
/// by the server (`webhooks.waiting.*.<tenant>`) and a bucket is read as one wildcard.
/// (`webhooks.waiting.<bucket>`, without the tenant, is what versions before the per-tenant
/// budget filed, and is still drained.) Nothing here is in any consumer until it is due, so
/// millions may wait without holding consumer capacity (see the dispatcher's `waiting`).
pub const WAITING_STREAM: &str = "WEBHOOK_WAITING";
/// Subjects of the waiting stream.
pub const WAITING_SUBJECTS: &str = "webhooks.waiting.>";
/// Stream of the waiting room's alarm clocks: one message schedule per occupied bucket
/// (`webhooks.ticks.at.<bucket>`, `Nats-Schedule: @at <bucket time>`), which JetStream fires
/// onto [`TICKS_DUE_SUBJECT`] at that time.
pub const TICKS_STREAM: &str = "WEBHOOK_TICKS";

/// Every stream of the topology.
pub const STREAMS: [&str; 9] = [
    EVENTS_STREAM,
    EVENT_IDS_STREAM,
    DELIVERIES_STREAM,
    REPLAYS_STREAM,
    WAITING_STREAM,
    TICKS_STREAM,
    DLQ_STREAM,
    ATTEMPTS_STREAM,
    REJECTS_STREAM,
];
/// The streams behind the KV buckets whose fullness is watched (`KV_<bucket>`): the records
/// kept by key, and the fan-out's progress. (The event index of earlier versions only drains.)
pub const BUCKET_STREAMS: [&str; 4] = [
    "KV_webhooks_subscriptions",
    "KV_webhooks_api_keys",
    "KV_webhooks_endpoint_health",
    "KV_webhooks_fanout_progress",
];

/// Subjects of the ticks stream.
pub const TICKS_SUBJECTS: &str = "webhooks.ticks.>";
/// Where a fired tick lands (its payload: the bucket, Unix ms, in decimal).
pub const TICKS_DUE_SUBJECT: &str = "webhooks.ticks.due";
/// Durable pull consumer of fired ticks, shared by every dispatcher replica.
pub const TICKS_CONSUMER: &str = "dispatcher-ticks";
/// JetStream's message-schedule headers (nats-server 2.12+).
pub const HEADER_SCHEDULE: &str = "Nats-Schedule";
pub const HEADER_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";

/// Durable pull consumer on the events stream, shared by every dispatcher replica.
pub const FANOUT_CONSUMER: &str = "dispatcher-fanout";
/// Durable pull consumer on the deliveries stream, shared by every dispatcher replica.
pub const DELIVER_CONSUMER: &str = "dispatcher-deliver";
/// Durable pull consumer on the replays stream, shared by every dispatcher replica.
pub const REPLAY_CONSUMER: &str = "dispatcher-replay";

/// KV bucket of subscriptions, keyed `<tenant>.<subscription id>`.
pub const SUBSCRIPTIONS_BUCKET: &str = "webhooks_subscriptions";
/// KV bucket of API-key records (hashes only), keyed by key id.
pub const API_KEYS_BUCKET: &str = "webhooks_api_keys";
/// KV bucket of failing subscriptions (`EndpointHealth`), keyed by subscription id; a key
/// exists only while its subscription has failed since its last success.
pub const HEALTH_BUCKET: &str = "webhooks_endpoint_health";
/// KV bucket of fan-outs that settled only some of their matches, keyed
/// `<tenant>.<event id>`, valued with the settled subscription ids (one a line): a fan-out
/// handed back skips them, so a partial failure never delivers the others' successes again.
/// A key exists only between such a failure and the event's ack (and expires in a day).
pub const FANOUT_PROGRESS_BUCKET: &str = "webhooks_fanout_progress";
/// KV bucket of the event-id index before issue 14: one key per event, `<tenant>.<event id>`,
/// valued with its sequence. No longer written (a subject per event cost nats-server about
/// 1 KiB of memory per retained event); still read, so events indexed there are found until
/// they expire.
pub const EVENT_INDEX_BUCKET: &str = "webhooks_event_index";
/// Stream of the event-id index for ids that are not found by their time (a producer's own
/// id, one derived from an `Idempotency-Key`): one entry per such event under one of
/// [`EVENT_ID_SHARDS`] subjects per tenant, `webhooks.ids.<tenant>.<shard>`, so the server's
/// per-subject state grows with tenants, never with events (see `common::event_index`).
pub const EVENT_IDS_STREAM: &str = "WEBHOOK_EVENT_IDS";
/// Subjects of the event-id index stream.
pub const EVENT_IDS_SUBJECTS: &str = "webhooks.ids.>";
/// Index subjects per tenant: a lookup reads one of them.
pub const EVENT_ID_SHARDS: u8 = 64;

/// Request subject prefix for upstream producers: `webhooks.ingest.<tenant>`.
pub const INGEST_PREFIX: &str = "webhooks.ingest";
/// Every upstream ingest subject, as ingest subscribes to it.
pub const INGEST_SUBJECTS: &str = "webhooks.ingest.*";
/// Queue group of the ingest replicas answering upstream producers, so exactly one answers.
pub const INGEST_QUEUE: &str = "ingest";

/// Request subject prefix of test sends, answered by one dispatcher (queue group
/// [`TEST_SEND_QUEUE`]): `webhooks.test.<tenant>`.
pub const TEST_SEND_PREFIX: &str = "webhooks.test";
/// Every test-send subject, as a dispatcher subscribes to it.
pub const TEST_SEND_SUBJECTS: &str = "webhooks.test.*";
/// Queue group of the dispatchers answering test sends, so exactly one replica answers.
pub const TEST_SEND_QUEUE: &str = "dispatcher-test-send";

/// JetStream's idempotency header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, carried from the ingest request to every delivery attempt.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace state, carried next to [`HEADER_TRACEPARENT`] when there is one.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// Outbound (receiver-facing) Standard Webhooks header names.
pub mod http {
    pub const WEBHOOK_ID: &str = "webhook-id";
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
    pub const WEBHOOK_ATTEMPT: &str = "webhook-attempt";
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
}

/// `webhooks.events.<tenant>.<agent>.<type>`; the type's own dot makes it two tokens.
pub fn event_subject(tenant: &str, agent: &str, event_type: &str) -> String {
    format!("webhooks.events.{tenant}.{agent}.{event_type}")
}

/// Every event of one tenant.
pub fn tenant_events_filter(tenant: &str) -> String {
    format!("webhooks.events.{tenant}.>")
}

/// The events of one tenant, narrowed to one agent and/or one (dotted, two-token) type.
pub fn events_filter(tenant: &str, agent: Option<&str>, event_type: Option<&str>) -> String {
    match (agent, event_type) {
        (None, None) => tenant_events_filter(tenant),
        (Some(agent), None) => format!("webhooks.events.{tenant}.{agent}.>"),
        (None, Some(event_type)) => format!("webhooks.events.{tenant}.*.{event_type}"),
        (Some(agent), Some(event_type)) => event_subject(tenant, agent, event_type),
    }
}

/// KV key of an event in the event-id index before issue 14, and of its fan-out progress.
pub fn event_index_key(tenant: &str, event_id: &str) -> String {
    format!("{tenant}.{event_id}")
}

/// `webhooks.ids.<tenant>.<shard>`: where the index entry of `tenant`'s event `event_id` is,
/// its shard the first byte of the id's SHA-256 modulo [`EVENT_ID_SHARDS`].
pub fn event_id_subject(tenant: &str, shard: u8) -> String {
    format!("webhooks.ids.{tenant}.{shard}")
}

/// `webhooks.deliveries.<tenant>.<subscription>`.
pub fn delivery_subject(tenant: &str, subscription: &str) -> String {
    format!("webhooks.deliveries.{tenant}.{subscription}")
}

/// `webhooks.replays.<tenant>.<subscription>`.
pub fn replay_subject(tenant: &str, subscription: &str) -> String {
    format!("webhooks.replays.{tenant}.{subscription}")
}

/// Where a task of `origin` is queued: live tasks in the deliveries stream, replayed and
/// redriven ones (and their retries) in the replays lane.
pub fn task_subject(origin: crate::v1::DeliveryOrigin, tenant: &str, subscription: &str) -> String {
    match origin {
        crate::v1::DeliveryOrigin::Live => delivery_subject(tenant, subscription),
        crate::v1::DeliveryOrigin::Replay | crate::v1::DeliveryOrigin::Redrive => {
            replay_subject(tenant, subscription)
        }
    }
}

/// `webhooks.waiting.<bucket>.<tenant>`: `tenant`'s waiting deliveries due at `bucket_ms`
/// (Unix ms).
pub fn waiting_subject(bucket_ms: u64, tenant: &str) -> String {
    format!("webhooks.waiting.{bucket_ms}.{tenant}")
}

/// The subjects of every task waiting in the bucket `bucket_ms`: every tenant's
/// (`webhooks.waiting.<bucket>.>`), and the subject older versions filed under, without one.
pub fn waiting_bucket_subjects(bucket_ms: u64) -> [String; 2] {
    [
        format!("webhooks.waiting.{bucket_ms}.>"),
        format!("webhooks.waiting.{bucket_ms}"),
    ]
}

/// `webhooks.waiting.*.<tenant>`: everything `tenant` has waiting, whatever the bucket.
pub fn waiting_tenant_filter(tenant: &str) -> String {
    format!("webhooks.waiting.*.{tenant}")
}

/// `webhooks.ticks.at.<bucket>`: the schedule that fires when `bucket_ms` is due.
pub fn tick_subject(bucket_ms: u64) -> String {
    format!("webhooks.ticks.at.{bucket_ms}")
}

/// `webhooks.rejects.<source>`, e.g. `webhooks.rejects.events`.
pub fn reject_subject(source: &str) -> String {
    format!("webhooks.rejects.{source}")
}

/// `webhooks.dlq.<tenant>.<subscription>`.
pub fn dlq_subject(tenant: &str, subscription: &str) -> String {
    format!("webhooks.dlq.{tenant}.{subscription}")
}

/// `webhooks.attempts.<tenant>.<subscription>`.
pub fn attempts_subject(tenant: &str, subscription: &str) -> String {
    format!("webhooks.attempts.{tenant}.{subscription}")
}

/// `webhooks.ingest.<tenant>`.
pub fn ingest_subject(tenant: &str) -> String {
    format!("{INGEST_PREFIX}.{tenant}")
}

/// `webhooks.test.<tenant>`.
pub fn test_send_subject(tenant: &str) -> String {
    format!("{TEST_SEND_PREFIX}.{tenant}")
}

/// The idempotency id of an event in the events stream: scoped by tenant, so two tenants
/// choosing the same event id never collide.
pub fn event_msg_id(tenant: &str, event_id: &str) -> String {
    format!("{tenant}:{event_id}")
}

/// The idempotency id of a delivery task: a redelivered fan-out publishes the same id and
/// JetStream drops the copy.
pub fn delivery_msg_id(event_id: &str, subscription: &str) -> String {
    format!("{event_id}:{subscription}")
}

/// The idempotency id of the retry of the task at `sequence` in stream `lane`: each message
/// is retried at most once, so a retry published twice (a crash before the old message's ack)
/// is stored once. The lane is part of it because the retries of both lanes wait in one stream.
pub fn retry_msg_id(lane: &str, sequence: u64) -> String {
    format!("retry:{lane}:{sequence}")
}

/// The idempotency id of a task at `sequence` in stream `lane` set aside to wait for its
/// endpoint (busy, open circuit, rate limit): moved at most once.
pub fn defer_msg_id(lane: &str, sequence: u64) -> String {
    format!("defer:{lane}:{sequence}")
}

/// The idempotency id of the dead letter of the task at `sequence` in stream `lane`; kept in
/// the task while the dead-letter stream has no room, so storing it again stores it once.
pub fn dead_letter_msg_id(lane: &str, sequence: u64) -> String {
    format!("dlq:{lane}:{sequence}")
}

/// The idempotency id of the dead letter of a live event's first attempt made straight from
/// the fan-out (no task existed yet).
pub fn first_dead_letter_msg_id(event_id: &str, subscription: &str) -> String {
    format!("dlq:{event_id}:{subscription}")
}

/// The idempotency id of a task filed in the waiting room to store its dead letter later;
/// `this_try` is the dead-letter id of the message being settled (a new one on every try, so
/// a second wait is not taken for a duplicate of the first).
pub fn pending_death_msg_id(this_try: &str) -> String {
    format!("death:{this_try}")
}

/// The idempotency id of a waiting task (at `sequence` in the waiting stream) moved on when
/// its bucket is due: a bucket drained twice moves each task once.
pub fn wait_msg_id(sequence: u64) -> String {
    format!("wait:{sequence}")
}

/// The idempotency id of a redriven dead letter.
pub fn redrive_msg_id(dead_letter_sequence: u64) -> String {
    format!("redrive:{dead_letter_sequence}")
}

/// The idempotency id of a replayed delivery: unique per replay request (`request` is fresh
/// for each call), so a replay is an explicit resend, yet one request never queues a pair twice.
pub fn replay_msg_id(request: &str, event_id: &str, subscription: &str) -> String {
    format!("replay:{request}:{event_id}:{subscription}")
}

/// A dead letter's public id: its sequence in the dead-letter stream.
pub fn dead_letter_id(sequence: u64) -> String {
    format!("dl_{sequence}")
}

/// The sequence of a dead letter's public id.
pub fn dead_letter_sequence(id: &str) -> Option<u64> {
    id.strip_prefix("dl_")?.parse().ok().filter(|s| *s > 0)
}

/// KV key of a subscription.
pub fn subscription_key(tenant: &str, subscription: &str) -> String {
    format!("{tenant}.{subscription}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subject_puts_tenant_and_agent_before_the_dotted_type() {
        assert_eq!(
            event_subject("acme", "agent_1", "call.started"),
            "webhooks.events.acme.agent_1.call.started"
        );
    }

    #[test]
    fn feed_filters_narrow_by_agent_and_by_the_two_token_type() {
        assert_eq!(events_filter("t", None, None), "webhooks.events.t.>");
        assert_eq!(events_filter("t", Some("a"), None), "webhooks.events.t.a.>");
        assert_eq!(
            events_filter("t", None, Some("call.started")),
            "webhooks.events.t.*.call.started"
        );
        assert_eq!(
            events_filter("t", Some("a"), Some("call.started")),
            event_subject("t", "a", "call.started")
        );
    }

    #[test]
    fn msg_ids_are_scoped() {
        assert_ne!(event_msg_id("a", "e1"), event_msg_id("b", "e1"));
        assert_eq!(delivery_msg_id("e1", "sub_1"), "e1:sub_1");
    }
}

#[cfg(test)]
mod bucket_stream_tests {
    #[test]
    fn the_watched_bucket_streams_are_the_buckets_of_these_names() {
        let buckets = [
            super::SUBSCRIPTIONS_BUCKET,
            super::API_KEYS_BUCKET,
            super::HEALTH_BUCKET,
            super::FANOUT_PROGRESS_BUCKET,
        ];
        let want: Vec<String> = buckets.iter().map(|b| format!("KV_{b}")).collect();
        assert_eq!(super::BUCKET_STREAMS.to_vec(), want);
    }
}
