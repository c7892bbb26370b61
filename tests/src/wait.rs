//! Bounded polling for conditions that become true asynchronously.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// How often [`eventually`] probes: short enough not to slow tests, long enough not to spin.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `probe` every 25 ms until it returns Some, or fails after `timeout` with the message `what`.
///
/// Asynchronous systems reach a state "soon", not at a known instant; a generous deadline with
/// frequent probes keeps tests both fast and free of fixed sleeps. Uses tokio time, so it also
/// works under `tokio::time::pause`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn eventually_returns_the_first_some() -> anyhow::Result<()> {
        let calls = Arc::new(AtomicUsize::new(0));
        let value = eventually(Duration::from_secs(5), "third probe", || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (n >= 3).then_some(n)
            }
        })
        .await?;
        assert_eq!(value, 3);
        Ok(())
    }

    #[tokio::test]
    async fn eventually_fails_with_the_description_after_the_deadline() {
        let result: anyhow::Result<()> =
            eventually(Duration::from_millis(60), "the impossible", || async {
                None
            })
            .await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("the impossible"), "{message}");
    }
}
