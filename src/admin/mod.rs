//! The admin listener (`server.admin_listen`): the operator's status page,
//! its JSON twin and the operator commands; never the tenants' API and
//! never their tokens.
//!
//! Routes:
//! - `GET /`: the status page (one HTML document, CSS and JS inline, no
//!   external assets), live through `/admin/api/stream`.
//! - `GET /healthz`: liveness, without authentication.
//! - `GET /admin/api/status`: the status as JSON ([`view::StatusView`]).
//! - `GET /admin/api/stream`: the same as SSE `status` events, sent at
//!   once, on every audit event and every two seconds.
//! - `POST /admin/api/gc`: sweep now (idle, age, orphans); `{"removed": n}`.
//! - `GET /metrics`: Prometheus text format (`docs/metrics.md`).
//!
//! Every route but `/healthz` passes [`auth::AdminAuth`].

mod api;
pub(crate) mod auth;
mod health;
mod hosts;
mod page;
pub(crate) mod recent;
pub(crate) mod rule_tally;
mod stats;
pub(crate) mod view;

use crate::codes::ErrorCode;
use crate::config::Config;
use crate::orchestrator::Orchestrator;
use crate::runtime::ContainerRuntime;
use auth::AdminAuth;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// What the admin routes share.
pub(crate) struct Admin {
    orchestrator: Arc<Orchestrator>,
    runtime: Arc<dyn ContainerRuntime>,
    auth: AdminAuth,
    stats: stats::StatsSampler,
    health: health::HealthProbe,
    hosts: hosts::HostsProbe,
    started_ms: u64,
}

pub(crate) fn router(
    cfg: &Config,
    orchestrator: Arc<Orchestrator>,
    runtime: Arc<dyn ContainerRuntime>,
    leases: Option<Arc<crate::sync::lease::Leases>>,
) -> Router {
    let admin = Arc::new(Admin {
        orchestrator,
        runtime,
        auth: AdminAuth::new(cfg.server.admin_token_sha256.as_deref()),
        stats: Default::default(),
        health: Default::default(),
        hosts: hosts::HostsProbe::new(leases),
        started_ms: crate::state::now_ms(),
    });
    let guarded = Router::new()
        .route("/", get(page::index))
        .route("/admin/api/status", get(api::status))
        .route("/admin/api/stream", get(api::stream))
        .route("/admin/api/gc", post(api::gc))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    match admin.orchestrator.status().await {
        Ok(status) => crate::metrics::observe_pool(&status.gauges()),
        // The counters are still worth serving; the gauges keep their last
        // values, and the failed state read shows in the logs.
        Err(error) => {
            tracing::warn!(message = "Status unavailable; pool gauges not refreshed.", %error)
        }
    }
    crate::metrics::response()
}

async fn guard(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    match admin.auth.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => {
            tracing::warn!(message = "Admin request refused.", reason = denied.code().as_str(),
                method = %req.method(), path = %req.uri().path());
            let mut resp = error(denied.code(), &denied.to_string());
            if denied == auth::Denied::Unauthenticated {
                // Makes a browser ask for the token (as the Basic password).
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static(
                        "Basic realm=\"agentbox admin\", charset=\"UTF-8\"",
                    ),
                );
            }
            resp
        }
    }
}

fn error(code: ErrorCode, message: &str) -> Response {
    (
        code.http_status()
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
