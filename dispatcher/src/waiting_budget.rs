//! Each tenant's budget in the waiting room (`WEBHOOKS_MAX_WAITING_PER_TENANT`), so one
//! tenant's dead endpoints cannot fill the stream every tenant's retries wait in.
//!
//! The waiting room files a task under `webhooks.waiting.<bucket>.<tenant>`, so the server
//! counts a tenant's waiting tasks for us: the stream's subject totals under
//! `webhooks.waiting.*.<tenant>` (at most one subject per bucket, about 1,600). A replica
//! keeps each tenant's count from the last such answer plus what it filed since, and asks
//! again after [`FRESH_NEAR`] when the count is within half of the budget, after
//! [`FRESH_FAR`] otherwise. So the budget is soft: replicas together may file past it by
//! what they file in a second (a replica's own filings are reserved before they are stored, and
//! those stored while a count was asked for are kept on top of it, so a replica alone never
//! runs past the budget), and it costs one stream-info request a second per tenant
//! near its budget, never one per task.
//!
//! A task over the budget is refused with [`OverBudget`]: a retry is then dead-lettered as
//! `system_error` (its attempt is on the record), a set-aside task stays in its lane. Moving
//! a due bucket on never asks: those tasks are counted already.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures::TryStreamExt as _;
use prometheus_client::metrics::counter::Counter;
use proto::subjects;

/// How long a count is trusted when the tenant is within half of its budget.
const FRESH_NEAR: Duration = Duration::from_secs(1);
/// How long a count is trusted when the tenant is far from its budget.
const FRESH_FAR: Duration = Duration::from_secs(10);
/// Tenants counted after which counts not asked for in a minute are forgotten.
const KEEP_COUNTS: usize = 4096;

/// A task refused because its tenant has its whole budget waiting already.
#[derive(Debug, thiserror::Error)]
#[error(
    "tenant {tenant} has {waiting} deliveries waiting, its budget is {budget} \
     (WEBHOOKS_MAX_WAITING_PER_TENANT)"
)]
pub struct OverBudget {
    pub tenant: String,
    pub waiting: u64,
    pub budget: u64,
}

struct Count {
    /// Waiting by the last count, plus what this replica filed or is filing since.
    waiting: u64,
    /// Reserved by this replica and not yet stored (or refused): not in a count yet.
    filing: u64,
    /// Stored by this replica while a count was asked for: maybe in it, maybe not, so kept
    /// on top of it (the next count corrects the excess). `None` when no count is asked for.
    stored_while_counting: Option<u64>,
    counted_at: Instant,
}

impl Count {
    fn new(counted_at: Instant) -> Self {
        Count {
            waiting: 0,
            filing: 0,
            stored_while_counting: None,
            counted_at,
        }
    }
}

/// Counts what each tenant has waiting and says whether it may file more.
pub struct WaitingBudget {
    js: jetstream::Context,
    budget: u64,
    counts: Mutex<HashMap<String, Count>>,
    /// `webhooks_waiting_over_budget_total`.
    refused: Counter,
}

impl WaitingBudget {
    /// `budget` tasks per tenant (0 means no budget); each refusal counted in `refused`.
    pub fn new(js: jetstream::Context, budget: u64, refused: Counter) -> Self {
        Self {
            js,
            budget,
            counts: Mutex::new(HashMap::new()),
            refused,
        }
    }

    /// Reserves a place for one more task of `tenant`, or refuses it when the tenant has its
    /// budget waiting. Each reservation is [`settle`](Self::settle)d once its store is done.
    /// A count that cannot be had (NATS unavailable) goes by the last one: the store that
    /// follows most likely fails the same way, and the stream's own cap holds.
    pub async fn reserve(&self, tenant: &str) -> Result<(), OverBudget> {
        if self.budget == 0 {
            return Ok(());
        }
        if self.claim_count(tenant) {
            match self.count(tenant).await {
                Ok(counted) => {
                    if let Some(count) = self.lock().get_mut(tenant) {
                        let unsure = count.stored_while_counting.take().unwrap_or(0);
                        count.waiting = counted + count.filing + unsure;
                    }
                }
                Err(error) => {
                    if let Some(count) = self.lock().get_mut(tenant) {
                        count.stored_while_counting = None;
                    }
                    tracing::debug!(error = %error, tenant, "waiting tasks not counted");
                }
            }
        }
        let mut counts = self.lock();
        let count = counts
            .entry(tenant.to_owned())
            .or_insert_with(|| Count::new(Instant::now()));
        if count.waiting >= self.budget {
            self.refused.inc();
            return Err(OverBudget {
                tenant: tenant.to_owned(),
                waiting: count.waiting,
                budget: self.budget,
            });
        }
        count.waiting += 1;
        count.filing += 1;
        Ok(())
    }

    /// The store of a reserved task is done: `stored`, or not (its place is given back).
    pub fn settle(&self, tenant: &str, stored: bool) {
        if self.budget == 0 {
            return;
        }
        if let Some(count) = self.lock().get_mut(tenant) {
            count.filing = count.filing.saturating_sub(1);
            if !stored {
                count.waiting = count.waiting.saturating_sub(1);
            } else if let Some(n) = count.stored_while_counting.as_mut() {
                *n += 1;
            }
        }
    }

    /// Whether to ask the server for `tenant`'s count now. Asking is claimed here (the
    /// count's time is reset), so concurrent filings of one tenant ask once.
    fn claim_count(&self, tenant: &str) -> bool {
        let now = Instant::now();
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(tenant) {
            let fresh = if count.waiting >= self.budget / 2 {
                FRESH_NEAR
            } else {
                FRESH_FAR
            };
            let stale = now.duration_since(count.counted_at) >= fresh;
            if stale {
                count.counted_at = now;
                count.stored_while_counting = Some(0);
            }
            return stale;
        }
        if counts.len() >= KEEP_COUNTS {
            counts.retain(|_, c| {
                c.filing > 0 || now.duration_since(c.counted_at) < Duration::from_secs(60)
            });
        }
        let mut count = Count::new(now);
        count.stored_while_counting = Some(0);
        counts.insert(tenant.to_owned(), count);
        true
    }

    /// What `tenant` has waiting, by the server's subject totals.
    async fn count(&self, tenant: &str) -> anyhow::Result<u64> {
        let stream = self.js.get_stream_no_info(subjects::WAITING_STREAM).await?;
        let mut totals = stream
            .info_with_subjects(subjects::waiting_tenant_filter(tenant))
            .await?;
        let mut waiting = 0u64;
        while let Some((_, n)) = totals.try_next().await? {
            waiting += n as u64;
        }
        Ok(waiting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}
