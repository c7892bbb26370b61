//! Who subscribes to what in a scenario, and which subscriptions an event should reach. The
//! runner creates the subscriptions from [`Layout::spec`] and counts the deliveries it expects
//! with [`Layout::targets`]; the receiver calls anything else misrouted.

use std::ops::Range;

use crate::load::EVENT_TYPE;

/// Subscriptions per tenant in [`Layout::Tenants`].
pub const PER_TENANT: usize = 10;

/// Agents the events of [`Layout::Tenants`] come from: one per agent-filtered subscription.
const TENANT_AGENTS: usize = 9;

#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// One tenant; `subs` subscriptions to every event type of every agent (events all come
    /// from one agent).
    Every { subs: usize },
    /// One tenant; subscription k takes only agent k's events (events go round robin over the
    /// agents), so each event matches one.
    PerAgent { subs: usize },
    /// `tenants` tenants with [`PER_TENANT`] subscriptions each, filtered so that every event
    /// matches exactly one of its tenant's (see [`Layout::spec`]); events go round robin over
    /// the tenants and over nine agents.
    Tenants { tenants: usize },
}

/// One subscription: its tenant (index), type patterns and agent filter (agent indices; empty
/// is every agent).
pub struct SubSpec {
    pub tenant: usize,
    pub types: &'static [&'static str],
    pub agents: Vec<usize>,
}

impl Layout {
    pub fn subs(self) -> usize {
        match self {
            Layout::Every { subs } | Layout::PerAgent { subs } => subs,
            Layout::Tenants { tenants } => tenants * PER_TENANT,
        }
    }

    pub fn tenants(self) -> usize {
        match self {
            Layout::Every { .. } | Layout::PerAgent { .. } => 1,
            Layout::Tenants { tenants } => tenants,
        }
    }

    /// Events come from agents `0..agents()`.
    pub fn agents(self) -> usize {
        match self {
            Layout::Every { .. } => 1,
            Layout::PerAgent { subs } => subs,
            Layout::Tenants { .. } => TENANT_AGENTS,
        }
    }

    /// The tenant id of tenant `t`; the single-tenant layouts keep the name they always had.
    pub fn tenant_id(self, t: usize) -> String {
        match self {
            Layout::Every { .. } | Layout::PerAgent { .. } => "bench".into(),
            Layout::Tenants { .. } => format!("t{t:05}"),
        }
    }

    /// Subscription `k`. In [`Layout::Tenants`], subscription `j` of a tenant (k = tenant × 10
    /// + j) mixes the index's buckets, mostly with an agent filter:
    /// - j 0–2: `call.failed` and `qa.scored` from agent j (exact types);
    /// - j 3–5: `call.*` from agent j (a prefix);
    /// - j 6–7: `*` from agent j;
    /// - j 8: `transcript.ready`, `call.failed`, `outcome.tagged` from agent 8;
    /// - j 9: `transcript.ready` and `qa.scored` from any agent: the event type never sent, so
    ///   it never matches.
    ///
    /// Every event is a `call.failed` from one of agents 0–8, so it matches exactly one.
    pub fn spec(self, k: usize) -> SubSpec {
        match self {
            Layout::Every { .. } => SubSpec {
                tenant: 0,
                types: &["*"],
                agents: Vec::new(),
            },
            Layout::PerAgent { .. } => SubSpec {
                tenant: 0,
                types: &["*"],
                agents: vec![k],
            },
            Layout::Tenants { .. } => {
                let j = k % PER_TENANT;
                let (types, agents): (&'static [&'static str], Vec<usize>) = match j {
                    0..=2 => (&["call.failed", "qa.scored"], vec![j]),
                    3..=5 => (&["call.*"], vec![j]),
                    6..=7 => (&["*"], vec![j]),
                    8 => (
                        &["transcript.ready", "call.failed", "outcome.tagged"],
                        vec![j],
                    ),
                    _ => (&["transcript.ready", "qa.scored"], Vec::new()),
                };
                SubSpec {
                    tenant: k / PER_TENANT,
                    types,
                    agents,
                }
            }
        }
    }

    /// The subscriptions of tenant `t`.
    fn of_tenant(self, t: usize) -> Range<usize> {
        match self {
            Layout::Every { subs } | Layout::PerAgent { subs } => 0..subs,
            Layout::Tenants { .. } => t * PER_TENANT..(t + 1) * PER_TENANT,
        }
    }

    /// The subscriptions an event of tenant `t` from agent `agent` should reach.
    pub fn targets(self, t: usize, agent: usize) -> Vec<usize> {
        self.of_tenant(t)
            .filter(|&k| {
                let spec = self.spec(k);
                spec.tenant == t
                    && spec.types.iter().any(|p| pattern_matches(p, EVENT_TYPE))
                    && (spec.agents.is_empty() || spec.agents.contains(&agent))
            })
            .collect()
    }

    /// The last healthy subscription that some event reaches, with the (tenant, agent) of such
    /// an event. Created after all the others, its first delivery shows that the dispatcher's
    /// index has applied every subscription (the KV watch applies them in revision order).
    pub fn probe(self, healthy: impl Fn(usize) -> bool) -> Option<(usize, usize, usize)> {
        (0..self.subs())
            .rev()
            .filter(|&k| healthy(k))
            .find_map(|k| {
                let spec = self.spec(k);
                let agent = spec.agents.first().copied().unwrap_or(0);
                self.targets(spec.tenant, agent)
                    .contains(&k)
                    .then_some((k, spec.tenant, agent))
            })
    }
}

/// The subscription type rule (exact, `<prefix>.*`, `*`), written here again rather than taken
/// from `proto::catalog`, so the benchmark's expectations do not share a bug with the system.
fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    pattern == "*"
        || pattern == event_type
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_event_matches_exactly_one_subscription() {
        let layout = Layout::Tenants { tenants: 3 };
        for t in 0..3 {
            for agent in 0..layout.agents() {
                assert_eq!(layout.targets(t, agent), [t * PER_TENANT + agent]);
            }
        }
        assert_eq!(layout.probe(|_| true), Some((28, 2, 8)));
    }

    #[test]
    fn single_tenant_layouts_keep_their_matching() {
        assert_eq!(Layout::Every { subs: 3 }.targets(0, 0), [0, 1, 2]);
        assert_eq!(Layout::PerAgent { subs: 100 }.targets(0, 42), [42]);
        assert_eq!(
            Layout::PerAgent { subs: 100 }.probe(|k| k >= 1),
            Some((99, 0, 99))
        );
    }
}
