//! Memory budgets for the payloads a replica holds (issue 14).
//!
//! A payload is one buffer per event, shared by every match, queued task and attempt body
//! (`Delivery.payload` is `bytes::Bytes`), so what grows with load is how many *messages* a
//! replica holds at once: events being fanned out, and tasks pulled and waiting in line or in
//! flight. Each is charged its bytes here before it is worked on, and the charge is given back
//! when it is settled. Three budgets, so no side can starve another
//! (`WEBHOOKS_PAYLOAD_MEMORY`, M = 64 MiB; scenario 11 in docs/benchmarks.md):
//!
//! - **fan-out** (3/8 of M): an event is charged its message, its rendered envelope and 4 KiB
//!   per match (its task and request) until it is settled, its first attempts included. Waiting for room holds the pull permit, so a
//!   replica at its budget stops pulling events: they wait in the events stream, where waiting
//!   costs nothing. A tenant holding half of it has its events' matches queued at once rather
//!   than waiting in line, so its events cannot hold up everyone's fan-out.
//! - **queue** (1/8 of M): the tasks the fan-out encodes and publishes, a chunk at a time, until
//!   their PubAcks are in. Never held while waiting for anything else, so it cannot deadlock
//!   with the fan-out's own.
//! - **deliveries** (1/2 of M): a pulled task is charged its message, and one tenant may hold
//!   at most half of the budget; past that its task is set aside (`memory_share`) rather than
//!   waited for, so a tenant with huge payloads cannot keep others' tasks from being pulled.
//!
//! A charge larger than the whole budget is clamped to it: such a message is worked on alone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, AckKind};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes a replica holds for its payloads, shared by waiting for room.
pub struct Budget {
    room: Arc<Semaphore>,
    total: usize,
    /// Most one tenant may hold (`total` when there is no per-tenant share).
    per_tenant: usize,
    /// Bytes held by each tenant; an entry leaves with its last charge.
    held: Arc<Mutex<HashMap<String, usize>>>,
    /// How often a message waiting for room is kept alive by a progress ack.
    keep_alive: Duration,
    gauge: Gauge,
}

/// Bytes held until dropped.
pub struct Charge {
    /// `None` only if the room were closed, which it never is.
    _permit: Option<OwnedSemaphorePermit>,
    /// The tenant the bytes are counted against, once [`Charge::hold_for`] said so.
    tenant: Option<String>,
    held: Arc<Mutex<HashMap<String, usize>>>,
    per_tenant: usize,
    gauge: Gauge,
    bytes: usize,
}

/// The tenant holds its share of the budget already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverShare;

impl Budget {
    /// A budget of `total` bytes (at least 1), each tenant holding at most `per_tenant`.
    pub fn new(total: usize, per_tenant: usize, keep_alive: Duration, gauge: Gauge) -> Self {
        let total = total.clamp(1, u32::MAX as usize);
        Self {
            room: Arc::new(Semaphore::new(total)),
            total,
            per_tenant: per_tenant.clamp(1, total),
            held: Arc::default(),
            keep_alive,
            gauge,
        }
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> usize {
        self.total - self.room.available_permits()
    }

    /// Tenants holding a charge now: the table comes back down when their work ends.
    pub fn tenants(&self) -> usize {
        lock(&self.held).len()
    }

    /// The budget's bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Charges `bytes` (clamped to the budget) for `message`, waiting for room with the
    /// message kept alive by a progress ack meanwhile (room comes back as attempts end, within
    /// the HTTP timeout, but a queue ahead may take longer than the ack wait). Cancel-safe:
    /// dropped, it charges nothing.
    pub async fn charge(&self, message: Option<&jetstream::Message>, bytes: usize) -> Charge {
        let bytes = bytes.clamp(1, self.total);
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let acquire = self.room.clone().acquire_many_owned(permits);
        tokio::pin!(acquire);
        let permit = loop {
            tokio::select! {
                permit = &mut acquire => break permit,
                () = tokio::time::sleep(self.keep_alive) => {
                    if let Some(message) = message {
                        crate::fanout::ack(message, AckKind::Progress).await;
                    }
                }
            }
        };
        self.gauge.inc_by(bytes as i64);
        Charge {
            _permit: permit.ok(),
            tenant: None,
            held: self.held.clone(),
            per_tenant: self.per_tenant,
            gauge: self.gauge.clone(),
            bytes,
        }
    }
}

impl Charge {
    /// Counts these bytes against `tenant`'s share; `Err` when it holds its share already (a
    /// tenant holding nothing may always take one message, however large).
    pub fn hold_for(&mut self, tenant: &str) -> Result<(), OverShare> {
        if self.tenant.is_some() {
            return Ok(());
        }
        let mut held = lock(&self.held);
        let n = held.get(tenant).copied().unwrap_or(0);
        if n > 0 && n + self.bytes > self.per_tenant {
            return Err(OverShare);
        }
        held.insert(tenant.to_owned(), n + self.bytes);
        self.tenant = Some(tenant.to_owned());
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes as i64);
        if let Some(tenant) = self.tenant.take() {
            let mut held = lock(&self.held);
            if let Some(n) = held.get_mut(&tenant) {
                *n = n.saturating_sub(self.bytes);
                if *n == 0 {
                    held.remove(&tenant);
                }
            }
        }
    }
}

