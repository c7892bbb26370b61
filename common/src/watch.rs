//! A KV bucket mirrored into memory through a watch.
//!
//! Each replica keeps what it needs (API keys, subscriptions) in memory and applies every
//! change the watch delivers, so a change made through any replica reaches all of them within
//! a second, without a restart. Every change carries its KV revision and the sinks ignore older
//! revisions, which makes it safe to apply one's own writes at once (read-your-writes) and to
//! replay the whole bucket after the watch is re-established.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One change of one key, decoded.
pub enum Change<T> {
    Put {
        key: String,
        revision: u64,
        value: T,
    },
    Delete {
        key: String,
        revision: u64,
    },
}

/// What a mirror applies changes to. `watched` is called with the watch's changes only, in
/// revision order; a sink's own writes go through its own methods.
pub trait Sink<T>: Send + Sync + 'static {
    fn watched(&self, change: Change<T>);

    /// The watch (re-)established has replayed the bucket through `through`: `seen` are the
    /// keys it holds. Anything else the sink holds at or below `through` was removed from the
    /// bucket while it was not watching (a deletion marker that has since expired): forget it.
    fn resync(&self, seen: &HashSet<String>, through: u64) {
        let _ = (seen, through);
    }
}

/// The tombstones of a mirror, and how far its watch has come, so that deleted keys are
/// forgotten rather than kept for ever (issue 14: nothing grows with churn).
///
/// A tombstone exists only to stop an older revision of its key from bringing it back. The
/// watch delivers revisions in order, so once it has delivered revision `w`, no change at or
/// below `w` can come from it any more; and a write of this process's own at or below `w`
/// for a key the mirror does not hold is stale (had the key been put at that revision and not
/// deleted since, the watch would have delivered it). So a tombstone at or below the watch's
/// position can go, and [`Graveyard::stale`] answers for the keys it held.
#[derive(Default)]
pub struct Graveyard {
    /// The highest revision the watch has delivered.
    watermark: u64,
    /// Tombstones by revision.
    buried: std::collections::BTreeMap<u64, Vec<String>>,
}

impl Graveyard {
    /// Whether a change at `revision` to a key the mirror does not hold is stale.
    pub fn stale(&self, revision: u64) -> bool {
        revision <= self.watermark
    }

    /// Records a tombstone of `key` at `revision`.
    pub fn bury(&mut self, key: &str, revision: u64) {
        self.buried
            .entry(revision)
            .or_default()
            .push(key.to_owned());
    }

    /// The watch delivered `revision`: answers the tombstones now at or below its position,
    /// for the owner to remove (if each is still a tombstone at that revision).
    pub fn advance(&mut self, revision: u64) -> Vec<(u64, String)> {
        self.watermark = self.watermark.max(revision);
        let later = self.buried.split_off(&(self.watermark + 1));
        let due = std::mem::replace(&mut self.buried, later);
        due.into_iter()
            .flat_map(|(r, keys)| keys.into_iter().map(move |k| (r, k)))
            .collect()
    }

    /// Tombstones kept now.
    pub fn len(&self) -> usize {
        self.buried.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buried.is_empty()
    }
}

/// Becomes true once the mirror has caught up with the bucket's contents.
#[derive(Clone)]
pub struct Ready(watch::Receiver<bool>);

impl Ready {
    /// Waits until caught up, for at most `timeout`; answers whether it is.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the mirror has caught up.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }
}

