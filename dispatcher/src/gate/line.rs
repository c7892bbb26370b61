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
    /// tenant's and this replica's lines all have room, and the endpoint's pace (and the
    /// tenant's, the line ahead taking the tenant's share at this endpoint's latency) would
    /// free a slot for it within half its `patience`: a 1 ms endpoint's line can hold the
    /// tenant's whole line, a 3 s endpoint's only what its slots clear in time. (A line as long as
    /// the endpoint's slots held 1 ms of a fast endpoint's work: the rest was set aside, and
    /// scenario 2 fell from 10,000 to 2,000 deliveries/s.)
    pub fn line(&self, tenant: &str, subscription: &str, patience: Duration) -> Option<Place> {
        let endpoint = self.endpoint(subscription);
        let tenant = self.tenant(tenant);
        if !self.clears_in_time(&endpoint, &tenant, patience) {
            return None;
        }
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

    /// Whether the line ahead of a newcomer clears within half its `patience`.
    fn clears_in_time(&self, endpoint: &Endpoint, tenant: &Tenant, patience: Duration) -> bool {
        let latency = self.latency(endpoint);
        let ahead = self.config.endpoint_line() - endpoint.line.available_permits();
        let tenant_ahead = self.config.tenant_line() - tenant.line.available_permits();
        let wait = super::times(super::spacing(latency, self.config.per_endpoint), ahead + 1).max(
            super::times(
                super::spacing(latency, self.config.per_tenant),
                tenant_ahead + 1,
            ),
        );
        wait <= patience / 2
    }

    /// A place in line as [`Gate::line`] gives, or, when the line is full but moves fast (its
    /// endpoint frees a slot at least four times within `wait`), the first place that frees
    /// within `wait`. For the fan-out: an event waits this long at most, and only for a fast
    /// endpoint, so its backlog stays in the events stream (where waiting costs nothing)
    /// instead of going round as tasks; a slow endpoint's tasks are queued at once.
    pub async fn line_within(
        &self,
        tenant: &str,
        subscription: &str,
        patience: Duration,
        wait: Duration,
    ) -> Option<Place> {
        if let Some(place) = self.line(tenant, subscription, patience) {
            return Some(place);
        }
        let endpoint = self.endpoint(subscription);
        if super::spacing(self.latency(&endpoint), self.config.per_endpoint) * 4 > wait {
            return None;
        }
        let tenant = self.tenant(tenant);
        let places = tokio::time::timeout(wait, async {
            Some([
                self.line.clone().acquire_owned().await.ok()?,
                tenant.line.clone().acquire_owned().await.ok()?,
                endpoint.line.clone().acquire_owned().await.ok()?,
            ])
        })
        .await
        .ok()
        .flatten()?;
        // Counts itself as ahead: one turn on the safe side.
        self.clears_in_time(&endpoint, &tenant, patience)
            .then_some(Place {
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
        let g = std::sync::Arc::new(gate(3, 10, 40));
        let mut held: Vec<_> = (0..3).map(|_| g.admit_for("t", "s", 0).unwrap()).collect();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 1..=3 {
            let place = g.line("t", "s", LONG).unwrap();
            let (g, tx) = (g.clone(), order_tx.clone());
            tokio::spawn(async move {
                let admission = g.wait_in_line(place, 0, LONG).await.unwrap();
                tx.send(n).unwrap();
                admission.finish(false);
            });
            // The current-thread runtime runs the task until it waits for the slot.
            tokio::task::yield_now().await;
        }
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
    fn a_tenants_line_is_a_quarter_of_the_replicas() {
        let g = gate(2, 3, 8);
        let a: Vec<_> = (0..2).map(|_| g.line("a", "s1", LONG).unwrap()).collect();
        assert!(
            g.line("a", "s2", LONG).is_none(),
            "the tenant's line (2) is full"
        );
        let others: Vec<_> = ["b", "c", "d"]
            .iter()
            .flat_map(|t| [1, 2].map(|n| g.line(t, &format!("{t}{n}"), LONG).unwrap()))
            .collect();
        assert!(
            g.line("e", "u1", LONG).is_none(),
            "the replica's line (8) is full"
        );
        drop(a);
        assert!(
            g.line("e", "u1", LONG).is_some(),
            "a place given up is free again"
        );
        drop(others);
    }

    #[test]
    fn an_endpoints_line_is_as_long_as_its_pace_clears_in_half_the_patience() {
        // Two slots, not timed yet (20 ms): the n-th in line waits about n × 10 ms.
        let g = gate(2, 100, 400);
        let patience = Duration::from_millis(50);
        let places: Vec<_> = (0..2)
            .map(|_| g.line("t", "s", patience).unwrap())
            .collect();
        assert!(
            g.line("t", "s", patience).is_none(),
            "a third would wait 30 ms, past half of 50 ms"
        );
        assert!(
            g.line("t", "s", patience * 2).is_some(),
            "more patience, a longer line"
        );
        // Once timed at 1 ms, the same patience lets a long line form.
        let fast: Vec<_> = (0..2).map(|_| g.admit("f", 0).unwrap()).collect();
        for admission in fast {
            admission.finish(false);
        }
        let long: Vec<_> = (0..40)
            .map(|_| g.line("t", "f", patience).unwrap())
            .collect();
        drop((places, long));
    }

    #[tokio::test]
    async fn patience_runs_out_as_busy_and_an_open_circuit_is_asked_once_a_slot_is_held() {
        let g = gate(1, 10, 10);
        let held = g.admit_for("t", "s", 0).unwrap();
        let place = g.line("t", "s", LONG).unwrap();
        let waited = g.wait_in_line(place, 0, Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(Refusal::Busy(_))));
        // An open circuit is asked once a slot is held: no attempt.
        for _ in 0..3 {
            g.admit("s2", 0).unwrap().finish(true);
        }
        let place = g.line("t", "s2", LONG).unwrap();
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
        let place = g.line("t", "s2", LONG).unwrap();
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
