//! The rules a subscription's target URL must pass, on create and again on every delivery.
//!
//! `https` only unless `WEBHOOKS_ALLOW_HTTP`; no loopback, private, link-local, shared,
//! multicast, documentation or cloud-metadata address unless its network is listed in
//! `WEBHOOKS_ALLOW_PRIVATE_TARGETS`. The check applies to the addresses a host name resolves
//! to, because that is what a connection reaches.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::Url;

/// Which targets are allowed.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    pub allow_http: bool,
    pub allowed_private: Vec<IpNet>,
}

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a valid absolute URL")]
    Malformed,
    #[error("must use https")]
    NotHttps,
    #[error("must not carry credentials")]
    Credentials,
    #[error("host {host} resolves to a non-public address ({addr})")]
    PrivateAddress { host: String, addr: IpAddr },
    #[error("host {host} does not resolve")]
    Unresolvable { host: String },
}

impl UrlPolicy {
    /// The syntactic checks: absolute, http(s) as allowed, a host, no user info.
    pub fn check_syntax(&self, raw: &str) -> Result<Url, UrlError> {
        let url = Url::parse(raw).map_err(|_| UrlError::Malformed)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(UrlError::NotHttps),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::Malformed);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        Ok(url)
    }

    /// Whether a connection to `addr` is allowed.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), UrlError> {
        if is_public(addr) || self.allowed_private.iter().any(|net| net.contains(&addr)) {
            Ok(())
        } else {
            Err(UrlError::PrivateAddress {
                host: host.to_owned(),
                addr,
            })
        }
    }

    /// Syntax, then every address the host resolves to.
    pub async fn check(&self, raw: &str) -> Result<Url, UrlError> {
        let url = self.check_syntax(raw)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            _ => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| UrlError::Unresolvable { host: host.clone() })?
                .map(|sa| sa.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(UrlError::Unresolvable { host });
        }
        for addr in addrs {
            self.check_addr(&host, addr)?;
        }
        Ok(url)
    }
}

/// Whether an address is on the public internet.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64, may embed a private v4
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy::default()
    }

    #[tokio::test]
    async fn https_public_address_is_accepted() {
        assert!(strict().check("https://93.184.216.34/hook").await.is_ok());
    }

    #[tokio::test]
    async fn http_is_refused_unless_allowed() {
        assert_eq!(
            strict().check("http://93.184.216.34/").await,
            Err(UrlError::NotHttps)
        );
        let p = UrlPolicy {
            allow_http: true,
            ..Default::default()
        };
        assert!(p.check("http://93.184.216.34/").await.is_ok());
        assert_eq!(
            strict().check("ftp://x.example/").await,
            Err(UrlError::NotHttps)
        );
        assert_eq!(strict().check("not a url").await, Err(UrlError::Malformed));
    }

    #[tokio::test]
    async fn private_loopback_link_local_and_metadata_are_refused() {
        for raw in [
            "https://127.0.0.1/",
            "https://10.0.0.1/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
            "https://localhost/",
        ] {
            let err = strict().check(raw).await.unwrap_err();
            assert!(
                matches!(err, UrlError::PrivateAddress { .. }),
                "{raw}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn allowed_networks_are_exempt() {
        let p = UrlPolicy {
            allow_http: false,
            allowed_private: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(p.check("https://127.0.0.1:8443/").await.is_ok());
        assert!(p.check("https://10.0.0.1/").await.is_err());
    }

    #[tokio::test]
    async fn credentials_in_the_url_are_refused() {
        assert_eq!(
            strict().check("https://u:p@93.184.216.34/").await,
            Err(UrlError::Credentials)
        );
    }
}
