//! Per-endpoint admission: a bound on in-flight deliveries, a circuit breaker and the optional
//! rate limit. A task that is not admitted is set aside in the waiting room with a delay and
//! without an attempt, so our own throttling never burns the endpoint's attempts (the attempt
//! number travels in the task, see `deliver`). A task whose endpoint (or tenant) is only busy
//! may first wait in line for the next free slot (`line`), a bounded queue per endpoint, per
//! tenant and per replica. All of it is per replica and in memory.
//!
//! An endpoint's state is kept only while it matters: an entry nobody holds, unused for
//! [`IDLE`] with a closed and clean circuit (or for twice the longest cool-down, whatever its
//! circuit), is forgotten, so a replica's memory follows the endpoints it delivers to now, not
//! every endpoint it ever delivered to (deleted subscriptions included). Sweeps run when the
//! table has doubled since the last one, and on every metrics scrape (which reports the count
//! as `webhooks_endpoints_tracked`).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{Quota, RateLimiter, clock::Clock as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod line;

pub use line::Place;

/// Tuning, from `Settings`.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Deliveries in flight to one endpoint at once.
    pub per_endpoint: usize,
    /// Consecutive retryable failures that open the circuit.
    pub breaker_threshold: u32,
    /// How long the circuit stays open at first; doubles on every failed probe.
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
    /// Deliveries in flight at once for one tenant.
    pub per_tenant: usize,
    /// Tasks waiting in line for a slot in this replica, all endpoints together (see
    /// [`Gate::line`]); a tenant's line is a quarter of it, an endpoint's as long as its pace
    /// clears in time.
    pub line: usize,
}

impl GateConfig {
    /// Places in one endpoint's line at most; how many it offers depends on its pace (see
    /// [`Gate::line`]), and no tenant can hold more than its share anyway.
    fn endpoint_line(&self) -> usize {
        self.tenant_line().max(self.per_endpoint)
    }

    /// Places in one tenant's line.
    fn tenant_line(&self) -> usize {
        (self.line / 4).max(1)
    }
}

/// Why a task was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Busy(Duration),
    CircuitOpen(Duration),
    RateLimited(Duration),
    /// The tenant has its share of this replica's deliveries in flight.
    TenantBusy(Duration),
}

impl Refusal {
    pub fn delay(self) -> Duration {
        match self {
            Refusal::Busy(d)
            | Refusal::CircuitOpen(d)
            | Refusal::RateLimited(d)
            | Refusal::TenantBusy(d) => d,
        }
    }

    /// The metric label of the reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy(_) => "endpoint_busy",
            Refusal::CircuitOpen(_) => "circuit_open",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::TenantBusy(_) => "tenant_busy",
        }
    }
}

/// When the next task set aside for an endpoint should come back: a virtual clock that each
/// deferral advances by one slot's share of the endpoint's pace, so a backlog returns at the
/// rate the endpoint can take it (once per task) instead of all at once (again and again).
#[derive(Debug, Default)]
struct Pace {
    /// Unix µs of the next free turn.
    next_us: u64,
    /// Smoothed attempt latency, ms.
    latency_ms: f64,
    /// When each attempt now in flight started (with how many started then): the middle one
    /// says the endpoint is at least this slow before they finish.
    in_flight: std::collections::BTreeMap<Instant, u32>,
}

/// The circuit of one endpoint.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
}

type Limiter = governor::DefaultDirectRateLimiter;

struct Endpoint {
    slots: Arc<Semaphore>,
    /// Places in this endpoint's line (as many as its slots).
    line: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    limiter: Mutex<Option<(u32, Limiter)>>,
    pace: Mutex<Pace>,
    /// When it was last asked for, in milliseconds since the gate was made.
    last_used_ms: AtomicU64,
}

/// How long an unused endpoint with a clean, closed circuit is remembered. Its rate limiter
/// has long refilled by then, so forgetting it changes nothing.
pub const IDLE: Duration = Duration::from_secs(60);

/// The table is not swept below this many entries.
const MIN_SWEEP_AT: usize = 1024;

struct Endpoints {
    map: HashMap<String, Arc<Endpoint>>,
    /// The size at which inserting sweeps first.
    sweep_at: usize,
}

