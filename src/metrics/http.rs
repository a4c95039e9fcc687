//! `GET /metrics` on the admin listener: every metric as Prometheus text.
//! The admin handler refreshes the pool gauges ([`super::observe_pool`])
//! first; this module knows nothing of the orchestrator.

use super::render;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub(crate) fn response() -> Response {
    match render() {
        Ok(text) => ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(error) => {
            tracing::error!(message = "Rendering metrics failed.", %error);
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}
