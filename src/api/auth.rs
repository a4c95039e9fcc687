//! Bearer-token authentication: the token's SHA-256 is looked up among the
//! configured tenants; tokens themselves are never stored or logged.
//!
//! [`require_tenant`] runs on every tenant route before the handler's
//! extractors, so a request without a valid token is refused before a byte
//! of its body is read; handlers take the result as a [`Tenant`] argument.

use super::error::ApiError;
use crate::config::TenantConfig;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tenant {
    pub id: String,
    /// `tenants[].max_concurrent_runs`.
    pub max_concurrent_runs: Option<usize>,
}

pub(crate) struct Authenticator {
    /// (sha256 digest, tenant); replaced whole on a config reload, so
    /// tokens rotate without a restart.
    tenants: std::sync::RwLock<Vec<([u8; 32], Tenant)>>,
}

impl Authenticator {
    /// Tenants come from validated config, so every hash decodes.
    pub(crate) fn new(tenants: &[TenantConfig]) -> Self {
        Self {
            tenants: std::sync::RwLock::new(digests(tenants)),
        }
    }

    /// Takes the tenants of a reloaded (validated) config: new tokens work
    /// and removed ones stop working from the next request on.
    pub(crate) fn replace(&self, tenants: &[TenantConfig]) {
        *self.tenants.write().unwrap_or_else(|e| e.into_inner()) = digests(tenants);
    }

    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
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
            .find(|(d, _)| bool::from(d.as_slice().ct_eq(&digest)))
            .map(|(_, tenant)| tenant.clone())
            .ok_or(ApiError::Unauthorized)
    }
}

/// Middleware: authenticates from the head alone and hands the tenant to
/// the handler. An unauthenticated client can neither make the daemon
/// read a body nor tell a 413 from a 401 (the body is never looked at).
pub(super) async fn require_tenant(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth.authenticate(req.headers()) {
        Ok(tenant) => {
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The tenant `require_tenant` authenticated. On a route without that
/// middleware it refuses (401) rather than let the request through.
impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Tenant>()
            .cloned()
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

/// Hex SHA-256 of a token, as `tenants[].token_sha256` wants it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderValue, StatusCode};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn auth() -> Authenticator {
        Authenticator::new(&[TenantConfig {
            id: "acme".into(),
            token_sha256: token_sha256("s3cret"),
            allowed_domains: Vec::new(),
            egress_rules: Vec::new(),
            max_concurrent_runs: None,
            daily_token_limit: None,
            daily_cost_limit_usd: None,
            isolation_tier: None,
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
            egress_rules: Vec::new(),
            max_concurrent_runs: None,
            daily_token_limit: None,
            daily_cost_limit_usd: None,
            isolation_tier: None,
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

    /// A body that records whether anybody polled it.
    fn watched_body(polled: Arc<AtomicBool>) -> Body {
        Body::from_stream(futures_util::stream::poll_fn(move |_| {
            polled.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(Some(Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                b"{}",
            ))))
        }))
    }

    /// The middleware in front of a handler that reads the body first,
    /// as `post_message` does (`Bytes` is its last argument).
    async fn call(authorization: Option<&str>, polled: Arc<AtomicBool>) -> StatusCode {
        use hyper::service::Service as _;
        let app = axum::Router::new()
            .route(
                "/m",
                axum::routing::post(|tenant: Tenant, body: bytes::Bytes| async move {
                    format!("{} {}", tenant.id, body.len())
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                Arc::new(auth()),
                require_tenant,
            ))
            .layer(axum::extract::DefaultBodyLimit::max(16));
        let mut req = axum::http::Request::post("/m")
            .header("content-length", "1073741824")
            .body(watched_body(polled))
            .unwrap();
        if let Some(a) = authorization {
            req.headers_mut()
                .insert("authorization", HeaderValue::from_str(a).unwrap());
        }
        let svc = hyper_util::service::TowerToHyperService::new(app);
        svc.call(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_bad_token_is_refused_before_the_body_is_read() {
        for auth in [None, Some("Bearer nope"), Some("Basic s3cret")] {
            let polled = Arc::new(AtomicBool::new(false));
            assert_eq!(call(auth, polled.clone()).await, StatusCode::UNAUTHORIZED);
            assert!(
                !polled.load(Ordering::SeqCst),
                "{auth:?}: the body was read"
            );
        }
        // With a good token the body is read (and here found too large).
        let polled = Arc::new(AtomicBool::new(false));
        assert_eq!(
            call(Some("Bearer s3cret"), polled.clone()).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(polled.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_route_without_the_middleware_refuses() {
        let mut parts = axum::http::Request::new(()).into_parts().0;
        let got = Tenant::from_request_parts(&mut parts, &()).await;
        assert!(matches!(got, Err(ApiError::Unauthorized)));
    }
}
