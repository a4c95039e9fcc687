//! The tenant-facing HTTP API.
//!
//! Routes:
//! - `GET /healthz`: liveness, no auth.
//! - `GET /readyz`: readiness, no auth: whether a new run would start.
//! - `POST /v1/conversations/{id}/messages`: run the agent, SSE out.
//! - `POST /v1/conversations/{id}/interrupt`: stop the running turn.
//! - `GET /v1/conversations/{id}/session`: an Agent SDK session
//!   (WebSocket, stream-json both ways).
//! - `GET /v1/conversations/{id}/events`: the latest run's events, or
//!   those after `Last-Event-ID`, then live until the run ends.
//! - `GET /v1/conversations/{id}`: state, container, recent runs.
//! - `DELETE /v1/conversations/{id}`: final sync, remove its container and
//!   forget it; `?purge=true` also deletes its stored files.
//! - `GET /v1/conversations/{id}/files`: the stored workspace's files.
//! - `GET /v1/conversations/{id}/files/{path}`: one stored file.
//!
//! Every answer names the host that gave it (`x-agentbox-host`).
//!
//! Every `/v1` route authenticates the bearer token
//! (`auth::require_tenant`) before its body is read. Every request gets a
//! request id (`x-request-id` echoed or generated) carried by the tracing
//! span of the request.

mod auth;
mod conversations;
mod error;
mod events;
mod interrupt;
mod messages;
mod session;

pub use auth::token_sha256;
pub(crate) use auth::{Authenticator, Tenant};
pub(crate) use error::ApiError;

use crate::conversations::Conversations;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tracing::Instrument;

/// Largest request body accepted; larger ones get 413.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub(crate) struct AppState {
    pub auth: Arc<Authenticator>,
    pub conversations: Conversations,
    /// This host's name (`server.instance`), sent on every answer as
    /// [`HOST_HEADER`].
    pub host: HeaderValue,
}

/// Names the host that served a request, for clients and load balancers
/// in front of several hosts (`docs/scale-out.md`).
pub(crate) const HOST_HEADER: &str = "x-agentbox-host";

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/conversations/{id}/messages",
            post(messages::post_message),
        )
        .route(
            "/v1/conversations/{id}/interrupt",
            post(interrupt::post_interrupt),
        )
        .route("/v1/conversations/{id}/session", get(session::get_session))
        .route("/v1/conversations/{id}/events", get(events::get_events))
        .route(
            "/v1/conversations/{id}",
            get(conversations::get_conversation).delete(conversations::delete_conversation),
        )
        .route(
            "/v1/conversations/{id}/files",
            get(conversations::list_files),
        )
        .route(
            "/v1/conversations/{id}/files/{*path}",
            get(conversations::get_file),
        )
        // Every route above, and none below: the token is checked before
        // any extractor reads the body.
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require_tenant,
        ))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(too_large_as_json))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn_with_state(
            state.host.clone(),
            served_by,
        ))
        .with_state(state)
}

async fn served_by(
    axum::extract::State(host): axum::extract::State<HeaderValue>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(HOST_HEADER, host);
    resp
}

/// A run's or session's narrowing names only rules its tenant has: a
/// misspelt name is the caller's mistake, not a silently narrower run.
fn check_egress_rules(state: &AppState, tenant: &str, names: &[String]) -> Result<(), ApiError> {
    match state.conversations.unknown_egress_rule(tenant, names) {
        Some(name) => Err(ApiError::BadRequest(format!(
            "egress_rules: no egress rule of this tenant is named {:?}",
            name.chars().take(64).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// 200 while a new run would start; else the 503 a run would get
/// (`shutting_down`, `state_disk_full`, `runtime_unavailable`), so a load
/// balancer sends conversations elsewhere. No auth: it names no tenant.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, ApiError> {
    state.conversations.ready().await?;
    Ok("ready\n")
}

async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// axum's body-limit rejection is plain text; answer it like every other error.
async fn too_large_as_json(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
        && !resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return ApiError::TooLarge(MAX_BODY_BYTES).into_response();
    }
    resp
}
