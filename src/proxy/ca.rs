//! The local CA the proxy signs intercepted hosts' certificates with: made
//! at first start in `egress.ca_dir` (`ca.pem`, world-readable, given to
//! containers; `ca.key`, mode 0600, the daemon's only), loaded after.
//! Leaf certificates are issued per host on demand and kept, as ready TLS
//! server configurations, in a bounded cache.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The CA's subject; leaf certificates name it as their issuer, so it
/// must stay what the stored `ca.pem` says.
const CA_NAME: &str = "agentbox egress CA";
/// Where a Debian (or Fedora) host keeps its system CA bundle; the
/// bundle containers get is the first of these plus the local CA.
const HOST_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];
/// The bundle's name in a container's socket directory.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// Hosts whose leaf is kept; past it the cache starts over (a leaf costs
/// one key generation and signature, about a millisecond).
const LEAF_CACHE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("egress CA {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "egress CA key {path} must be readable by the daemon only (mode 0600), it is {mode:o}"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error(
        "egress CA {path} holds only one of ca.pem and ca.key; remove the other to make a new CA"
    )]
    Half { path: PathBuf },
    #[error("egress CA: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("egress CA: TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    /// The host's system roots and this CA, for containers.
    bundle: String,
    cert_path: PathBuf,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl LocalCa {
    /// Loads the CA from `dir`, or makes one there when it holds neither
    /// file. A key any other user could read is refused, not fixed.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io(dir))?;
        let (ca_pem, key) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let mode = std::fs::metadata(&key_path)
                    .map_err(io(&key_path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(CaError::KeyMode {
                        path: key_path,
                        mode: mode & 0o777,
                    });
                }
                let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
                let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                (pem, KeyPair::from_pem(&key_pem)?)
            }
            (false, false) => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                // The key is written first, 0600 from its creation, so no
                // moment exists where it is readable by others.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                f.write_all(key.serialize_pem().as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(&key_path))?;
                let pem = cert.pem();
                write_public(&cert_path, pem.as_bytes()).map_err(io(&cert_path))?;
                tracing::info!(message = "Created the egress CA.", path = %dir.display());
                (pem, key)
            }
            _ => {
                return Err(CaError::Half {
                    path: dir.to_owned(),
                })
            }
        };
        let mut bundle = HOST_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&ca_pem);
        Ok(Self {
            issuer: Issuer::new(ca_params()?, key),
            bundle,
            ca_pem,
            cert_path,
            leaves: Mutex::default(),
        })
    }

    /// The CA certificate, PEM: what containers trust.
    pub fn cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The host's system roots followed by this CA, PEM: what a
    /// container's TLS clients are pointed at, so that both blind tunnels
    /// (real certificates) and intercepted hosts verify.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The TLS server configuration for `host` (a normalised name or a
    /// canonical address), issuing its certificate on first use.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(cfg) = self.lock().get(host) {
            return Ok(cfg.clone());
        }
        let cfg = Arc::new(self.issue(host)?);
        let mut leaves = self.lock();
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(host.to_owned(), cfg.clone());
        Ok(cfg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServerConfig>>> {
        self.leaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn issue(&self, host: &str) -> Result<ServerConfig, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into()?),
        }];
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        // Requests are judged one by one with an HTTP/1.1 parser; HTTP/2
        // is not offered.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Writes a file readable by everyone (the CA certificate), replacing it
/// whole.
fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn made_once_then_loaded_and_the_key_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let first = LocalCa::load_or_create(&ca_dir).unwrap();
        let mode = std::fs::metadata(ca_dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = LocalCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem(), "loaded, not remade");
        assert!(again.bundle().ends_with(again.cert_pem()));

        std::fs::set_permissions(
            ca_dir.join("ca.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            LocalCa::load_or_create(&ca_dir),
            Err(CaError::KeyMode { .. })
        ));
        std::fs::remove_file(ca_dir.join("ca.key")).unwrap();
        assert!(matches!(
            LocalCa::load_or_create(&ca_dir),
            Err(CaError::Half { .. })
        ));
    }

    /// A leaf from a CA loaded back from disk verifies against the stored
    /// `ca.pem` with rustls, as a container's client would check it.
    #[tokio::test]
    async fn leaves_verify_against_the_stored_certificate() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path()).unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let server = ca.server_config("git.example.test").unwrap();
        assert!(Arc::ptr_eq(
            &server,
            &ca.server_config("git.example.test").unwrap()
        ));

        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move {
            let mut s = acceptor.accept(a).await.unwrap();
            s.write_all(b"ok").await.unwrap();
            s.shutdown().await.unwrap();
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("git.example.test").unwrap();
        let mut s = connector.connect(name, b).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
        srv.await.unwrap();

        // The same leaf is no good for another name.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(ca.server_config("git.example.test").unwrap());
        tokio::spawn(async move {
            let _ = acceptor.accept(a).await;
        });
        let name = ServerName::try_from("other.example.test").unwrap();
        assert!(connector.connect(name, b).await.is_err());
    }
}
