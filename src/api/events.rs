//! SSE rendering of a run's events, and `GET /v1/conversations/{id}/events`
//! for clients that reconnect with `Last-Event-ID` (`{run}-{seq}`).

use super::error::ApiError;
use super::{AppState, Tenant};
use crate::conversations::{ConversationError, Cursor};
use crate::ids::is_valid_id;
use crate::ids::ConversationKey;
use crate::state::StoredEvent;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;

/// `heartbeat`: how often an idle stream gets a comment, so clients and
/// proxies keep it open (`server.sse_heartbeat_secs`).
pub(super) fn sse(
    run: u64,
    events: impl Stream<Item = StoredEvent> + Send + 'static,
    heartbeat: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = events.map(move |ev| {
        // Not part of the event contract: a comment that tells clients
        // (and the benchmark) that the agent has taken the run.
        if ev.event == "started" {
            let prestarted = serde_json::from_str::<serde_json::Value>(ev.data.get())
                .is_ok_and(|d| d["prestarted"] == true);
            let note = if prestarted {
                "agent started; cli prestarted"
            } else {
                "agent started"
            };
            return Ok(Event::default().comment(note));
        }
        Ok(Event::default()
            .id(format!("{run}-{}", ev.seq))
            .event(ev.event)
            .data(ev.data.to_string()))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(heartbeat))
}

/// Parses `{run}-{seq}`.
fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (run, seq) = s.trim().split_once('-')?;
    Some((run.parse().ok()?, seq.parse().ok()?))
}

pub(super) async fn get_events(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    tenant: Tenant,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if !is_valid_id(&conversation_id) {
        return Err(ApiError::NotFound);
    }
    let cursor = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => match parse_event_id(v) {
            Some((run, seq)) => Cursor::After { run, seq },
            None => Cursor::Malformed,
        },
        None => Cursor::Latest,
    };
    let key = ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    };
    let (run, events) = state
        .conversations
        .events(&key, cursor)
        .await
        .map_err(|e| match e {
            ConversationError::NotFound => ApiError::NotFound,
            ConversationError::BadCursor => ApiError::BadRequest(e.to_string()),
            // 409 naming the host that still runs it, 503 otherwise.
            e => ApiError::from(e),
        })?;
    Ok(sse(run, events, state.conversations.sse_heartbeat()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids() {
        assert_eq!(super::parse_event_id("3-17"), Some((3, 17)));
        assert_eq!(super::parse_event_id("3"), None);
        assert_eq!(super::parse_event_id("a-1"), None);
    }
}
