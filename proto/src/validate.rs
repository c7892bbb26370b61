//! Checks event input, JSON from HTTP or protobuf from NATS, against the catalog, listing every offending field.
//!
//! Both paths run the same per-field checks on the same JSON shape of `data` (protobuf data
//! goes through [`data_to_json`] first), so a producer gets the same errors whichever way it
//! sends an event.

use std::sync::LazyLock;

use prost_types::Timestamp;
use regex::Regex;
use serde_json::{Map, Value, json};

use crate::catalog::{
    self, EventTypeSpec, FieldKind, MAX_IDENTIFIER_CHARS, MAX_LIST_ITEMS, MAX_TEXT_CHARS,
};
use crate::time;
use crate::v1::{self, event::Data};

/// One offending field of an input, reported as `errors[]` of a `422` problem or a NATS `Rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The path of the field: `type`, `agent_id`, `data.confidence`, `data.tags[2]`; empty for the whole body.
    pub field: String,
    /// What is wrong with it, lowercase, meant for the producer's developer.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated HTTP event, before ingest assigns the tenant, the id (if absent) and `accepted_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The producer's idempotency id, if it chose one.
    pub id: Option<String>,
    /// The dotted type name; always agrees with `data`.
    pub event_type: String,
    pub agent_id: String,
    pub call_id: String,
    /// When the event happened, if the producer said so.
    pub occurred_at: Option<Timestamp>,
    pub data: Data,
}

/// Producer ids, `agent_id` and `call_id`: never a `.`, which subjects and signatures reserve.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

const TOP_LEVEL_FIELDS: &[&str] = &["type", "agent_id", "call_id", "data", "id", "occurred_at"];
const IS_REQUIRED: &str = "is required";
const EXPECTED_STRING: &str = "expected a string";
const EXPECTED_INTEGER: &str = "expected an integer";
const EXPECTED_TIMESTAMP: &str = "expected an RFC 3339 timestamp, e.g. 2026-11-28T15:20:11.123Z";

// The patterns are constants covered by tests; should one ever fail to compile, its check
// rejects everything rather than panicking on the ingest path.
static ID_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(ID_PATTERN).ok());
static E164_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(catalog::E164_PATTERN).ok());
static LANGUAGE_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(catalog::LANGUAGE_PATTERN).ok());

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(s))
}

/// Whether `id` is a valid event, agent or call id (`^[A-Za-z0-9_-]{1,64}$`).
pub fn is_valid_id(id: &str) -> bool {
    matches(&ID_RE, id)
}

