//! The model-gateway route: plain HTTP in from the container, HTTP(S) out
//! to the configured model API with the daemon's key added.

use super::ProxyContext;
use crate::secrets::Secret;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Instant;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Headers that describe one hop, or carry a credential the container may
/// have sent; none of them is forwarded.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-api-key",
    "authorization",
];
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// The name the injected credential is logged under; never its value.
const CREDENTIAL_NAME: &str = "anthropic_api_key";

pub struct Gateway {
    base: Uri,
    api_key: Option<Secret>,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
}

impl Gateway {
    pub fn new(base_url: &str, api_key: Option<Secret>) -> std::io::Result<Self> {
        let base: Uri = base_url
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            base,
            api_key,
            client,
        })
    }

    pub async fn handle(&self, req: Request<Incoming>, ctx: &ProxyContext) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        // Absolute-form and CONNECT requests are the forward-proxy route,
        // which allows nothing until an allowlist exists.
        if method == Method::CONNECT || req.uri().authority().is_some() {
            let host = req.uri().host().unwrap_or_default().to_owned();
            tracing::info!(
                message = "Proxy request blocked.",
                container_id = %ctx.container_id, tenant_id = %ctx.tenant_id,
                conversation_id = %ctx.conversation_id, %method, %host,
                reason = "egress_not_allowed",
            );
            crate::audit::emit(&crate::audit::AuditEvent::ProxyRequestBlocked {
                subject: crate::audit::Subject {
                    tenant_id: ctx.tenant_id.clone(),
                    conversation_id: ctx.conversation_id.clone(),
                    container_id: ctx.container_id.clone(),
                },
                request: crate::audit::ProxyRequest {
                    route: if method == Method::CONNECT {
                        "connect"
                    } else {
                        "http"
                    }
                    .to_owned(),
                    method: method.to_string(),
                    port: req
                        .uri()
                        .port_u16()
                        .unwrap_or(if method == Method::CONNECT { 443 } else { 80 }),
                    host,
                    reason: "egress_not_allowed".to_owned(),
                    status: Some(403),
                    bytes_from_container: 0,
                    bytes_to_container: 0,
                    duration_ms: 0,
                    credential: None,
                },
            });
            return text(StatusCode::FORBIDDEN, "blocked: destination not allowed\n");
        }
        let resp = match self.forward(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    message = "Model gateway upstream failed.",
                    container_id = %ctx.container_id, %method, %path, error = %e,
                );
                return text(StatusCode::BAD_GATEWAY, "upstream unreachable\n");
            }
        };
        tracing::info!(
            message = "Proxy request allowed.",
            container_id = %ctx.container_id, tenant_id = %ctx.tenant_id,
            conversation_id = %ctx.conversation_id, %method, %path,
            host = self.base.host().unwrap_or_default(),
            status = resp.status().as_u16(),
            credential = self.api_key.as_ref().map(|_| CREDENTIAL_NAME),
            duration_ms = started.elapsed().as_millis() as u64,
        );
        resp
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, String> {
        let (mut parts, body) = req.into_parts();
        parts.uri = self.upstream_uri(&parts.uri)?;
        strip(&mut parts.headers, DROPPED_REQUEST_HEADERS);
        if let Some(key) = &self.api_key {
            let mut v = HeaderValue::from_str(key.expose())
                .map_err(|_| "api key is not a valid header".to_owned())?;
            v.set_sensitive(true);
            parts
                .headers
                .insert(HeaderName::from_static("x-api-key"), v);
        }
        let resp = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (mut parts, body) = resp.into_parts();
        strip(&mut parts.headers, DROPPED_RESPONSE_HEADERS);
        // The body streams through unbuffered (SSE from the model).
        Ok(Response::from_parts(parts, body.boxed()))
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, String> {
        let base_path = self.base.path().trim_end_matches('/');
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{base_path}{pq}")
                .parse()
                .map_err(|e| format!("bad path: {e}"))?,
        );
        Uri::from_parts(parts).map_err(|e| e.to_string())
    }
}

fn strip(headers: &mut HeaderMap, names: &[&str]) {
    for name in names {
        headers.remove(*name);
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_base_path_and_query() {
        let g = Gateway::new("http://127.0.0.1:9/api/", None).unwrap();
        let uri: Uri = "/v1/messages?beta=true".parse().unwrap();
        assert_eq!(
            g.upstream_uri(&uri).unwrap().to_string(),
            "http://127.0.0.1:9/api/v1/messages?beta=true"
        );
    }

    #[test]
    fn client_credentials_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("placeholder"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        strip(&mut h, DROPPED_REQUEST_HEADERS);
        assert_eq!(h.len(), 1);
    }
}
