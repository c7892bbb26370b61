//! The per-tenant event rate limit (`WEBHOOKS_TENANT_RATE_LIMIT`, events per second).
//!
//! One token bucket per tenant (governor's GCRA, burst = one second's worth), shared by
//! `POST /v1/events` (1 token), `POST /v1/events/batch` (one per item, all or nothing) and the
//! NATS ingest path. Every submission attempt that reached the point of being counted costs its
//! tokens, accepted or not, so a flood of invalid events is throttled too. A refused request is
//! answered `429` with `Retry-After` and stores nothing.
//!
//! In memory, per replica: with N ingest replicas a tenant can reach N × the rate.

use std::{
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};

use crate::error::ApiError;

/// How often buckets of tenants that went quiet are dropped (they are full again anyway).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

type Keyed = governor::DefaultKeyedRateLimiter<String>;

/// Tenant buckets of one replica.
pub struct TenantRateLimit {
    per_second: NonZeroU32,
    limiter: Keyed,
    pruned: Mutex<Instant>,
}

impl std::fmt::Debug for TenantRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRateLimit")
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

impl TenantRateLimit {
    /// `per_second` events per second per tenant, in bursts of up to as many.
    pub fn new(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            pruned: Mutex::new(Instant::now()),
        }
    }

    /// Takes `n` tokens from `tenant`'s bucket, or none: `Err` is the `429` to answer (or a
    /// `422` for a batch larger than the bucket, which could never pass).
    pub fn check(&self, tenant: &str, n: usize) -> Result<(), ApiError> {
        self.prune();
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&tenant.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::RateLimited {
                    retry_after: retry_after_secs(wait),
                    per_second: self.per_second.get(),
                })
            }
            Err(_insufficient) => Err(ApiError::field(
                "events",
                format!(
                    "a batch may hold at most {} events under the tenant rate limit of {} events/s",
                    self.per_second, self.per_second
                ),
            )),
        }
    }

    fn prune(&self) {
        let Ok(mut pruned) = self.pruned.try_lock() else {
            return;
        };
        if pruned.elapsed() >= PRUNE_EVERY {
            *pruned = Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(n: u32) -> TenantRateLimit {
        TenantRateLimit::new(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn a_tenant_gets_its_burst_then_a_429_with_retry_after() {
        let limit = limit(5);
        for _ in 0..5 {
            limit.check("acme", 1).unwrap();
        }
        let error = limit.check("acme", 1).unwrap_err();
        assert_eq!(error.status().as_u16(), 429);
        assert!(matches!(
            error,
            ApiError::RateLimited { retry_after: 1, .. }
        ));
        // Another tenant has its own bucket.
        limit.check("globex", 5).unwrap();
    }

    #[test]
    fn a_batch_takes_all_its_tokens_or_none() {
        let limit = limit(10);
        limit.check("acme", 8).unwrap();
        let error = limit.check("acme", 3).unwrap_err();
        assert_eq!(error.status().as_u16(), 429);
        // Nothing was taken by the refused batch: two still fit.
        limit.check("acme", 2).unwrap();
        // More than the bucket holds can never pass: a 422, not a 429 to retry forever.
        assert_eq!(limit.check("other", 11).unwrap_err().status().as_u16(), 422);
        limit.check("other", 0).unwrap();
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
