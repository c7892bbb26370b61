//! Waiting in line for a busy endpoint: a task whose endpoint has every slot in use (or whose
//! tenant has its share in flight) may wait here, in memory, for the next slot to free, which
//! it takes in arrival order (tokio's semaphores are fair). Without a line it would be set
//! aside until its turn on the endpoint's clock and meet a full endpoint again when it came
//! back a little early or late: issue 13 measured 1.35 set-asides per delivery and 72% of the
//! slots used while a 500 ms endpoint drained a backlog.
//!
//! The line is bounded three ways, so no endpoint and no tenant can take it all: an endpoint's
//! line is as long as its slots, a tenant's as its in-flight share, and the replica's as
//! [`GateConfig::line`](super::GateConfig). A task that finds no place, or waits longer than
//! its patience, is set aside as before. A place holds no pull permit (see `deliver`), only an
//! ack-pending message, so a long line never slows the pulling of other tenants' work.

use std::{sync::Arc, time::Duration};

use tokio::sync::OwnedSemaphorePermit;

use super::{Admission, Endpoint, Gate, Refusal, Tenant};

/// A place in line for one task, held until it is admitted or gives up.
pub struct Place {
    endpoint: Arc<Endpoint>,
    tenant: Arc<Tenant>,
    _places: [OwnedSemaphorePermit; 3],
}

impl Gate {
    /// A place in line for a task of `tenant` to `subscription`, if the endpoint's, the
    /// tenant's and this replica's lines all have room.
    pub fn line(&self, tenant: &str, subscription: &str) -> Option<Place> {
        let endpoint = self.endpoint(subscription);
        let tenant = self.tenant(tenant);
        let places = [
            self.line.clone().try_acquire_owned().ok()?,
            tenant.line.clone().try_acquire_owned().ok()?,
            endpoint.line.clone().try_acquire_owned().ok()?,
        ];
        Some(Place {
            endpoint,
            tenant,
            _places: places,
        })
    }

    /// Waits in line for a slot of the place's endpoint, then for its tenant's share, at most
    /// `patience` in all; the breaker and the rate limit are asked once a slot is held. On
    /// `Err`, the task is set aside as if it had found no place.
    pub async fn wait_in_line(
        &self,
        place: Place,
        rate_limit_per_s: u32,
        patience: Duration,
    ) -> Result<Admission, Refusal> {
        let Place {
            endpoint, tenant, ..
        } = &place;
        let waited = tokio::time::timeout(patience, async {
            let slot = endpoint.slots.clone().acquire_owned().await.ok()?;
            let share = tenant.in_flight.clone().acquire_owned().await.ok()?;
            Some((slot, share))
        })
        .await;
        let Ok(Some((slot, share))) = waited else {
            return Err(Refusal::Busy(super::BUSY_DELAY));
        };
        let mut admission = self.checked(place.endpoint.clone(), slot, rate_limit_per_s)?;
        admission._tenant = Some(share);
        Ok(admission)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::super::{Gate, GateConfig, Refusal};

    fn gate(per_endpoint: usize, per_tenant: usize, line: usize) -> Gate {
        Gate::new(GateConfig {
            per_endpoint,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(50),
            breaker_max_cooldown: Duration::from_millis(200),
            per_tenant,
            line,
        })
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_one_that_waited_longest() {
        let g = std::sync::Arc::new(gate(3, 10, 10));
        let mut held: Vec<_> = (0..3).map(|_| g.admit_for("t", "s", 0).unwrap()).collect();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 1..=3 {
            let place = g.line("t", "s").unwrap();
            let (g, tx) = (g.clone(), order_tx.clone());
            tokio::spawn(async move {
                let admission = g.wait_in_line(place, 0, LONG).await.unwrap();
                tx.send(n).unwrap();
                admission.finish(false);
            });
            // The current-thread runtime runs the task until it waits for the slot.
            tokio::task::yield_now().await;
        }
        assert!(
            g.line("t", "s").is_none(),
            "three slots held and three in line"
        );
        // One slot freed: each in turn takes it and hands it on as it finishes.
        held.pop().unwrap().finish(false);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(order_rx.recv().await.unwrap());
        }
        assert_eq!(order, [1, 2, 3]);
        drop(held);
    }

    #[test]
    fn each_line_is_bounded_by_the_endpoints_slots_the_tenants_share_and_the_replicas_line() {
        let g = gate(2, 3, 4);
        let a: Vec<_> = (0..2).map(|_| g.line("a", "s1").unwrap()).collect();
        assert!(
            g.line("a", "s1").is_none(),
            "the endpoint's line is as long as its slots"
        );
        let b = g.line("a", "s2").unwrap();
        assert!(
            g.line("a", "s3").is_none(),
            "the tenant's line is as long as its share"
        );
        let c = g.line("b", "t1").unwrap();
        assert!(g.line("c", "u1").is_none(), "the replica's line is full");
        drop(a);
        assert!(
            g.line("c", "u1").is_some(),
            "a place given up is free again"
        );
        drop((b, c));
    }

    #[tokio::test]
    async fn patience_runs_out_as_busy_and_an_open_circuit_is_asked_once_a_slot_is_held() {
        let g = gate(1, 10, 10);
        let held = g.admit_for("t", "s", 0).unwrap();
        let place = g.line("t", "s").unwrap();
        let waited = g.wait_in_line(place, 0, Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(Refusal::Busy(_))));
        // An open circuit is asked once a slot is held: no attempt.
        for _ in 0..3 {
            g.admit("s2", 0).unwrap().finish(true);
        }
        let place = g.line("t", "s2").unwrap();
        let waited = g.wait_in_line(place, 0, LONG).await;
        assert!(
            matches!(waited, Err(Refusal::CircuitOpen(_))),
            "{:?}",
            waited.map(|_| ())
        );
        held.finish(false);
    }

    #[tokio::test]
    async fn a_task_in_line_waits_for_its_tenants_share_too() {
        let g = gate(4, 1, 10);
        let held = g.admit_for("t", "s1", 0).unwrap();
        let place = g.line("t", "s2").unwrap();
        let waiting = g.wait_in_line(place, 0, LONG);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err(),
            "the tenant's one share is in use"
        );
        held.finish(false);
        assert!(waiting.await.is_ok());
    }
}
