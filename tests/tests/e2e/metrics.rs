//! `GET /metrics` of both services: Prometheus names and units, bounded labels (never an id),
//! numbers that move with traffic; and the Grafana dashboard and alert rules in `deploy/`
//! reference only metrics the services export.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
};

use prost::Message as _;
use proto::{
    subjects,
    v1::{self, IngestReply, event::Data, ingest_reply},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{TestReceiver, eventually};

use crate::helpers::*;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed Prometheus (or OpenMetrics) text exposition.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name → type, from the `# TYPE` lines.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                scrape.types.insert(name.to_owned(), kind.trim().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            scrape.samples.push(parse_sample(line));
        }
        scrape
    }

    /// Every sample name (histogram series included).
    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The values of label `label` among the samples named `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }

    /// Whether a metric `name` (a sample name or a histogram's base name) is exported.
    fn exports(&self, name: &str) -> bool {
        self.names().contains(name)
            || self.types.get(name).is_some_and(|t| t == "histogram")
            || self.types.contains_key(name.trim_end_matches("_total"))
    }
}

/// `name{k="v",…} value [timestamp]`, with `\\`, `\"` and `\n` escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("sample without a value: {line}"),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let end = loop {
            let (_, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            if c == '}' {
                break inner.len() - chars.as_str().len();
            }
            if c == ',' || c == ' ' {
                continue;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("bad escape: {line}"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unclosed label value: {line}"),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        };
        &inner[end..]
    } else {
        rest
    };
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("value {v:?} of {line}: {e}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

#[test]
fn the_parser_reads_labels_escapes_and_histograms() {
    let text = "# HELP webhooks_x_total X.\n# TYPE webhooks_x_total counter\n\
        webhooks_x_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 3\n\
        webhooks_y_bucket{le=\"+Inf\"} 2\nwebhooks_z 1.5\n# EOF\n";
    let s = Scrape::parse(text);
    assert_eq!(s.types["webhooks_x_total"], "counter");
    assert_eq!(s.value("webhooks_x_total", &[("b", "q\"uo\\te")]), 3.0);
    assert_eq!(s.value("webhooks_y_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(s.value("webhooks_z", &[]), 1.5);
    assert!(s.exports("webhooks_x_total"));
}

async fn scrape(sys: &System, addr: SocketAddr) -> Scrape {
    let response = sys
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK, "/metrics on {addr}");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.contains("text"), "{content_type}");
    Scrape::parse(&response.text().await.expect("metrics body"))
}

fn dispatcher_addr(sys: &System) -> SocketAddr {
    sys.dispatcher.as_ref().expect("dispatcher").addr
}

/// Names follow the conventions: a `webhooks_` prefix, `_total` on counters only, histograms
/// in seconds; and no label value is an id, a tenant or an agent.
fn check_conventions(scrape: &Scrape, service: &str) {
    assert!(!scrape.samples.is_empty(), "{service} exports nothing");
    let id_like = regex::Regex::new(r"(?:^|[^A-Za-z0-9])(?:evt|sub|key|dl|whsec|owk)_").unwrap();
    for (family, kind) in &scrape.types {
        assert!(family.starts_with("webhooks_"), "{service}: {family}");
        match kind.as_str() {
            "histogram" => assert!(family.ends_with("_seconds"), "{service}: {family}"),
            // The classic text format names a counter's family with `_total`, OpenMetrics
            // without: both are accepted, the samples are checked below.
            "counter" => {}
            "gauge" => assert!(!family.ends_with("_total"), "{service}: {family}"),
            other => panic!("{service}: {family} has unexpected type {other}"),
        }
    }
    for sample in &scrape.samples {
        let family = scrape
            .types
            .keys()
            .filter(|f| sample.name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("{service}: {} has no # TYPE", sample.name));
        match scrape.types[family].as_str() {
            "counter" => assert!(
                sample.name.ends_with("_total")
                    && (&sample.name == family || sample.name == format!("{family}_total")),
                "{service}: counter {}",
                sample.name
            ),
            "gauge" => assert_eq!(&sample.name, family, "{service}"),
            _ => assert!(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample.name == format!("{family}{s}")),
                "{service}: {}",
                sample.name
            ),
        }
        for (label, value) in &sample.labels {
            assert!(
                !id_like.is_match(value),
                "{service}: {}{{{label}={value:?}}} looks like an id",
                sample.name
            );
            for secret in ["acme", "globex", "agent_1", "call_1", "dup_1"] {
                assert!(
                    !value.contains(secret),
                    "{service}: {}{{{label}={value:?}}} carries request data",
                    sample.name
                );
            }
        }
    }
}

fn ingest_event_over_nats(event_type: &str) -> v1::Event {
    assert_eq!(event_type, "call.started");
    v1::Event {
        r#type: event_type.to_owned(),
        agent_id: "agent_1".to_owned(),
        call_id: "call_1".to_owned(),
        data: Some(Data::CallStarted(v1::CallStarted {
            direction: "inbound".to_owned(),
            from: "+14155550100".to_owned(),
            to: "+14155550199".to_owned(),
            started_at: proto::time::parse_rfc3339("2026-11-28T15:20:10.000Z"),
        })),
        ..Default::default()
    }
}

async fn nats_request(client: &async_nats::Client, tenant: &str, payload: Vec<u8>) -> IngestReply {
    let reply = tokio::time::timeout(
        SOON,
        client.request(subjects::ingest_subject(tenant), payload.into()),
    )
    .await
    .expect("nats ingest answers")
    .expect("nats request");
    IngestReply::decode(reply.payload).expect("IngestReply")
}

/// Sends the traffic both tests measure: accepted events over HTTP and NATS, a duplicate,
/// rejections of several reasons, a delivery that fails once then succeeds, and one that is
/// dead-lettered. Answers the two receivers (kept alive by the caller).
async fn traffic(sys: &System) -> (TestReceiver, TestReceiver) {
    let key = sys.tenant_key("acme").await;
    let flaky = TestReceiver::start(vec![500]).await.unwrap();
    sys.subscribe(
        &key,
        json!({"url": flaky.url(), "event_types": ["call.started"],
               "retry": {"max_attempts": 3, "schedule_ms": [20]}}),
    )
    .await;
    let broken = TestReceiver::start(vec![]).await.unwrap();
    broken.answer_after_script(500).unwrap();
    sys.subscribe(
        &key,
        json!({"url": broken.url(), "event_types": ["call.ended"],
               "retry": {"max_attempts": 2, "schedule_ms": [10]}}),
    )
    .await;

    // Accepted over HTTP: two call.started (one fails once, then both succeed), one call.ended
    // (dead-lettered), and a qa.scored sent twice with the same id (stored once).
    sys.send_event(&key, event("call.started", "agent_1")).await;
    sys.send_event(&key, event("call.started", "agent_1")).await;
    sys.send_event(&key, event("call.ended", "agent_1")).await;
    let mut dup = event("qa.scored", "agent_1");
    dup["id"] = json!("dup_1");
    sys.send_event(&key, dup.clone()).await;
    let (status, again) = sys.post("/v1/events", &key, dup).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["duplicate"], json!(true));

    // Rejected over HTTP: invalid, not JSON, no valid key.
    let mut invalid = event("call.started", "agent_1");
    invalid.as_object_mut().unwrap().remove("agent_id");
    let (status, _) = sys.post("/v1/events", &key, invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let response = sys
        .http
        .post(sys.url("/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _) = sys
        .post(
            "/v1/events",
            "owk_not_a_key",
            event("call.started", "agent_1"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Over NATS, for a tenant without subscriptions: one accepted, one garbage payload.
    let client = async_nats::connect(sys.nats.url()).await.unwrap();
    let reply = nats_request(
        &client,
        "globex",
        ingest_event_over_nats("call.started").encode_to_vec(),
    )
    .await;
    assert!(
        matches!(reply.result, Some(ingest_reply::Result::Accepted(_))),
        "{reply:?}"
    );
    let reply = nats_request(&client, "globex", b"\xff\xfe garbage".to_vec()).await;
    assert!(
        matches!(reply.result, Some(ingest_reply::Result::Rejected(ref r)) if r.status == 400),
        "{reply:?}"
    );

    // 1 failed + 2 succeeded attempts at the flaky receiver, 2 failed at the broken one.
    eventually(SOON, "every attempt made", || {
        let done = flaky.count() >= 3 && broken.count() >= 2;
        async move { done.then_some(()) }
    })
    .await
    .unwrap();
    (flaky, broken)
}

#[tokio::test]
async fn both_services_export_prometheus_metrics_that_move_with_traffic() {
    let sys = System::start().await;
    // The lag gauges are read at start, then every 5 s.
    let before_d = eventually(SOON, "consumer gauges", || async {
        let s = scrape(&sys, dispatcher_addr(&sys)).await;
        (s.label_values("webhooks_consumer_pending_messages", "consumer")
            .len()
            == 3)
            .then_some(s)
    })
    .await
    .unwrap();
    let before_i = scrape(&sys, sys.ingest.addr).await;
    // The /metrics answer needs no key, and the bounded series exist before any traffic.
    assert_eq!(
        before_i.value(
            "webhooks_events_accepted_total",
            &[("path", "http"), ("type", "call.started")]
        ),
        0.0
    );
    assert_eq!(
        before_i
            .label_values("webhooks_events_accepted_total", "type")
            .len(),
        proto::catalog::all().len()
    );

    let (_flaky, _broken) = traffic(&sys).await;

    // The dispatcher counts a delivery when it ends, just before its ack.
    let after_d = eventually(SOON, "deliveries counted", || async {
        let s = scrape(&sys, dispatcher_addr(&sys)).await;
        let ended = s.value("webhooks_deliveries_total", &[("outcome", "succeeded")])
            - before_d.value("webhooks_deliveries_total", &[("outcome", "succeeded")])
            >= 2.0
            && s.value("webhooks_deliveries_total", &[("outcome", "dead_lettered")])
                - before_d.value("webhooks_deliveries_total", &[("outcome", "dead_lettered")])
                >= 1.0;
        ended.then_some(s)
    })
    .await
    .unwrap();
    let after_i = scrape(&sys, sys.ingest.addr).await;
    check_conventions(&after_i, "ingest");
    check_conventions(&after_d, "dispatcher");

    let moved = |after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    // Ingest.
    let i = |name: &str, labels: &[(&str, &str)]| moved(&after_i, &before_i, name, labels);
    let accepted = "webhooks_events_accepted_total";
    assert_eq!(
        i(accepted, &[("path", "http"), ("type", "call.started")]),
        2.0
    );
    assert_eq!(
        i(accepted, &[("path", "http"), ("type", "call.ended")]),
        1.0
    );
    assert_eq!(i(accepted, &[("path", "http"), ("type", "qa.scored")]), 2.0);
    assert_eq!(
        i(accepted, &[("path", "nats"), ("type", "call.started")]),
        1.0
    );
    assert_eq!(i(accepted, &[]), 6.0);
    assert_eq!(
        i("webhooks_events_duplicate_total", &[("path", "http")]),
        1.0
    );
    let rejected = "webhooks_events_rejected_total";
    for (path, reason, n) in [
        ("http", "validation", 1.0),
        ("http", "malformed", 1.0),
        ("http", "unauthorized", 1.0),
        ("nats", "malformed", 1.0),
    ] {
        assert_eq!(
            i(rejected, &[("path", path), ("reason", reason)]),
            n,
            "{path} {reason}"
        );
    }
    assert_eq!(i(rejected, &[]), 4.0);
    assert_eq!(i("webhooks_publish_duration_seconds_count", &[]), 6.0);
    assert!(i("webhooks_publish_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(
        i(
            "webhooks_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/events"),
                ("status", "202")
            ]
        ),
        5.0
    );
    assert!(
        after_i
            .label_values("webhooks_http_requests_total", "route")
            .iter()
            .all(|r| r == "unmatched" || r.starts_with('/')),
        "routes are templates"
    );

    // Dispatcher.
    let d = |name: &str, labels: &[(&str, &str)]| moved(&after_d, &before_d, name, labels);
    assert_eq!(
        d("webhooks_deliveries_total", &[("outcome", "succeeded")]),
        2.0
    );
    assert_eq!(
        d("webhooks_deliveries_total", &[("outcome", "dead_lettered")]),
        1.0
    );
    assert_eq!(
        d(
            "webhooks_delivery_attempts_total",
            &[("outcome", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        d("webhooks_delivery_attempts_total", &[("outcome", "failed")]),
        3.0
    );
    assert_eq!(
        d(
            "webhooks_dead_letters_total",
            &[("reason", "attempts_exhausted")]
        ),
        1.0
    );
    assert_eq!(d("webhooks_delivery_tasks_queued_total", &[]), 3.0);
    assert_eq!(
        d("webhooks_delivery_direct_first_attempts_total", &[]),
        3.0,
        "a free endpoint takes every first attempt straight from the fan-out"
    );
    assert_eq!(
        d("webhooks_delivery_attempt_duration_seconds_count", &[]),
        5.0
    );
    assert_eq!(d("webhooks_delivery_latency_seconds_count", &[]), 2.0);
    assert!(d("webhooks_delivery_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(after_d.value("webhooks_deliveries_in_flight", &[]), 0.0);
    assert_eq!(
        after_d.label_values("webhooks_circuit_breakers", "state"),
        BTreeSet::from(["half_open".to_owned(), "open".to_owned()])
    );
    assert_eq!(
        after_d.value("webhooks_endpoints_tracked", &[]),
        2.0,
        "the two endpoints delivered to a moment ago"
    );
    let consumers = BTreeSet::from([
        subjects::FANOUT_CONSUMER.to_owned(),
        subjects::DELIVER_CONSUMER.to_owned(),
        subjects::REPLAY_CONSUMER.to_owned(),
    ]);
    for gauge in [
        "webhooks_consumer_pending_messages",
        "webhooks_consumer_ack_pending_messages",
        "webhooks_consumer_redelivered_messages",
    ] {
        assert_eq!(
            after_d.label_values(gauge, "consumer"),
            consumers,
            "{gauge}"
        );
    }
}

/// Every `webhooks_…` metric an expression names, histogram series reduced to their metric.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"webhooks_[a-z_]+").unwrap();
    re.find_iter(expr)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

fn deploy_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` of a panel, nested rows included.
fn panel_exprs(panels: &Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
        panel_exprs(&panel["panels"], out);
    }
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_use_only_exported_metrics() {
    // The dashboard: valid JSON, a Prometheus datasource variable, every panel uses it.
    let dashboard: Value =
        serde_json::from_str(&deploy_file("grafana/webhooks-dashboard.json")).expect("json");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "{variables:?}"
    );
    let mut exprs = Vec::new();
    panel_exprs(&dashboard["panels"], &mut exprs);
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()));
        }
    }
    let dashboard_exprs = exprs.len();
    assert!(dashboard_exprs >= 10, "{exprs:?}");
    for quantile in ["0.5", "0.9", "0.99"] {
        for histogram in [
            "webhooks_delivery_attempt_duration_seconds_bucket",
            "webhooks_delivery_latency_seconds_bucket",
        ] {
            assert!(
                exprs
                    .iter()
                    .any(|e| e.contains(&format!("histogram_quantile({quantile},"))
                        && e.contains(histogram)),
                "p{quantile} of {histogram}"
            );
        }
    }

    // The rules: a PrometheusRule whose alerts each have `for`, a severity and a description.
    let rules: serde_norway::Value =
        serde_norway::from_str(&deploy_file("prometheus/webhooks-rules.yaml")).expect("yaml");
    let rules: Value = serde_json::to_value(rules).expect("yaml as json");
    assert_eq!(rules["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rules["kind"], "PrometheusRule");
    let mut alerts = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name");
            assert!(rule["for"].is_string(), "{alert}: for");
            assert!(
                ["warning", "critical"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{alert}: severity"
            );
            assert!(
                rule["annotations"]["description"]
                    .as_str()
                    .is_some_and(|d| d.len() > 80),
                "{alert}: description"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
            alerts.insert(alert.to_owned());
        }
    }
    for expected in [
        "WebhooksConsumerLagHigh",
        "WebhooksConsumerLagGrowing",
        "WebhooksDeadLettersGrowing",
        "WebhooksDeliveryFailureRatioHigh",
    ] {
        assert!(alerts.contains(expected), "{expected} in {alerts:?}");
    }

    // Every metric they name is exported by one of the services, after some traffic.
    let sys = System::start().await;
    let (_flaky, _broken) = traffic(&sys).await;
    let (ingest, dispatcher) = eventually(SOON, "every family exported", || async {
        let d = scrape(&sys, dispatcher_addr(&sys)).await;
        let i = scrape(&sys, sys.ingest.addr).await;
        (d.value("webhooks_dead_letters_total", &[]) >= 1.0
            && d.value("webhooks_delivery_latency_seconds_count", &[]) >= 2.0
            && d.label_values("webhooks_consumer_pending_messages", "consumer")
                .len()
                == 3)
            .then_some((i, d))
    })
    .await
    .unwrap();
    let referenced: BTreeSet<String> = exprs.iter().flat_map(|e| referenced_metrics(e)).collect();
    assert!(referenced.len() >= 12, "{referenced:?}");
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|m| !ingest.exports(m) && !dispatcher.exports(m))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:?}\nexported: {:?} {:?}",
        ingest.names(),
        dispatcher.names()
    );
}

#[tokio::test]
async fn every_capped_stream_and_bucket_reports_its_fullness_for_the_alerts() {
    // `WebhooksStreamFilling`/`Full` and the capacity model in docs/operations.md rest on a
    // `webhooks_stream_max_bytes` series for every stream and bucket with a cap.
    let sys = System::start().await;
    let addr = sys.dispatcher.as_ref().unwrap().addr;
    for stream in proto::subjects::STREAMS
        .into_iter()
        .chain(proto::subjects::BUCKET_STREAMS)
    {
        eventually(SOON, "the stream's cap exported", || async {
            let text = metrics_text(&sys, addr).await;
            text.lines()
                .find(|l| {
                    l.starts_with("webhooks_stream_max_bytes{")
                        && l.contains(&format!("stream=\"{stream}\""))
                })
                .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .filter(|cap| *cap > 0.0)
        })
        .await
        .unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
}
