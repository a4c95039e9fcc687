//! The JSON and SSE routes of the admin listener.

use super::{error, view, Admin};
use crate::codes::ErrorCode;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often a live view is refreshed when nothing happens.
const TICK: Duration = Duration::from_secs(2);
/// Events often come in bursts (claim, create, destroy): wait this long
/// after the first, so one update covers the burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

pub(super) async fn status(State(admin): State<Arc<Admin>>) -> Response {
    match view::build(&admin).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(ErrorCode::Unavailable, &e.to_string()),
    }
}

pub(super) async fn stream(
    State(admin): State<Arc<Admin>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = super::recent::subscribe();
    let events =
        futures_util::stream::unfold((admin, rx, true), |(admin, mut rx, first)| async move {
            if !first {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_ok() {
                            tokio::time::sleep(DEBOUNCE).await;
                        } else {
                            tokio::time::sleep(TICK).await;
                        }
                    }
                    _ = tokio::time::sleep(TICK) => {}
                }
                // Whatever arrived during the wait is covered by this update.
                rx.mark_unchanged();
            }
            let event = match view::build(&admin).await {
                Ok(v) => Event::default().event("status").json_data(&v),
                Err(e) => Event::default().event("error").json_data(
                    serde_json::json!({"error": {"code": "unavailable", "message": e.to_string()}}),
                ),
            }
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), (admin, rx, false)))
        });
    Sse::new(events).keep_alive(KeepAlive::default())
}

pub(super) async fn gc(State(admin): State<Arc<Admin>>) -> Response {
    tracing::info!(message = "Sweep requested on the admin listener.");
    match admin.orchestrator.sweep_now().await {
        Ok(removed) => Json(serde_json::json!({ "removed": removed })).into_response(),
        Err(e) => error(ErrorCode::SweepFailed, &e.to_string()),
    }
}
