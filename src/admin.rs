//! The admin listener (loopback by default, never the tenants' API).
//!
//! Routes:
//! - `GET /admin/api/status`: pool, containers, workers as JSON.
//! - `GET /healthz`: liveness.
//! - `GET /metrics`: Prometheus text format (`docs/metrics.md`).

use crate::orchestrator::Orchestrator;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub fn router(orchestrator: Arc<Orchestrator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/admin/api/status", get(status))
        .route("/metrics", get(crate::metrics::handler))
        .with_state(orchestrator)
}

async fn status(State(o): State<Arc<Orchestrator>>) -> Response {
    match o.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": {"code": "unavailable", "message": e.to_string()}})),
        )
            .into_response(),
    }
}
