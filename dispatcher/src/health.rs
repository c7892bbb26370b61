//! Automatic disabling: on `410 Gone` at once, and after failing without a single success for
//! `disable_after` (5 days by default).
//!
//! "Failing since" is shared by all replicas through the endpoint-health bucket: the first
//! failure after a success creates the key, a success deletes it. A subscription the system
//! disabled keeps its `disabled_reason`, and its deliveries are parked as dead letters until
//! the owner enables it again.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use common::watch::{Change, Mirror};
use prost::Message as _;
use proto::{
    subjects,
    v1::{EndpointHealth, Subscription},
};

use crate::subscriptions::Index;

/// Failure tracking and the power to disable.
pub struct Health {
    pub bucket: kv::Store,
    pub subscriptions: kv::Store,
    pub failing: Arc<Mirror<EndpointHealth>>,
    pub index: Index,
    pub disable_after: Duration,
    /// How long a deletion marker stays (`SharedSettings::delete_marker_ttl`).
    pub delete_marker_ttl: Duration,
}

impl Health {
    /// A success: the endpoint is no longer failing.
    pub async fn record_success(&self, sub: &Subscription) {
        if self.failing.get(&sub.id).is_none() {
            return;
        }
        let Some(seen) = self.failing.revision(&sub.id) else {
            return;
        };
        // A purge whose marker expires: a subscription that recovered leaves no subject.
        if let Err(error) = self
            .bucket
            .purge_with_ttl(&sub.id, self.delete_marker_ttl)
            .await
        {
            tracing::warn!(subscription_id = %sub.id, error = %error, "could not clear failing state");
            return;
        }
        // The deletion's own revision is not returned, but it is later than the one we saw, and
        // any later failure's record is later still: applying it just after `seen` clears the
        // key here now without hiding the next change from the watch.
        self.failing.apply(Change::Delete {
            key: sub.id.clone(),
            revision: seen + 1,
        });
    }

    /// A retryable failure. Answers whether the subscription has now failed for so long that it
    /// must be disabled. Time before the subscription's last update does not count, so an owner
    /// who re-enables it gets a fresh period.
    pub async fn record_failure(&self, sub: &Subscription) -> bool {
        let now = SystemTime::now();
        let since = match self.failing.get(&sub.id) {
            Some(h) => h
                .failing_since
                .as_ref()
                .map(proto::time::to_system)
                .unwrap_or(now),
            None => {
                let record = EndpointHealth {
                    failing_since: Some(proto::time::from_system(now)),
                };
                match self
                    .bucket
                    .create(&sub.id, Bytes::from(record.encode_to_vec()))
                    .await
                {
                    Ok(revision) => {
                        self.failing.apply(Change::Put {
                            key: sub.id.clone(),
                            revision,
                            value: record,
                        });
                        // Deleted while its attempt ran (ingest removed its record first):
                        // the record just made would outlive it.
                        if !matches!(
                            self.index.get(&sub.id),
                            crate::subscriptions::Lookup::Live(_)
                        ) && let Err(error) = self
                            .bucket
                            .purge_with_ttl(&sub.id, self.delete_marker_ttl)
                            .await
                        {
                            tracing::warn!(subscription_id = %sub.id, error = %error, "failing-since record of a deleted subscription not removed");
                        }
                    }
                    // Another replica recorded it first; its watch will tell us when.
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(error) => {
                        tracing::warn!(subscription_id = %sub.id, error = %error, "could not record failing state")
                    }
                }
                now
            }
        };
        let updated = sub
            .updated_at
            .as_ref()
            .map(proto::time::to_system)
            .unwrap_or(since);
        let since = since.max(updated);
        now.duration_since(since)
            .is_ok_and(|failing_for| failing_for >= self.disable_after)
    }

    /// Disables the subscription with `reason`, compare-and-set against concurrent edits, and
    /// applies it to this replica's index at once so its queued deliveries are parked.
    pub async fn disable(
        &self,
        tenant: &str,
        subscription: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let key = subjects::subscription_key(tenant, subscription);
        for _ in 0..5 {
            let Some(entry) = self.subscriptions.entry(&key).await? else {
                return Ok(());
            };
            if entry.operation != kv::Operation::Put {
                return Ok(());
            }
            let mut sub = Subscription::decode(entry.value.as_ref())?;
            if !sub.enabled {
                return Ok(());
            }
            sub.enabled = false;
            sub.disabled_reason = reason.to_owned();
            sub.updated_at = Some(proto::time::now());
            match self
                .subscriptions
                .update(&key, Bytes::from(sub.encode_to_vec()), entry.revision)
                .await
            {
                Ok(revision) => {
                    tracing::warn!(subscription_id = %subscription, reason, "subscription disabled");
                    self.index.apply(Change::Put {
                        key,
                        revision,
                        value: sub,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("subscription {subscription} kept changing while being disabled")
    }
}
