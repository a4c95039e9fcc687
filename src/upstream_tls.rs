//! TLS towards the model upstream and towards intercepted egress hosts:
//! the system roots, plus the CAs of `model.extra_ca_file` (or
//! `egress.extra_ca_file`; a TLS-inspecting proxy or a private gateway)
//! when one is set. The extra file adds trust; it never replaces the
//! system roots. The gateway and `doctor`'s clock check use the same
//! trust, so doctor reaches the upstream the daemon reaches.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("reading extra CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("extra CA file {path} holds no usable PEM certificate")]
    NoCertificates { path: String },
    #[error("no trusted root certificates: the system has none and no extra CA file is set")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration the gateway's connector uses.
pub(crate) fn client_config(extra_ca_file: &str) -> Result<ClientConfig, UpstreamTlsError> {
    let mut roots = RootCertStore::empty();
    // A malformed system certificate is skipped, as hyper-rustls does.
    let native = rustls_native_certs::load_native_certs();
    let (_added, _skipped) = roots.add_parsable_certificates(native.certs);
    if !extra_ca_file.is_empty() {
        let added = add_pem_file(&mut roots, extra_ca_file)?;
        tracing::info!(
            message = "Trusting extra CAs.",
            path = extra_ca_file,
            certificates = added
        );
    }
    if roots.is_empty() {
        return Err(UpstreamTlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Adds every certificate of the PEM file at `path`; at least one must be.
fn add_pem_file(roots: &mut RootCertStore, path: &str) -> Result<usize, UpstreamTlsError> {
    let pem = std::fs::read(path).map_err(|source| UpstreamTlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UpstreamTlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_clear_errors() {
        assert!(matches!(
            client_config("/nonexistent/ca.pem"),
            Err(UpstreamTlsError::Read { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = client_config(path.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, UpstreamTlsError::NoCertificates { .. }));
        assert!(err.to_string().contains("ca.pem"));
    }
}
