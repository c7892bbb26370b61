//! Test sends: `POST /v1/subscriptions/{id}/test` in ingest becomes a NATS request on
//! `webhooks.test.<tenant>`, answered here by exactly one dispatcher (a queue group), because
//! only a dispatcher calls subscriber URLs (the SSRF guard, timeouts and signing live here).
//!
//! The sample event is the catalog's example of the requested type, rendered as a full
//! envelope and signed like any delivery (every live secret, `webhook-attempt: 1`). It is not
//! queued, not recorded in the attempt log, and touches neither circuit breakers nor the
//! failing-since state: it goes straight to [`Deliverer::attempt`].

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use prost::Message as _;
use proto::{
    subjects,
    v1::{Delivery, Event, TestSendReply, TestSendRequest},
};
use serde_json::json;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    deliver::Deliverer,
    subscriptions::{Live, Lookup},
};

/// Most of the receiver's answer carried back to the API caller.
pub const MAX_REPLY_BODY: usize = 1024;
/// How long a subscription ingest knows may take to reach this replica's index.
const PROPAGATION: Duration = Duration::from_secs(5);
/// Longest wait for the server to confirm the unsubscribe when draining.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// The agent and call of every sample event.
pub const SAMPLE_AGENT: &str = "agent_test";
pub const SAMPLE_CALL: &str = "call_test";

/// Answers test-send requests until `token` is cancelled; each runs on `tracker`, so a drain
/// lets answers in flight finish.
pub async fn run(
    deliverer: Arc<Deliverer>,
    client: async_nats::Client,
    links_base_url: String,
    tracker: TaskTracker,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut requests = client
        .queue_subscribe(
            subjects::TEST_SEND_SUBJECTS,
            subjects::TEST_SEND_QUEUE.to_owned(),
        )
        .await?;
    let links_base_url: Arc<str> = links_base_url.into();
    // Once cancelled, the subscription is drained: requests the server routed here before it
    // saw the unsubscribe are still answered, and the loop ends when the server confirms it,
    // so no request is left to time out on a replica that is gone.
    let mut drain_deadline = None;
    loop {
        let message = tokio::select! {
            _ = token.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                if requests.drain().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            _ = sleep_until(drain_deadline) => return Ok(()),
            next = requests.next() => match next {
                Some(message) => message,
                None if drain_deadline.is_some() => return Ok(()),
                None => anyhow::bail!("test-send subscription ended"),
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (deliverer, client, links) =
            (deliverer.clone(), client.clone(), links_base_url.clone());
        tracker.spawn(async move {
            let reply = match TestSendRequest::decode(message.payload.as_ref()) {
                Ok(request) => answer(&deliverer, &links, &request).await,
                Err(error) => failed(format!("undecodable test-send request: {error}")),
            };
            if let Err(error) = client.publish(reply_to, reply.encode_to_vec().into()).await {
                tracing::warn!(error = %error, "test-send reply not sent");
            }
        });
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn failed(error: String) -> TestSendReply {
    TestSendReply {
        error,
        ..Default::default()
    }
}

/// Builds the sample, sends it once and says what happened.
pub async fn answer(
    deliverer: &Deliverer,
    links_base_url: &str,
    request: &TestSendRequest,
) -> TestSendReply {
    let live = match find(deliverer, request).await {
        Some(live) => live,
        None => return failed("subscription not found".into()),
    };
    let event = match sample_event(&request.tenant_id, &request.event_type) {
        Ok(event) => event,
        Err(error) => return failed(error),
    };
    let task = Delivery {
        event_id: event.id.clone(),
        tenant_id: event.tenant_id.clone(),
        subscription_id: live.sub.id.clone(),
        event_type: event.r#type.clone(),
        agent_id: event.agent_id.clone(),
        payload: proto::envelope::render(&event, links_base_url).into(),
        attempt: 1,
        ..Default::default()
    };
    let span = tracing::info_span!(
        "dispatch.test_send",
        event_id = %task.event_id,
        subscription_id = %task.subscription_id,
    );
    let tried = tracing::Instrument::instrument(deliverer.attempt(&live, &task, 1), span).await;
    let delivered = tried.status.is_some_and(|s| (200..300).contains(&s));
    let body = &tried.body[..tried.body.len().min(MAX_REPLY_BODY)];
    TestSendReply {
        delivered,
        status_code: tried.status.map(u32::from).unwrap_or(0),
        latency_ms: u32::try_from(tried.latency.as_millis()).unwrap_or(u32::MAX),
        response_body: body.to_vec(),
        error: if delivered {
            String::new()
        } else {
            tried.error.unwrap_or_default()
        },
    }
}

/// The tenant's subscription, waiting a moment for one ingest has just created to reach this
/// replica's index.
async fn find(deliverer: &Deliverer, request: &TestSendRequest) -> Option<Arc<Live>> {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        match deliverer.index.get(&request.subscription_id) {
            Lookup::Live(live) if live.sub.tenant_id == request.tenant_id => return Some(live),
            Lookup::Live(_) | Lookup::Deleted => return None,
            Lookup::Unknown if tokio::time::Instant::now() >= deadline => return None,
            Lookup::Unknown => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A realistic event of `event_type`: the catalog's example data, agent `agent_test`, call
/// `call_test`, id `evt_test_<ulid>`, occurring now.
pub fn sample_event(tenant: &str, event_type: &str) -> Result<Event, String> {
    let spec = proto::catalog::find(event_type)
        .ok_or_else(|| format!("unknown event type {event_type:?}"))?;
    let body = json!({
        "type": spec.name,
        "agent_id": SAMPLE_AGENT,
        "call_id": SAMPLE_CALL,
        "data": proto::catalog::example(spec),
    });
    let parsed = proto::validate::parse_event(&body).map_err(|errors| {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        format!(
            "the sample of {event_type} is invalid: {}",
            fields.join("; ")
        )
    })?;
    let now = proto::time::now();
    Ok(Event {
        id: format!("evt_test_{}", ulid::Ulid::new()),
        tenant_id: tenant.to_owned(),
        agent_id: parsed.agent_id,
        call_id: parsed.call_id,
        r#type: parsed.event_type,
        occurred_at: Some(now),
        accepted_at: Some(now),
        data: Some(parsed.data),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_type_has_a_valid_sample_with_a_valid_id() {
        for spec in proto::catalog::all() {
            let event = sample_event("acme", spec.name).unwrap();
            assert_eq!(event.r#type, spec.name);
            assert!(proto::validate::is_valid_id(&event.id), "{}", event.id);
            assert!(event.id.starts_with("evt_test_"));
            assert!(proto::validate::validate_event(&event).is_empty());
            let envelope: serde_json::Value =
                serde_json::from_slice(&proto::envelope::render(&event, "https://x")).unwrap();
            assert_eq!(envelope["data"], proto::catalog::example(spec));
        }
    }

    #[test]
    fn an_unknown_type_has_no_sample() {
        assert!(sample_event("acme", "call.exploded").is_err());
    }
}
