//! `Settings` of the ingest service: the shared variables plus its own.

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use common::config::{ConfigError, Env, SharedSettings};

/// Time a test send may take beyond the dispatchers' HTTP timeout (queueing, signing, reply).
const TEST_SEND_MARGIN: Duration = Duration::from_secs(5);

/// Everything ingest needs to start; built from the environment in `main`, in code in tests.
#[derive(Clone)]
pub struct Settings {
    pub shared: SharedSettings,
    /// `WEBHOOKS_LISTEN`.
    pub listen: SocketAddr,
    /// `WEBHOOKS_ADMIN_TOKEN`.
    pub admin_token: Secret,
    /// Largest single-event body (256 KiB).
    pub event_body_limit: usize,
    /// Largest batch body (5 MiB) and item count (500).
    pub batch_body_limit: usize,
    pub batch_max_events: usize,
    /// How long to wait for a PubAck before answering `503`.
    pub publish_timeout: Duration,
    /// How long a test send may take before answering `503`: the dispatchers' HTTP timeout
    /// (`WEBHOOKS_HTTP_TIMEOUT`, 15 s) plus a margin of 5 s.
    pub test_send_timeout: Duration,
    /// Events per second per tenant, in bursts of as many (`WEBHOOKS_TENANT_RATE_LIMIT`,
    /// 10,000); per replica, so N replicas admit up to N × this.
    pub tenant_rate_limit: NonZeroU32,
    /// `WEBHOOKS_MAX_IN_FLIGHT_REQUESTS` (1024): API requests served at once; more are answered
    /// `503` at once rather than queued.
    pub max_in_flight_requests: usize,
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("shared", &self.shared)
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Defaults for everything but the admin token, which has none.
    pub fn new(shared: SharedSettings, admin_token: Secret) -> Self {
        Self {
            shared,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_token,
            event_body_limit: 256 * 1024,
            batch_body_limit: 5 * 1024 * 1024,
            batch_max_events: 500,
            publish_timeout: Duration::from_secs(5),
            test_send_timeout: Duration::from_secs(15) + TEST_SEND_MARGIN,
            tenant_rate_limit: NonZeroU32::new(10_000).unwrap_or(NonZeroU32::MIN),
            max_in_flight_requests: 1024,
        }
    }

    /// From the process environment.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let shared = SharedSettings::from_env(env)?;
        let token = env.required("WEBHOOKS_ADMIN_TOKEN")?;
        if token.len() < 16 {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_ADMIN_TOKEN",
                message: "must be at least 16 characters".into(),
            });
        }
        let mut settings = Self::new(shared, Secret::new(token));
        settings.listen = env.parse("WEBHOOKS_LISTEN", settings.listen)?;
        settings.tenant_rate_limit =
            env.parse("WEBHOOKS_TENANT_RATE_LIMIT", settings.tenant_rate_limit)?;
        settings.max_in_flight_requests = env.parse(
            "WEBHOOKS_MAX_IN_FLIGHT_REQUESTS",
            settings.max_in_flight_requests,
        )?;
        if settings.max_in_flight_requests == 0 {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_MAX_IN_FLIGHT_REQUESTS",
                message: "must be positive".into(),
            });
        }
        settings.test_send_timeout =
            env.duration("WEBHOOKS_HTTP_TIMEOUT", Duration::from_secs(15))? + TEST_SEND_MARGIN;
        Ok(settings)
    }
}
