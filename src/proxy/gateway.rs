//! The model-gateway route: plain HTTP in from the container, HTTP(S) out
//! to the configured model API with the daemon's credential added: the
//! `x-api-key` for Anthropic, a SigV4 signature for Bedrock.
//!
//! Credentials are bound to their upstream: they go only to the configured
//! base URL, redirects are passed back to the client and never followed,
//! and whatever credential the container sent is dropped first.

use super::credentials::{AwsEnv, CredentialChain};
use super::decision::{Decision, Route};
use super::forward::strip_hop_by_hop;
use super::refusal::Refusal;
use super::{sigv4, ProxyBody};
use crate::config::{ModelConfig, Provider};
use crate::secrets::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::SystemTime;

/// Client headers never forwarded: credentials the container may have
/// sent (it only has placeholders) and the host of the wrong hop.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
];
const ANTHROPIC_KEY_NAME: &str = "anthropic_api_key";

#[derive(Debug, thiserror::Error)]
pub enum ModelGatewayError {
    #[error("model gateway URL {0:?} is not usable")]
    Url(String),
    #[error("loading TLS roots: {0}")]
    Tls(std::io::Error),
}

enum Upstream {
    Anthropic {
        base: Uri,
        api_key: Option<Secret>,
    },
    Bedrock {
        runtime: Uri,
        control: Uri,
        region: String,
        // Boxed: the chain (with its HTTP client) dwarfs the other variant.
        creds: Box<CredentialChain>,
    },
}

/// Which Bedrock endpoint a gateway path belongs to.
#[derive(Debug, PartialEq, Eq)]
enum BedrockEndpoint {
    Runtime,
    Control,
}

pub struct ModelGateway {
    upstream: Upstream,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    max_body: usize,
}

impl ModelGateway {
    pub fn new(
        model: &ModelConfig,
        api_key: Option<Secret>,
        aws_env: AwsEnv,
    ) -> Result<Self, ModelGatewayError> {
        let uri = |s: &str| {
            s.parse::<Uri>()
                .ok()
                .filter(|u| u.host().is_some())
                .ok_or_else(|| ModelGatewayError::Url(s.to_owned()))
        };
        let upstream = match model.provider {
            Provider::Anthropic => Upstream::Anthropic {
                base: uri(&model.anthropic_base_url)?,
                api_key,
            },
            Provider::Bedrock => Upstream::Bedrock {
                runtime: uri(&model.bedrock_runtime_url())?,
                control: uri(&model.bedrock_control_plane_url())?,
                region: model.region.clone(),
                creds: Box::new(CredentialChain::new(aws_env, &model.aws_profile)),
            },
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(ModelGatewayError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            upstream,
            client: Client::builder(TokioExecutor::new()).build(https),
            max_body: (model.max_request_body_mb * 1024 * 1024) as usize,
        })
    }

    /// True when a container has nothing to send a key for.
    pub fn missing_api_key(&self) -> bool {
        matches!(&self.upstream, Upstream::Anthropic { api_key: None, .. })
    }

    pub async fn handle(&self, req: Request<Incoming>) -> (Response<ProxyBody>, Decision) {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let base = match &self.upstream {
            Upstream::Anthropic { base, .. } => base,
            Upstream::Bedrock {
                runtime, control, ..
            } => match bedrock_endpoint(req.method(), &path) {
                Some(BedrockEndpoint::Runtime) => runtime,
                Some(BedrockEndpoint::Control) => control,
                None => {
                    let (host, port) = host_port(runtime);
                    let why = Refusal::GatewayPathNotAllowed;
                    return (
                        super::refusal_response(why),
                        Decision::blocked(Route::Gateway, &method, &host, port, why),
                    );
                }
            },
        };
        let (host, port) = host_port(base);
        match self.forward(req, base).await {
            Ok((resp, credential)) => {
                let mut d =
                    Decision::allowed(Route::Gateway, &method, &host, port, "model_gateway");
                d.status = Some(resp.status().as_u16());
                d.credential = credential;
                (resp, d)
            }
            Err(why) => (
                super::refusal_response(why),
                Decision::blocked(Route::Gateway, &method, &host, port, why),
            ),
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        base: &Uri,
    ) -> Result<(Response<ProxyBody>, Option<String>), Refusal> {
        let (mut parts, body) = req.into_parts();
        // Buffered: SigV4 signs the body's hash, and a bounded buffer is
        // also the simplest size limit. Answers stream through unbuffered.
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Refusal::BodyTooLarge
                } else {
                    Refusal::Malformed
                }
            })?
            .to_bytes();
        parts.uri = upstream_uri(base, &parts.uri).ok_or(Refusal::Malformed)?;
        strip_hop_by_hop(&mut parts.headers);
        strip_client_credentials(&mut parts.headers);
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        parts.headers.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|_| Refusal::Malformed)?,
        );
        let mut req = Request::from_parts(parts, Full::new(body.clone()));
        let credential = match &self.upstream {
            Upstream::Anthropic { api_key, .. } => match api_key {
                Some(key) => {
                    let mut v = HeaderValue::from_str(key.expose())
                        .map_err(|_| Refusal::CredentialsUnavailable)?;
                    v.set_sensitive(true);
                    req.headers_mut().insert("x-api-key", v);
                    Some(ANTHROPIC_KEY_NAME.to_owned())
                }
                None => None,
            },
            Upstream::Bedrock { region, creds, .. } => {
                let c = creds.credentials().await.map_err(|error| {
                    tracing::warn!(message = "No AWS credentials for the Bedrock gateway.", %error);
                    Refusal::CredentialsUnavailable
                })?;
                sigv4::sign_request(&mut req, &body, &c, region, SystemTime::now()).map_err(
                    |error| {
                        tracing::warn!(message = "SigV4 signing failed.", %error);
                        Refusal::CredentialsUnavailable
                    },
                )?;
                Some(format!("aws_sigv4:{}", c.source))
            }
        };
        let resp = self.client.request(req).await.map_err(|error| {
            // hyper's errors carry no header values.
            tracing::warn!(message = "Model gateway upstream failed.", upstream = %authority, %error);
            Refusal::UpstreamFailed
        })?;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The body streams through unbuffered (SSE or AWS event-stream).
        Ok((Response::from_parts(parts, body.boxed()), credential))
    }
}

