//! [`OtlpReceiver`]: a real OTLP trace receiver on loopback, built on the official
//! `opentelemetry-proto` definitions, recording every exported span.
//!
//! Two transports, as the services can export either way: OTLP/HTTP with protobuf bodies
//! (`POST /v1/traces`, [`OtlpReceiver::start`]) and OTLP/gRPC (`TraceService/Export`,
//! [`OtlpReceiver::start_grpc`]). Point a process at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT=<endpoint()>` (and `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` for the
//! gRPC one).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use prost::Message as _;

/// One span as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service: String,
    /// OTLP `SpanKind` (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// The span's attributes, every value as text (`2`, `true`, `evt_...`).
    pub attributes: BTreeMap<String, String>,
}

impl ExportedSpan {
    /// One attribute as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Spans = Arc<Mutex<Vec<ExportedSpan>>>;

/// An OTLP trace receiver on `127.0.0.1:<random port>`; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Spans,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// OTLP/HTTP: `POST /v1/traces`, `application/x-protobuf` bodies.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Spans::default();
        let app = Router::new()
            .route("/v1/traces", post(http_export))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver {
            addr,
            spans,
            server,
        })
    }

    /// OTLP/gRPC: the `opentelemetry.proto.collector.trace.v1.TraceService` service.
    pub async fn start_grpc() -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Spans::default();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let server = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            spans,
            server,
        })
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn http_export(
    State(spans): State<Spans>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !protobuf {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/x-protobuf",
        )
            .into_response();
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            record(&spans, request);
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn record(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut got = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(ExportedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    kind: span.kind,
                    status_code: span.status.map(|s| s.code).unwrap_or_default(),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    if let Ok(mut spans) = spans.lock() {
        spans.extend(got);
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
