//! TLS for test receivers: a throwaway CA ([`TestCa`]) that issues server certificates, and a
//! rustls listener ([`TlsListener`]) that `axum::serve` runs on.
//!
//! The CA's certificate is also written to a PEM file, which is what a dispatcher is given as
//! `WEBHOOKS_EXTRA_CA_CERTS`. Keys are generated per CA with ring, so nothing secret is checked in.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take to finish the TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_file: tempfile::NamedTempFile,
}

impl TestCa {
    /// A new CA (fresh key) with its certificate written to a temporary PEM file.
    pub fn new() -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Open Webhooks test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let mut pem_file = tempfile::Builder::new()
            .prefix("test-ca-")
            .suffix(".pem")
            .tempfile()
            .context("temporary CA file")?;
        io::Write::write_all(&mut pem_file, issuer.pem().as_bytes()).context("write CA PEM")?;
        Ok(TestCa { issuer, pem_file })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The file holding [`TestCa::cert_pem`], removed when the CA is dropped.
    pub fn pem_path(&self) -> &Path {
        self.pem_file.path()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<ServerCert> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Open Webhooks test receiver");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `localhost` and `127.0.0.1`, what a loopback receiver needs.
    pub fn localhost(&self) -> anyhow::Result<ServerCert> {
        self.issue(&["localhost", "127.0.0.1"])
    }
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("server certificate PEM")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the server PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("server key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("server certificate and key")?;
    Ok(config)
}

/// A TCP listener that hands `axum::serve` only connections whose TLS handshake succeeded.
///
/// Handshakes run in their own tasks, so a client that fails or stalls one (a dispatcher that
/// does not trust the CA, say) never holds up the others; failures are logged and dropped.
pub struct TlsListener {
    addr: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Takes over `listener`, accepting until this `TlsListener` is dropped.
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = tx.closed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(error = %error, "tls test receiver accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(error = %error, %peer, "tls handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { addr, rx })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task only stops once this listener is gone; never answer.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
