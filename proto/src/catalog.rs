//! The ten event types and their `data` fields: the single table behind validation, schemas and examples.
//!
//! `GET /v1/event-types`, the JSON Schemas in it, the samples sent by `POST …/test` and the
//! validator of both ingest paths are all derived from [`all`], so they cannot drift apart.

use serde_json::{Map, Value, json};

/// One event type: its dotted name and the fields of its `data` object.
#[derive(Debug)]
pub struct EventTypeSpec {
    /// The dotted name, e.g. `call.started`; also the last two tokens of its subject.
    pub name: &'static str,
    /// What happened, for humans browsing `GET /v1/event-types`.
    pub description: &'static str,
    /// The fields of `data`, in the order schemas and examples list them.
    pub fields: &'static [FieldSpec],
}

/// One field of a type's `data` object.
#[derive(Debug)]
pub struct FieldSpec {
    /// The JSON key.
    pub name: &'static str,
    /// What values it accepts.
    pub kind: FieldKind,
    /// Whether it must be present; optional fields may be absent, never `null`.
    pub required: bool,
    /// What it means, copied into the JSON Schema.
    pub description: &'static str,
}

/// The value shapes `data` fields take; each maps to one JSON Schema fragment and one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    /// A non-empty string of at most [`MAX_IDENTIFIER_CHARS`] characters, no control characters.
    Identifier,
    /// A non-empty string of at most [`MAX_TEXT_CHARS`] characters (free text, newlines allowed).
    Text,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// An RFC 3339 timestamp string.
    Timestamp,
    /// An E.164 phone number string, see [`E164_PATTERN`].
    E164,
    /// A BCP 47 language tag string, see [`LANGUAGE_PATTERN`].
    Language,
    /// A non-negative integer (durations, counts).
    Count,
    /// A finite number within optional bounds (scores, confidences).
    Number {
        /// Inclusive lower bound.
        min: Option<f64>,
        /// Inclusive upper bound.
        max: Option<f64>,
    },
    /// An array of at most [`MAX_LIST_ITEMS`] identifiers (see [`FieldKind::Identifier`]).
    StringList,
}

/// Longest identifier, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 256;
/// Longest free text, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most items in a string list.
pub const MAX_LIST_ITEMS: usize = 64;
/// E.164: a `+`, a non-zero country code digit, at most 15 digits in all.
pub const E164_PATTERN: &str = r"^\+[1-9][0-9]{1,14}$";
/// BCP 47, the common subset: language, optional script, region and variants
/// (`en`, `en-US`, `pt-BR`, `es-419`, `zh-Hant-TW`, `de-CH-1901`).
pub const LANGUAGE_PATTERN: &str = r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$";
/// No C0/C1 control characters (what `char::is_control` tests), in ECMA-262 syntax for schemas.
const NO_CONTROL_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";

const END_REASONS: &[&str] = &[
    "completed",
    "caller_hangup",
    "agent_hangup",
    "transferred",
    "timeout",
    "error",
];

const fn required(name: &'static str, kind: FieldKind, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: true,
        description,
    }
}

const fn optional(name: &'static str, kind: FieldKind, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: false,
        description,
    }
}

