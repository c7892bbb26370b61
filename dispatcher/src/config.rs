//! `Settings` of the dispatcher: the shared variables plus delivery tuning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::config::{ConfigError, Env, SharedSettings};

/// The smallest `WEBHOOKS_PAYLOAD_MEMORY`: room for a largest event on each side.
pub const MIN_PAYLOAD_MEMORY: usize = 2 * 1024 * 1024;

/// Everything the dispatcher needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub shared: SharedSettings,
    /// `WEBHOOKS_METRICS_LISTEN`: `/healthz`, `/readyz`, `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Total time allowed for one delivery request (`WEBHOOKS_HTTP_TIMEOUT`, 15 s).
    pub http_timeout: Duration,
    /// Time allowed to connect (`WEBHOOKS_CONNECT_TIMEOUT`, 5 s).
    pub connect_timeout: Duration,
    /// Deliveries in flight at once in this process (`WEBHOOKS_MAX_IN_FLIGHT`, 1024).
    pub max_in_flight: usize,
    /// Events being fanned out at once (`WEBHOOKS_FANOUT_CONCURRENCY`, 128): matched and
    /// waiting for their endpoints' slots. An event gives its slot back once its first attempts
    /// are admitted, so this bounds the waiting, not the attempts (the endpoint slots do).
    pub fanout_concurrency: usize,
    /// Make each live delivery's first attempt straight from the fan-out and queue a task only
    /// when it fails or the endpoint cannot take it now (`WEBHOOKS_DIRECT_FIRST_ATTEMPT`, true).
    pub direct_first_attempt: bool,
    /// How long JetStream waits for an ack before redelivering; longer than the HTTP timeout
    /// plus a margin, or a slow delivery is sent twice.
    pub ack_wait: Duration,
    /// How long draining waits for in-flight deliveries (`WEBHOOKS_SHUTDOWN_GRACE`, 20 s).
    pub shutdown_grace: Duration,
    /// Replayed and redriven deliveries in flight at once (`WEBHOOKS_REPLAY_MAX_IN_FLIGHT`, 64):
    /// a lane of their own, so they never hold back live traffic.
    pub replay_max_in_flight: usize,
    /// Deliveries in flight to one endpoint at once (`WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT`, 32).
    /// 32 keep one fast endpoint at its full rate (docs/benchmarks.md); more only hold more
    /// connections and memory.
    pub per_endpoint_in_flight: usize,
    /// Consecutive failures that open an endpoint's circuit (`WEBHOOKS_BREAKER_THRESHOLD`, 5).
    pub breaker_threshold: u32,
    /// First open period of a circuit (`WEBHOOKS_BREAKER_COOLDOWN`, 5 s), doubled per failed
    /// probe up to `WEBHOOKS_BREAKER_MAX_COOLDOWN` (5 min).
    pub breaker_cooldown: Duration,
    pub breaker_max_cooldown: Duration,
    /// Failing without a success this long disables a subscription (`WEBHOOKS_DISABLE_AFTER`, 5 d).
    pub disable_after: Duration,
    /// `WEBHOOKS_EXTRA_CA_CERTS`: a PEM file of CA certificates trusted for receivers on top of
    /// the built-in roots (Mozilla's, compiled in); unreadable or certificate-free refuses to start.
    pub extra_ca_certs: Option<PathBuf>,
    /// Tasks the deliveries and replays consumers hand out before an ack
    /// (`WEBHOOKS_DELIVER_MAX_ACK_PENDING`, 20,000). Only due work is ever pending there: a
    /// waiting retry is in the waiting room, not in a consumer (see `waiting`).
    pub deliver_max_ack_pending: i64,
    /// Deliveries in flight at once for one tenant in this process
    /// (`WEBHOOKS_MAX_IN_FLIGHT_PER_TENANT`, half of `WEBHOOKS_MAX_IN_FLIGHT`): a tenant with a
    /// thousand saturated endpoints gets its share, not the whole pipe. (A quarter held one
    /// tenant fanning out to ten fast endpoints at 11,300 deliveries/s in scenario 3, where
    /// half gives 16,800/s.)
    pub per_tenant_in_flight: usize,
    /// Deliveries waiting in line for a busy endpoint's next free slot in this process
    /// (`WEBHOOKS_MAX_IN_LINE`, four times `WEBHOOKS_MAX_IN_FLIGHT`); a tenant may hold a quarter
    /// of them. A place costs a pulled message and a few hundred bytes, and saves the task a
    /// trip through the waiting room (docs/benchmarks.md).
    pub max_in_line: usize,
    /// Deliveries of one event to the fan-out after which the matches whose outcome could not
    /// be stored are dead-lettered as `system_error` (`WEBHOOKS_FANOUT_MAX_DELIVERIES`, 8).
    pub fanout_max_deliveries: i64,
    /// Deliveries one tenant may have in the waiting room (`WEBHOOKS_MAX_WAITING_PER_TENANT`,
    /// 250,000; 0: no budget): retries, set-asides and pending dead letters. Past it a retry
    /// is dead-lettered as `system_error` and a set-aside stays in its lane, so one tenant's
    /// dead endpoints cannot fill the room every tenant's retries wait in (`waiting_budget`).
    pub max_waiting_per_tenant: u64,
    /// Payload bytes this replica may hold (`WEBHOOKS_PAYLOAD_MEMORY`, 64 MiB): half for
    /// events being fanned out, half for tasks pulled (a tenant at most half of that). Past it
    /// the replica stops pulling, and the work waits in JetStream (`budget`).
    pub payload_memory: usize,
}

