//! Who may use the admin listener.
//!
//! With `server.admin_token_sha256` set, every route but `/healthz` needs
//! that token, as `Authorization: Bearer TOKEN` (the CLI) or HTTP Basic
//! with the token as password (a browser prompts for it). Without a token
//! the listener is loopback-only (config validation enforces it) and two
//! browser attacks on loopback services are refused:
//!
//! - DNS rebinding: a page on a hostile name that resolves to 127.0.0.1
//!   could read the status. Only `Host` headers naming a loopback address
//!   or `localhost` are served.
//! - Cross-site requests: a hostile page could POST `/admin/api/gc`.
//!   Requests that change something must not come from another origin.

use crate::codes::ErrorCode;
use axum::http::{header, HeaderMap, Method};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("admin token required")]
    Unauthenticated,
    #[error("host not allowed")]
    Host,
    #[error("cross-origin request refused")]
    CrossOrigin,
}

impl Denied {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated => ErrorCode::Unauthenticated,
            Self::Host => ErrorCode::HostNotAllowed,
            Self::CrossOrigin => ErrorCode::CrossOrigin,
        }
    }
}

pub(crate) struct AdminAuth {
    token_sha256: Option<[u8; 32]>,
}

impl AdminAuth {
    /// `hash` comes from validated config (64 hex digits); anything else
    /// would leave the listener open, so it fails closed with a hash no
    /// token has.
    pub(crate) fn new(hash: Option<&str>) -> Self {
        let token_sha256 = hash.map(|h| {
            let mut d = [0u8; 32];
            if hex::decode_to_slice(h, &mut d).is_err() {
                tracing::error!(
                    message = "Admin token hash unreadable; refusing every admin request."
                );
            }
            d
        });
        Self { token_sha256 }
    }

    pub(crate) fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Denied> {
        match &self.token_sha256 {
            Some(expected) => {
                let token = presented_token(headers).ok_or(Denied::Unauthenticated)?;
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Compare every byte, so timing does not tell how many matched.
                if !bool::from(got.as_slice().ct_eq(expected.as_slice())) {
                    return Err(Denied::Unauthenticated);
                }
            }
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !is_loopback_host(host) {
                    return Err(Denied::Host);
                }
            }
        }
        if method != Method::GET && method != Method::HEAD && cross_origin(headers) {
            return Err(Denied::CrossOrigin);
        }
        Ok(())
    }
}

/// The token from `Bearer T` or from Basic credentials `anyuser:T`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = value.strip_prefix("Bearer ") {
        return Some(t.trim().to_owned()).filter(|t| !t.is_empty());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned()).filter(|t| !t.is_empty())
}

fn is_loopback_host(host: &str) -> bool {
    // Strip the port; an IPv6 literal keeps its brackets until here.
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A browser marks where a request comes from; the CLI sends neither header.
fn cross_origin(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return true;
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            origin_host != Some(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn loopback_mode_refuses_rebound_hosts() {
        let a = AdminAuth::new(None);
        for ok in ["127.0.0.1:8788", "localhost:1", "[::1]:8788", "127.0.0.1"] {
            assert_eq!(
                a.check(&Method::GET, &headers(&[("host", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        for bad in ["evil.example:8788", "10.0.0.1:8788", ""] {
            assert_eq!(
                a.check(&Method::GET, &headers(&[("host", bad)])),
                Err(Denied::Host),
                "{bad}"
            );
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let a = AdminAuth::new(None);
        let same = [
            ("host", "127.0.0.1:8788"),
            ("origin", "http://127.0.0.1:8788"),
        ];
        assert_eq!(a.check(&Method::POST, &headers(&same)), Ok(()));
        assert_eq!(
            a.check(&Method::POST, &headers(&[("host", "127.0.0.1:8788")])),
            Ok(())
        );
        let evil = [
            ("host", "127.0.0.1:8788"),
            ("origin", "https://evil.example"),
        ];
        assert_eq!(
            a.check(&Method::POST, &headers(&evil)),
            Err(Denied::CrossOrigin)
        );
        let fetch = [("host", "127.0.0.1:8788"), ("sec-fetch-site", "cross-site")];
        assert_eq!(
            a.check(&Method::POST, &headers(&fetch)),
            Err(Denied::CrossOrigin)
        );
        // Reading is fine: the host check already stops rebinding.
        assert_eq!(a.check(&Method::GET, &headers(&evil)), Ok(()));
    }

    #[test]
    fn token_as_bearer_or_basic_password() {
        let hash = hex::encode(Sha256::digest(b"s3cret"));
        let a = AdminAuth::new(Some(&hash));
        let host = ("host", "admin.example:8788");
        assert_eq!(
            a.check(&Method::GET, &headers(&[host])),
            Err(Denied::Unauthenticated)
        );
        let bearer = ("authorization", "Bearer s3cret");
        assert_eq!(a.check(&Method::GET, &headers(&[host, bearer])), Ok(()));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:s3cret")
        );
        assert_eq!(
            a.check(&Method::GET, &headers(&[host, ("authorization", &basic)])),
            Ok(())
        );
        let wrong = ("authorization", "Bearer s3cre");
        assert_eq!(
            a.check(&Method::GET, &headers(&[host, wrong])),
            Err(Denied::Unauthenticated)
        );
    }
}
