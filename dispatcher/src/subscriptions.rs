//! The in-memory subscription index, kept current by a watch on the subscriptions bucket.
//!
//! Matching looks up at most six buckets per event: the exact type, its `prefix.*` and `*`,
//! each for the event's agent and for "any agent". So the cost of an event depends on its
//! matches, not on how many subscriptions exist.
//!
//! A subscription its owner disabled stays known by id (a queued delivery must learn it is
//! disabled) but is not matched: it queues nothing. One the system disabled (`410 Gone`, failing
//! too long) is still matched, so its deliveries are queued and then parked as dead letters,
//! ready to be redriven once it is enabled again.
//!
//! A subscription whose signing secrets this replica cannot open (a master key missing here, a
//! corrupt record) is still matched: its deliveries are queued, never sent unsigned, retried on
//! its schedule and then dead-lettered as `system_error`, so nothing is lost while an operator
//! fixes the key. `/readyz` and a metric count them.
//!
//! A deleted subscription leaves nothing behind (issue 14: nothing grows with churn): its
//! tombstone is forgotten once the watch has passed it (`common::watch::Graveyard`), and an id
//! the index does not hold whose ULID is older than [`KNOWN_WITHIN`] is a deleted one, since a
//! live subscription that old would be here.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use common::{
    crypto::MasterKeys,
    watch::{Change, Graveyard, Sink},
};
use proto::v1::Subscription;

use crate::signing::Signer;

/// A subscription ready to deliver to: the record and its prepared signing keys, or why this
/// replica cannot sign for it.
pub struct Live {
    pub sub: Subscription,
    pub signer: Result<Signer, Unsignable>,
}

/// Why a subscription's deliveries cannot be signed here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot sign: {0}")]
pub struct Unsignable(String);

/// What the index knows about a subscription id.
pub enum Lookup {
    Live(Arc<Live>),
    /// Deleted: its queued deliveries are dropped.
    Deleted,
    /// Never seen: perhaps created a moment ago and not yet seen here.
    Unknown,
}

/// How long after its creation (the time in its ULID) a subscription surely reached this
/// replica's index: the watch delivers within a second, and a replica whose watch is down has
/// no NATS to pull deliveries from either. An id not held and older than this was deleted.
pub const KNOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether `id` (`sub_<ULID>`) was created more than [`KNOWN_WITHIN`] ago.
fn created_long_ago(id: &str) -> bool {
    let Some(created) = id
        .strip_prefix("sub_")
        .and_then(|u| ulid::Ulid::from_string(u).ok())
        .map(|u| u.datetime())
    else {
        return false;
    };
    created.elapsed().is_ok_and(|age| age > KNOWN_WITHIN)
}

type BucketKey = (String, String);

#[derive(Default)]
struct Inner {
    /// Every subscription by id (`None` once deleted), with its KV revision.
    by_id: HashMap<String, (u64, Option<Arc<Live>>)>,
    /// tenant -> (type pattern, agent or "") -> enabled subscriptions.
    buckets: HashMap<String, HashMap<BucketKey, Vec<Arc<Live>>>>,
    /// Ids whose signing secrets do not open or parse here.
    unsignable: HashSet<String>,
    /// Tombstones in `by_id`, until the watch passes them.
    graveyard: Graveyard,
}

/// The index, shared by the fan-out, the delivery loop and the KV watch.
#[derive(Clone)]
pub struct Index {
    inner: Arc<RwLock<Inner>>,
    /// Open the sealed signing secrets of each record.
    keys: Arc<MasterKeys>,
}

fn bucket_keys(sub: &Subscription) -> Vec<BucketKey> {
    let agents: Vec<&str> = if sub.agent_ids.is_empty() {
        vec![""]
    } else {
        sub.agent_ids.iter().map(String::as_str).collect()
    };
    sub.event_types
        .iter()
        .flat_map(|t| agents.iter().map(move |a| (t.clone(), (*a).to_owned())))
        .collect()
}

impl Inner {
    fn unregister(&mut self, live: &Live) {
        let Some(tenant) = self.buckets.get_mut(&live.sub.tenant_id) else {
            return;
        };
        for key in bucket_keys(&live.sub) {
            if let Some(list) = tenant.get_mut(&key) {
                list.retain(|l| l.sub.id != live.sub.id);
                if list.is_empty() {
                    tenant.remove(&key);
                }
            }
        }
        if tenant.is_empty() {
            self.buckets.remove(&live.sub.tenant_id);
        }
    }

