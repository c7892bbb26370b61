//! Prometheus metrics of the dispatcher, served on `/metrics` (Prometheus text format).
//!
//! Labels are bounded sets (outcomes, reasons); no ids are ever labels.

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Why a task had a due time: `retry` (an attempt after the first) or `deferred` (a first
/// attempt set aside for a busy, rate-limited or open-circuit endpoint).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DueKind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// A circuit state: `open` or `half_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitLabel {
    pub state: &'static str,
}

/// One of the JetStream streams (names from `proto::subjects`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

/// A bucket mirrored in memory, and whether the entries count live keys or tombstones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabel {
    pub mirror: &'static str,
    pub kind: &'static str,
}

/// One of the payload budgets (`budget`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    pub budget: &'static str,
}

/// One of the three durable consumers (names from `proto::subjects`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub consumer: &'static str,
}

/// Why a task was set aside or handed back without an attempt (`webhooks_deliveries_handed_back_total`).
pub const HANDED_BACK_REASONS: [&str; 7] = [
    "endpoint_busy",
    "circuit_open",
    "rate_limited",
    "tenant_busy",
    "memory_share",
    "not_before",
    "unknown_subscription",
];

/// Every metric, registered once per process.
pub struct Metrics {
    registry: Registry,
    /// Deliveries that ended: `succeeded`, `dead_lettered`, `dropped` (subscription deleted or
    /// disabled by its owner).
    pub deliveries: Family<Outcome, Counter>,
    /// Attempts made: `succeeded`, `failed`.
    pub attempts: Family<Outcome, Counter>,
    /// Dead letters by reason.
    pub dead_letters: Family<Reason, Counter>,
    /// Tasks handed back without an attempt, by reason.
    pub handed_back: Family<Reason, Counter>,
    /// Events fanned out, and the deliveries (event × subscription) they became.
    pub events_fanned_out: Counter,
    pub tasks_queued: Counter,
    /// Of those, the ones whose first attempt the fan-out made itself.
    pub direct_first_attempts: Counter,
    pub in_flight: Gauge,
    /// Seconds from sending the request to the end of the answer.
    pub attempt_duration: Histogram,
    /// Seconds from the event's acceptance by ingest to the 2xx of a live delivery (replayed
    /// and redriven deliveries are not observed: their acceptance is long past).
    pub delivery_latency: Histogram,
    /// Seconds from a task's due time (`not_before`) to its attempt.
    pub due_lateness: Family<DueKind, Histogram, fn() -> Histogram>,
    /// Endpoints whose circuit is `open` or `half_open` in this replica.
    pub circuit_breakers: Family<CircuitLabel, Gauge>,
    /// Endpoints whose admission state (slots, circuit, rate limit) this replica keeps.
    pub endpoints_tracked: Gauge,
    /// Tasks waiting in line in this replica for a busy endpoint's next free slot.
    pub in_line: Gauge,
    /// Subscriptions whose signing secrets this replica cannot open (a missing master key).
    pub unsignable_subscriptions: Gauge,
    /// Messages of a consumer's stream not yet delivered to it (its lag).
    pub consumer_pending: Family<ConsumerLabel, Gauge>,
    /// Messages delivered to a consumer and not yet acknowledged.
    pub consumer_ack_pending: Family<ConsumerLabel, Gauge>,
    /// Messages of a consumer delivered more than once and not yet acknowledged.
    pub consumer_redelivered: Family<ConsumerLabel, Gauge>,
    /// Bytes stored in each stream, and its byte cap: fullness is their ratio.
    pub stream_bytes: Family<StreamLabel, Gauge>,
    pub stream_max_bytes: Family<StreamLabel, Gauge>,
    /// Messages stored in each stream.
    pub stream_messages: Family<StreamLabel, Gauge>,
    /// Deliveries a fan-out could neither queue nor dead-letter (the event is still replayable).
    pub fanout_abandoned: Counter,
    /// Waiting deliveries moved out of a due bucket (to their lane or a finer bucket).
    pub waiting_moved: Counter,
    /// Deliveries refused a wait because their tenant had its budget waiting already.
    pub waiting_over_budget: Counter,
    /// Payload bytes this replica holds, by budget (`fanout`, `queue`, `deliveries`; see `budget`).
    pub payload_memory: Family<BudgetLabel, Gauge>,
    /// Entries of the in-memory mirrors (`subscriptions`, `health`): live keys and tombstones,
    /// set at each scrape; tombstones are forgotten once the watch passes them.
    pub mirror_entries: Family<MirrorLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let deliveries = Family::<Outcome, Counter>::default();
        let attempts = Family::<Outcome, Counter>::default();
        let dead_letters = Family::<Reason, Counter>::default();
        let handed_back = Family::<Reason, Counter>::default();
        // Every reason is exported from the start (at zero), so a dashboard or an alert that
        // names one never depends on whether it has happened yet.
        for reason in HANDED_BACK_REASONS {
            drop(handed_back.get_or_create(&Reason { reason }));
        }
        let events_fanned_out = Counter::default();
        let tasks_queued = Counter::default();
        let direct_first_attempts = Counter::default();
        let in_flight = Gauge::default();
        let attempt_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        let delivery_latency = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            900.0, 3600.0, 21600.0,
        ]);
        let due_lateness: Family<DueKind, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ])
            });
        for kind in ["retry", "deferred"] {
            drop(due_lateness.get_or_create(&DueKind { kind }));
        }
        let circuit_breakers = Family::<CircuitLabel, Gauge>::default();
        let endpoints_tracked = Gauge::default();
        let in_line = Gauge::default();
        let unsignable_subscriptions = Gauge::default();
        let consumer_pending = Family::<ConsumerLabel, Gauge>::default();
        let consumer_ack_pending = Family::<ConsumerLabel, Gauge>::default();
        let consumer_redelivered = Family::<ConsumerLabel, Gauge>::default();
        let stream_bytes = Family::<StreamLabel, Gauge>::default();
        let stream_max_bytes = Family::<StreamLabel, Gauge>::default();
        let stream_messages = Family::<StreamLabel, Gauge>::default();
        for stream in proto::subjects::STREAMS {
            for family in [&stream_bytes, &stream_max_bytes, &stream_messages] {
                drop(family.get_or_create(&StreamLabel { stream }));
            }
        }
        let waiting_moved = Counter::default();
        let waiting_over_budget = Counter::default();
        let fanout_abandoned = Counter::default();
        let mut registry = Registry::with_prefix("webhooks");
        registry.register(
            "deliveries",
            "Deliveries that ended, by outcome",
            deliveries.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts, by outcome",
            attempts.clone(),
        );
        registry.register(
            "dead_letters",
            "Deliveries dead-lettered, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "deliveries_handed_back",
            "Tasks handed back to JetStream without an attempt, by reason",
            handed_back.clone(),
        );
        registry.register(
            "fanout_abandoned",
            "Deliveries a fan-out could neither queue nor dead-letter after its last try",
            fanout_abandoned.clone(),
        );
        registry.register(
            "waiting_moved",
            "Waiting deliveries moved out of a due bucket, to their lane or a finer bucket",
            waiting_moved.clone(),
        );
        registry.register(
            "waiting_over_budget",
            "Deliveries refused a wait because their tenant had WEBHOOKS_MAX_WAITING_PER_TENANT waiting \
             (a retry is dead-lettered, a set-aside stays in its lane)",
            waiting_over_budget.clone(),
        );
        registry.register(
            "events_fanned_out",
            "Events matched and fanned out",
            events_fanned_out.clone(),
        );
        registry.register(
            "delivery_tasks_queued",
            "Deliveries (event x subscription) taken on by the fan-out, first attempted directly or queued as a task",
            tasks_queued.clone(),
        );
        registry.register(
            "delivery_direct_first_attempts",
            "Deliveries whose first attempt the fan-out made itself instead of queuing a task",
            direct_first_attempts.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Delivery attempts running now",
            in_flight.clone(),
        );
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Duration of one delivery attempt",
            prometheus_client::registry::Unit::Seconds,
            attempt_duration.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Duration from the event's acceptance to the 2xx of its live delivery",
            prometheus_client::registry::Unit::Seconds,
            delivery_latency.clone(),
        );
        registry.register(
            "circuit_breakers",
            "Endpoints whose circuit breaker is in this state, in this replica",
            circuit_breakers.clone(),
        );
        registry.register(
            "endpoints_tracked",
            "Endpoints whose admission state (slots, circuit, rate limit) this replica keeps: those used in the last minute or with a failing circuit",
            endpoints_tracked.clone(),
        );
        registry.register(
            "in_line",
            "Tasks waiting in line in this replica for a busy endpoint's next free slot (at most WEBHOOKS_MAX_IN_FLIGHT)",
            in_line.clone(),
        );
        registry.register_with_unit(
            "due_lateness",
            "Time from a task's due time (its retry schedule, or the turn it was set aside for) to its attempt",
            prometheus_client::registry::Unit::Seconds,
            due_lateness.clone(),
        );
        registry.register(
            "unsignable_subscriptions",
            "Subscriptions whose signing secrets this replica cannot open (a master key missing here, a corrupt record): their deliveries are retried, then dead-lettered as system_error",
            unsignable_subscriptions.clone(),
        );
        registry.register(
            "consumer_pending_messages",
            "Messages not yet delivered to the durable consumer (lag)",
            consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending_messages",
            "Messages delivered to the durable consumer and not yet acknowledged",
            consumer_ack_pending.clone(),
        );
        registry.register(
            "consumer_redelivered_messages",
            "Messages of the durable consumer redelivered and not yet acknowledged",
            consumer_redelivered.clone(),
        );
        registry.register_with_unit(
            "stream",
            "Bytes stored in the JetStream stream",
            prometheus_client::registry::Unit::Bytes,
            stream_bytes.clone(),
        );
        registry.register_with_unit(
            "stream_max",
            "The stream's byte cap (max_bytes): a full stream refuses or discards",
            prometheus_client::registry::Unit::Bytes,
            stream_max_bytes.clone(),
        );
        registry.register(
            "stream_messages",
            "Messages stored in the JetStream stream",
            stream_messages.clone(),
        );
        for state in ["open", "half_open"] {
            let _ = circuit_breakers.get_or_create(&CircuitLabel { state });
        }
        let payload_memory = Family::<BudgetLabel, Gauge>::default();
        registry.register_with_unit(
            "payload_memory",
            "Payload bytes this replica holds, by budget: fanout (events, 3/8 of WEBHOOKS_PAYLOAD_MEMORY), queue (tasks being published, 1/8), deliveries (tasks pulled, 1/2)",
            prometheus_client::registry::Unit::Bytes,
            payload_memory.clone(),
        );
        for budget in ["fanout", "queue", "deliveries"] {
            let _ = payload_memory.get_or_create(&BudgetLabel { budget });
        }
        let mirror_entries = Family::<MirrorLabel, Gauge>::default();
        registry.register(
            "mirror_entries",
            "Entries of this replica's in-memory copies of the subscriptions and failing-since buckets, live keys and tombstones",
            mirror_entries.clone(),
        );
        Metrics {
            registry,
            deliveries,
            attempts,
            dead_letters,
            handed_back,
            events_fanned_out,
            tasks_queued,
            direct_first_attempts,
            in_flight,
            attempt_duration,
            delivery_latency,
            due_lateness,
            circuit_breakers,
            endpoints_tracked,
            in_line,
            unsignable_subscriptions,
            consumer_pending,
            consumer_ack_pending,
            consumer_redelivered,
            stream_bytes,
            stream_max_bytes,
            stream_messages,
            waiting_moved,
            waiting_over_budget,
            fanout_abandoned,
            payload_memory,
            mirror_entries,
        }
    }
}