/// The replica's budgets, from `WEBHOOKS_PAYLOAD_MEMORY` (M).
pub struct Budgets {
    /// 3/8 of M: events being fanned out; a tenant holds at most half.
    pub fanout: Arc<Budget>,
    /// 1/8 of M: tasks being encoded and published by the fan-out.
    pub queue: Arc<Budget>,
    /// 1/2 of M: tasks pulled by the deliveries and the replays consumers; a tenant holds at
    /// most half.
    pub deliveries: Arc<Budget>,
}

impl Budgets {
    pub fn new(settings: &crate::config::Settings, metrics: &crate::metrics::Metrics) -> Self {
        let m = settings.payload_memory;
        let keep_alive = settings.ack_wait / 3;
        let gauge = |budget| {
            metrics
                .payload_memory
                .get_or_create(&crate::metrics::BudgetLabel { budget })
                .clone()
        };
        let budget = |total: usize, per_tenant: usize, name| {
            Arc::new(Budget::new(total, per_tenant, keep_alive, gauge(name)))
        };
        let (fanout, queue, deliveries) = (m / 8 * 3, m / 8, m / 2);
        Self {
            fanout: budget(fanout, fanout / 2, "fanout"),
            queue: budget(queue, queue, "queue"),
            deliveries: budget(deliveries, deliveries / 2, "deliveries"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn budget(total: usize, per_tenant: usize) -> Budget {
        Budget::new(total, per_tenant, Duration::from_secs(1), Gauge::default())
    }

    #[tokio::test]
    async fn charges_hold_bytes_until_dropped_and_a_tenant_past_its_share_is_refused() {
        let b = budget(1000, 500);
        let mut first = b.charge(None, 300).await;
        assert_eq!(b.in_use(), 300);
        first.hold_for("acme").unwrap();
        let mut second = b.charge(None, 300).await;
        assert_eq!(second.hold_for("acme"), Err(OverShare));
        // Another tenant is not held back by acme's share.
        second.hold_for("globex").unwrap();
        assert_eq!(b.tenants(), 2);
        drop(first);
        drop(second);
        assert_eq!(
            (b.in_use(), b.tenants()),
            (0, 0),
            "the tables come back down"
        );
    }

    #[tokio::test]
    async fn a_charge_waits_for_room_and_one_larger_than_the_budget_is_clamped_to_it() {
        let b = Arc::new(budget(1000, 1000));
        let held = b.charge(None, 800).await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.charge(None, 5000).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room until the first is dropped");
        drop(held);
        let whole = waiting.await.unwrap();
        assert_eq!(b.in_use(), 1000, "clamped to the whole budget");
        drop(whole);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_tenant_holding_nothing_may_always_take_one_message() {
        let b = budget(1000, 100);
        let mut big = b.charge(None, 600).await;
        assert_eq!(big.hold_for("acme"), Ok(()));
    }
}