static CATALOG: &[EventTypeSpec] = &[
    EventTypeSpec {
        name: "call.started",
        description: "A call between a caller and an agent was connected.",
        fields: &[
            required(
                "direction",
                FieldKind::Enum(&["inbound", "outbound"]),
                "Who placed the call.",
            ),
            required("from", FieldKind::E164, "The calling number, E.164."),
            required("to", FieldKind::E164, "The called number, E.164."),
            required(
                "started_at",
                FieldKind::Timestamp,
                "When the call was connected.",
            ),
        ],
    },
    EventTypeSpec {
        name: "call.ended",
        description: "A call ended.",
        fields: &[
            required("ended_at", FieldKind::Timestamp, "When the call ended."),
            required(
                "duration_ms",
                FieldKind::Count,
                "How long the call lasted, in milliseconds.",
            ),
            required(
                "end_reason",
                FieldKind::Enum(END_REASONS),
                "Why the call ended.",
            ),
        ],
    },
    EventTypeSpec {
        name: "call.failed",
        description: "A call could not be connected or broke off because of an error.",
        fields: &[
            required(
                "failure_code",
                FieldKind::Identifier,
                "A machine-readable failure code.",
            ),
            required("message", FieldKind::Text, "A human-readable explanation."),
        ],
    },
    EventTypeSpec {
        name: "transcript.ready",
        description: "The transcript of a call is available.",
        fields: &[
            required(
                "transcript_id",
                FieldKind::Identifier,
                "The transcript, fetchable under links.transcript.",
            ),
            required(
                "language",
                FieldKind::Language,
                "The spoken language, BCP 47.",
            ),
            required(
                "duration_ms",
                FieldKind::Count,
                "The transcribed audio's length, in milliseconds.",
            ),
            required(
                "segment_count",
                FieldKind::Count,
                "How many segments the transcript has.",
            ),
        ],
    },
    EventTypeSpec {
        name: "intent.detected",
        description: "The agent recognised what the caller wants.",
        fields: &[
            required("intent", FieldKind::Identifier, "The recognised intent."),
            required(
                "confidence",
                FieldKind::Number {
                    min: Some(0.0),
                    max: Some(1.0),
                },
                "How sure the model is, from 0 to 1.",
            ),
        ],
    },
    EventTypeSpec {
        name: "sentiment.scored",
        description: "The caller's sentiment was scored.",
        fields: &[
            required(
                "score",
                FieldKind::Number {
                    min: Some(-1.0),
                    max: Some(1.0),
                },
                "From -1 (negative) to 1 (positive).",
            ),
            required(
                "label",
                FieldKind::Enum(&["positive", "neutral", "negative"]),
                "The score's bucket.",
            ),
        ],
    },
    EventTypeSpec {
        name: "transfer.requested",
        description: "The agent asked to transfer the call.",
        fields: &[
            required(
                "transfer_id",
                FieldKind::Identifier,
                "The transfer, shared with transfer.completed.",
            ),
            required(
                "target",
                FieldKind::Identifier,
                "Where the call goes: a number, queue or agent.",
            ),
            optional("reason", FieldKind::Text, "Why the agent transfers."),
        ],
    },
    EventTypeSpec {
        name: "transfer.completed",
        description: "A requested transfer finished.",
        fields: &[
            required(
                "transfer_id",
                FieldKind::Identifier,
                "The transfer, as in transfer.requested.",
            ),
            required("target", FieldKind::Identifier, "Where the call went."),
            required(
                "status",
                FieldKind::Enum(&["completed", "failed", "cancelled"]),
                "How the transfer ended.",
            ),
        ],
    },
    EventTypeSpec {
        name: "outcome.tagged",
        description: "The call's outcome was recorded.",
        fields: &[
            required("outcome", FieldKind::Identifier, "The outcome."),
            optional("tags", FieldKind::StringList, "Free-form labels."),
        ],
    },
    EventTypeSpec {
        name: "qa.scored",
        description: "The call was scored against a QA scorecard.",
        fields: &[
            required("scorecard_id", FieldKind::Identifier, "The scorecard used."),
            required(
                "score",
                FieldKind::Number {
                    min: Some(0.0),
                    max: None,
                },
                "The points achieved.",
            ),
            required(
                "max_score",
                FieldKind::Number {
                    min: Some(0.0),
                    max: None,
                },
                "The points possible; at least score.",
            ),
        ],
    },
];

/// Every event type, in the contract's order.
pub fn all() -> &'static [EventTypeSpec] {
    CATALOG
}

/// The spec of a type by its dotted name.
pub fn find(name: &str) -> Option<&'static EventTypeSpec> {
    CATALOG.iter().find(|spec| spec.name == name)
}

/// Whether a subscription may filter on `p`: a known type, `<prefix>.*` matching at least one
/// known type, or `*`. Patterns that can never match are refused so a typo does not silently
/// subscribe to nothing.
pub fn type_pattern_is_valid(p: &str) -> bool {
    if p == "*" || find(p).is_some() {
        return true;
    }
    p.strip_suffix('*')
        .filter(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
        .is_some_and(|prefix| CATALOG.iter().any(|spec| spec.name.starts_with(prefix)))
}

/// Whether the subscription type pattern `pattern` (an exact name, `<prefix>.*` or `*`) selects
/// an event of `event_type`: the same rule as the dispatcher's index, as one pure function.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" || pattern == event_type {
        return true;
    }
    pattern
        .strip_suffix('*')
        .filter(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
        .is_some_and(|prefix| event_type.starts_with(prefix))
}