fn strip_client_credentials(headers: &mut HeaderMap) {
    for name in DROPPED_REQUEST_HEADERS {
        headers.remove(*name);
    }
    // A client-sent `x-amz-*` (date, token, content hash) would be
    // signed over or contradict the proxy's own.
    let amz: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-amz-"))
        .cloned()
        .collect();
    for name in amz {
        headers.remove(name);
    }
}

/// The Bedrock calls the CLI makes; nothing else is signed with the
/// daemon's AWS credentials.
fn bedrock_endpoint(method: &Method, path: &str) -> Option<BedrockEndpoint> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let ok_segment = |s: &str| !s.is_empty() && s != "." && s != "..";
    match (method, segments.as_slice()) {
        (&Method::POST, ["model", id, action])
            if ok_segment(id)
                && matches!(
                    *action,
                    "invoke"
                        | "invoke-with-response-stream"
                        | "converse"
                        | "converse-stream"
                        | "count-tokens"
                ) =>
        {
            Some(BedrockEndpoint::Runtime)
        }
        (&Method::GET, ["inference-profiles"]) => Some(BedrockEndpoint::Control),
        (&Method::GET, ["inference-profiles", id]) if ok_segment(id) => {
            Some(BedrockEndpoint::Control)
        }
        _ => None,
    }
}

fn host_port(uri: &Uri) -> (String, u16) {
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    (uri.host().unwrap_or_default().to_owned(), port)
}

/// `base` with the request's path (after the base's own path) and query.
fn upstream_uri(base: &Uri, uri: &Uri) -> Option<Uri> {
    let base_path = base.path().trim_end_matches('/');
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(format!("{base_path}{pq}").parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_base_path_and_query() {
        let base: Uri = "http://127.0.0.1:9/api/".parse().unwrap();
        let uri: Uri = "/v1/messages?beta=true".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, &uri).unwrap().to_string(),
            "http://127.0.0.1:9/api/v1/messages?beta=true"
        );
    }

    #[test]
    fn client_credentials_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("placeholder"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("x-amz-security-token", HeaderValue::from_static("t"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        strip_client_credentials(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn only_model_calls_are_signed_for_bedrock() {
        use BedrockEndpoint::*;
        let ep = |m: Method, p: &str| bedrock_endpoint(&m, p);
        assert_eq!(
            ep(
                Method::POST,
                "/model/anthropic.claude-v1%3A0/invoke-with-response-stream"
            ),
            Some(Runtime)
        );
        assert_eq!(ep(Method::POST, "/model/x/invoke"), Some(Runtime));
        assert_eq!(ep(Method::GET, "/inference-profiles"), Some(Control));
        assert_eq!(ep(Method::GET, "/inference-profiles/us.x"), Some(Control));
        assert_eq!(ep(Method::GET, "/model/x/invoke"), None);
        assert_eq!(ep(Method::POST, "/model/../invoke"), None);
        assert_eq!(ep(Method::POST, "/model//invoke"), None);
        assert_eq!(ep(Method::DELETE, "/guardrails/x"), None);
        assert_eq!(ep(Method::POST, "/model/x/invoke/extra"), None);
    }
}
