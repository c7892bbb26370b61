//! The outbound HTTP client: pooled keep-alive connections, connect and total timeouts, no
//! redirects, and at most 64 KiB of any response read.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::Settings;

/// Most of a response body that is ever read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One client per process, so connections to a receiver are reused across deliveries.
pub fn build(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.http_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(concat!("OpenWebhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            policy: settings.shared.url_policy.clone(),
        }))
        .build()?)
}

/// What a receiver answered.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The first bytes of the body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
    pub latency: Duration,
}

/// Sends one request and reads at most [`MAX_RESPONSE_BYTES`] of the answer; the rest is
/// left unread (the connection is then not reused, which is the price of a huge answer).
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
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await? {
            Some(chunk) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => break,
        }
    }
    Ok(Response {
        status,
        retry_after,
        body: body.freeze(),
        latency: started.elapsed(),
    })
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