/// Whether a subscription's filters (type patterns; agent ids, empty meaning every agent)
/// select an event of `event_type` from `agent`.
pub fn filters_match(
    patterns: &[String],
    agents: &[String],
    event_type: &str,
    agent: &str,
) -> bool {
    patterns.iter().any(|p| pattern_matches(p, event_type))
        && (agents.is_empty() || agents.iter().any(|a| a == agent))
}

/// The JSON Schema (draft 2020-12) of a type's `data` object.
///
/// The one rule a schema cannot state, `qa.scored`'s `max_score ≥ score`, is in the field's
/// description and enforced by the validator.
pub fn schema(spec: &EventTypeSpec) -> Value {
    let properties: Map<String, Value> = spec
        .fields
        .iter()
        .map(|field| {
            let mut property = kind_schema(field.kind);
            property.insert("description".into(), field.description.into());
            (field.name.to_owned(), Value::Object(property))
        })
        .collect();
    let required: Vec<&str> = spec
        .fields
        .iter()
        .filter(|field| field.required)
        .map(|field| field.name)
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": spec.name,
        "description": spec.description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn kind_schema(kind: FieldKind) -> Map<String, Value> {
    let value = match kind {
        FieldKind::Identifier => json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDENTIFIER_CHARS,
            "pattern": NO_CONTROL_PATTERN,
        }),
        FieldKind::Text => json!({"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS}),
        FieldKind::Enum(values) => json!({"type": "string", "enum": values}),
        FieldKind::Timestamp => json!({"type": "string", "format": "date-time"}),
        FieldKind::E164 => json!({"type": "string", "pattern": E164_PATTERN}),
        FieldKind::Language => json!({"type": "string", "pattern": LANGUAGE_PATTERN}),
        FieldKind::Count => json!({"type": "integer", "minimum": 0}),
        FieldKind::Number { min, max } => {
            let mut number = json!({"type": "number"});
            if let Some(min) = min {
                number["minimum"] = min.into();
            }
            if let Some(max) = max {
                number["maximum"] = max.into();
            }
            number
        }
        FieldKind::StringList => json!({
            "type": "array",
            "items": kind_schema(FieldKind::Identifier),
            "maxItems": MAX_LIST_ITEMS,
        }),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A realistic `data` object of the type, for docs and `POST /v1/subscriptions/{id}/test`.
pub fn example(spec: &EventTypeSpec) -> Value {
    match spec.name {
        "call.started" => json!({
            "direction": "inbound",
            "from": "+14155550123",
            "to": "+18005550199",
            "started_at": "2026-11-28T15:20:11.123Z",
        }),
        "call.ended" => json!({
            "ended_at": "2026-11-28T15:24:35.456Z",
            "duration_ms": 264_333,
            "end_reason": "completed",
        }),
        "call.failed" => json!({
            "failure_code": "sip_503",
            "message": "The carrier answered 503 Service Unavailable.",
        }),
        "transcript.ready" => json!({
            "transcript_id": "tr_01JDQ7Z3K8M2VX4N6P9R5T0WYB",
            "language": "en-US",
            "duration_ms": 264_333,
            "segment_count": 87,
        }),
        "intent.detected" => json!({"intent": "reschedule_appointment", "confidence": 0.92}),
        "sentiment.scored" => json!({"score": 0.64, "label": "positive"}),
        "transfer.requested" => json!({
            "transfer_id": "xfer_7f3a9c",
            "target": "+14155550188",
            "reason": "The caller asked to speak to billing.",
        }),
        "transfer.completed" => json!({
            "transfer_id": "xfer_7f3a9c",
            "target": "+14155550188",
            "status": "completed",
        }),
        "outcome.tagged" => json!({
            "outcome": "appointment_rescheduled",
            "tags": ["returning_customer", "upsell_offered"],
        }),
        "qa.scored" => {
            json!({"scorecard_id": "sc_onboarding_v3", "score": 42.5, "max_score": 50.0})
        }
        _ => Value::Object(Map::new()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_pattern_matches_its_exact_type_its_prefix_and_the_wildcard() {
        assert!(pattern_matches("call.started", "call.started"));
        assert!(pattern_matches("call.*", "call.started"));
        assert!(pattern_matches("*", "qa.scored"));
        assert!(!pattern_matches("call.started", "call.ended"));
        assert!(!pattern_matches("call.*", "transcript.ready"));
        assert!(!pattern_matches("cal*", "call.started"));
        assert!(!pattern_matches(".*", "call.started"));
        assert!(!pattern_matches("call.*", "callx.started"));
    }

    #[test]
    fn filters_need_a_matching_type_and_an_agent_unless_the_agent_list_is_empty() {
        let types = vec!["call.*".to_owned(), "qa.scored".to_owned()];
        let agents = vec!["a1".to_owned()];
        assert!(filters_match(&types, &[], "call.ended", "anyone"));
        assert!(filters_match(&types, &agents, "qa.scored", "a1"));
        assert!(!filters_match(&types, &agents, "qa.scored", "a2"));
        assert!(!filters_match(&types, &agents, "intent.detected", "a1"));
        assert!(!filters_match(&[], &[], "call.ended", "a1"));
    }

    #[test]
    fn the_catalog_lists_the_ten_contract_types_in_order() {
        let names: Vec<&str> = all().iter().map(|spec| spec.name).collect();
        assert_eq!(
            names,
            [
                "call.started",
                "call.ended",
                "call.failed",
                "transcript.ready",
                "intent.detected",
                "sentiment.scored",
                "transfer.requested",
                "transfer.completed",
                "outcome.tagged",
                "qa.scored",
            ]
        );
        assert!(find("call.ended").is_some());
        assert!(find("call").is_none());
    }

    #[test]
    fn type_patterns_accept_names_prefixes_and_star_only() {
        for ok in ["*", "call.*", "transfer.*", "qa.*", "call.started"] {
            assert!(type_pattern_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "call",
            "call.",
            "cal.*",
            "nope.*",
            "call.started.*",
            ".*",
            "call.st*",
            "**",
        ] {
            assert!(!type_pattern_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn every_schema_lists_every_field_and_forbids_others() {
        for spec in all() {
            let schema = schema(spec);
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["additionalProperties"], false);
            let properties = schema["properties"].as_object().unwrap();
            assert_eq!(properties.len(), spec.fields.len());
            for field in spec.fields {
                assert!(properties[field.name]["description"].is_string());
                let listed = schema["required"]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from(field.name));
                assert_eq!(listed, field.required, "{}.{}", spec.name, field.name);
            }
        }
    }

    #[test]
    fn schemas_carry_bounds_enums_and_formats() {
        let started = schema(find("call.started").unwrap());
        assert_eq!(
            started["properties"]["direction"]["enum"],
            json!(["inbound", "outbound"])
        );
        assert_eq!(started["properties"]["started_at"]["format"], "date-time");
        assert_eq!(started["properties"]["from"]["pattern"], E164_PATTERN);
        let intent = schema(find("intent.detected").unwrap());
        assert_eq!(intent["properties"]["confidence"]["minimum"], 0.0);
        assert_eq!(intent["properties"]["confidence"]["maximum"], 1.0);
        let ended = schema(find("call.ended").unwrap());
        assert_eq!(
            ended["properties"]["duration_ms"],
            json!({
                "type": "integer",
                "minimum": 0,
                "description": "How long the call lasted, in milliseconds.",
            })
        );
    }

    #[test]
    fn schema_patterns_are_valid_regexes() {
        for pattern in [E164_PATTERN, LANGUAGE_PATTERN, NO_CONTROL_PATTERN] {
            regex::Regex::new(pattern).unwrap();
        }
    }

    #[test]
    fn every_type_has_an_example_with_every_field() {
        for spec in all() {
            let example = example(spec);
            let object = example.as_object().unwrap();
            assert_eq!(object.len(), spec.fields.len(), "{}", spec.name);
        }
    }
}
