//! Tracing setup: logs and OpenTelemetry traces.
//!
//! # Logs
//! `RUST_LOG` filters (default `info`). Human-readable by default; `WEBHOOKS_LOG_FORMAT=json`
//! for clusters, one JSON object a line, carrying `trace_id` and `span_id` of the innermost
//! span with a trace context.
//!
//! # Traces
//! Every span of our crates at `info` and above (`ingest.request`, `ingest.publish`,
//! `dispatch.fanout`, `dispatch.deliver`, ...) is an OpenTelemetry span, whatever `RUST_LOG`
//! says, so trace ids exist and `traceparent` travels (NATS headers, the receiver's request)
//! even when nothing is exported. Export is OTLP, configured by the standard variables and off
//! unless an endpoint is set:
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended for HTTP) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is): export on;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: `http/protobuf`
//!   (default) or `grpc`;
//! - `OTEL_SERVICE_NAME`: the resource's `service.name`, else the binary's name;
//!   `OTEL_RESOURCE_ATTRIBUTES` adds attributes;
//! - `OTEL_BSP_SCHEDULE_DELAY` and the other `OTEL_BSP_*`: the batch span processor;
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER`: as
//!   the SDK reads them;
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: export off.
//!
//! The propagator is W3C TraceContext, installed globally (see [`crate::trace_context`]).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{LevelFilter, Targets},
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// Our crates, whose spans become OpenTelemetry spans.
const TRACED_CRATES: [&str; 3] = ["ingest", "dispatcher", "common"];

/// How traces leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), the default.
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`).
    Grpc,
}

/// What [`init_with`] installs; [`Settings::from_env`] reads it from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `RUST_LOG`-style directives for the log output.
    pub log_filter: String,
    /// One JSON object a line instead of the human format.
    pub json_logs: bool,
    /// The resource's `service.name`.
    pub service_name: String,
    /// `Some` when spans are exported (an OTLP endpoint is configured).
    pub export: Option<Protocol>,
    /// Problems found while reading the settings, logged once logging is up.
    pub warnings: Vec<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Settings {
    /// From `RUST_LOG`, `WEBHOOKS_LOG_FORMAT` and the standard `OTEL_*` variables;
    /// `service_default` is the `service.name` when `OTEL_SERVICE_NAME` is unset.
    pub fn from_env(service_default: &str) -> Settings {
        let mut warnings = Vec::new();
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            None => Protocol::HttpProtobuf,
            Some(p) if p.eq_ignore_ascii_case("http/protobuf") => Protocol::HttpProtobuf,
            Some(p) if p.eq_ignore_ascii_case("grpc") => Protocol::Grpc,
            Some(other) => {
                warnings.push(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (http/protobuf or \
                     grpc); using http/protobuf"
                ));
                Protocol::HttpProtobuf
            }
        };
        Settings {
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            json_logs: var("WEBHOOKS_LOG_FORMAT").is_some_and(|v| v.eq_ignore_ascii_case("json")),
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service_default.to_owned()),
            export: (endpoint && !disabled).then_some(protocol),
            warnings,
        }
    }
}

/// Keeps the tracer provider; flushes and shuts it down on [`Telemetry::shutdown`] or drop, so
/// the last spans are exported before the process exits.
#[must_use = "dropping the guard shuts tracing export down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is buffered and stops the exporter (blocks up to the export timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && self.exporting
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(error = %error, "trace export shutdown failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs logging and tracing from the environment ([`Settings::from_env`]).
///
/// Installs the global subscriber once; a later call (or one after a test installed its own)
/// leaves the installed subscriber alone and exports nothing.
pub fn init(service_default: &str) -> Telemetry {
    init_with(Settings::from_env(service_default))
}

/// Installs logging and tracing as `settings` say. An exporter that cannot be built is logged
/// and tracing goes on without export: telemetry never stops the service.
pub fn init_with(settings: Settings) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut warnings = settings.warnings.clone();
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build(),
    );
    let mut exporting = false;
    if let Some(protocol) = settings.export {
        match build_exporter(protocol) {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(error) => warnings.push(format!("trace export off: {error}")),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("open-webhooks");

    let log_filter = EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|error| {
        warnings.push(format!("RUST_LOG ignored: {error}"));
        EnvFilter::new("info")
    });
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if settings.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_filter(log_filter)
            .boxed()
    };
    let traced = TRACED_CRATES
        .iter()
        .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO));
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(traced)
        .boxed();
    let installed = tracing_subscriber::registry()
        .with(vec![logs, spans])
        .try_init()
        .is_ok();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if !installed {
        let _ = provider.shutdown();
        return Telemetry {
            provider: None,
            exporting: false,
        };
    }
    opentelemetry::global::set_tracer_provider(provider.clone());
    if exporting {
        tracing::info!(service.name = %settings.service_name, protocol = ?settings.export, "exporting traces over otlp");
    }
    Telemetry {
        provider: Some(provider),
        exporting,
    }
}

fn build_exporter(
    protocol: Protocol,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
    match protocol {
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
    }
}

/// The JSON format plus `trace_id` and `span_id` of the innermost span (the event's explicit
/// parent, else the current span, or an ancestor) that has an OpenTelemetry context.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let trimmed = line.trim_end();
        match (trace_ids(event), trimmed.strip_suffix('}')) {
            (Some((trace_id, span_id)), Some(open)) => writeln!(
                writer,
                "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// The trace and span id for a log line. Read through the registry rather than the formatter's
/// context, whose view is narrowed by the log filter (with `RUST_LOG=warn` the `info` spans are
/// invisible to it but still traced).
fn trace_ids(event: &Event<'_>) -> Option<(String, String)> {
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let id = match event.parent() {
            Some(id) => id.clone(),
            None if event.is_contextual() => registry.current_span().id()?.clone(),
            None => return None,
        };
        let span = registry.span(&id)?;
        span.scope().find_map(|span| {
            let extensions = span.extensions();
            let data = extensions.get::<tracing_opentelemetry::OtelData>()?;
            let (trace_id, span_id) = (data.trace_id()?, data.span_id()?);
            (trace_id != opentelemetry::TraceId::INVALID)
                .then(|| (trace_id.to_string(), span_id.to_string()))
        })
    })
}
