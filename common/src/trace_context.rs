//! W3C trace context (`traceparent`, `tracestate`) carried in NATS message headers and HTTP
//! headers, so one event's spans join one trace: the ingest request, the JetStream publish,
//! the fan-out and every delivery attempt, and the receiver's side through the outbound
//! `traceparent`.
//!
//! The propagator is the global one ([`crate::telemetry::init`] installs W3C TraceContext);
//! spans are `tracing` spans whose OpenTelemetry context comes from `tracing-opentelemetry`.
//! Without the OpenTelemetry layer (tests running the services in-process) every function here
//! is a harmless no-op: nothing is injected, and an extracted parent is ignored.

use async_nats::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use proto::subjects::{HEADER_TRACEPARENT, HEADER_TRACESTATE};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Writes into NATS message headers.
struct NatsInjector<'a>(&'a mut HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator only writes well-formed values; a line break would make the
        // header map panic, so such a value is dropped rather than trusted.
        if !value.contains(['\r', '\n']) {
            self.0.insert(key, value.as_str());
        }
    }
}

/// Reads NATS message headers.
struct NatsExtractor<'a>(&'a HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Reads `(name, value)` pairs, names compared case-insensitively (HTTP headers).
struct PairsExtractor<'a>(Vec<(&'a str, &'a str)>);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| *value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

/// The OpenTelemetry context of `span`; empty (invalid) when there is no OpenTelemetry layer.
fn context_of(span: &tracing::Span) -> Context {
    span.context()
}

/// Whether `cx` holds a span context worth propagating.
fn is_valid(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Adds `span`'s trace context to NATS message headers (nothing when it has none).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = context_of(span);
    if is_valid(&cx) {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut NatsInjector(headers));
        });
    }
}

/// NATS message headers holding the current span's trace context; `None` when there is none.
pub fn current_headers() -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    inject(&tracing::Span::current(), &mut headers);
    (!headers.is_empty()).then_some(headers)
}

/// The trace context headers (`traceparent`, `tracestate`) of a message, for a message that
/// continues it (a retry republishing its task); `None` when it has none.
pub fn copy(headers: Option<&HeaderMap>) -> Option<HeaderMap> {
    let headers = headers?;
    let mut out = HeaderMap::new();
    for name in [HEADER_TRACEPARENT, HEADER_TRACESTATE] {
        if let Some(value) = headers.get(name) {
            out.insert(name, value.clone());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The trace context of `span` as `(name, value)` pairs, for an outbound HTTP request
/// (`traceparent`, and `tracestate` when there is one). Empty without a trace context.
pub fn http_headers(span: &tracing::Span) -> Vec<(String, String)> {
    let cx = context_of(span);
    let mut out = std::collections::HashMap::new();
    if is_valid(&cx) {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&cx, &mut out);
        });
    }
    let mut out: Vec<_> = out.into_iter().collect();
    out.sort();
    out
}

/// Makes the trace context in NATS message headers `span`'s parent, if the headers hold a
/// valid one. Call it before the span is first entered.
pub fn set_parent_from_nats(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let cx = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&NatsExtractor(headers))
    });
    set_parent(span, cx);
}

/// Makes the trace context in HTTP request headers (`(name, value)` pairs) `span`'s parent,
/// if they hold a valid one: the producer's trace continues into ours.
pub fn set_parent_from_http<'a>(
    span: &tracing::Span,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let pairs = PairsExtractor(headers.into_iter().collect());
    if pairs.0.is_empty() {
        return;
    }
    let cx =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&pairs));
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: Context) {
    if is_valid(&cx) {
        // Fails only when the span was already entered or has no OpenTelemetry data; either
        // way the span keeps its own parent, which is not worth a log line per message.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propagator() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }

    #[test]
    fn nats_headers_round_trip_a_remote_context() {
        propagator();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_TRACEPARENT, parent);
        let cx =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsExtractor(&headers)));
        assert!(is_valid(&cx));
        let mut out = HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut NatsInjector(&mut out));
        });
        assert_eq!(
            copy(Some(&out))
                .as_ref()
                .and_then(|h| h.get(HEADER_TRACEPARENT))
                .map(|v| v.as_str()),
            Some(parent)
        );
    }

    #[test]
    fn http_pairs_are_read_case_insensitively_and_garbage_is_ignored() {
        propagator();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let pairs = PairsExtractor(vec![("TraceParent", parent)]);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&pairs));
        assert!(is_valid(&cx));
        let garbage = PairsExtractor(vec![("traceparent", "not-a-traceparent")]);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&garbage));
        assert!(!is_valid(&cx));
    }

    #[test]
    fn nothing_is_injected_without_a_trace_context() {
        let mut headers = HeaderMap::new();
        inject(&tracing::Span::none(), &mut headers);
        assert!(headers.is_empty());
        assert!(http_headers(&tracing::Span::none()).is_empty());
    }
}