    /// The watch has delivered `revision`: tombstones at or below it go.
    fn forget_buried(&mut self, revision: u64) {
        for (r, id) in self.graveyard.advance(revision) {
            if self
                .by_id
                .get(&id)
                .is_some_and(|(at, l)| l.is_none() && *at == r)
            {
                self.by_id.remove(&id);
            }
        }
    }

    fn register(&mut self, live: &Arc<Live>) {
        let tenant = self.buckets.entry(live.sub.tenant_id.clone()).or_default();
        for key in bucket_keys(&live.sub) {
            tenant.entry(key).or_default().push(live.clone());
        }
    }
}

impl Index {
    /// An empty index that opens signing secrets with `keys`.
    pub fn new(keys: MasterKeys) -> Self {
        Self {
            inner: Arc::default(),
            keys: Arc::new(keys),
        }
    }

    /// The prepared signer of `sub`: its secrets opened (never logged) and parsed.
    fn signer(&self, sub: &Subscription) -> anyhow::Result<Signer> {
        let opened = sub
            .secrets
            .iter()
            .map(|s| {
                let plaintext = self.keys.open_secret(&sub.id, s)?;
                Ok((plaintext, s.expires_at.as_ref().map(|t| t.seconds)))
            })
            .collect::<Result<Vec<_>, common::crypto::CryptoError>>()?;
        Ok(Signer::new(
            opened.iter().map(|(s, expires)| (s.as_str(), *expires)),
        )?)
    }

    /// Applies a write of our own; older revisions are ignored (see [`Graveyard`]).
    pub fn apply(&self, change: Change<Subscription>) {
        self.apply_change(change, false);
    }

    fn apply_change(&self, change: Change<Subscription>, from_watch: bool) {
        let (id, revision, sub) = match change {
            Change::Put {
                revision, value, ..
            } => (value.id.clone(), revision, Some(value)),
            // Keys are `<tenant>.<id>`.
            Change::Delete { key, revision } => (
                key.rsplit('.').next().unwrap_or_default().to_owned(),
                revision,
                None,
            ),
        };
        let live = sub.map(|sub| {
            let signer = self.signer(&sub).map_err(|error| {
                tracing::error!(subscription_id = %id, error = %error, "cannot open the subscription's signing secret: its deliveries will be retried, then dead-lettered");
                Unsignable(error.to_string())
            });
            Arc::new(Live { signer, sub })
        });
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let deleted = live.is_none();
        let stale = inner.graveyard.stale(revision);
        match inner.by_id.get_mut(&id) {
            // The watch's own deletion of one deleted here first (`u64::MAX`): the tombstone
            // takes the real revision, so it can go.
            Some((r, None)) if from_watch && deleted => {
                *r = revision;
                inner.graveyard.bury(&id, revision);
                inner.forget_buried(revision);
                return;
            }
            Some((r, _)) if *r >= revision => return,
            Some(_) => {}
            // A write of our own for an id no longer held, older than the watch's position.
            None if stale && !from_watch => return,
            // A deletion of an id not held: nothing to remember.
            None if deleted && (stale || !from_watch) => {
                inner.forget_buried(revision);
                return;
            }
            None => {}
        }
        if live.as_ref().is_some_and(|l| l.signer.is_err()) {
            inner.unsignable.insert(id.clone());
        } else {
            inner.unsignable.remove(&id);
        }
        if let Some((_, Some(old))) = inner.by_id.get(&id).cloned() {
            inner.unregister(&old);
        }
        if let Some(live) = &live
            && (live.sub.enabled || !live.sub.disabled_reason.is_empty())
        {
            inner.register(live);
        }
        if deleted {
            inner.graveyard.bury(&id, revision);
        }
        inner.by_id.insert(id, (revision, live));
        if from_watch {
            inner.forget_buried(revision);
        }
    }

    /// The subscriptions of `tenant` that want an event of `event_type` from `agent`: the
    /// enabled ones and those the system disabled.
    pub fn matches(&self, tenant: &str, event_type: &str, agent: &str) -> Vec<Arc<Live>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(buckets) = inner.buckets.get(tenant) else {
            return Vec::new();
        };
        let prefix = event_type.split_once('.').map(|(p, _)| format!("{p}.*"));
        let mut out: Vec<Arc<Live>> = Vec::new();
        for pattern in [Some(event_type), prefix.as_deref(), Some("*")]
            .into_iter()
            .flatten()
        {
            for a in [agent, ""] {
                let key = (pattern.to_owned(), a.to_owned());
                for live in buckets.get(&key).into_iter().flatten() {
                    if !out.iter().any(|o| o.sub.id == live.sub.id) {
                        out.push(live.clone());
                    }
                }
            }
        }
        out
    }

    /// The subscription with `id`, as far as this replica knows.
    pub fn get(&self, id: &str) -> Lookup {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match inner.by_id.get(id) {
            Some((_, Some(live))) => Lookup::Live(live.clone()),
            Some((_, None)) => Lookup::Deleted,
            None if created_long_ago(id) => Lookup::Deleted,
            None => Lookup::Unknown,
        }
    }
}

