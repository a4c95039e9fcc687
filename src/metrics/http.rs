//! `GET /metrics` on the admin listener: refreshes the pool and container
//! gauges from the orchestrator's status, then renders every metric.

use super::{observe_status, render};
use crate::orchestrator::Orchestrator;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn handler(State(orchestrator): State<Arc<Orchestrator>>) -> Response {
    match orchestrator.status().await {
        Ok(status) => observe_status(&status),
        // The counters are still worth serving; the gauges keep their last
        // values, and the failed state read shows in the logs.
        Err(error) => {
            tracing::warn!(message = "Status unavailable; pool gauges not refreshed.", %error)
        }
    }
    match render() {
        Ok(text) => ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(error) => {
            tracing::error!(message = "Rendering metrics failed.", %error);
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}
