//! OpenTelemetry traces, end to end: both services run as processes (a process installs its
//! tracing once, from its environment) exporting to a real OTLP receiver on loopback, and one
//! event is followed from the producer's request through the NATS headers to every delivery
//! attempt and into the receiver's `traceparent`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{ExportedSpan, NatsServer, OtlpReceiver, Received, TestReceiver, eventually};

use crate::{
    helpers::{ADMIN_TOKEN, event},
    procs::Proc,
};

/// The producer's own trace: the ingest request continues it.
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const EXPORTED_WITHIN: Duration = Duration::from_secs(15);

/// Short batches, so spans reach the receiver within a test's patience.
fn otel_env(otlp: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The API of an ingest process.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn of(ingest: &Proc) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{}", ingest.addr()),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A tenant key, and a subscription of that tenant to `url` retrying once after 100 ms.
    async fn subscribed(&self, url: &str) -> String {
        let (status, issued) = self
            .call(
                Method::POST,
                "/v1/admin/tenants/acme/api-keys",
                ADMIN_TOKEN,
                &[],
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        let key = issued["key"].as_str().expect("key").to_owned();
        let (status, sub) = self
            .call(
                Method::POST,
                "/v1/subscriptions",
                &key,
                &[],
                json!({"url": url, "event_types": ["*"],
                       "retry": {"max_attempts": 3, "schedule_ms": [100, 100]}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sub}");
        key
    }

    /// Posts one event (with extra request headers); answers its id.
    async fn send(&self, key: &str, headers: &[(&str, &str)]) -> String {
        let (status, accepted) = self
            .call(
                Method::POST,
                "/v1/events",
                key,
                headers,
                event("call.started", "agent_7"),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        accepted["id"].as_str().expect("id").to_owned()
    }
}

/// `(trace id, parent span id)` of a `traceparent` header.
fn traceparent(received: &Received) -> (String, String) {
    let value = received
        .header(proto::subjects::HEADER_TRACEPARENT)
        .unwrap_or_else(|| panic!("no traceparent in {:?}", received.headers));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {value}");
    assert_eq!(parts[0], "00", "traceparent version in {value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn named<'a>(spans: &'a [ExportedSpan], name: &str) -> Vec<&'a ExportedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

async fn received(receiver: &TestReceiver, n: usize) -> Vec<Received> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(
            receiver
                .recv_within(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("delivery {} of {n} did not arrive", i + 1)),
        );
    }
    all
}

#[tokio::test]
async fn one_trace_holds_the_request_the_fan_out_and_every_attempt() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let otlp = OtlpReceiver::start().await.expect("otlp receiver");
    let env = otel_env(&otlp);
    let ingest = Proc::ingest(&nats, &borrowed(&env)).await;
    let mut dispatcher = Proc::dispatcher(&nats, &borrowed(&env)).await;
    let api = Api::of(&ingest);
    let receiver = TestReceiver::start(vec![500, 200]).await.expect("receiver");
    let key = api.subscribed(&receiver.url()).await;

    let producer = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let id = api.send(&key, &[("traceparent", &producer)]).await;
    let deliveries = received(&receiver, 2).await;
    let parents: Vec<_> = deliveries.iter().map(traceparent).collect();
    for (trace, _) in &parents {
        assert_eq!(
            trace, PRODUCER_TRACE,
            "the receiver's traceparent continues the trace"
        );
    }
    assert_ne!(parents[0].1, parents[1].1, "each attempt has its own span");

    // The spans arrive in batches from two processes: wait until all of them are in.
    let spans = eventually(EXPORTED_WITHIN, "the event's spans", || {
        let spans: Vec<ExportedSpan> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == PRODUCER_TRACE)
            .collect();
        let complete = named(&spans, "ingest.request").len() == 1
            && named(&spans, "ingest.publish").len() == 1
            && named(&spans, "dispatch.fanout").len() == 1
            && named(&spans, "dispatch.deliver").len() == 2;
        async move { complete.then_some(spans) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; spans so far: {:#?}", otlp.spans()));

    let request = named(&spans, "ingest.request")[0];
    assert_eq!(request.service, "ingest");
    assert_eq!(
        request.parent_span_id, PRODUCER_SPAN,
        "continues the producer's span"
    );
    assert_eq!(request.attr("http.response.status_code"), Some("202"));

    let publish = named(&spans, "ingest.publish")[0];
    assert_eq!(publish.service, "ingest");
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.attr("event_id"), Some(id.as_str()));
    assert_eq!(publish.attr("event_type"), Some("call.started"));
    assert_eq!(publish.attr("tenant"), Some("acme"));
    assert_eq!(publish.attr("agent"), Some("agent_7"));

    let fanout = named(&spans, "dispatch.fanout")[0];
    assert_eq!(fanout.service, "dispatcher");
    assert_eq!(
        fanout.parent_span_id, publish.span_id,
        "joined through the event's NATS headers"
    );
    assert_eq!(fanout.attr("event_id"), Some(id.as_str()));
    assert_eq!(fanout.attr("matched"), Some("1"));

    let mut attempts = named(&spans, "dispatch.deliver");
    attempts.sort_by_key(|s| s.attr("attempt").map(str::to_owned));
    for (n, (span, (status, outcome))) in attempts
        .iter()
        .zip([("500", "failed"), ("200", "succeeded")])
        .enumerate()
    {
        let attempt = (n + 1).to_string();
        assert_eq!(span.service, "dispatcher");
        assert_eq!(span.attr("attempt"), Some(attempt.as_str()), "{span:#?}");
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status),
            "{span:#?}"
        );
        assert_eq!(span.attr("outcome"), Some(outcome), "{span:#?}");
        assert_eq!(span.attr("event_id"), Some(id.as_str()));
        assert_eq!(span.attr("event_type"), Some("call.started"));
        assert_eq!(span.attr("tenant"), Some("acme"));
        assert!(span.attr("subscription_id").is_some_and(|s| !s.is_empty()));
        // Both attempts are children of the fan-out: a retry keeps the task's headers.
        assert_eq!(span.parent_span_id, fanout.span_id, "attempt {attempt}");
        // The receiver's traceparent names this attempt's span.
        assert_eq!(
            parents[n].1, span.span_id,
            "attempt {attempt}'s traceparent"
        );
    }
    assert_eq!(
        attempts[0].status_code, 2,
        "a failed attempt is an error span"
    );
    stops_cleanly(&mut dispatcher).await;
}

/// A SIGTERM still ends the process promptly while it exports (the exporter is flushed and
/// shut down on the way out).
async fn stops_cleanly(process: &mut Proc) {
    process.sigterm().await;
    let status = process.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}; log:\n{}", process.log());
}

#[tokio::test]
async fn traces_export_over_grpc_with_the_configured_service_name() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let otlp = OtlpReceiver::start_grpc().await.expect("otlp receiver");
    let mut env = otel_env(&otlp);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
    let ingest = Proc::ingest(&nats, &borrowed(&env)).await;
    env.push(("OTEL_SERVICE_NAME", "webhooks-dispatcher-eu".to_owned()));
    let mut dispatcher = Proc::dispatcher(&nats, &borrowed(&env)).await;
    let api = Api::of(&ingest);
    let receiver = TestReceiver::start(vec![200]).await.expect("receiver");
    let key = api.subscribed(&receiver.url()).await;

    let id = api.send(&key, &[]).await;
    let (trace, parent) = traceparent(&received(&receiver, 1).await[0]);

    let spans = eventually(EXPORTED_WITHIN, "the event's spans over grpc", || {
        let spans: Vec<ExportedSpan> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let complete = named(&spans, "ingest.publish").len() == 1
            && named(&spans, "dispatch.deliver").len() == 1;
        async move { complete.then_some(spans) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; spans so far: {:#?}", otlp.spans()));
    let request = named(&spans, "ingest.request")[0];
    assert!(
        request.parent_span_id.is_empty(),
        "no producer trace: a root span"
    );
    let publish = named(&spans, "ingest.publish")[0];
    assert_eq!(publish.service, "ingest");
    assert_eq!(publish.attr("event_id"), Some(id.as_str()));
    let deliver = named(&spans, "dispatch.deliver")[0];
    assert_eq!(deliver.service, "webhooks-dispatcher-eu");
    assert_eq!(deliver.span_id, parent);
    assert_eq!(deliver.attr("http.response.status_code"), Some("200"));
    stops_cleanly(&mut dispatcher).await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_yet_traceparent_and_json_log_ids_remain() {
    testkit::init_test_tracing();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let ingest = Proc::ingest(&nats, &[]).await;
    let dispatcher = Proc::dispatcher(
        &nats,
        &[("WEBHOOKS_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    )
    .await;
    let api = Api::of(&ingest);
    let receiver = TestReceiver::start(vec![500, 200]).await.expect("receiver");
    let key = api.subscribed(&receiver.url()).await;

    api.send(&key, &[]).await;
    let deliveries = received(&receiver, 2).await;
    let (trace, first_attempt) = traceparent(&deliveries[0]);
    assert_eq!(
        traceparent(&deliveries[1]).0,
        trace,
        "one trace for both attempts"
    );
    assert_eq!(trace.len(), 32);

    // The failed attempt's log line names the attempt's span, in the receiver's trace.
    let line = eventually(Duration::from_secs(5), "the retry log line", || {
        let line = dispatcher
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "attempt failed, retry queued");
        async move { line }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", dispatcher.log()));
    assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    assert_eq!(line["span_id"], first_attempt.as_str(), "{line}");
    for log in [ingest.log(), dispatcher.log()] {
        assert!(!log.contains("exporting traces over otlp"), "{log}");
    }
}
