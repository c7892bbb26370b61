//! The outbound HTTP client: pooled keep-alive connections, connect and total timeouts, no
//! redirects, and at most 64 KiB of any response read.
//!
//! TLS is rustls (reqwest's `rustls-tls` feature) trusting the Mozilla roots compiled in through
//! `webpki-roots`, never the host's store, plus the CAs of `WEBHOOKS_EXTRA_CA_CERTS` if set.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::Settings;

/// Most of a response body that is ever read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One client per process, so connections to a receiver are reused across deliveries.
pub fn build(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &settings.extra_ca_certs {
        for cert in load_extra_ca_certs(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.http_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // Every delivery in flight may be to one host (many subscriptions can share a
        // receiver): keeping fewer idle would close and reopen connections under load.
        .pool_max_idle_per_host(settings.max_in_flight + settings.replay_max_in_flight)
        .tcp_nodelay(true)
        .user_agent(concat!("OpenWebhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            policy: settings.shared.url_policy.clone(),
        }))
        .build()?)
}

/// The CA certificates of a PEM file (`WEBHOOKS_EXTRA_CA_CERTS`), each checked to be usable
/// as a trust anchor. An unreadable file, one without a certificate, or a malformed
/// certificate is a [`ConfigError`], so the dispatcher refuses to start.
pub fn load_extra_ca_certs(
    path: &std::path::Path,
) -> Result<Vec<reqwest::Certificate>, common::config::ConfigError> {
    const NAME: &str = "WEBHOOKS_EXTRA_CA_CERTS";
    let invalid = |message: String| common::config::ConfigError::Invalid {
        name: NAME,
        message: format!("{}: {message}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    // Adding a certificate to the root store parses it; do that now rather than at first use.
    for (n, cert) in certs.iter().enumerate() {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert.clone())
            .build()
            .map_err(|e| invalid(format!("certificate {}: {e}", n + 1)))?;
    }
    Ok(certs)
}

/// What a receiver answered.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The first bytes of the body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
    /// Why the body could not be read to its end (or to [`MAX_RESPONSE_BYTES`]): the receiver
    /// closed the connection or stalled past the timeout. The status stands regardless.
    pub body_error: Option<String>,
    pub latency: Duration,
}

/// Sends one request and reads at most [`MAX_RESPONSE_BYTES`] of the answer; the rest is
/// left unread (the connection is then not reused, which is the price of a huge answer).
///
/// Only a failure before the status line is an error: once the receiver has answered, its
/// status is the outcome, and a body that breaks off is noted in [`Response::body_error`].
pub async fn send(request: reqwest::RequestBuilder) -> Result<Response, reqwest::Error> {
    let started = Instant::now();
    let mut response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = BytesMut::new();
    let mut body_error = None;
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(error) => {
                body_error = Some(describe(&error));
                break;
            }
        }
    }
    Ok(Response {
        status,
        retry_after,
        body: body.freeze(),
        body_error,
        latency: started.elapsed(),
    })
}

/// A transport error in a few words, with its cause chain.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut out = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A resolver that drops every address the URL policy refuses, so the SSRF guard applies to
/// the address actually connected, whatever DNS answers at delivery time. (IP-literal URLs do
/// not resolve; `deliver` checks them before sending.)
pub struct GuardedResolver {
    pub policy: common::urls::UrlPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_addr(&host, a.ip()).is_ok())
                .collect();
            match (allowed.is_empty(), addrs.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(refused)) => Err(Box::new(common::urls::UrlError::PrivateAddress {
                    host,
                    addr: refused.ip(),
                }) as _),
                (true, None) => Err(Box::new(common::urls::UrlError::Unresolvable { host }) as _),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::{Router, http::StatusCode, routing::get};

    async fn server(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        let mut shared = common::config::SharedSettings::default();
        shared.url_policy.allow_http = true;
        shared.url_policy.allowed_private = vec!["127.0.0.0/8".parse().unwrap()];
        build(&Settings::new(shared)).unwrap()
    }

    #[tokio::test]
    async fn at_most_64_kib_of_a_huge_answer_is_read() {
        let base =
            server(Router::new().route("/", get(|| async { vec![b'x'; 1024 * 1024] }))).await;
        let response = send(client().get(&base)).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), MAX_RESPONSE_BYTES);
    }

    #[tokio::test]
    async fn a_status_stands_when_the_body_breaks_off() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            // A status and part of the promised body, then silence past the timeout.
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut shared = common::config::SharedSettings::default();
        shared.url_policy.allow_http = true;
        let mut settings = Settings::new(shared);
        settings.http_timeout = Duration::from_millis(300);
        let client = build(&settings).unwrap();
        let response = send(client.get(format!("http://{addr}/"))).await.unwrap();
        assert_eq!(response.status, 200);
        let error = response.body_error.unwrap();
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let router = Router::new()
            .route(
                "/",
                get(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
            )
            .route("/elsewhere", get(|| async { "followed" }));
        let base = server(router).await;
        let response = send(client().get(&base)).await.unwrap();
        assert_eq!(response.status, 302);
        assert!(response.body.is_empty());
    }

    #[test]
    fn a_bad_extra_ca_file_refuses_to_start() {
        let dir = std::env::temp_dir().join(format!("extra-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [missing, empty, garbage] {
            let mut settings = Settings::new(common::config::SharedSettings::default());
            settings.extra_ca_certs = Some(path.clone());
            let error = settings.check().unwrap_err();
            assert!(
                matches!(
                    error,
                    common::config::ConfigError::Invalid {
                        name: "WEBHOOKS_EXTRA_CA_CERTS",
                        ..
                    }
                ),
                "{path:?}: {error}"
            );
            assert!(build(&settings).is_err(), "{path:?}");
        }
        let env = common::config::Env::from_pairs(&[
            ("WEBHOOKS_DEV_MODE", "true"),
            ("WEBHOOKS_EXTRA_CA_CERTS", "/nonexistent/ca.pem"),
        ]);
        assert!(matches!(
            Settings::from_env(&env),
            Err(common::config::ConfigError::Invalid {
                name: "WEBHOOKS_EXTRA_CA_CERTS",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_host_name_resolving_to_a_refused_address_is_not_connected() {
        let base = server(Router::new().route("/", get(|| async { "reached" }))).await;
        let strict = {
            let mut shared = common::config::SharedSettings::default();
            shared.url_policy.allow_http = true;
            build(&Settings::new(shared)).unwrap()
        };
        let by_name = base.replace("127.0.0.1", "localhost");
        let error = send(strict.get(&by_name)).await.unwrap_err();
        assert!(format!("{error:?}").contains("PrivateAddress"), "{error:?}");
    }
}
