//! Settings both binaries share, read from the contract's environment variables.

use std::time::Duration;

use ipnet::IpNet;

use crate::{crypto::MasterKeys, urls::UrlPolicy};

/// A setting that could not be parsed; the binary refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("{name} is required")]
    Missing { name: &'static str },
}

/// Where NATS is and how the JetStream objects are sized.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `NATS_URL`, comma-separated.
    pub nats_url: String,
    /// `NATS_CREDS`.
    pub nats_creds: Option<String>,
    /// `WEBHOOKS_STREAM_REPLICAS`: 1 or 3.
    pub stream_replicas: usize,
    /// `WEBHOOKS_EVENT_RETENTION`.
    pub event_retention: Duration,
    /// `WEBHOOKS_DEDUPE_WINDOW`.
    pub dedupe_window: Duration,
    /// `WEBHOOKS_EVENTS_MAX_BYTES` (1 GiB): the events stream's byte cap, so a small disk never
    /// fills; the other streams' caps scale with it (see `topology`).
    pub events_max_bytes: i64,
    /// `WEBHOOKS_MAX_QUEUED_PER_SUBSCRIPTION` (100,000): how many due tasks, replayed tasks
    /// and dead letters one subscription may hold in each of those shared streams (JetStream's
    /// per-subject limit; their subjects are `<tenant>.<subscription>`), so one tenant's
    /// endpoint cannot fill a stream that every tenant needs (see `topology`).
    pub max_queued_per_subscription: i64,
    /// `WEBHOOKS_LINKS_BASE_URL`.
    pub links_base_url: String,
    /// `WEBHOOKS_DELETE_MARKER_TTL` (1 h, at least 1 s): how long the marker of a deleted key
    /// (a subscription, an API key, a failing-since record) stays in its bucket, for every
    /// replica's watch to see, before nats-server removes it (per-message TTL), so that churn
    /// leaves no subject behind. A replica that was not watching meanwhile forgets the key
    /// when its watch is re-established (`watch::Sink::resync`).
    pub delete_marker_ttl: Duration,
    /// `WEBHOOKS_ALLOW_HTTP` and `WEBHOOKS_ALLOW_PRIVATE_TARGETS`.
    pub url_policy: UrlPolicy,
    /// `WEBHOOKS_MASTER_KEY` and `WEBHOOKS_MASTER_KEY_PREVIOUS`: seal signing secrets at rest.
    /// `Debug` shows only key ids. The default is the public insecure dev key; `from_env` never
    /// falls back to it outside dev mode (`WEBHOOKS_DEV_MODE=true`).
    pub master_keys: MasterKeys,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_creds: None,
            stream_replicas: 1,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            dedupe_window: Duration::from_secs(120),
            events_max_bytes: 1024 * 1024 * 1024,
            max_queued_per_subscription: 100_000,
            links_base_url: "https://api.open.example".into(),
            delete_marker_ttl: Duration::from_secs(3600),
            url_policy: UrlPolicy::default(),
            master_keys: MasterKeys::insecure_dev(),
        }
    }
}

impl SharedSettings {
    /// Defaults overlaid with whatever of the shared variables `env` has.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let stream_replicas = env.parse("WEBHOOKS_STREAM_REPLICAS", d.stream_replicas)?;
        if stream_replicas != 1 && stream_replicas != 3 {
            return Err(ConfigError::Invalid {
                name: "WEBHOOKS_STREAM_REPLICAS",
                message: "must be 1 or 3".into(),
            });
        }
        Ok(Self {
            nats_url: env.string("NATS_URL").unwrap_or(d.nats_url),
            nats_creds: env.string("NATS_CREDS"),
            stream_replicas,
            event_retention: env.duration("WEBHOOKS_EVENT_RETENTION", d.event_retention)?,
            dedupe_window: env.duration("WEBHOOKS_DEDUPE_WINDOW", d.dedupe_window)?,
            events_max_bytes: env.parse("WEBHOOKS_EVENTS_MAX_BYTES", d.events_max_bytes)?,
            max_queued_per_subscription: env.parse(
                "WEBHOOKS_MAX_QUEUED_PER_SUBSCRIPTION",
                d.max_queued_per_subscription,
            )?,
            links_base_url: env
                .string("WEBHOOKS_LINKS_BASE_URL")
                .unwrap_or(d.links_base_url),
            delete_marker_ttl: {
                let ttl = env.duration("WEBHOOKS_DELETE_MARKER_TTL", d.delete_marker_ttl)?;
                if ttl < Duration::from_secs(1) {
                    return Err(ConfigError::Invalid {
                        name: "WEBHOOKS_DELETE_MARKER_TTL",
                        message: "must be at least 1s".into(),
                    });
                }
                ttl
            },
            url_policy: UrlPolicy {
                allow_http: env.parse("WEBHOOKS_ALLOW_HTTP", false)?,
                allowed_private: env.cidrs("WEBHOOKS_ALLOW_PRIVATE_TARGETS")?,
            },
            master_keys: MasterKeys::from_env(env)?,
        })
    }
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A view of the process environment (or a map, in tests) with typed getters.
pub struct Env {
    lookup: Lookup,
}