impl Index {
    /// Subscriptions held (enabled or not), and tombstones.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let tombstones = inner.by_id.values().filter(|(_, l)| l.is_none()).count();
        (inner.by_id.len() - tombstones, tombstones)
    }

    /// How many subscriptions this replica cannot sign for.
    pub fn unsignable(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.unsignable.len()
    }
}

impl Sink<Subscription> for Index {
    fn watched(&self, change: Change<Subscription>) {
        self.apply_change(change, true);
    }

    fn resync(&self, seen: &HashSet<String>, through: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // `seen` holds keys (`<tenant>.<id>`); `by_id` is keyed by id.
        let gone: Vec<String> = inner
            .by_id
            .iter()
            .filter(|(id, (r, live))| {
                *r <= through
                    && !live.as_ref().is_some_and(|l| {
                        seen.contains(&proto::subjects::subscription_key(&l.sub.tenant_id, id))
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some((_, Some(old))) = inner.by_id.remove(&id) {
                inner.unregister(&old);
            }
            inner.unsignable.remove(&id);
        }
        inner.forget_buried(through);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sub(id: &str, tenant: &str, types: &[&str], agents: &[&str], enabled: bool) -> Subscription {
        Subscription {
            id: id.into(),
            tenant_id: tenant.into(),
            url: "https://example.com".into(),
            event_types: types.iter().map(|s| (*s).to_owned()).collect(),
            agent_ids: agents.iter().map(|s| (*s).to_owned()).collect(),
            enabled,
            // A legacy record's plaintext secret, still read.
            secrets: vec![proto::v1::SigningSecret {
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn put(index: &Index, revision: u64, s: Subscription) {
        index.apply(Change::Put {
            key: format!("{}.{}", s.tenant_id, s.id),
            revision,
            value: s,
        });
    }

    fn ids(v: Vec<Arc<Live>>) -> Vec<String> {
        let mut ids: Vec<String> = v.iter().map(|l| l.sub.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_deleted_subscription_leaves_nothing_and_an_old_unknown_id_reads_as_deleted() {
        let index = Index::new(MasterKeys::generate());
        let old = format!(
            "sub_{}",
            ulid::Ulid::from_datetime(std::time::SystemTime::now() - KNOWN_WITHIN * 2,)
        );
        let young = format!("sub_{}", ulid::Ulid::new());
        for (r, id) in [(1, &old), (2, &young)] {
            index.watched(Change::Put {
                key: format!("acme.{id}"),
                revision: r,
                value: sub(id, "acme", &["*"], &[], true),
            });
        }
        for (r, id) in [(3, &old), (4, &young)] {
            index.watched(Change::Delete {
                key: format!("acme.{id}"),
                revision: r,
            });
        }
        assert_eq!(
            index.sizes(),
            (0, 0),
            "no tombstone kept once the watch passed it"
        );
        assert!(matches!(index.get(&old), Lookup::Deleted));
        // Created a moment ago: perhaps not seen here yet, so not taken for deleted.
        assert!(matches!(index.get(&young), Lookup::Unknown));
        assert!(index.matches("acme", "call.started", "a").is_empty());
    }

    #[test]
    fn exact_prefix_and_wildcard_patterns_match() {
        let index = Index::new(MasterKeys::generate());
        put(&index, 1, sub("exact", "t", &["call.started"], &[], true));
        put(&index, 2, sub("prefix", "t", &["call.*"], &[], true));
        put(&index, 3, sub("all", "t", &["*"], &[], true));
        put(&index, 4, sub("other", "t", &["qa.scored"], &[], true));
        assert_eq!(
            ids(index.matches("t", "call.started", "a1")),
            ["all", "exact", "prefix"]
        );
        assert_eq!(
            ids(index.matches("t", "call.ended", "a1")),
            ["all", "prefix"]
        );
        assert_eq!(ids(index.matches("t", "qa.scored", "a1")), ["all", "other"]);
    }

    #[test]
    fn agent_filters_and_tenants_are_respected() {
        let index = Index::new(MasterKeys::generate());
        put(&index, 1, sub("a1-only", "t", &["*"], &["a1"], true));
        put(&index, 2, sub("other-tenant", "u", &["*"], &[], true));
        assert_eq!(ids(index.matches("t", "call.started", "a1")), ["a1-only"]);
        assert!(index.matches("t", "call.started", "a2").is_empty());
    }

    #[test]
    fn overlapping_patterns_match_once() {
        let index = Index::new(MasterKeys::generate());
        put(
            &index,
            1,
            sub("s", "t", &["call.*", "call.started", "*"], &["a1"], true),
        );
        assert_eq!(ids(index.matches("t", "call.started", "a1")), ["s"]);
    }

    #[test]
    fn edits_disables_and_deletes_take_effect_and_stale_revisions_do_not() {
        let index = Index::new(MasterKeys::generate());
        put(&index, 1, sub("s", "t", &["call.started"], &[], true));
        put(&index, 2, sub("s", "t", &["qa.scored"], &[], true));
        assert!(index.matches("t", "call.started", "a").is_empty());
        assert_eq!(ids(index.matches("t", "qa.scored", "a")), ["s"]);
        put(&index, 1, sub("s", "t", &["call.started"], &[], true));
        assert!(index.matches("t", "call.started", "a").is_empty());
        put(&index, 3, sub("s", "t", &["qa.scored"], &[], false));
        assert!(index.matches("t", "qa.scored", "a").is_empty());
        let mut parked = sub("s", "t", &["qa.scored"], &[], false);
        parked.disabled_reason = "endpoint answered 410 Gone".into();
        put(&index, 4, parked);
        assert_eq!(
            ids(index.matches("t", "qa.scored", "a")),
            ["s"],
            "system-disabled still queues"
        );
        put(&index, 5, sub("s", "t", &["qa.scored"], &[], false));
        assert!(matches!(index.get("s"), Lookup::Live(l) if !l.sub.enabled));
        index.apply(Change::Delete {
            key: "t.s".into(),
            revision: 6,
        });
        assert!(matches!(index.get("s"), Lookup::Deleted));
        assert!(matches!(index.get("never"), Lookup::Unknown));
    }

    #[test]
    fn sealed_secrets_open_and_unopenable_ones_stay_matched_and_counted() {
        let keys = MasterKeys::generate();
        let index = Index::new(keys.clone());
        let mut s = sub("s", "t", &["*"], &[], true);
        s.secrets = vec![keys.seal_secret("s", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None)];
        put(&index, 1, s.clone());
        let Lookup::Live(live) = index.get("s") else {
            panic!("sealed secret opens")
        };
        let legacy = Signer::new([("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None)]).unwrap();
        let signer = live.signer.as_ref().unwrap();
        assert_eq!(signer.sign("m", 1, b"x"), legacy.sign("m", 1, b"x"));
        assert_eq!(index.unsignable(), 0);
        let unsignable = |index: &Index| {
            let Lookup::Live(live) = index.get("s") else {
                panic!("still known")
            };
            let error = live.signer.as_ref().err().unwrap().to_string();
            assert!(error.starts_with("cannot sign"), "{error}");
            // Still matched: its deliveries are queued, retried, then dead-lettered.
            assert_eq!(ids(index.matches("t", "call.started", "a")), ["s"]);
            assert_eq!(index.unsignable(), 1);
        };

        // Sealed for another subscription (moved record) or under a key not configured here.
        let mut moved = s.clone();
        moved.secrets =
            vec![keys.seal_secret("other", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None)];
        put(&index, 2, moved);
        unsignable(&index);
        let mut foreign = s.clone();
        foreign.secrets = vec![MasterKeys::generate().seal_secret(
            "s",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            None,
        )];
        put(&index, 3, foreign);
        unsignable(&index);
        put(&index, 4, s);
        assert!(matches!(index.get("s"), Lookup::Live(l) if l.signer.is_ok()));
        assert_eq!(index.unsignable(), 0);
        // A deleted one is no longer counted.
        let mut bad = sub("b", "t", &["*"], &[], true);
        bad.secrets[0].secret = "not a secret".into();
        put(&index, 5, bad);
        assert_eq!(index.unsignable(), 1);
        index.apply(Change::Delete {
            key: "t.b".into(),
            revision: 6,
        });
        assert_eq!(index.unsignable(), 0);
    }
}
