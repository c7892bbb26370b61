//! The JSON envelope a receiver gets, built once per event at fan-out and signed per delivery.
//!
//! Keys come in the contract's order (`id`, `type`, `timestamp`, `tenant_id`, `agent_id`,
//! `call_id`, `data`, `links`), which `serde_json`'s `preserve_order` keeps.

use serde_json::{Map, Value, json};

use crate::time;
use crate::v1::{Event, event::Data};
use crate::validate::data_to_json;

/// The envelope as the exact bytes POSTed to receivers.
pub fn render(event: &Event, links_base_url: &str) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its map keys are always strings.
    serde_json::to_vec(&to_value(event, links_base_url)).unwrap_or_default()
}

/// The envelope as a value, for the events feed and `GET /v1/events/{id}`.
///
/// `timestamp` is when the event occurred, else when it was accepted; `links` point at the
/// call and, where the type has one, its transcript or recording.
pub fn to_value(event: &Event, links_base_url: &str) -> Value {
    let base = links_base_url.trim_end_matches('/');
    let call = format!("{base}/v1/calls/{}", path_segment(&event.call_id));
    let mut links = Map::new();
    links.insert("call".into(), json!(call));
    match &event.data {
        Some(Data::TranscriptReady(transcript)) => {
            let id = path_segment(&transcript.transcript_id);
            links.insert(
                "transcript".into(),
                json!(format!("{base}/v1/transcripts/{id}")),
            );
        }
        Some(Data::CallEnded(_)) => {
            links.insert("recording".into(), json!(format!("{call}/recording")));
        }
        _ => {}
    }
    let timestamp = event.occurred_at.or(event.accepted_at).unwrap_or_default();
    json!({
        "id": event.id,
        "type": event.r#type,
        "timestamp": time::format_rfc3339(&timestamp),
        "tenant_id": event.tenant_id,
        "agent_id": event.agent_id,
        "call_id": event.call_id,
        "data": event.data.as_ref().map(data_to_json),
        "links": links,
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a data identifier
/// (which may hold `/` or `?`) stays one path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::v1;

    fn event(data: Data) -> Event {
        Event {
            id: "evt_01JDQ7Z3K8M2VX4N6P9R5T0WYB".into(),
            tenant_id: "acme".into(),
            agent_id: "agent_1".into(),
            call_id: "call_9".into(),
            r#type: crate::validate::type_name(&data).into(),
            occurred_at: time::parse_rfc3339("2026-11-28T15:20:11.123Z"),
            accepted_at: time::parse_rfc3339("2026-11-28T15:20:12Z"),
            data: Some(data),
        }
    }

    fn intent() -> Data {
        Data::IntentDetected(v1::IntentDetected {
            intent: "reschedule".into(),
            confidence: 0.92,
        })
    }

    #[test]
    fn the_envelope_has_the_contract_keys_in_order() {
        let bytes = render(&event(intent()), "https://api.open.example/");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            concat!(
                r#"{"id":"evt_01JDQ7Z3K8M2VX4N6P9R5T0WYB","type":"intent.detected","#,
                r#""timestamp":"2026-11-28T15:20:11.123Z","tenant_id":"acme","agent_id":"agent_1","#,
                r#""call_id":"call_9","data":{"intent":"reschedule","confidence":0.92},"#,
                r#""links":{"call":"https://api.open.example/v1/calls/call_9"}}"#,
            )
        );
    }

    #[test]
    fn the_timestamp_falls_back_to_acceptance_time() {
        let ev = Event {
            occurred_at: None,
            ..event(intent())
        };
        assert_eq!(
            to_value(&ev, "https://x")["timestamp"],
            "2026-11-28T15:20:12.000Z"
        );
    }

    #[test]
    fn a_transcript_links_to_itself() {
        let data = Data::TranscriptReady(v1::TranscriptReady {
            transcript_id: "tr_1/a".into(),
            ..Default::default()
        });
        assert_eq!(
            to_value(&event(data), "https://x")["links"],
            json!({"call": "https://x/v1/calls/call_9", "transcript": "https://x/v1/transcripts/tr_1%2Fa"})
        );
    }

    #[test]
    fn an_ended_call_links_to_its_recording() {
        let data = Data::CallEnded(v1::CallEnded::default());
        assert_eq!(
            to_value(&event(data), "https://x")["links"],
            json!({"call": "https://x/v1/calls/call_9", "recording": "https://x/v1/calls/call_9/recording"})
        );
    }

    #[test]
    fn other_types_link_to_the_call_only() {
        let data = Data::QaScored(v1::QaScored {
            scorecard_id: "sc".into(),
            score: 1.0,
            max_score: 2.0,
        });
        assert_eq!(
            to_value(&event(data), "https://x//")["links"],
            json!({"call": "https://x/v1/calls/call_9"})
        );
    }
}