impl Settings {
    /// Defaults around the shared settings.
    pub fn new(shared: SharedSettings) -> Self {
        Self {
            shared,
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            http_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            fanout_concurrency: 128,
            direct_first_attempt: true,
            ack_wait: Duration::from_secs(45),
            shutdown_grace: Duration::from_secs(20),
            replay_max_in_flight: 64,
            per_endpoint_in_flight: 32,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
            breaker_max_cooldown: Duration::from_secs(300),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            extra_ca_certs: None,
            deliver_max_ack_pending: 20_000,
            per_tenant_in_flight: 512,
            max_in_line: 4096,
            fanout_max_deliveries: 8,
            max_waiting_per_tenant: 250_000,
            payload_memory: 64 * 1024 * 1024,
        }
    }

    /// From the process environment, checked.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut s = Self::new(SharedSettings::from_env(env)?);
        s.metrics_listen = env.parse("WEBHOOKS_METRICS_LISTEN", s.metrics_listen)?;
        s.http_timeout = env.duration("WEBHOOKS_HTTP_TIMEOUT", s.http_timeout)?;
        s.connect_timeout = env.duration("WEBHOOKS_CONNECT_TIMEOUT", s.connect_timeout)?;
        s.max_in_flight = env.parse("WEBHOOKS_MAX_IN_FLIGHT", s.max_in_flight)?;
        s.fanout_concurrency = env.parse("WEBHOOKS_FANOUT_CONCURRENCY", s.fanout_concurrency)?;
        s.direct_first_attempt =
            env.parse("WEBHOOKS_DIRECT_FIRST_ATTEMPT", s.direct_first_attempt)?;
        s.shutdown_grace = env.duration("WEBHOOKS_SHUTDOWN_GRACE", s.shutdown_grace)?;
        s.replay_max_in_flight =
            env.parse("WEBHOOKS_REPLAY_MAX_IN_FLIGHT", s.replay_max_in_flight)?;
        s.per_endpoint_in_flight = env.parse(
            "WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT",
            s.per_endpoint_in_flight,
        )?;
        s.breaker_threshold = env.parse("WEBHOOKS_BREAKER_THRESHOLD", s.breaker_threshold)?;
        s.breaker_cooldown = env.duration("WEBHOOKS_BREAKER_COOLDOWN", s.breaker_cooldown)?;
        s.breaker_max_cooldown =
            env.duration("WEBHOOKS_BREAKER_MAX_COOLDOWN", s.breaker_max_cooldown)?;
        s.disable_after = env.duration("WEBHOOKS_DISABLE_AFTER", s.disable_after)?;
        s.extra_ca_certs = env.string("WEBHOOKS_EXTRA_CA_CERTS").map(PathBuf::from);
        s.deliver_max_ack_pending = env.parse(
            "WEBHOOKS_DELIVER_MAX_ACK_PENDING",
            s.deliver_max_ack_pending,
        )?;
        s.per_tenant_in_flight = env.parse(
            "WEBHOOKS_MAX_IN_FLIGHT_PER_TENANT",
            (s.max_in_flight / 2).max(1),
        )?;
        s.max_in_line = env.parse("WEBHOOKS_MAX_IN_LINE", s.max_in_flight * 4)?;
        s.fanout_max_deliveries =
            env.parse("WEBHOOKS_FANOUT_MAX_DELIVERIES", s.fanout_max_deliveries)?;
        s.max_waiting_per_tenant =
            env.parse("WEBHOOKS_MAX_WAITING_PER_TENANT", s.max_waiting_per_tenant)?;
        s.payload_memory = env.parse("WEBHOOKS_PAYLOAD_MEMORY", s.payload_memory)?;
        s.ack_wait = (s.http_timeout * 3).max(s.http_timeout + Duration::from_secs(6));
        s.check()?;
        Ok(s)
    }

    /// Refuses combinations that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.ack_wait <= self.http_timeout + Duration::from_secs(5) {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_HTTP_TIMEOUT",
                message: "ack wait must exceed the http timeout by more than 5 s".into(),
            });
        }
        if self.max_in_flight == 0
            || self.fanout_concurrency == 0
            || self.per_endpoint_in_flight == 0
            || self.replay_max_in_flight == 0
            || self.per_tenant_in_flight == 0
            || self.deliver_max_ack_pending <= 0
            || self.fanout_max_deliveries <= 0
        {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_MAX_IN_FLIGHT",
                message: "concurrency limits must be positive".into(),
            });
        }
        if self.payload_memory < MIN_PAYLOAD_MEMORY {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_PAYLOAD_MEMORY",
                message: format!("must be at least {MIN_PAYLOAD_MEMORY} bytes (2 MiB)"),
            });
        }
        if let Some(path) = &self.extra_ca_certs {
            crate::http_client::load_extra_ca_certs(path)?;
        }
        Ok(())
    }
}