/// Parses and validates the body of `POST /v1/events` (or one item of a batch).
pub fn parse_event(body: &Value) -> Result<NewEvent, Vec<FieldError>> {
    let Some(body) = body.as_object() else {
        return Err(vec![FieldError::new("", "expected a JSON object")]);
    };
    let mut errors: Vec<FieldError> = body
        .keys()
        .filter(|key| !TOP_LEVEL_FIELDS.contains(&key.as_str()))
        .map(|key| FieldError::new(key.as_str(), "unknown field"))
        .collect();

    let spec = match body.get("type") {
        None => {
            errors.push(FieldError::new("type", IS_REQUIRED));
            None
        }
        Some(Value::String(name)) => check_type(name, &mut errors),
        Some(_) => {
            errors.push(FieldError::new("type", EXPECTED_STRING));
            None
        }
    };
    let agent_id = required_id(body, "agent_id", &mut errors);
    let call_id = required_id(body, "call_id", &mut errors);
    let id = match body.get("id") {
        None => None,
        Some(Value::String(id)) => {
            if !matches(&ID_RE, id) {
                errors.push(FieldError::new("id", id_message()));
            }
            Some(id.clone())
        }
        Some(_) => {
            errors.push(FieldError::new("id", EXPECTED_STRING));
            None
        }
    };
    let occurred_at = body.get("occurred_at").and_then(|value| {
        check_value(FieldKind::Timestamp, "occurred_at", value, &mut errors);
        value.as_str().and_then(time::parse_rfc3339)
    });
    let data = match body.get("data") {
        None => {
            errors.push(FieldError::new("data", IS_REQUIRED));
            None
        }
        Some(Value::Object(data)) => {
            if let Some(spec) = spec {
                check_data(spec, data, &mut errors);
            }
            Some(data)
        }
        Some(_) => {
            errors.push(FieldError::new("data", "expected an object"));
            None
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    let typed = spec
        .zip(data)
        .and_then(|(spec, data)| Some((spec, data_from_json(spec.name, data)?)));
    match typed {
        Some((spec, data)) => Ok(NewEvent {
            id,
            event_type: spec.name.to_owned(),
            agent_id,
            call_id,
            occurred_at,
            data,
        }),
        // Unreachable: without errors, the type is known and data is an object.
        None => Err(vec![FieldError::new("type", unknown_type_message())]),
    }
}

/// Validates an event an upstream service sent over NATS, with the rules of [`parse_event`].
///
/// An empty `id` is allowed (ingest assigns one); `tenant_id` comes from the subject and is
/// checked by the caller.
pub fn validate_event(ev: &v1::Event) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = check_type(&ev.r#type, &mut errors);
    match (spec, &ev.data) {
        (Some(spec), Some(data)) if spec.name != type_name(data) => errors.push(FieldError::new(
            "type",
            format!("does not match data, which holds a {}", type_name(data)),
        )),
        _ => {}
    }
    check_id("agent_id", &ev.agent_id, &mut errors);
    check_id("call_id", &ev.call_id, &mut errors);
    if !ev.id.is_empty() && !matches(&ID_RE, &ev.id) {
        errors.push(FieldError::new("id", id_message()));
    }
    if ev
        .occurred_at
        .as_ref()
        .is_some_and(|ts| time::to_datetime(ts).is_none())
    {
        errors.push(FieldError::new("occurred_at", EXPECTED_TIMESTAMP));
    }
    match &ev.data {
        None => errors.push(FieldError::new("data", IS_REQUIRED)),
        Some(data) => {
            if let (Some(spec), Value::Object(json)) =
                (catalog::find(type_name(data)), data_to_json(data))
            {
                check_data(spec, &json, &mut errors);
            }
        }
    }
    errors
}

/// Validates an event an upstream service sent over NATS ([`validate_event`]) and answers it as
/// the same [`NewEvent`] the HTTP path produces, so both paths build the stored event alike.
///
/// An empty `id` reads as "none chosen"; `tenant_id` and `accepted_at` are the caller's to set.
pub fn check_event(ev: v1::Event) -> Result<NewEvent, Vec<FieldError>> {
    let errors = validate_event(&ev);
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(data) = ev.data else {
        // Unreachable: `validate_event` reports absent data.
        return Err(vec![FieldError::new("data", IS_REQUIRED)]);
    };
    Ok(NewEvent {
        id: (!ev.id.is_empty()).then_some(ev.id),
        event_type: type_name(&data).to_owned(),
        agent_id: ev.agent_id,
        call_id: ev.call_id,
        occurred_at: ev.occurred_at,
        data,
    })
}

/// The dotted type name of typed data; the oneof is the authority on what an event is.
pub fn type_name(data: &Data) -> &'static str {
    match data {
        Data::CallStarted(_) => "call.started",
        Data::CallEnded(_) => "call.ended",
        Data::CallFailed(_) => "call.failed",
        Data::TranscriptReady(_) => "transcript.ready",
        Data::IntentDetected(_) => "intent.detected",
        Data::SentimentScored(_) => "sentiment.scored",
        Data::TransferRequested(_) => "transfer.requested",
        Data::TransferCompleted(_) => "transfer.completed",
        Data::OutcomeTagged(_) => "outcome.tagged",
        Data::QaScored(_) => "qa.scored",
    }
}

/// Typed data as the contract's JSON `data` object, fields in catalog order.
///
/// Absent timestamps, an absent `reason` and empty `tags` are omitted, so optional fields
/// read as absent rather than `null` and required ones are reported missing.
pub fn data_to_json(data: &Data) -> Value {
    match data {
        Data::CallStarted(d) => object([
            ("direction", Some(json!(d.direction))),
            ("from", Some(json!(d.from))),
            ("to", Some(json!(d.to))),
            ("started_at", timestamp(d.started_at.as_ref())),
        ]),
        Data::CallEnded(d) => object([
            ("ended_at", timestamp(d.ended_at.as_ref())),
            ("duration_ms", Some(json!(d.duration_ms))),
            ("end_reason", Some(json!(d.end_reason))),
        ]),
        Data::CallFailed(d) => object([
            ("failure_code", Some(json!(d.failure_code))),
            ("message", Some(json!(d.message))),
        ]),
        Data::TranscriptReady(d) => object([
            ("transcript_id", Some(json!(d.transcript_id))),
            ("language", Some(json!(d.language))),
            ("duration_ms", Some(json!(d.duration_ms))),
            ("segment_count", Some(json!(d.segment_count))),
        ]),
        Data::IntentDetected(d) => object([
            ("intent", Some(json!(d.intent))),
            ("confidence", Some(json!(d.confidence))),
        ]),
        Data::SentimentScored(d) => object([
            ("score", Some(json!(d.score))),
            ("label", Some(json!(d.label))),
        ]),
        Data::TransferRequested(d) => object([
            ("transfer_id", Some(json!(d.transfer_id))),
            ("target", Some(json!(d.target))),
            ("reason", d.reason.as_ref().map(|reason| json!(reason))),
        ]),
        Data::TransferCompleted(d) => object([
            ("transfer_id", Some(json!(d.transfer_id))),
            ("target", Some(json!(d.target))),
            ("status", Some(json!(d.status))),
        ]),
        Data::OutcomeTagged(d) => object([
            ("outcome", Some(json!(d.outcome))),
            ("tags", (!d.tags.is_empty()).then(|| json!(d.tags))),
        ]),
        Data::QaScored(d) => object([
            ("scorecard_id", Some(json!(d.scorecard_id))),
            ("score", Some(json!(d.score))),
            ("max_score", Some(json!(d.max_score))),
        ]),
    }
}

fn object<const N: usize>(entries: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        entries
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value?)))
            .collect(),
    )
}

