//! Bearer-token authentication: the token's SHA-256 is looked up among the
//! configured tenants; tokens themselves are never stored or logged.

use super::error::ApiError;
use crate::config::TenantConfig;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    /// `tenants[].max_concurrent_runs`.
    pub max_concurrent_runs: Option<usize>,
}

pub struct Authenticator {
    /// (sha256 digest, tenant); replaced whole on a config reload, so
    /// tokens rotate without a restart.
    tenants: std::sync::RwLock<Vec<([u8; 32], Tenant)>>,
}

impl Authenticator {
    /// Tenants come from validated config, so every hash decodes.
    pub fn new(tenants: &[TenantConfig]) -> Self {
        Self {
            tenants: std::sync::RwLock::new(digests(tenants)),
        }
    }

    /// Takes the tenants of a reloaded (validated) config: new tokens work
    /// and removed ones stop working from the next request on.
    pub fn replace(&self, tenants: &[TenantConfig]) {
        *self.tenants.write().unwrap_or_else(|e| e.into_inner()) = digests(tenants);
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(d, _)| constant_time_eq(d, &digest))
            .map(|(_, tenant)| tenant.clone())
            .ok_or(ApiError::Unauthorized)
    }
}

fn digests(tenants: &[TenantConfig]) -> Vec<([u8; 32], Tenant)> {
    tenants
        .iter()
        .filter_map(|t| {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&t.token_sha256, &mut digest).ok()?;
            Some((
                digest,
                Tenant {
                    id: t.id.clone(),
                    max_concurrent_runs: t.max_concurrent_runs,
                },
            ))
        })
        .collect()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hex SHA-256 of a token, as `tenants[].token_sha256` wants it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Authenticator {
        Authenticator::new(&[TenantConfig {
            id: "acme".into(),
            token_sha256: token_sha256("s3cret"),
            allowed_domains: Vec::new(),
            max_concurrent_runs: None,
        }])
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn good_token_maps_to_tenant() {
        assert_eq!(
            auth().authenticate(&headers("Bearer s3cret")).unwrap().id,
            "acme"
        );
    }

    #[test]
    fn replaced_tenants_rotate_tokens() {
        let a = auth();
        a.replace(&[TenantConfig {
            id: "acme".into(),
            token_sha256: token_sha256("rotated"),
            allowed_domains: Vec::new(),
            max_concurrent_runs: None,
        }]);
        assert!(a.authenticate(&headers("Bearer s3cret")).is_err());
        assert_eq!(
            a.authenticate(&headers("Bearer rotated")).unwrap().id,
            "acme"
        );
    }

    #[test]
    fn wrong_missing_or_malformed_token_is_refused() {
        let a = auth();
        assert!(a.authenticate(&headers("Bearer nope")).is_err());
        assert!(a.authenticate(&headers("Basic s3cret")).is_err());
        assert!(a.authenticate(&headers("Bearer ")).is_err());
        assert!(a.authenticate(&HeaderMap::new()).is_err());
    }
}