/// How long a task refused for a busy endpoint waits at least before it is offered again.
const BUSY_DELAY: Duration = Duration::from_millis(250);
/// An endpoint at most this slow is fast: a task set aside for it comes back within
/// [`FAST_TURN_WITHIN`] whatever its place on the clock.
const FAST_ENDPOINT: Duration = Duration::from_millis(50);
const FAST_TURN_WITHIN: Duration = Duration::from_secs(1);
/// The latency assumed for an endpoint's pace before one of its attempts has been timed.
const UNTIMED_LATENCY_MS: f64 = 20.0;
/// The shortest latency an endpoint's pace assumes once timed: a clock of turns microseconds
/// apart is no more exact.
const MIN_LATENCY_MS: f64 = 0.5;

/// Admission for every endpoint this replica delivers to.
pub struct Gate {
    config: GateConfig,
    endpoints: Mutex<Endpoints>,
    /// Each tenant's in-flight permits and line; an entry nobody holds is dropped when the
    /// map is swept.
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    /// Places in line, all endpoints together.
    line: Arc<Semaphore>,
    epoch: Instant,
}

/// One tenant's share of this replica.
struct Tenant {
    in_flight: Arc<Semaphore>,
    line: Arc<Semaphore>,
    /// The clock of the tasks set aside because the share was in use.
    pace: Mutex<Pace>,
}

/// Held while a delivery runs; tells the breaker how it went.
pub struct Admission {
    endpoint: Arc<Endpoint>,
    _slot: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
    started: Instant,
    config: GateConfig,
    probe: bool,
}

/// The next turn on a clock whose turns are `spacing` apart, at least `at_least` from now;
/// answers how long until then.
fn advance(clock: &Mutex<Pace>, spacing: Duration, at_least: Duration) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4))
        .unwrap_or(0);
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4);
    let mut pace = clock.lock().unwrap_or_else(|p| p.into_inner());
    pace.next_us = pace.next_us.max(now.saturating_add(micros(at_least))) + micros(spacing).max(1);
    Duration::from_micros(pace.next_us - now)
}

/// The time between turns of `slots` concurrent deliveries that each take `latency`.
fn spacing(latency: Duration, slots: usize) -> Duration {
    latency / u32::try_from(slots.max(1)).unwrap_or(u32::MAX)
}

