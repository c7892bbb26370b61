//! A scripted HTTP receiver that records every request and verifies Standard Webhooks signatures.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use standardwebhooks::Webhook;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, oneshot};

/// One request as the receiver saw it.
///
/// Kept raw (headers and exact body bytes) because signature checks must run over the bytes
/// that went over the wire, not a re-serialised JSON value.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers, including the `webhook-*` signature headers.
    pub headers: HeaderMap,
    /// The exact request body.
    pub body: Bytes,
    /// When the request arrived (before any scripted delay), for checking retry spacing.
    pub at: Instant,
    /// The status the receiver answers (or answered) this request with, from the script.
    pub status: StatusCode,
}

impl Received {
    /// The body as JSON, so assertions can index fields; `Value::Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as text; `None` if absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Verifies the signature with the standardwebhooks crate against `secret` (a `whsec_...` string). Err carries the crate's error text.
    ///
    /// An independent implementation catches bugs that a round trip through our own signer
    /// would hide. It also enforces the crate's 5 minute timestamp tolerance.
    pub fn verify(&self, secret: &str) -> anyhow::Result<()> {
        let webhook = Webhook::new(secret).map_err(|e| anyhow!("invalid secret: {e}"))?;
        webhook
            .verify(&self.body, &self.headers)
            .map_err(|e| anyhow!("signature check failed: {e}"))
    }
}

/// State shared by the HTTP handler.
struct Shared {
    /// Statuses still to answer with, in order; `fallback` once empty.
    script: StdMutex<VecDeque<StatusCode>>,
    /// The status once the script is exhausted (200 unless the test changes it).
    fallback: AtomicU16,
    /// Delay before every response.
    delay: Duration,
    /// `Retry-After` seconds sent with every 429 and 503.
    retry_after: Option<u64>,
    /// Requests seen so far, whether taken or not.
    count: AtomicUsize,
    /// Requests whose handler ran to the end (after the delay), so the response was written
    /// unless the client had gone away.
    answered: AtomicUsize,
    /// Where requests are recorded for the test to take.
    tx: mpsc::UnboundedSender<Received>,
}

