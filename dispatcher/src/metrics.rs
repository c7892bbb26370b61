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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

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
    /// Events fanned out, and delivery tasks queued by the fan-out.
    pub events_fanned_out: Counter,
    pub tasks_queued: Counter,
    pub in_flight: Gauge,
    /// Seconds from sending the request to the end of the answer.
    pub attempt_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let deliveries = Family::<Outcome, Counter>::default();
        let attempts = Family::<Outcome, Counter>::default();
        let dead_letters = Family::<Reason, Counter>::default();
        let handed_back = Family::<Reason, Counter>::default();
        let events_fanned_out = Counter::default();
        let tasks_queued = Counter::default();
        let in_flight = Gauge::default();
        let attempt_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
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
            "events_fanned_out",
            "Events matched and fanned out",
            events_fanned_out.clone(),
        );
        registry.register(
            "delivery_tasks_queued",
            "Delivery tasks queued by the fan-out",
            tasks_queued.clone(),
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
        Metrics {
            registry,
            deliveries,
            attempts,
            dead_letters,
            handed_back,
            events_fanned_out,
            tasks_queued,
            in_flight,
            attempt_duration,
        }
    }
}

impl Metrics {
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
