//! A KV bucket mirrored into memory through a watch.
//!
//! Each replica keeps what it needs (API keys, subscriptions) in memory and applies every
//! change the watch delivers, so a change made through any replica reaches all of them within
//! a second, without a restart. Every change carries its KV revision and the sinks ignore older
//! revisions, which makes it safe to apply one's own writes at once (read-your-writes) and to
//! replay the whole bucket after the watch is re-established.

use std::time::Duration;

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

/// What a mirror applies changes to.
pub trait Sink<T>: Send + Sync + 'static {
    fn apply(&self, change: Change<T>);
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
    let values = store.status().await?.values();
    let mut entries = store.watch_with_history(">").await?;
    if values == 0 {
        ready.send_replace(true);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
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
        sink.apply(change);
        if entry.delta == 0 {
            ready.send_replace(true);
        }
    }
    anyhow::bail!("kv watch ended")
}

/// An ordered in-memory copy of a bucket: the last value of every key, with its revision.
/// Ordered, so that all keys of one tenant (`<tenant>.<id>`) form one range.
pub struct Mirror<T> {
    map: std::sync::RwLock<std::collections::BTreeMap<String, Slot<T>>>,
}

struct Slot<T> {
    revision: u64,
    value: Option<std::sync::Arc<T>>,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Self {
            map: Default::default(),
        }
    }
}

impl<T> Mirror<T> {
    /// Applies a change unless the mirror already holds a newer revision of that key.
    /// Answers whether it was applied and the value it replaced.
    pub fn apply(&self, change: Change<T>) -> Option<Option<std::sync::Arc<T>>> {
        let (key, revision, value) = match change {
            Change::Put {
                key,
                revision,
                value,
            } => (key, revision, Some(std::sync::Arc::new(value))),
            Change::Delete { key, revision } => (key, revision, None),
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&key) {
            Some(slot) if slot.revision >= revision => None,
            Some(slot) => {
                slot.revision = revision;
                Some(std::mem::replace(&mut slot.value, value))
            }
            None => {
                map.insert(key, Slot { revision, value });
                Some(None)
            }
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<T>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).and_then(|s| s.value.clone())
    }

    /// The revision the mirror holds for `key` (of a value or of a deletion).
    pub fn revision(&self, key: &str) -> Option<u64> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|s| s.revision)
    }

    /// Up to `limit` live values whose keys start with `prefix`, in key order, strictly after
    /// `prefix + after` when `after` is given.
    pub fn range(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<std::sync::Arc<T>> {
        use std::ops::Bound;
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let start = match after {
            Some(a) => Bound::Excluded(format!("{prefix}{a}")),
            None => Bound::Included(prefix.to_owned()),
        };
        map.range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, s)| s.value.clone())
            .take(limit)
            .collect()
    }
}

impl<T: Send + Sync + 'static> Sink<T> for std::sync::Arc<Mirror<T>> {
    fn apply(&self, change: Change<T>) {
        Mirror::apply(self, change);
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