/// A webhook endpoint under the test's control.
///
/// It answers with a scripted sequence of statuses (for example 500, 500, 200) so retry paths
/// can be driven deterministically, and records every request for assertions. Dropping it shuts
/// the server down, so a later test cannot reach a stale endpoint.
pub struct TestReceiver {
    addr: SocketAddr,
    /// Served over TLS ([`TestReceiver::start_tls`]): the URL is `https://localhost:<port>`.
    tls: bool,
    shared: Arc<Shared>,
    rx: Mutex<mpsc::UnboundedReceiver<Received>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestReceiver {
    /// axum on 127.0.0.1:0; answers each request with the next status of `script` (e.g. [500, 500, 200]); once the script is exhausted, answers 200 (or what [`TestReceiver::answer_after_script`] set). Every request (headers, body, arrival time) is recorded.
    ///
    /// An ephemeral port lets many receivers run in parallel tests without clashes.
    pub async fn start(script: Vec<u16>) -> anyhow::Result<TestReceiver> {
        Self::start_with_delay(script, Duration::ZERO).await
    }

    /// Like start but every response is delayed by `delay` (for slow-endpoint tests).
    ///
    /// The request is recorded on arrival, so a delivery that times out is still counted.
    pub async fn start_with_delay(
        script: Vec<u16>,
        delay: Duration,
    ) -> anyhow::Result<TestReceiver> {
        Self::start_inner(script, delay, None, None).await
    }

    /// Like start, but over HTTPS with the given PEM certificate chain and key (e.g. from
    /// [`crate::tls::TestCa::localhost`]); [`TestReceiver::url`] is then
    /// `https://localhost:<port>/hook`. A client that fails the handshake is never recorded.
    pub async fn start_tls(
        script: Vec<u16>,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<TestReceiver> {
        let config = crate::tls::server_config(cert_pem, key_pem)?;
        Self::start_inner(script, Duration::ZERO, None, Some(config)).await
    }

    /// Like start, but every 429 and 503 carries `Retry-After: <seconds>`.
    pub async fn start_with_retry_after(
        script: Vec<u16>,
        seconds: u64,
    ) -> anyhow::Result<TestReceiver> {
        Self::start_inner(script, Duration::ZERO, Some(seconds), None).await
    }

    async fn start_inner(
        script: Vec<u16>,
        delay: Duration,
        retry_after: Option<u64>,
        tls: Option<tokio_rustls::rustls::ServerConfig>,
    ) -> anyhow::Result<TestReceiver> {
        let script = script
            .into_iter()
            .map(|code| {
                StatusCode::from_u16(code)
                    .with_context(|| format!("invalid status {code} in script"))
            })
            .collect::<anyhow::Result<VecDeque<_>>>()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script: StdMutex::new(script),
            fallback: AtomicU16::new(200),
            delay,
            retry_after,
            count: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            tx,
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind test receiver")?;
        let addr = listener.local_addr().context("test receiver address")?;
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        // Either an explicit signal or the sender being dropped means stop.
        let stopped = async move {
            let _ = stopped.await;
        };
        let is_tls = tls.is_some();
        match tls {
            None => {
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "test receiver stopped with an error");
                    }
                });
            }
            Some(config) => {
                let listener =
                    crate::tls::TlsListener::new(listener, config).context("tls test receiver")?;
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "tls test receiver stopped with an error");
                    }
                });
            }
        }
        Ok(TestReceiver {
            addr,
            tls: is_tls,
            shared,
            rx: Mutex::new(rx),
            shutdown: Some(shutdown),
        })
    }

    /// The endpoint URL to subscribe; any path on this host is accepted. Over TLS the host is
    /// `localhost`, the name the test certificates carry.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/hook", self.addr.port())
        } else {
            format!("http://{}/hook", self.addr)
        }
    }

    /// The next request not yet taken, waiting up to `within`; None on timeout.
    ///
    /// Requests are taken in arrival order, each once.
    pub async fn recv_within(&self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, async {
            let mut rx = self.rx.lock().await;
            rx.recv().await
        })
        .await
        .ok()
        .flatten()
    }

    /// Asserts nothing more arrives for `quiet` (returns the unexpected request if one does).
    ///
    /// Used after the expected requests to prove there are no extra retries or duplicates.
    pub async fn expect_none(&self, quiet: Duration) -> Option<Received> {
        self.recv_within(quiet).await
    }

    /// What to answer once the script is exhausted, from now on (200 until this is called).
    ///
    /// Lets a test keep an endpoint failing for as long as a fault lasts, then heal it.
    pub fn answer_after_script(&self, code: u16) -> anyhow::Result<()> {
        StatusCode::from_u16(code).with_context(|| format!("invalid status {code}"))?;
        self.shared.fallback.store(code, Ordering::SeqCst);
        Ok(())
    }

    /// How many requests arrived so far (including ones not yet taken).
    ///
    /// Lets `eventually` wait on a count without consuming the recorded requests.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// How many requests were answered: their handler finished its delay and returned the
    /// status. A request whose client hung up during the delay is dropped by the server and not
    /// counted, so `answered() < count()` after the sender is gone means it cut requests off.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Records the request, then answers with the next scripted status after the configured delay.