/// Mirrors `store` into `sink` until `token` is cancelled, re-establishing the watch after
/// any error (a NATS restart, say).
pub fn spawn<T, S>(store: kv::Store, sink: S, token: CancellationToken) -> Ready
where
    T: prost::Message + Default + Send + 'static,
    S: Sink<T>,
{
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                result = mirror(&store, &sink, &tx) => {
                    if let Err(error) = result {
                        tracing::warn!(error = %error, "kv watch interrupted, re-establishing");
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    Ready(rx)
}

async fn mirror<T, S>(
    store: &kv::Store,
    sink: &S,
    ready: &watch::Sender<bool>,
) -> anyhow::Result<()>
where
    T: prost::Message + Default,
    S: Sink<T>,
{
    // An empty bucket delivers nothing, so ask first whether there is anything to wait for.
    let status = store.status().await?;
    let values = status.values();
    let mut entries = store.watch_with_history(">").await?;
    // The keys the replay delivers, until it has caught up (then `None`).
    let mut seen = Some(HashSet::new());
    if values == 0 {
        sink.resync(&HashSet::new(), status.info.state.last_sequence);
        seen = None;
        ready.send_replace(true);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        if let Some(seen) = seen.as_mut()
            && entry.operation == kv::Operation::Put
        {
            seen.insert(entry.key.clone());
        }
        let (revision, caught_up) = (entry.revision, entry.delta == 0);
        let change = match entry.operation {
            kv::Operation::Put => match T::decode(entry.value.as_ref()) {
                Ok(value) => Change::Put {
                    key: entry.key,
                    revision: entry.revision,
                    value,
                },
                Err(error) => {
                    tracing::error!(key = %entry.key, error = %error, "undecodable kv value skipped");
                    continue;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => Change::Delete {
                key: entry.key,
                revision: entry.revision,
            },
        };
        sink.watched(change);
        if caught_up {
            if let Some(seen) = seen.take() {
                sink.resync(&seen, revision);
            }
            ready.send_replace(true);
        }
    }
    anyhow::bail!("kv watch ended")
}

/// An ordered in-memory copy of a bucket: the last value of every key, with its revision.
/// Ordered, so that all keys of one tenant (`<tenant>.<id>`) form one range. A deleted key's
/// tombstone is kept only until the watch has passed it ([`Graveyard`]).
pub struct Mirror<T> {
    inner: std::sync::RwLock<Inner<T>>,
}

struct Inner<T> {
    map: std::collections::BTreeMap<String, Slot<T>>,
    graveyard: Graveyard,
}

struct Slot<T> {
    revision: u64,
    value: Option<std::sync::Arc<T>>,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Self {
            inner: std::sync::RwLock::new(Inner {
                map: Default::default(),
                graveyard: Graveyard::default(),
            }),
        }
    }
}

impl<T> Mirror<T> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<T>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<T>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change of this process's own (a write it just made) unless the mirror already
    /// holds a newer revision of that key, or the watch has passed the revision of a key the
    /// mirror no longer holds. Answers whether it was applied and the value it replaced.
    pub fn apply(&self, change: Change<T>) -> Option<Option<std::sync::Arc<T>>> {
        self.write().apply(change, false)
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<T>> {
        self.read().map.get(key).and_then(|s| s.value.clone())
    }

    /// The revision the mirror holds for `key` (of a value or of a deletion).
    pub fn revision(&self, key: &str) -> Option<u64> {
        self.read().map.get(key).map(|s| s.revision)
    }

    /// Keys held with a value, and tombstones.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.read();
        let tombstones = inner.map.values().filter(|s| s.value.is_none()).count();
        (inner.map.len() - tombstones, tombstones)
    }

    /// Up to `limit` live values whose keys start with `prefix`, in key order, strictly after
    /// `prefix + after` when `after` is given.
    pub fn range(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<std::sync::Arc<T>> {
        use std::ops::Bound;
        let inner = self.read();
        let start = match after {
            Some(a) => Bound::Excluded(format!("{prefix}{a}")),
            None => Bound::Included(prefix.to_owned()),
        };
        inner
            .map
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, s)| s.value.clone())
            .take(limit)
            .collect()
    }
}

impl<T> Inner<T> {
    fn apply(&mut self, change: Change<T>, from_watch: bool) -> Option<Option<std::sync::Arc<T>>> {
        let (key, revision, value) = match change {
            Change::Put {
                key,
                revision,
                value,
            } => (key, revision, Some(std::sync::Arc::new(value))),
            Change::Delete { key, revision } => (key, revision, None),
        };
        let deleted = value.is_none();
        let applied = match self.map.get_mut(&key) {
            // The watch's own deletion of a key this process deleted first (at a revision
            // above any, `u64::MAX`): the tombstone takes the real revision, so it can go.
            Some(slot) if from_watch && deleted && slot.value.is_none() => {
                slot.revision = revision;
                self.graveyard.bury(&key, revision);
                None
            }
            Some(slot) if slot.revision >= revision => None,
            Some(slot) => {
                slot.revision = revision;
                if deleted {
                    self.graveyard.bury(&key, revision);
                }
                Some(std::mem::replace(&mut slot.value, value))
            }
            None if !from_watch && self.graveyard.stale(revision) => None,
            // A deletion of a key not held: nothing to remember. (Ours, of a key whose
            // deletion the watch has already delivered, or one the watch is past.)
            None if deleted && (!from_watch || self.graveyard.stale(revision)) => None,
            None => {
                if deleted {
                    self.graveyard.bury(&key, revision);
                }
                self.map.insert(key, Slot { revision, value });
                Some(None)
            }
        };
        if from_watch {
            for (revision, key) in self.graveyard.advance(revision) {
                if self
                    .map
                    .get(&key)
                    .is_some_and(|s| s.value.is_none() && s.revision == revision)
                {
                    self.map.remove(&key);
                }
            }
        }
        applied
    }
}

impl<T: Send + Sync + 'static> Sink<T> for std::sync::Arc<Mirror<T>> {
    fn watched(&self, change: Change<T>) {
        self.write().apply(change, true);
    }

    fn resync(&self, seen: &HashSet<String>, through: u64) {
        let mut inner = self.write();
        inner
            .map
            .retain(|key, slot| slot.revision > through || seen.contains(key));
        inner.graveyard.advance(through);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: u64, value: u32) -> Change<u32> {
        Change::Put {
            key: key.into(),
            revision,
            value,
        }
    }

    #[test]
    fn older_revisions_never_overwrite_newer_ones() {
        let m = Mirror::default();
        m.apply(put("a.1", 5, 50));
        m.apply(put("a.1", 4, 40));
        assert_eq!(m.get("a.1").as_deref(), Some(&50));
        m.apply(Change::Delete {
            key: "a.1".into(),
            revision: 6,
        });
        m.apply(put("a.1", 5, 50));
        assert_eq!(m.get("a.1"), None);
    }

    #[test]
    fn a_tombstone_is_forgotten_once_the_watch_passes_it_and_stale_writes_stay_out() {
        let m = std::sync::Arc::new(Mirror::default());
        let watch = |c: Change<u32>| m.watched(c);
        watch(put("a.1", 1, 10));
        // This process deletes it (outranking every revision), then the watch delivers the
        // deletion at its real revision: the tombstone goes.
        m.apply(Change::Delete {
            key: "a.1".into(),
            revision: u64::MAX,
        });
        assert_eq!(m.sizes(), (0, 1));
        watch(Change::Delete {
            key: "a.1".into(),
            revision: 2,
        });
        assert_eq!(m.sizes(), (0, 0), "nothing kept for a deleted key");
        // A write of our own older than the watch's position, for a key no longer held, is
        // stale and stays out; a newer one is applied.
        assert!(m.apply(put("a.1", 1, 10)).is_none());
        assert_eq!(m.get("a.1"), None);
        assert!(m.apply(put("a.2", 3, 30)).is_some());
        // Deletions of keys never held leave nothing either.
        for r in 4..1004 {
            watch(Change::Delete {
                key: format!("b.{r}"),
                revision: r,
            });
        }
        assert_eq!(m.sizes(), (1, 0));
    }

    #[test]
    fn a_resync_forgets_keys_removed_while_not_watching() {
        let m = std::sync::Arc::new(Mirror::default());
        m.watched(put("a.1", 1, 10));
        m.watched(put("a.2", 2, 20));
        // Re-established, the replay holds only a.2 (a.1's deletion marker expired meanwhile),
        // and a write of our own at revision 9 is newer than the replay.
        m.apply(put("a.3", 9, 30));
        Sink::resync(&m, &["a.2".to_owned()].into_iter().collect(), 5);
        assert_eq!(m.get("a.1"), None);
        assert_eq!(m.get("a.2").as_deref(), Some(&20));
        assert_eq!(m.get("a.3").as_deref(), Some(&30));
    }

    #[test]
    fn range_stays_inside_the_prefix_and_pages_after_the_cursor() {
        let m = Mirror::default();
        for (i, k) in ["a.1", "a.2", "a.3", "ab.1", "b.1"].iter().enumerate() {
            m.apply(put(k, i as u64 + 1, i as u32));
        }
        let all: Vec<u32> = m.range("a.", None, 10).iter().map(|v| **v).collect();
        assert_eq!(all, vec![0, 1, 2]);
        let page: Vec<u32> = m.range("a.", Some("1"), 1).iter().map(|v| **v).collect();
        assert_eq!(page, vec![1]);
    }
}