impl Env {
    /// The real process environment.
    pub fn process() -> Self {
        Self {
            lookup: Box::new(|k| std::env::var(k).ok()),
        }
    }

    /// A fixed set of variables, for tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self {
            lookup: Box::new(move |k| map.get(k).cloned()),
        }
    }

    /// The variable, if set and not blank.
    pub fn string(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A required variable.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.string(name).ok_or(ConfigError::Missing { name })
    }

    /// A `FromStr` value, or `default` when unset.
    pub fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                message: format!("{v:?}: {e}"),
            }),
        }
    }

    /// A duration such as `7d`, `2m`, `500ms`.
    pub fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.string(name) {
            None => Ok(default),
            Some(v) => humantime::parse_duration(&v).map_err(|e| ConfigError::Invalid {
                name,
                message: format!("{v:?}: {e}"),
            }),
        }
    }

    /// Comma-separated CIDRs; a bare address counts as a single-host network.
    pub fn cidrs(&self, name: &'static str) -> Result<Vec<IpNet>, ConfigError> {
        let Some(v) = self.string(name) else {
            return Ok(Vec::new());
        };
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|e| ConfigError::Invalid {
                        name,
                        message: format!("{s:?}: {e}"),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: (&str, &str) = (
        "WEBHOOKS_MASTER_KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    );

    #[test]
    fn a_master_key_is_required_outside_dev_mode() {
        assert!(matches!(
            SharedSettings::from_env(&Env::from_pairs(&[])),
            Err(ConfigError::Missing {
                name: "WEBHOOKS_MASTER_KEY"
            })
        ));
        let dev =
            SharedSettings::from_env(&Env::from_pairs(&[("WEBHOOKS_DEV_MODE", "true")])).unwrap();
        assert!(dev.master_keys.is_insecure_dev());
        let s = SharedSettings::from_env(&Env::from_pairs(&[KEY])).unwrap();
        assert!(!s.master_keys.is_insecure_dev());
        assert!(!format!("{s:?}").contains(KEY.1));
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = SharedSettings::from_env(&Env::from_pairs(&[KEY])).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.event_retention, Duration::from_secs(7 * 86400));
        assert_eq!(s.dedupe_window, Duration::from_secs(120));
        assert!(!s.url_policy.allow_http);
    }

    #[test]
    fn durations_cidrs_and_replicas_are_parsed_and_checked() {
        let env = Env::from_pairs(&[
            ("WEBHOOKS_EVENT_RETENTION", "3d"),
            ("WEBHOOKS_DEDUPE_WINDOW", "30s"),
            ("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8, 10.1.2.3"),
            ("WEBHOOKS_ALLOW_HTTP", "true"),
            KEY,
        ]);
        let s = SharedSettings::from_env(&env).unwrap();
        assert_eq!(s.event_retention, Duration::from_secs(3 * 86400));
        assert_eq!(s.url_policy.allowed_private.len(), 2);
        assert!(s.url_policy.allow_http);

        let bad = Env::from_pairs(&[("WEBHOOKS_STREAM_REPLICAS", "2"), KEY]);
        assert!(matches!(
            SharedSettings::from_env(&bad),
            Err(ConfigError::Invalid { .. })
        ));
        let bad = Env::from_pairs(&[("WEBHOOKS_EVENT_RETENTION", "forever"), KEY]);
        assert!(matches!(
            SharedSettings::from_env(&bad),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