async fn handle(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let at = Instant::now();
    let status = match shared.script.lock() {
        Ok(mut script) => script.pop_front(),
        // A panic elsewhere poisoned the lock; keep following the script anyway.
        Err(poisoned) => poisoned.into_inner().pop_front(),
    }
    .unwrap_or_else(|| {
        StatusCode::from_u16(shared.fallback.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
    });
    shared.count.fetch_add(1, Ordering::SeqCst);
    // The test may have stopped listening; the response still matters to the sender.
    let _ = shared.tx.send(Received {
        headers,
        body,
        at,
        status,
    });
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    shared.answered.fetch_add(1, Ordering::SeqCst);
    let mut response_headers = HeaderMap::new();
    if let Some(seconds) = shared.retry_after
        && matches!(status.as_u16(), 429 | 503)
    {
        response_headers.insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    (status, response_headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn now_secs() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    fn signed(body: &'static [u8]) -> anyhow::Result<Received> {
        let id = "evt_01JTESTTESTTESTTESTTESTTE";
        let ts = now_secs();
        let signature = Webhook::new(SECRET)?.sign(id, ts, body)?;
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static(id));
        headers.insert("webhook-timestamp", HeaderValue::from_str(&ts.to_string())?);
        headers.insert("webhook-signature", HeaderValue::from_str(&signature)?);
        Ok(Received {
            headers,
            body: Bytes::from_static(body),
            at: Instant::now(),
            status: StatusCode::OK,
        })
    }

    #[tokio::test]
    async fn receiver_follows_the_script_then_answers_200_and_records_bodies() -> anyhow::Result<()>
    {
        let receiver = TestReceiver::start(vec![500, 200]).await?;
        assert!(receiver.url().starts_with("http://127.0.0.1:"));
        assert!(receiver.url().ends_with("/hook"));
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for n in 1..=3 {
            let response = client
                .post(receiver.url())
                .header("content-type", "application/json")
                .body(format!(r#"{{"n":{n}}}"#))
                .send()
                .await?;
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [500, 200, 200]);
        assert_eq!(receiver.count(), 3);
        assert_eq!(receiver.answered(), 3);

        for n in 1..=3 {
            let got = receiver
                .recv_within(Duration::from_secs(5))
                .await
                .context("request was not recorded")?;
            assert_eq!(got.json()["n"], n);
            assert_eq!(got.status.as_u16(), if n == 1 { 500 } else { 200 });
            assert_eq!(got.header("content-type"), Some("application/json"));
        }
        assert!(
            receiver
                .expect_none(Duration::from_millis(100))
                .await
                .is_none()
        );
        assert_eq!(receiver.count(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn delayed_receiver_records_on_arrival_and_answers_late() -> anyhow::Result<()> {
        let delay = Duration::from_millis(300);
        let receiver = TestReceiver::start_with_delay(vec![503], delay).await?;
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(format!("http://{}/any/path", receiver.addr))
            .body("not json")
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 503);
        assert!(started.elapsed() >= delay);
        let got = receiver
            .recv_within(Duration::from_secs(1))
            .await
            .context("request was not recorded")?;
        assert!(got.at < started + delay);
        assert_eq!(got.json(), serde_json::Value::Null);
        Ok(())
    }

    #[tokio::test]
    async fn the_status_after_the_script_can_be_changed_while_running() -> anyhow::Result<()> {
        let receiver = TestReceiver::start(vec![500]).await?;
        receiver.answer_after_script(503)?;
        assert!(receiver.answer_after_script(42).is_err());
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.push(client.post(receiver.url()).send().await?.status().as_u16());
        }
        receiver.answer_after_script(200)?;
        statuses.push(client.post(receiver.url()).send().await?.status().as_u16());
        assert_eq!(statuses, [500, 503, 200]);
        Ok(())
    }

    #[tokio::test]
    async fn tls_receiver_answers_clients_that_trust_the_test_ca() -> anyhow::Result<()> {
        let ca = crate::tls::TestCa::new()?;
        let cert = ca.localhost()?;
        let receiver = TestReceiver::start_tls(vec![201], &cert.cert_pem, &cert.key_pem).await?;
        assert!(receiver.url().starts_with("https://localhost:"));
        let stranger = reqwest::Client::builder().build()?;
        let err = stranger
            .post(receiver.url())
            .send()
            .await
            .err()
            .context("an untrusted certificate was accepted")?;
        assert!(
            format!("{err:?}").to_lowercase().contains("certificate"),
            "{err:?}"
        );
        let pem = std::fs::read(ca.pem_path())?;
        let trusting = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        let response = trusting.post(receiver.url()).body("{}").send().await?;
        assert_eq!(response.status().as_u16(), 201);
        assert_eq!(receiver.count(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn invalid_script_status_is_rejected() {
        assert!(TestReceiver::start(vec![42]).await.is_err());
    }

    #[tokio::test]
    async fn dropped_receiver_stops_serving() -> anyhow::Result<()> {
        let receiver = TestReceiver::start(vec![]).await?;
        let url = receiver.url();
        drop(receiver);
        let client = reqwest::Client::new();
        crate::eventually(Duration::from_secs(5), "receiver to stop", || {
            let client = client.clone();
            let url = url.clone();
            async move { client.post(url).send().await.is_err().then_some(()) }
        })
        .await
    }

    #[test]
    fn verify_accepts_a_standardwebhooks_signature() -> anyhow::Result<()> {
        signed(br#"{"id":"evt_1","type":"call.started"}"#)?.verify(SECRET)
    }

    #[test]
    fn verify_rejects_a_tampered_body() -> anyhow::Result<()> {
        let mut received = signed(br#"{"id":"evt_1","type":"call.started"}"#)?;
        received.body = Bytes::from_static(br#"{"id":"evt_1","type":"call.ended"}"#);
        let err = received
            .verify(SECRET)
            .err()
            .context("tampered body verified")?;
        assert!(err.to_string().contains("signature invalid"), "{err}");
        Ok(())
    }

    #[test]
    fn verify_rejects_the_wrong_secret_and_missing_headers() -> anyhow::Result<()> {
        let received = signed(br#"{"id":"evt_1"}"#)?;
        assert!(
            received
                .verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .is_err()
        );
        let bare = Received {
            headers: HeaderMap::new(),
            ..received
        };
        let err = bare
            .verify(SECRET)
            .err()
            .context("unsigned request verified")?;
        assert!(err.to_string().contains("missing header"), "{err}");
        Ok(())
    }
}