/// `spacing` taken `n` times.
fn times(spacing: Duration, n: usize) -> Duration {
    spacing.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The circuit states, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl Gate {
    pub fn new(config: GateConfig) -> Self {
        Self {
            endpoints: Mutex::new(Endpoints {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
            tenants: Mutex::new(HashMap::new()),
            line: Arc::new(Semaphore::new(config.line)),
            epoch: Instant::now(),
            config,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn endpoint(&self, subscription: &str) -> Arc<Endpoint> {
        let now = self.now_ms();
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = endpoints.map.get(subscription) {
            endpoint.last_used_ms.store(now, Ordering::Relaxed);
            return endpoint.clone();
        }
        if endpoints.map.len() >= endpoints.sweep_at {
            self.sweep_locked(&mut endpoints, now);
        }
        let endpoint = Arc::new(Endpoint {
            slots: Arc::new(Semaphore::new(self.config.per_endpoint)),
            line: Arc::new(Semaphore::new(self.config.endpoint_line())),
            breaker: Mutex::new(Breaker {
                cooldown: self.config.breaker_cooldown,
                ..Default::default()
            }),
            limiter: Mutex::new(None),
            pace: Mutex::new(Pace::default()),
            last_used_ms: AtomicU64::new(now),
        });
        endpoints
            .map
            .insert(subscription.to_owned(), endpoint.clone());
        endpoint
    }

    /// Forgets the endpoints that no longer matter (see the module's documentation).
    fn sweep_locked(&self, endpoints: &mut Endpoints, now_ms: u64) {
        let idle_ms = u64::try_from(IDLE.as_millis()).unwrap_or(u64::MAX);
        let stale_ms = u64::try_from((self.config.breaker_max_cooldown * 2).as_millis())
            .unwrap_or(u64::MAX)
            .max(idle_ms);
        endpoints.map.retain(|_, endpoint| {
            // Held by an admission or a check under way: in use.
            if Arc::strong_count(endpoint) > 1 {
                return true;
            }
            let idle = now_ms.saturating_sub(endpoint.last_used_ms.load(Ordering::Relaxed));
            let clean = {
                let b = endpoint.breaker.lock().unwrap_or_else(|p| p.into_inner());
                b.failures == 0 && b.open_until.is_none() && !b.probing
            };
            !(idle >= stale_ms || (clean && idle >= idle_ms))
        });
        endpoints.sweep_at = (endpoints.map.len() * 2).max(MIN_SWEEP_AT);
    }

    /// How many endpoints this replica remembers, after forgetting those that no longer matter.
    pub fn sweep(&self) -> usize {
        self.sweep_as_of(self.now_ms())
    }

    fn sweep_as_of(&self, now: u64) -> usize {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        self.sweep_locked(&mut endpoints, now);
        endpoints.map.len()
    }

    /// Admits one delivery to `subscription` now, or says how long to wait. A slot is taken
    /// before the breaker and the rate limit are asked, so a busy endpoint spends no rate.
    pub fn admit(&self, subscription: &str, rate_limit_per_s: u32) -> Result<Admission, Refusal> {
        let endpoint = self.endpoint(subscription);
        let Ok(slot) = endpoint.slots.clone().try_acquire_owned() else {
            return Err(Refusal::Busy(BUSY_DELAY));
        };
        self.checked(endpoint, slot, rate_limit_per_s)
    }

    /// An admission for a slot already held, if the breaker and the rate limit agree.
    fn checked(
        &self,
        endpoint: Arc<Endpoint>,
        slot: OwnedSemaphorePermit,
        rate_limit_per_s: u32,
    ) -> Result<Admission, Refusal> {
        let probe = self.precheck(&endpoint, rate_limit_per_s)?;
        Ok(self.admission(endpoint, slot, probe))
    }

    fn tenant(&self, tenant: &str) -> Arc<Tenant> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if tenants.len() >= MIN_SWEEP_AT {
            let (cap, line) = (self.config.per_tenant, self.config.tenant_line());
            tenants.retain(|_, t| {
                Arc::strong_count(t) > 1
                    || t.in_flight.available_permits() < cap
                    || t.line.available_permits() < line
            });
        }
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Tenant {
                    in_flight: Arc::new(Semaphore::new(self.config.per_tenant)),
                    line: Arc::new(Semaphore::new(self.config.tenant_line())),
                    pace: Mutex::new(Pace::default()),
                })
            })
            .clone()
    }

    /// Admits one delivery of `tenant` to `subscription` now: within the tenant's share of
    /// this replica, then as [`Gate::admit`]. Never waits.
    pub fn admit_for(
        &self,
        tenant: &str,
        subscription: &str,
        rate_limit_per_s: u32,
    ) -> Result<Admission, Refusal> {
        let Ok(permit) = self.tenant(tenant).in_flight.clone().try_acquire_owned() else {
            return Err(Refusal::TenantBusy(BUSY_DELAY));
        };
        let mut admission = self.admit(subscription, rate_limit_per_s)?;
        admission._tenant = Some(permit);
        Ok(admission)
    }

    /// How long a task of `tenant` refused with `refusal` should wait before it is offered
    /// again: its turn on the endpoint's clock (see [`Pace`]), or on the tenant's when the
    /// tenant's share was in use, never before the refusal's own delay.
    pub fn defer(&self, tenant: &str, subscription: &str, refusal: Refusal) -> Duration {
        let endpoint = self.endpoint(subscription);
        let per_endpoint = self.config.per_endpoint;
        match refusal {
            // Not in line (the line was full or its wait ran out): after the line ahead of it,
            // which takes its turns first.
            Refusal::Busy(_) => {
                let latency = self.turn_latency(&endpoint);
                let spacing = spacing(latency, per_endpoint);
                let ahead = self.config.endpoint_line() - endpoint.line.available_permits();
                let turn = advance(&endpoint.pace, spacing, latency + times(spacing, ahead));
                // A fast endpoint's latency is mostly this replica's own queueing: after a
                // stall its pace spread a backlog over minutes (4b: a delivery 90 s late while
                // the endpoint had long been idle). It comes back within a second instead.
                if latency <= FAST_ENDPOINT {
                    turn.min(FAST_TURN_WITHIN)
                } else {
                    turn
                }
            }
            Refusal::CircuitOpen(d) => {
                let latency = self.turn_latency(&endpoint);
                advance(&endpoint.pace, spacing(latency, per_endpoint), d)
            }
            Refusal::RateLimited(d) => {
                let rate = endpoint
                    .limiter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|(r, _)| *r)
                    .unwrap_or(1)
                    .max(1);
                let spacing = Duration::from_secs_f64(1.0 / f64::from(rate));
                advance(&endpoint.pace, spacing, d)
            }
            // One clock for all the tenant's endpoints: each turn is this endpoint's share of
            // the tenant's slots, so twenty busy endpoints come back at the tenant's pace, not
            // twenty times it.
            // The tenant's line goes first: a turn taken while it is full would come back to
            // a full line again (9b measured 850 set-asides/s for a tenant paced at 85/s).
            Refusal::TenantBusy(_) => {
                let latency = self.turn_latency(&endpoint);
                let spacing = spacing(latency, self.config.per_tenant);
                let tenant = self.tenant(tenant);
                let ahead = self.config.tenant_line() - tenant.line.available_permits();
                advance(&tenant.pace, spacing, latency + times(spacing, ahead))
            }
        }
    }

    /// The endpoint's smoothed attempt latency ([`UNTIMED_LATENCY_MS`] before its first
    /// attempt has finished), or the age of the middle one of its attempts in flight when that
    /// is longer: an endpoint that has not answered yet (a cold start, or one that just slowed
    /// down) is at least that slow. The middle, not the oldest: one attempt stuck on a slow
    /// connection says little of the other slots, and taking its age for the endpoint's pace
    /// spread a fast endpoint's set-aside tasks over minutes (scenario 4b, after a stall: a
    /// delivery 91 s late). (A floor of 20 ms for every endpoint made a 1 ms endpoint's
    /// set-aside tasks come back at 32 slots ÷ 20 ms = 1,600/s: scenario 2 delivered 2,000/s.)
    fn latency(&self, endpoint: &Endpoint) -> Duration {
        self.latency_and_timed(endpoint).0
    }

    /// [`Gate::latency`], and whether an attempt of the endpoint has finished yet.
    fn latency_and_timed(&self, endpoint: &Endpoint) -> (Duration, bool) {
        let pace = endpoint.pace.lock().unwrap_or_else(|p| p.into_inner());
        let ms = if pace.latency_ms == 0.0 {
            UNTIMED_LATENCY_MS
        } else {
            pace.latency_ms.max(MIN_LATENCY_MS)
        };
        let smoothed = Duration::from_secs_f64(ms / 1000.0);
        let middle = pace.in_flight.values().map(|&n| u64::from(n)).sum::<u64>() / 2;
        let mut seen = 0u64;
        let age = pace
            .in_flight
            .iter()
            .find(|&(_, &n)| {
                seen += u64::from(n);
                seen > middle
            })
            .map(|(started, _)| started.elapsed())
            .unwrap_or_default();
        (smoothed.max(age), pace.latency_ms != 0.0)
    }

    /// The latency a deferral's turns assume: [`Gate::latency`], doubled while none of the
    /// endpoint's attempts has finished, since its attempts in flight tell only that it is at
    /// least that slow; turns handed out too close together come back to a full endpoint and
    /// are set aside again (scenario 9b: a backlog met a 3 s endpoint before it had answered
    /// once).
    fn turn_latency(&self, endpoint: &Endpoint) -> Duration {
        let (latency, timed) = self.latency_and_timed(endpoint);
        if timed { latency } else { latency * 2 }
    }

    fn admission(
        &self,
        endpoint: Arc<Endpoint>,
        slot: OwnedSemaphorePermit,
        probe: bool,
    ) -> Admission {
        let started = Instant::now();
        *endpoint
            .pace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight
            .entry(started)
            .or_default() += 1;
        Admission {
            endpoint,
            _slot: slot,
            _tenant: None,
            started,
            config: self.config.clone(),
            probe,
        }
    }

    /// A refusal after the breaker let a probe through: the probe is not made.
    fn refuse(endpoint: &Endpoint, probe: bool, refusal: Refusal) -> Refusal {
        if probe {
            endpoint
                .breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .probing = false;
        }
        refusal
    }

    /// The breaker's and the rate limit's say: whether this is the probe of a half-open
    /// circuit.
    fn precheck(&self, endpoint: &Endpoint, rate_limit_per_s: u32) -> Result<bool, Refusal> {
        let probe = {
            let mut b = endpoint.breaker.lock().unwrap_or_else(|p| p.into_inner());
            match b.open_until {
                Some(until) if Instant::now() < until => {
                    return Err(Refusal::CircuitOpen(until - Instant::now()));
                }
                // Half-open: one probe at a time; the rest wait for its verdict.
                Some(_) if b.probing => {
                    return Err(Refusal::CircuitOpen(Duration::from_millis(500)));
                }
                Some(_) => {
                    b.probing = true;
                    true
                }
                None => false,
            }
        };
        if let Some(rate) = NonZeroU32::new(rate_limit_per_s) {
            let mut limiter = endpoint.limiter.lock().unwrap_or_else(|p| p.into_inner());
            if limiter.as_ref().is_none_or(|(r, _)| *r != rate.get()) {
                *limiter = Some((rate.get(), RateLimiter::direct(Quota::per_second(rate))));
            }
            if let Some((_, l)) = limiter.as_ref()
                && let Err(not_until) = l.check()
            {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                drop(limiter);
                return Err(Self::refuse(
                    endpoint,
                    probe,
                    Refusal::RateLimited(wait.max(Duration::from_millis(10))),
                ));
            }
        }
        Ok(probe)
    }

    /// The circuit state of `subscription`'s endpoint.
    pub fn state(&self, subscription: &str) -> CircuitState {
        let endpoint = self.endpoint(subscription);
        let b = endpoint.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match b.open_until {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// How many endpoints have an open and a half-open circuit now, for metrics.
    pub fn circuit_counts(&self) -> (usize, usize) {
        let endpoints: Vec<Arc<Endpoint>> = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let (mut open, mut half_open) = (0, 0);
        for endpoint in endpoints {
            let b = endpoint.breaker.lock().unwrap_or_else(|p| p.into_inner());
            match b.open_until {
                None => {}
                Some(until) if now < until => open += 1,
                Some(_) => half_open += 1,
            }
        }
        (open, half_open)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut pace = self.endpoint.pace.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pace.in_flight.get_mut(&self.started) {
            *n -= 1;
            if *n == 0 {
                pace.in_flight.remove(&self.started);
            }
        }
    }
}

impl Admission {
    /// Reports the attempt's result: a success closes the circuit, retryable failures open it.
    pub fn finish(self, retryable_failure: bool) {
        {
            // Never exactly zero: zero means "not timed yet".
            let took = (self.started.elapsed().as_secs_f64() * 1000.0).max(1e-3);
            let mut pace = self.endpoint.pace.lock().unwrap_or_else(|p| p.into_inner());
            pace.latency_ms = if pace.latency_ms == 0.0 {
                took
            } else {
                0.8 * pace.latency_ms + 0.2 * took
            };
        }
        let mut b = self
            .endpoint
            .breaker
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.probe {
            b.probing = false;
        }
        if !retryable_failure {
            *b = Breaker {
                cooldown: self.config.breaker_cooldown,
                ..Default::default()
            };
            return;
        }
        b.failures += 1;
        if self.probe {
            // The probe failed: stay open, twice as long.
            b.cooldown = (b.cooldown * 2).min(self.config.breaker_max_cooldown);
            b.open_until = Some(Instant::now() + b.cooldown);
        } else if b.open_until.is_none() && b.failures >= self.config.breaker_threshold {
            b.open_until = Some(Instant::now() + b.cooldown);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gate(per_endpoint: usize, cooldown_ms: u64) -> Gate {
        Gate::new(GateConfig {
            per_endpoint,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(cooldown_ms),
            breaker_max_cooldown: Duration::from_millis(cooldown_ms * 4),
            per_tenant: 8,
            line: 8,
        })
    }

    #[test]
    fn a_tenant_gets_its_share_and_other_tenants_the_rest() {
        let g = gate(4, 1000);
        let held: Vec<_> = (0..8)
            .map(|i| g.admit_for("big", &format!("s{i}"), 0).unwrap())
            .collect();
        assert!(matches!(
            g.admit_for("big", "s9", 0),
            Err(Refusal::TenantBusy(_))
        ));
        assert!(g.admit_for("small", "t1", 0).is_ok());
        drop(held);
        assert!(g.admit_for("big", "s9", 0).is_ok());
    }

    #[test]
    fn deferred_tasks_come_back_one_turn_apart_at_the_endpoints_pace() {
        let g = gate(2, 1000);
        // A 100 ms endpoint with two slots takes a task every 50 ms.
        {
            let a = g.admit("s", 0).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            a.finish(false);
        }
        let turns: Vec<Duration> = (0..10)
            .map(|_| g.defer("t", "s", Refusal::Busy(BUSY_DELAY)))
            .collect();
        for pair in turns.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]);
            assert!(
                gap >= Duration::from_millis(40) && gap <= Duration::from_millis(80),
                "{turns:?}"
            );
        }
        // An open circuit's tasks come back after its cool-down, still one turn apart.
        let open = g.defer("t", "other", Refusal::CircuitOpen(Duration::from_secs(5)));
        assert!(open >= Duration::from_secs(5), "{open:?}");
    }

    #[test]
    fn a_busy_tenants_endpoints_come_back_at_the_tenants_pace_not_each_at_its_own() {
        let g = gate(4, 1000);
        // Twenty 100 ms endpoints; the tenant's eight slots take a task every 12.5 ms.
        let held: Vec<_> = (0..20)
            .map(|i| g.admit(&format!("s{i}"), 0).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        held.into_iter().for_each(|a| a.finish(false));
        let turns: Vec<Duration> = (0..40)
            .map(|i| {
                g.defer(
                    "t",
                    &format!("s{}", i % 20),
                    Refusal::TenantBusy(BUSY_DELAY),
                )
            })
            .collect();
        let last = turns.last().copied().unwrap();
        assert!(last >= Duration::from_millis(450), "{turns:?}");
        // Another tenant's clock is its own.
        let other = g.defer("u", "s0", Refusal::TenantBusy(BUSY_DELAY));
        assert!(other < Duration::from_millis(150), "{other:?}");
    }

    #[test]
    fn an_endpoint_that_has_not_answered_yet_is_taken_to_be_as_slow_as_its_oldest_attempt() {
        let g = gate(1, 1000);
        let first = g.admit("s", 0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // No attempt has finished: the turn is after the one in flight, not 20 ms away.
        let turn = g.defer("t", "s", Refusal::Busy(BUSY_DELAY));
        assert!(turn >= Duration::from_millis(200), "{turn:?}");
        drop(first);
        let endpoint = g.endpoint("s");
        assert!(endpoint.pace.lock().unwrap().in_flight.is_empty());
    }

    #[test]
    fn a_fast_endpoints_set_aside_tasks_come_back_within_a_second_however_many() {
        let g = gate(1, 1000);
        g.admit("s", 0).unwrap().finish(false);
        let held = g.admit("s", 0).unwrap();
        let turns: Vec<_> = (0..10_000)
            .map(|_| g.defer("t", "s", Refusal::Busy(BUSY_DELAY)))
            .collect();
        assert!(
            turns.iter().all(|t| *t <= FAST_TURN_WITHIN),
            "{:?}",
            turns.last()
        );
        drop(held);
    }

    #[test]
    fn one_stuck_attempt_does_not_make_a_fast_endpoint_slow() {
        let g = gate(4, 1000);
        g.admit("s", 0).unwrap().finish(false);
        let stuck = g.admit("s", 0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let fresh: Vec<_> = (0..3).map(|_| g.admit("s", 0).unwrap()).collect();
        // Three of the four in flight have just started: the endpoint is as fast as timed.
        let turn = g.defer("t", "s", Refusal::Busy(BUSY_DELAY));
        assert!(turn < Duration::from_millis(100), "{turn:?}");
        drop((stuck, fresh));
    }

    #[test]
    fn endpoints_are_forgotten_when_idle_unless_held_or_their_circuit_still_matters() {
        let g = Gate::new(GateConfig {
            per_endpoint: 4,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(5),
            breaker_max_cooldown: Duration::from_secs(300),
            per_tenant: 8,
            line: 8,
        });
        for i in 0..5000 {
            g.admit(&format!("sub_{i}"), 10).unwrap().finish(false);
        }
        let held = g.admit("held", 0).unwrap();
        for _ in 0..3 {
            g.admit("failing", 0).unwrap().finish(true);
        }
        assert_eq!(g.state("failing"), CircuitState::Open);
        let now = g.now_ms();
        assert_eq!(g.sweep_as_of(now), 5002, "nothing is idle yet");

        let idle = u64::try_from(IDLE.as_millis()).unwrap();
        assert_eq!(
            g.sweep_as_of(now + idle),
            2,
            "the clean, idle endpoints are forgotten; the held and the failing one stay"
        );
        assert_eq!(
            g.state("failing"),
            CircuitState::Open,
            "its circuit is kept"
        );
        // Twice the longest cool-down later, even a failing endpoint's state is stale; one
        // that is still held never goes.
        assert_eq!(g.sweep_as_of(g.now_ms() + 600_001), 1);
        held.finish(false);
        assert_eq!(g.sweep_as_of(g.now_ms() + idle), 0);
        // A forgotten endpoint starts afresh.
        assert!(g.admit("sub_1", 10).is_ok());
    }

    #[test]
    fn in_flight_deliveries_per_endpoint_are_bounded_and_endpoints_are_independent() {
        let g = gate(2, 1000);
        let a = g.admit("s1", 0).unwrap();
        let _b = g.admit("s1", 0).unwrap();
        assert!(matches!(g.admit("s1", 0), Err(Refusal::Busy(_))));
        assert!(g.admit("s2", 0).is_ok(), "another endpoint is not affected");
        a.finish(false);
        assert!(g.admit("s1", 0).is_ok());
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_successful_probe_closes_it() {
        let g = gate(10, 30);
        for _ in 0..3 {
            g.admit("s", 0).unwrap().finish(true);
        }
        assert_eq!(g.state("s"), CircuitState::Open);
        assert_eq!(g.circuit_counts(), (1, 0));
        assert!(
            matches!(g.admit("s", 0), Err(Refusal::CircuitOpen(d)) if d <= Duration::from_millis(30))
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(g.state("s"), CircuitState::HalfOpen);
        assert_eq!(g.circuit_counts(), (0, 1));
        let probe = g.admit("s", 0).unwrap();
        assert!(
            matches!(g.admit("s", 0), Err(Refusal::CircuitOpen(_))),
            "one probe at a time"
        );
        probe.finish(false);
        assert_eq!(g.state("s"), CircuitState::Closed);
        assert_eq!(g.circuit_counts(), (0, 0));
        assert!(g.admit("s", 0).is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let g = gate(10, 20);
        for _ in 0..3 {
            g.admit("s", 0).unwrap().finish(true);
        }
        std::thread::sleep(Duration::from_millis(25));
        g.admit("s", 0).unwrap().finish(true);
        match g.admit("s", 0) {
            Err(Refusal::CircuitOpen(d)) => assert!(d > Duration::from_millis(20), "{d:?}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn successes_in_between_keep_the_circuit_closed_and_permanent_failures_do_not_count() {
        let g = gate(10, 1000);
        for _ in 0..10 {
            g.admit("s", 0).unwrap().finish(true);
            g.admit("s", 0).unwrap().finish(true);
            g.admit("s", 0).unwrap().finish(false);
        }
        assert_eq!(g.state("s"), CircuitState::Closed);
    }

    #[test]
    fn the_rate_limit_admits_its_quota_then_says_when() {
        let g = gate(100, 1000);
        let mut admitted = 0;
        let mut refusal = None;
        for _ in 0..10 {
            match g.admit("s", 2) {
                Ok(a) => {
                    admitted += 1;
                    a.finish(false);
                }
                Err(r) => refusal = Some(r),
            }
        }
        assert!(admitted <= 2, "{admitted}");
        assert!(
            matches!(refusal, Some(Refusal::RateLimited(d)) if d <= Duration::from_millis(600))
        );
    }
}
