//! HTTPS for the mock, like the real upstream: a test CA made at start-up
//! (nothing secret is kept or committed), a server certificate from it for
//! `localhost` and `127.0.0.1`, and one TLS + HTTP/1.1 connection task per
//! accepted socket. Clients trust the CA through its PEM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A throwaway CA and the server certificate it signed.
pub struct TestCa {
    /// The CA certificate, PEM: what clients add to their roots.
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn generate() -> anyhow::Result<TestCa> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mock-model test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().context("server key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .context("server params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mock-model");
        let cert = params
            .signed_by(&key, &issuer)
            .context("server certificate")?;
        Ok(TestCa {
            ca_pem: ca.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .context("server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Serves `app` over TLS on `listener` until the task is aborted,
/// counting completed handshakes in `handshakes`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    ca: &TestCa,
    handshakes: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let acceptor = ca.acceptor()?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors, most likely: give the others time to close.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            // A client that fails the handshake only loses its connection.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            handshakes.fetch_add(1, Ordering::Relaxed);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