impl Metrics {
    /// Sets the entries of one mirror.
    pub fn mirror(&self, mirror: &'static str, (live, tombstones): (usize, usize)) {
        for (kind, n) in [("live", live), ("tombstone", tombstones)] {
            self.mirror_entries
                .get_or_create(&MirrorLabel { mirror, kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %error, "metrics encoding failed");
        }
        out
    }

    pub fn delivered(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&Outcome { outcome }).inc();
    }

    /// Sets the circuit breaker gauges from [`crate::gate::Gate::circuit_counts`], and the
    /// count of endpoints the gate keeps from [`crate::gate::Gate::sweep`].
    pub fn circuits(&self, open: usize, half_open: usize, tracked: usize) {
        self.endpoints_tracked
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        for (state, n) in [("open", open), ("half_open", half_open)] {
            self.circuit_breakers
                .get_or_create(&CircuitLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets the gauges of `stream` from its info.
    pub fn stream(&self, stream: &'static str, info: &async_nats::jetstream::stream::Info) {
        let label = StreamLabel { stream };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.stream_bytes
            .get_or_create(&label)
            .set(n(info.state.bytes));
        self.stream_max_bytes
            .get_or_create(&label)
            .set(info.config.max_bytes);
        self.stream_messages
            .get_or_create(&label)
            .set(n(info.state.messages));
    }

    /// Sets the gauges of `consumer` from its info.
    pub fn consumer(&self, consumer: &'static str, info: &async_nats::jetstream::consumer::Info) {
        let label = ConsumerLabel { consumer };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.consumer_pending
            .get_or_create(&label)
            .set(n(info.num_pending));
        self.consumer_ack_pending
            .get_or_create(&label)
            .set(n(info.num_ack_pending as u64));
        self.consumer_redelivered
            .get_or_create(&label)
            .set(n(info.num_redelivered as u64));
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::default();
        m.delivered("succeeded");
        m.attempt_duration.observe(0.02);
        let text = m.render();
        assert!(
            text.contains("webhooks_deliveries_total{outcome=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("webhooks_delivery_attempt_duration_seconds_bucket"),
            "{text}"
        );
    }
}