fn timestamp(ts: Option<&Timestamp>) -> Option<Value> {
    ts.map(|ts| Value::String(time::format_rfc3339(ts)))
}

/// Typed data from a `data` object that already passed [`check_data`]; `None` for an unknown type.
fn data_from_json(type_name: &str, data: &Map<String, Value>) -> Option<Data> {
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // `3.0` is an integer to JSON Schema, so counts may arrive as floats.
    let count = |key: &str| {
        data.get(key)
            .and_then(|value| value.as_u64().or_else(|| value.as_f64().map(|f| f as u64)))
            .unwrap_or_default()
    };
    let number = |key: &str| data.get(key).and_then(Value::as_f64).unwrap_or_default();
    let timestamp = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .and_then(time::parse_rfc3339)
    };
    Some(match type_name {
        "call.started" => Data::CallStarted(v1::CallStarted {
            direction: text("direction"),
            from: text("from"),
            to: text("to"),
            started_at: timestamp("started_at"),
        }),
        "call.ended" => Data::CallEnded(v1::CallEnded {
            ended_at: timestamp("ended_at"),
            duration_ms: count("duration_ms"),
            end_reason: text("end_reason"),
        }),
        "call.failed" => Data::CallFailed(v1::CallFailed {
            failure_code: text("failure_code"),
            message: text("message"),
        }),
        "transcript.ready" => Data::TranscriptReady(v1::TranscriptReady {
            transcript_id: text("transcript_id"),
            language: text("language"),
            duration_ms: count("duration_ms"),
            segment_count: count("segment_count"),
        }),
        "intent.detected" => Data::IntentDetected(v1::IntentDetected {
            intent: text("intent"),
            confidence: number("confidence"),
        }),
        "sentiment.scored" => Data::SentimentScored(v1::SentimentScored {
            score: number("score"),
            label: text("label"),
        }),
        "transfer.requested" => Data::TransferRequested(v1::TransferRequested {
            transfer_id: text("transfer_id"),
            target: text("target"),
            reason: data
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        "transfer.completed" => Data::TransferCompleted(v1::TransferCompleted {
            transfer_id: text("transfer_id"),
            target: text("target"),
            status: text("status"),
        }),
        "outcome.tagged" => Data::OutcomeTagged(v1::OutcomeTagged {
            outcome: text("outcome"),
            tags: data
                .get("tags")
                .and_then(Value::as_array)
                .map(|tags| {
                    tags.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        "qa.scored" => Data::QaScored(v1::QaScored {
            scorecard_id: text("scorecard_id"),
            score: number("score"),
            max_score: number("max_score"),
        }),
        _ => return None,
    })
}

fn check_type(name: &str, errors: &mut Vec<FieldError>) -> Option<&'static EventTypeSpec> {
    let spec = catalog::find(name);
    if spec.is_none() {
        let message = if name.is_empty() {
            IS_REQUIRED.to_owned()
        } else {
            unknown_type_message()
        };
        errors.push(FieldError::new("type", message));
    }
    spec
}

fn unknown_type_message() -> String {
    let names: Vec<&str> = catalog::all().iter().map(|spec| spec.name).collect();
    format!("unknown event type; expected one of: {}", names.join(", "))
}

fn id_message() -> String {
    format!("must match {ID_PATTERN}")
}

/// `agent_id` and `call_id`: an empty one counts as missing, as protobuf cannot tell them apart.
fn check_id(field: &str, id: &str, errors: &mut Vec<FieldError>) {
    if id.is_empty() {
        errors.push(FieldError::new(field, IS_REQUIRED));
    } else if !matches(&ID_RE, id) {
        errors.push(FieldError::new(field, id_message()));
    }
}

fn required_id(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> String {
    match body.get(field) {
        Some(Value::String(id)) => {
            check_id(field, id, errors);
            id.clone()
        }
        Some(_) => {
            errors.push(FieldError::new(field, EXPECTED_STRING));
            String::new()
        }
        None => {
            errors.push(FieldError::new(field, IS_REQUIRED));
            String::new()
        }
    }
}

/// Every field of the spec, then unknown fields, then the cross-field rule.
fn check_data(spec: &EventTypeSpec, data: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for field in spec.fields {
        let path = format!("data.{}", field.name);
        match data.get(field.name) {
            Some(value) => check_value(field.kind, &path, value, errors),
            None if field.required => errors.push(FieldError::new(path, IS_REQUIRED)),
            None => {}
        }
    }
    for key in data.keys() {
        if !spec.fields.iter().any(|field| field.name == key) {
            errors.push(FieldError::new(format!("data.{key}"), "unknown field"));
        }
    }
    // The one rule JSON Schema cannot state; the catalog describes it on `max_score`.
    if spec.name == "qa.scored" {
        let number = |key| data.get(key).and_then(Value::as_f64);
        if matches!((number("score"), number("max_score")), (Some(score), Some(max)) if max < score)
        {
            errors.push(FieldError::new("data.max_score", "must be at least score"));
        }
    }
}

fn check_value(kind: FieldKind, path: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let problem = match kind {
        FieldKind::Count => count_problem(value),
        FieldKind::Number { min, max } => number_problem(value, min, max),
        FieldKind::StringList => match value.as_array() {
            None => Some("expected an array".to_owned()),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_value(FieldKind::Identifier, &format!("{path}[{i}]"), item, errors);
                }
                (items.len() > MAX_LIST_ITEMS)
                    .then(|| format!("must have at most {MAX_LIST_ITEMS} items"))
            }
        },
        _ => match value.as_str() {
            None => Some(EXPECTED_STRING.to_owned()),
            Some(s) => string_problem(kind, s),
        },
    };
    if let Some(message) = problem {
        errors.push(FieldError::new(path, message));
    }
}

fn string_problem(kind: FieldKind, s: &str) -> Option<String> {
    let too_long =
        |max: usize| (s.chars().count() > max).then(|| format!("must be at most {max} characters"));
    match kind {
        FieldKind::Identifier | FieldKind::Text if s.is_empty() => {
            Some("must not be empty".to_owned())
        }
        FieldKind::Identifier => too_long(MAX_IDENTIFIER_CHARS).or_else(|| {
            s.chars()
                .any(char::is_control)
                .then(|| "must not contain control characters".to_owned())
        }),
        FieldKind::Text => too_long(MAX_TEXT_CHARS),
        FieldKind::Enum(values) => {
            (!values.contains(&s)).then(|| format!("must be one of: {}", values.join(", ")))
        }
        FieldKind::Timestamp => time::parse_rfc3339(s)
            .is_none()
            .then(|| EXPECTED_TIMESTAMP.to_owned()),
        FieldKind::E164 => (!matches(&E164_RE, s))
            .then(|| "expected an E.164 phone number, e.g. +14155550123".to_owned()),
        FieldKind::Language => (!matches(&LANGUAGE_RE, s))
            .then(|| "expected a BCP 47 language tag, e.g. en-US".to_owned()),
        // Not string kinds; `check_value` handles them.
        FieldKind::Count | FieldKind::Number { .. } | FieldKind::StringList => None,
    }
}

/// A non-negative integer; `3.0` counts as one, as in JSON Schema.
fn count_problem(value: &Value) -> Option<String> {
    match value.as_f64() {
        _ if value.as_u64().is_some() => None,
        None => Some(EXPECTED_INTEGER.to_owned()),
        Some(n) if n.fract() != 0.0 => Some(EXPECTED_INTEGER.to_owned()),
        Some(n) if n < 0.0 => Some("must be at least 0".to_owned()),
        Some(n) if n >= u64::MAX as f64 => Some(format!("must be at most {}", u64::MAX)),
        Some(_) => None,
    }
}

fn number_problem(value: &Value, min: Option<f64>, max: Option<f64>) -> Option<String> {
    let Some(n) = value.as_f64() else {
        return Some("expected a number".to_owned());
    };
    let below = min.is_some_and(|min| n < min);
    let above = max.is_some_and(|max| n > max);
    match (min, max) {
        (Some(min), Some(max)) if below || above => {
            Some(format!("must be between {min} and {max}"))
        }
        (Some(min), _) if below => Some(format!("must be at least {min}")),
        (_, Some(max)) if above => Some(format!("must be at most {max}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::catalog::all;

    fn body(event_type: &str, data: Value) -> Value {
        json!({"type": event_type, "agent_id": "agent_1", "call_id": "call_1", "data": data})
    }

    fn example_with(event_type: &str, field: &str, value: Option<Value>) -> Value {
        let mut data = catalog::example(catalog::find(event_type).unwrap());
        let data_map = data.as_object_mut().unwrap();
        match value {
            Some(value) => data_map.insert(field.to_owned(), value),
            None => data_map.remove(field),
        };
        data
    }

    fn errors_of(body: &Value) -> Vec<FieldError> {
        parse_event(body).expect_err("the body should be rejected")
    }

    fn only_error(event_type: &str, data: Value) -> FieldError {
        let errors = errors_of(&body(event_type, data));
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    fn error(field: &str, message: &str) -> FieldError {
        FieldError::new(field, message)
    }

    fn proto_event(event_type: &str, data: Data) -> v1::Event {
        v1::Event {
            r#type: event_type.to_owned(),
            agent_id: "agent_1".to_owned(),
            call_id: "call_1".to_owned(),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn every_example_parses_into_its_own_type() {
        for spec in all() {
            let event = parse_event(&body(spec.name, catalog::example(spec))).unwrap();
            assert_eq!(event.event_type, spec.name);
            assert_eq!(type_name(&event.data), spec.name);
            assert_eq!(
                (event.agent_id.as_str(), event.call_id.as_str()),
                ("agent_1", "call_1")
            );
            assert_eq!((event.id, event.occurred_at), (None, None));
        }
    }

    #[test]
    fn every_example_round_trips_through_typed_data() {
        for spec in all() {
            let example = catalog::example(spec);
            let event = parse_event(&body(spec.name, example.clone())).unwrap();
            assert_eq!(data_to_json(&event.data), example, "{}", spec.name);
            assert!(validate_event(&proto_event(spec.name, event.data)).is_empty());
        }
    }

    #[test]
    fn a_checked_proto_event_reads_like_the_same_json_event() {
        for spec in all() {
            let from_json = parse_event(&body(spec.name, catalog::example(spec))).unwrap();
            let from_proto = check_event(proto_event(spec.name, from_json.data.clone())).unwrap();
            assert_eq!(from_proto, from_json, "{}", spec.name);
        }
        let mut with_id = proto_event(
            "call.failed",
            Data::CallFailed(v1::CallFailed {
                failure_code: "sip_503".to_owned(),
                message: "busy".to_owned(),
            }),
        );
        with_id.id = "evt-42".to_owned();
        assert_eq!(check_event(with_id).unwrap().id.as_deref(), Some("evt-42"));
        let invalid = v1::Event {
            agent_id: "agent.1".to_owned(),
            ..proto_event(
                "intent.detected",
                Data::IntentDetected(v1::IntentDetected {
                    intent: "refund".to_owned(),
                    confidence: 1.5,
                }),
            )
        };
        let fields: Vec<String> = check_event(invalid)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["agent_id", "data.confidence"]);
    }

    #[test]
    fn optional_id_and_occurred_at_are_taken() {
        let mut input = body(
            "call.failed",
            catalog::example(catalog::find("call.failed").unwrap()),
        );
        input["id"] = json!("evt-42");
        input["occurred_at"] = json!("2026-11-28T16:20:11.5+01:00");
        let event = parse_event(&input).unwrap();
        assert_eq!(event.id.as_deref(), Some("evt-42"));
        assert_eq!(
            time::format_rfc3339(&event.occurred_at.unwrap()),
            "2026-11-28T15:20:11.500Z"
        );
    }

    #[test]
    fn a_missing_required_field_is_reported_for_every_type() {
        for spec in all() {
            for field in spec.fields.iter().filter(|field| field.required) {
                let data = example_with(spec.name, field.name, None);
                assert_eq!(
                    only_error(spec.name, data),
                    error(&format!("data.{}", field.name), "is required")
                );
            }
        }
    }

    #[test]
    fn a_wrong_json_type_is_named_for_every_field() {
        for spec in all() {
            for field in spec.fields {
                let (wrong, message) = match field.kind {
                    FieldKind::Count => (json!("12"), "expected an integer"),
                    FieldKind::Number { .. } => (json!("0.5"), "expected a number"),
                    FieldKind::StringList => (json!("vip"), "expected an array"),
                    _ => (json!(42), "expected a string"),
                };
                let data = example_with(spec.name, field.name, Some(wrong));
                assert_eq!(
                    only_error(spec.name, data),
                    error(&format!("data.{}", field.name), message)
                );
            }
        }
    }

    #[test]
    fn an_unknown_data_field_is_rejected_for_every_type() {
        for spec in all() {
            let data = example_with(spec.name, "colour", Some(json!("blue")));
            assert_eq!(
                only_error(spec.name, data),
                error("data.colour", "unknown field")
            );
        }
    }

    #[test]
    fn a_bad_enum_value_lists_the_allowed_ones_for_every_enum_field() {
        let mut seen = 0;
        for spec in all() {
            for field in spec.fields {
                if let FieldKind::Enum(values) = field.kind {
                    let data = example_with(spec.name, field.name, Some(json!("sideways")));
                    let expected = format!("must be one of: {}", values.join(", "));
                    assert_eq!(
                        only_error(spec.name, data),
                        error(&format!("data.{}", field.name), &expected)
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 4);
    }

    #[test]
    fn out_of_range_numbers_and_counts_are_rejected_for_every_bounded_field() {
        let mut seen = 0;
        for spec in all() {
            for field in spec.fields {
                let (wrong, message) = match field.kind {
                    FieldKind::Count => (json!(-1), "must be at least 0".to_owned()),
                    FieldKind::Number {
                        min: Some(min),
                        max: Some(max),
                    } => (json!(max + 0.5), format!("must be between {min} and {max}")),
                    FieldKind::Number {
                        min: Some(min),
                        max: None,
                    } => (json!(min - 0.5), format!("must be at least {min}")),
                    _ => continue,
                };
                let data = example_with(spec.name, field.name, Some(wrong));
                let errors = errors_of(&body(spec.name, data));
                assert_eq!(errors[0], error(&format!("data.{}", field.name), &message));
                seen += 1;
            }
        }
        assert_eq!(seen, 7);
    }

    #[test]
    fn counts_must_be_whole_but_may_be_written_as_floats() {
        let with = |value| example_with("call.ended", "duration_ms", Some(value));
        assert_eq!(
            only_error("call.ended", with(json!(1.5))),
            error("data.duration_ms", "expected an integer")
        );
        let event = parse_event(&body("call.ended", with(json!(3.0)))).unwrap();
        assert_eq!(data_to_json(&event.data)["duration_ms"], json!(3));
        assert!(parse_event(&body("call.ended", with(json!(u64::MAX)))).is_ok());
        assert_eq!(
            only_error("call.ended", with(json!(1e20))),
            error("data.duration_ms", "must be at most 18446744073709551615")
        );
    }

    #[test]
    fn string_formats_are_checked() {
        let cases = [
            (
                "call.started",
                "from",
                json!("4155550123"),
                "expected an E.164 phone number, e.g. +14155550123",
            ),
            (
                "call.started",
                "to",
                json!("+0155550123"),
                "expected an E.164 phone number, e.g. +14155550123",
            ),
            (
                "call.started",
                "started_at",
                json!("2026-11-28 15:20"),
                EXPECTED_TIMESTAMP,
            ),
            (
                "transcript.ready",
                "language",
                json!("english"),
                "expected a BCP 47 language tag, e.g. en-US",
            ),
            (
                "call.failed",
                "failure_code",
                json!(""),
                "must not be empty",
            ),
            (
                "call.failed",
                "failure_code",
                json!("a\u{7}b"),
                "must not contain control characters",
            ),
            (
                "call.failed",
                "failure_code",
                json!("x".repeat(257)),
                "must be at most 256 characters",
            ),
            (
                "call.failed",
                "message",
                json!("x".repeat(4097)),
                "must be at most 4096 characters",
            ),
            (
                "transfer.requested",
                "reason",
                json!(""),
                "must not be empty",
            ),
        ];
        for (event_type, field, value, message) in cases {
            let data = example_with(event_type, field, Some(value));
            assert_eq!(
                only_error(event_type, data),
                error(&format!("data.{field}"), message)
            );
        }
    }

    #[test]
    fn common_language_tags_are_accepted() {
        for tag in [
            "en",
            "en-US",
            "pt-BR",
            "es-419",
            "zh-Hant-TW",
            "de-CH-1901",
            "yue",
        ] {
            let data = example_with("transcript.ready", "language", Some(json!(tag)));
            assert!(
                parse_event(&body("transcript.ready", data)).is_ok(),
                "{tag}"
            );
        }
    }

    #[test]
    fn free_text_may_span_lines() {
        let data = example_with("call.failed", "message", Some(json!("line one\nline two")));
        assert!(parse_event(&body("call.failed", data)).is_ok());
    }

    #[test]
    fn list_items_are_checked_one_by_one_with_their_index() {
        let data = example_with("outcome.tagged", "tags", Some(json!(["vip", "", 7])));
        assert_eq!(
            errors_of(&body("outcome.tagged", data)),
            [
                error("data.tags[1]", "must not be empty"),
                error("data.tags[2]", "expected a string")
            ]
        );
        let data = example_with("outcome.tagged", "tags", Some(json!(vec!["vip"; 65])));
        assert_eq!(
            only_error("outcome.tagged", data),
            error("data.tags", "must have at most 64 items")
        );
    }

    #[test]
    fn optional_fields_may_be_absent() {
        for (event_type, field) in [("transfer.requested", "reason"), ("outcome.tagged", "tags")] {
            let data = example_with(event_type, field, None);
            let event = parse_event(&body(event_type, data.clone())).unwrap();
            assert_eq!(data_to_json(&event.data), data);
        }
    }

    #[test]
    fn a_max_score_below_the_score_is_rejected() {
        let data = json!({"scorecard_id": "sc_1", "score": 8.0, "max_score": 7.5});
        assert_eq!(
            only_error("qa.scored", data),
            error("data.max_score", "must be at least score")
        );
        let data = json!({"scorecard_id": "sc_1", "score": 8.0, "max_score": 8.0});
        assert!(parse_event(&body("qa.scored", data)).is_ok());
    }

    #[test]
    fn every_offending_field_is_listed_at_once() {
        let input = json!({
            "type": "intent.detected",
            "agent_id": "agent 1",
            "id": "evt.1",
            "occurred_at": "now",
            "priority": "high",
            "data": {"intent": "", "confidence": 1.5, "model": "x"},
        });
        assert_eq!(
            errors_of(&input),
            [
                error("priority", "unknown field"),
                error("agent_id", "must match ^[A-Za-z0-9_-]{1,64}$"),
                error("call_id", "is required"),
                error("id", "must match ^[A-Za-z0-9_-]{1,64}$"),
                error("occurred_at", EXPECTED_TIMESTAMP),
                error("data.intent", "must not be empty"),
                error("data.confidence", "must be between 0 and 1"),
                error("data.model", "unknown field"),
            ]
        );
    }

    #[test]
    fn an_unknown_type_lists_the_known_ones() {
        let errors = errors_of(&body("call.paused", json!({})));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "type");
        assert!(
            errors[0].message.contains("call.started, call.ended"),
            "{}",
            errors[0].message
        );
        assert_eq!(
            errors_of(&json!({"type": 7, "agent_id": "a", "call_id": "c", "data": {}}))[0],
            error("type", "expected a string")
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_one_error_on_the_whole_body() {
        assert_eq!(
            errors_of(&json!([1])),
            [error("", "expected a JSON object")]
        );
    }

    #[test]
    fn data_that_is_not_an_object_is_rejected() {
        assert_eq!(
            errors_of(&body("call.failed", json!("boom"))),
            [error("data", "expected an object")]
        );
        let mut input = body("call.failed", json!({}));
        input.as_object_mut().unwrap().remove("data");
        assert_eq!(errors_of(&input), [error("data", "is required")]);
    }

    #[test]
    fn nats_and_http_agree_on_invalid_input() {
        let cases = [
            (
                json!({"type": "intent.detected", "agent_id": "agent 1", "call_id": "", "id": "a.b",
                       "data": {"intent": "book", "confidence": 1.5}}),
                v1::Event {
                    r#type: "intent.detected".into(),
                    agent_id: "agent 1".into(),
                    id: "a.b".into(),
                    data: Some(Data::IntentDetected(v1::IntentDetected {
                        intent: "book".into(),
                        confidence: 1.5,
                    })),
                    ..Default::default()
                },
            ),
            (
                body(
                    "call.started",
                    json!({"direction": "sideways", "from": "555", "to": "+14155550123"}),
                ),
                proto_event(
                    "call.started",
                    Data::CallStarted(v1::CallStarted {
                        direction: "sideways".into(),
                        from: "555".into(),
                        to: "+14155550123".into(),
                        started_at: None,
                    }),
                ),
            ),
            (
                body(
                    "qa.scored",
                    json!({"scorecard_id": "", "score": 9.0, "max_score": 5.0}),
                ),
                proto_event(
                    "qa.scored",
                    Data::QaScored(v1::QaScored {
                        scorecard_id: String::new(),
                        score: 9.0,
                        max_score: 5.0,
                    }),
                ),
            ),
            (
                body(
                    "outcome.tagged",
                    json!({"outcome": "sold", "tags": ["ok", "", "x\ty"]}),
                ),
                proto_event(
                    "outcome.tagged",
                    Data::OutcomeTagged(v1::OutcomeTagged {
                        outcome: "sold".into(),
                        tags: vec!["ok".into(), String::new(), "x\ty".into()],
                    }),
                ),
            ),
        ];
        for (json_body, proto) in cases {
            let from_http = errors_of(&json_body);
            assert!(!from_http.is_empty());
            assert_eq!(validate_event(&proto), from_http, "{json_body}");
        }
    }

    #[test]
    fn nats_events_must_carry_data_that_matches_their_type() {
        let data = Data::CallFailed(v1::CallFailed {
            failure_code: "sip_503".into(),
            message: "down".into(),
        });
        assert_eq!(
            validate_event(&proto_event("call.ended", data)),
            [error(
                "type",
                "does not match data, which holds a call.failed"
            )]
        );
        let event = v1::Event {
            data: None,
            ..proto_event("call.ended", Data::CallEnded(Default::default()))
        };
        assert_eq!(validate_event(&event), [error("data", "is required")]);
    }

    #[test]
    fn nats_events_may_leave_the_id_to_ingest() {
        let data = Data::CallFailed(v1::CallFailed {
            failure_code: "sip_503".into(),
            message: "down".into(),
        });
        let event = proto_event("call.failed", data);
        assert!(event.id.is_empty());
        assert!(validate_event(&event).is_empty());
    }

    #[test]
    fn a_nan_score_over_nats_is_not_a_number() {
        let data = Data::SentimentScored(v1::SentimentScored {
            score: f64::NAN,
            label: "neutral".into(),
        });
        assert_eq!(
            validate_event(&proto_event("sentiment.scored", data)),
            [error("data.score", "expected a number")]
        );
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Any JSON value: nested objects and arrays of strings (with NULs and odd Unicode), numbers,
    /// booleans and nulls.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_.]{0,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A body that is nearly valid: a real type and its example data with some of its own
    /// fields replaced by arbitrary values or removed, sometimes joined by an unknown field.
    fn near_valid() -> impl Strategy<Value = Value> {
        let specs = crate::catalog::all();
        (0..specs.len()).prop_flat_map(move |i| {
            let spec = &specs[i];
            let edit = (0..spec.fields.len(), proptest::option::of(any_json()));
            let agent =
                prop_oneof![3 => "[A-Za-z0-9_-]{1,64}".prop_map(Value::String), 1 => any_json()];
            (
                proptest::collection::vec(edit, 0..3),
                agent,
                proptest::option::weighted(0.2, "[a-z]{1,8}"),
            )
                .prop_map(move |(edits, agent, unknown)| {
                    let mut data = crate::catalog::example(spec);
                    for (f, value) in edits {
                        let name = spec.fields[f].name;
                        match (value, data.as_object_mut()) {
                            (Some(v), _) => data[name] = v,
                            (None, Some(obj)) => {
                                obj.remove(name);
                            }
                            (None, None) => {}
                        }
                    }
                    if let Some(extra) = unknown {
                        data[format!("x_{extra}")] = json!(1);
                    }
                    json!({"type": spec.name, "agent_id": agent, "call_id": "c1", "data": data})
                })
        })
    }

    proptest! {
        /// No input makes the validator panic, and a rejection always names at least one field.
        #[test]
        fn the_validator_never_panics_and_always_says_why(body in prop_oneof![any_json(), near_valid()]) {
            if let Err(errors) = parse_event(&body) {
                prop_assert!(!errors.is_empty());
            }
        }

        /// What the validator accepts survives the trip through protobuf and back unchanged, and
        /// the protobuf path (NATS) accepts it too.
        #[test]
        fn accepted_data_round_trips_and_both_paths_agree(body in near_valid()) {
            if let Ok(new) = parse_event(&body) {
                // protobuf cannot tell an empty list from an absent one: `"tags": []` is
                // delivered as no `tags`, which the schema allows.
                let mut sent = body["data"].clone();
                if sent.get("tags").is_some_and(|t| t.as_array().is_some_and(Vec::is_empty))
                    && let Some(obj) = sent.as_object_mut()
                {
                    obj.remove("tags");
                }
                prop_assert_eq!(&data_to_json(&new.data), &sent);
                let event = v1::Event {
                    id: "evt_1".into(),
                    tenant_id: "t".into(),
                    agent_id: new.agent_id.clone(),
                    call_id: new.call_id.clone(),
                    r#type: new.event_type.clone(),
                    data: Some(new.data.clone()),
                    ..Default::default()
                };
                prop_assert_eq!(validate_event(&event), Vec::<FieldError>::new());
            }
        }
    }
}
