//! Setting aside what is not what its subject promises.
//!
//! Anyone with publish rights on the events or deliveries subjects can put anything there:
//! garbage bytes, or a protobuf that decodes but names another tenant or fails validation.
//! Such a message is copied to the rejects stream with the reason and its original subject,
//! and only then terminated: never redelivered forever, never blocking the consumer, and kept
//! for whoever investigates. If the copy cannot be stored, the message is handed back.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind},
};
use proto::{
    subjects,
    v1::{Delivery, Event},
};

use crate::fanout::ack;

/// Why an event does not belong on its subject, if it does not.
pub fn check_event(subject: &str, event: &Event) -> Result<(), String> {
    // webhooks.events.<tenant>.<agent>.<type, two tokens>
    let mut tokens = subject.splitn(5, '.').skip(2);
    let (tenant, agent, event_type) = (tokens.next(), tokens.next(), tokens.next());
    if tenant != Some(event.tenant_id.as_str()) {
        return Err(format!(
            "tenant_id {:?} does not match the subject",
            event.tenant_id
        ));
    }
    if agent != Some(event.agent_id.as_str()) || event_type != Some(event.r#type.as_str()) {
        return Err("agent_id or type does not match the subject".into());
    }
    if event.id.is_empty() {
        return Err("event has no id".into());
    }
    let errors = proto::validate::validate_event(event);
    if let Some(first) = errors.first() {
        return Err(format!(
            "invalid event: {} {} ({} error(s))",
            first.field,
            first.message,
            errors.len()
        ));
    }
    Ok(())
}

/// Why a delivery task does not belong on its subject, if it does not.
pub fn check_delivery(subject: &str, task: &Delivery) -> Result<(), String> {
    // webhooks.{deliveries,replays}.<tenant>.<subscription>
    let mut tokens = subject.split('.').skip(2);
    let (tenant, subscription) = (tokens.next(), tokens.next());
    if tenant != Some(task.tenant_id.as_str())
        || subscription != Some(task.subscription_id.as_str())
    {
        return Err("tenant_id or subscription_id does not match the subject".into());
    }
    if task.event_id.is_empty() || !proto::validate::is_valid_id(&task.event_id) {
        return Err("delivery has no valid event id".into());
    }
    if task.payload.is_empty() {
        return Err("delivery has no payload".into());
    }
    Ok(())
}

/// Copies `message` to the rejects stream with `reason`, then terminates it.
pub async fn set_aside(
    js: &jetstream::Context,
    source: &str,
    message: &jetstream::Message,
    reason: &str,
) {
    tracing::warn!(subject = %message.subject, reason, "message set aside");
    let mut headers = HeaderMap::new();
    headers.insert(subjects::HEADER_REJECT_REASON, reason);
    headers.insert(subjects::HEADER_ORIGINAL_SUBJECT, message.subject.as_str());
    let stored = async {
        js.publish_with_headers(
            subjects::reject_subject(source),
            headers,
            message.payload.clone(),
        )
        .await?
        .await?;
        Ok::<_, anyhow::Error>(())
    };
    match stored.await {
        Ok(()) => ack(message, AckKind::Term).await,
        Err(error) => {
            tracing::error!(error = %error, "could not set the message aside, handed back");
            ack(message, AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let spec = proto::catalog::find("intent.detected");
        let data = spec.map(proto::catalog::example).unwrap_or_default();
        let body = serde_json::json!({"type": "intent.detected", "agent_id": "a1", "call_id": "c1", "data": data});
        let new = proto::validate::parse_event(&body).unwrap_or_else(|e| panic!("{e:?}"));
        Event {
            id: "evt_1".into(),
            tenant_id: "acme".into(),
            agent_id: new.agent_id,
            call_id: new.call_id,
            r#type: new.event_type,
            data: Some(new.data),
            ..Default::default()
        }
    }

    const SUBJECT: &str = "webhooks.events.acme.a1.intent.detected";

    #[test]
    fn an_event_that_matches_its_subject_passes() {
        assert_eq!(check_event(SUBJECT, &event()), Ok(()));
    }

    #[test]
    fn an_event_naming_another_tenant_agent_or_type_is_set_aside() {
        assert!(check_event("webhooks.events.other.a1.intent.detected", &event()).is_err());
        assert!(check_event("webhooks.events.acme.a2.intent.detected", &event()).is_err());
        assert!(check_event("webhooks.events.acme.a1.call.started", &event()).is_err());
    }

    #[test]
    fn an_invalid_or_id_less_event_is_set_aside() {
        let mut e = event();
        e.id.clear();
        assert!(check_event(SUBJECT, &e).is_err());
        let mut e = event();
        e.data = None;
        assert!(check_event(SUBJECT, &e).is_err());
        assert!(check_event(SUBJECT, &Event::default()).is_err());
    }

    #[test]
    fn a_delivery_must_match_its_subject_and_carry_a_payload() {
        let task = Delivery {
            event_id: "evt_1".into(),
            tenant_id: "acme".into(),
            subscription_id: "sub_1".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            ..Default::default()
        };
        assert_eq!(
            check_delivery("webhooks.deliveries.acme.sub_1", &task),
            Ok(())
        );
        assert_eq!(check_delivery("webhooks.replays.acme.sub_1", &task), Ok(()));
        assert!(check_delivery("webhooks.deliveries.other.sub_1", &task).is_err());
        assert!(check_delivery("webhooks.deliveries.acme.sub_2", &task).is_err());
        assert!(
            check_delivery(
                "webhooks.deliveries.acme.sub_1",
                &Delivery {
                    payload: bytes::Bytes::new(),
                    ..task.clone()
                }
            )
            .is_err()
        );
        assert!(check_delivery("webhooks.deliveries.acme.sub_1", &Delivery::default()).is_err());
    }
}
