//! The model-gateway route: plain HTTP in from the container, HTTP(S) out
//! to the configured model API with the daemon's credential added: the
//! `x-api-key` for Anthropic, a SigV4 signature for Bedrock.
//!
//! Credentials are bound to their upstream: they go only to the configured
//! base URL, redirects are passed back to the client and never followed,
//! and whatever credential the container sent is dropped first.

use super::body::{self, BoxError, Guarded, Share, Verdict};
use super::credentials::{AwsEnv, CredentialChain};
use super::decision::{Decision, Route};
use super::reach::strip_hop_by_hop;
use super::refusal::Refusal;
use super::spend::{MeteredBody, Payer, SpendLedger};
use super::upstream_outcome::{self, UpstreamFailure, UpstreamOutcomes, WatchedBody, Watcher};
use super::usage::Scanner;
use super::{sigv4, ProxyBody, ProxyContext};
use crate::config::BodyLimits;
use crate::config::{ModelConfig, Provider};
use crate::secrets::Secret;
use bytes::Bytes;
use egress_policy::gateway_paths::{BedrockEndpoint, CallPolicy, PathRefusal};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST,
};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
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
/// How long a 400 answer's body may take to read for its kind.
const ERROR_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an idle upstream connection is kept for the next model call:
/// longer than the CLI's pause between a tool result and its next call.
const UPSTREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum ModelGatewayError {
    #[error("model gateway URL {0:?} is not usable")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] crate::upstream_tls::UpstreamTlsError),
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

/// What the gateway sends upstream: the container's body streamed
/// through its guard (Anthropic), or a buffered, signed one (Bedrock).
type UpstreamBody = BoxBody<Bytes, BoxError>;

pub struct ModelGateway {
    upstream: Upstream,
    calls: CallPolicy,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    limits: BodyLimits,
    /// `model.first_byte_timeout_secs`.
    first_byte: std::time::Duration,
    spend: Arc<SpendLedger>,
    outcomes: Arc<UpstreamOutcomes>,
}

impl ModelGateway {
    pub fn new(
        model: &ModelConfig,
        limits: BodyLimits,
        api_key: Option<Secret>,
        aws_env: AwsEnv,
        spend: Arc<SpendLedger>,
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
        let tls = crate::upstream_tls::client_config(&model.extra_ca_file)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            upstream,
            calls: model.call_policy(),
            // Pooled: a conversation's later model calls reuse the
            // connection (and TLS session) of its first.
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(UPSTREAM_IDLE)
                .build(https),
            limits,
            first_byte: std::time::Duration::from_secs(model.first_byte_timeout_secs),
            spend,
            outcomes: Arc::default(),
        })
    }

    pub fn outcomes(&self) -> &Arc<UpstreamOutcomes> {
        &self.outcomes
    }

    /// True when a container has nothing to send a key for.
    pub fn missing_api_key(&self) -> bool {
        matches!(&self.upstream, Upstream::Anthropic { api_key: None, .. })
    }

    pub fn spend(&self) -> &Arc<SpendLedger> {
        &self.spend
    }

    /// Serves one gateway request from the container `ctx` whose buffer
    /// share is `share`.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        share: &Share,
        ctx: &ProxyContext,
    ) -> (Response<ProxyBody>, Decision) {
        let method = req.method().as_str().to_owned();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
            .to_owned();
        let checked = match &self.upstream {
            Upstream::Anthropic { base, .. } => self
                .calls
                .check_anthropic(req.method(), &target)
                .map(|()| base),
            Upstream::Bedrock {
                runtime, control, ..
            } => self
                .calls
                .check_bedrock(req.method(), &target)
                .map(|ep| match ep {
                    BedrockEndpoint::Runtime => runtime,
                    BedrockEndpoint::Control => control,
                }),
        };
        let base = match checked {
            Ok(base) => base,
            Err(refused) => {
                let why = match refused {
                    PathRefusal::Ambiguous => Refusal::GatewayPathAmbiguous,
                    PathRefusal::NotAllowed => Refusal::GatewayPathNotAllowed,
                };
                return self.refuse(&method, why);
            }
        };
        // Checked after the path, so only calls that could be forwarded
        // are refused for spend, and before any byte goes upstream.
        let billed = is_billed(req.method(), &target);
        if billed {
            if let Err(e) = self.spend.check(&ctx.tenant_id, &ctx.conversation_id) {
                tracing::info!(message = "Model request refused: budget spent.", reason = %e);
                return self.refuse(&method, Refusal::BudgetExceeded(e.kind));
            }
            // A compressed answer could not be read for its usage, so a
            // container could spend unmetered by asking for one.
            req.headers_mut()
                .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        let (host, port) = host_port(base);
        match self.forward(req, base, share).await {
            Ok((resp, credential)) => {
                let resp = if billed {
                    let watched = self.watched(resp, ctx).await;
                    self.metered(watched, ctx)
                } else {
                    resp
                };
                let mut d =
                    Decision::allowed(Route::Gateway, &method, &host, port, "model_gateway");
                d.status = Some(resp.status().as_u16());
                d.credential = credential;
                (resp, d)
            }
            Err(why) => {
                if billed && matches!(why, Refusal::UpstreamFailed | Refusal::UpstreamTimeout) {
                    self.outcomes.record(
                        &ctx.tenant_id,
                        &ctx.conversation_id,
                        UpstreamFailure::Unavailable,
                    );
                }
                (
                    self.refusal_response(why),
                    Decision::blocked(Route::Gateway, &method, &host, port, why),
                )
            }
        }
    }

    /// The answer with its failure, if any, noted for the conversation's
    /// run: an error status at once (a 400's body is read, bounded, for
    /// its kind), a 200 when its stream ends (an `error` event or a cut).
    async fn watched(&self, resp: Response<ProxyBody>, ctx: &ProxyContext) -> Response<ProxyBody> {
        let status = resp.status().as_u16();
        if status == 200 {
            let watcher = Watcher {
                outcomes: self.outcomes.clone(),
                tenant: ctx.tenant_id.clone(),
                conversation: ctx.conversation_id.clone(),
            };
            return resp.map(|b| WatchedBody::new(b, watcher).boxed());
        }
        let (parts, body) = resp.into_parts();
        let (body, bytes) = if status == 400 {
            let bytes = upstream_outcome::read_error_body(body, ERROR_BODY_TIME)
                .await
                .unwrap_or_default();
            let full = Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed();
            (full, bytes)
        } else {
            (body, Bytes::new())
        };
        if let Some(failure) = UpstreamFailure::from_status(status, &bytes) {
            self.outcomes
                .record(&ctx.tenant_id, &ctx.conversation_id, failure);
        }
        Response::from_parts(parts, body)
    }

    /// The answer with its usage read as it streams and billed to the
    /// container's tenant and conversation when it ends.
    fn metered(&self, resp: Response<ProxyBody>, ctx: &ProxyContext) -> Response<ProxyBody> {
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let scanner = Scanner::new(resp.status().as_u16(), ct);
        let encoded = resp
            .headers()
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity");
        if encoded {
            tracing::warn!(message = "Model answer is compressed although identity was asked for; its usage cannot be read.",
                tenant_id = %ctx.tenant_id, conversation_id = %ctx.conversation_id);
        }
        let payer = Payer {
            ledger: self.spend.clone(),
            tenant: ctx.tenant_id.clone(),
            conversation: ctx.conversation_id.clone(),
        };
        resp.map(|b| MeteredBody::new(b, scanner, payer).boxed())
    }

    /// A refusal before any upstream was chosen, with its decision.
    pub fn refuse(&self, method: &str, why: Refusal) -> (Response<ProxyBody>, Decision) {
        let (host, port) = match &self.upstream {
            Upstream::Anthropic { base, .. } => host_port(base),
            Upstream::Bedrock { runtime, .. } => host_port(runtime),
        };
        (
            self.refusal_response(why),
            Decision::blocked(Route::Gateway, method, &host, port, why),
        )
    }

    /// The refusal as the provider's own error JSON, so the CLI shows its
    /// message like any API error (and retries a 429 or 503 as it would).
    fn refusal_response(&self, why: Refusal) -> Response<ProxyBody> {
        let status = why.status();
        let message = format!("agentbox gateway: {why}");
        let (body, kind) = match &self.upstream {
            Upstream::Anthropic { .. } => {
                let kind = anthropic_error_type(status);
                let body = serde_json::json!({
                    "type": "error",
                    "error": { "type": kind, "message": message },
                });
                (body, None)
            }
            Upstream::Bedrock { .. } => (
                serde_json::json!({ "message": message }),
                Some(bedrock_error_type(status)),
            ),
        };
        let mut resp = Response::new(super::forward::text_body(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(kind) = kind {
            h.insert("x-amzn-errortype", HeaderValue::from_static(kind));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        base: &Uri,
        share: &Share,
    ) -> Result<(Response<ProxyBody>, Option<String>), Refusal> {
        let (mut parts, incoming) = req.into_parts();
        // A body announced too large is refused before anything is read or
        // forwarded; one that grows past its announcement is cut below.
        let announced = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.limits.max_bytes) {
            return Err(Refusal::BodyTooLarge);
        }
        let verdict = Verdict::default();
        let guarded = Guarded::new(incoming, self.limits, verdict.clone());
        parts.uri = upstream_uri(base, &parts.uri).ok_or(Refusal::Malformed)?;
        strip_hop_by_hop(&mut parts.headers);
        strip_client_credentials(&mut parts.headers);
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        parts.headers.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|_| Refusal::Malformed)?,
        );
        // Held until the request has gone out: the buffered bytes are paid
        // for from the container's share of the daemon's budget.
        let mut _held = body::Held::default();
        let (req, credential) = match &self.upstream {
            Upstream::Anthropic { api_key, .. } => {
                // Streamed: the body goes upstream as it arrives, so a
                // container's memory cost is a few frames, not its size.
                let mut req = Request::from_parts(parts, guarded.boxed());
                let credential = match api_key {
                    Some(key) => {
                        let mut v = HeaderValue::from_str(key.expose())
                            .map_err(|_| Refusal::CredentialsUnavailable)?;
                        v.set_sensitive(true);
                        req.headers_mut().insert("x-api-key", v);
                        Some(ANTHROPIC_KEY_NAME.to_owned())
                    }
                    None => None,
                };
                (req, credential)
            }
            Upstream::Bedrock { region, creds, .. } => {
                // Buffered: SigV4 signs the body's hash.
                let (bytes, held) = body::collect(guarded, share).await?;
                _held = held;
                let full = Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed();
                let mut req = Request::from_parts(parts, full);
                let c = creds.credentials().await.map_err(|error| {
                    tracing::warn!(message = "No AWS credentials for the Bedrock gateway.", %error);
                    Refusal::CredentialsUnavailable
                })?;
                sigv4::sign_request(&mut req, &bytes, &c, region, SystemTime::now()).map_err(
                    |error| {
                        tracing::warn!(message = "SigV4 signing failed.", %error);
                        Refusal::CredentialsUnavailable
                    },
                )?;
                (req, Some(format!("aws_sigv4:{}", c.source)))
            }
        };
        // The CLI's own request timeout is 10 minutes; this bound is the
        // daemon's, so a stalled upstream ends with a code it chose.
        let answered = tokio::time::timeout(self.first_byte, self.client.request(req))
            .await
            .map_err(|_| {
                tracing::warn!(message = "Model gateway upstream sent no answer in time.",
                    upstream = %authority, timeout_secs = self.first_byte.as_secs());
                Refusal::UpstreamTimeout
            })?;
        let resp = answered.map_err(|error| {
            // A body that broke its bounds fails the upstream request; say
            // why, not that the upstream failed.
            if let Some(why) = verdict.get() {
                return why;
            }
            // hyper's errors carry no header values.
            tracing::warn!(message = "Model gateway upstream failed.", upstream = %authority, %error);
            Refusal::UpstreamFailed
        })?;
        drop(_held);
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The body streams through unbuffered (SSE or AWS event-stream).
        Ok((Response::from_parts(parts, body.boxed()), credential))
    }
}

/// Calls that generate tokens: every allowed `POST` but token counting
/// (free). The path was checked against the allowed calls already.
fn is_billed(method: &hyper::Method, target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    method == hyper::Method::POST
        && !path.ends_with("/count_tokens")
        && !path.ends_with("/count-tokens")
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 408 | 431 => "invalid_request_error",
        403 => "permission_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

fn bedrock_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "AccessDeniedException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "ValidationException",
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
}
