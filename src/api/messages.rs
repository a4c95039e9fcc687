//! `POST /v1/conversations/{id}/messages`: start a run and stream its
//! events as SSE.

use super::error::ApiError;
use super::AppState;
use crate::execute::{ConversationKey, ExecuteError};
use crate::ids::is_valid_id;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use workspace_agent::protocol::{AgentEvent, AgentOptions, ExecuteRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    prompt: String,
    #[serde(default)]
    options: AgentOptions,
}

pub async fn post_message(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = state.auth.authenticate(&headers)?;
    if !is_valid_id(&conversation_id) {
        return Err(ApiError::BadRequest(
            "conversation id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$".to_owned(),
        ));
    }
    let req: MessageRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    if req.prompt.trim().is_empty() {
        return Err(ApiError::BadRequest("prompt must not be empty".to_owned()));
    }
    let key = ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    };
    tracing::info!(message = "Run requested.", tenant_id = %key.tenant_id, conversation_id = %key.conversation_id);
    let exec = ExecuteRequest {
        prompt: req.prompt,
        options: req.options,
        resume_session_id: None,
    };
    let rx = state.executor.start_run(key, exec).map_err(|e| match e {
        ExecuteError::Busy => ApiError::Conflict(e.to_string()),
        ExecuteError::State(e) => ApiError::Unavailable(e.to_string()),
    })?;
    let events = ReceiverStream::new(rx)
        // The session id is the daemon's business; clients get it in `result`.
        .filter(|ev| !matches!(ev, AgentEvent::Session { .. }))
        .map({
            let mut seq = 0u64;
            move |ev| {
                // Not part of the event contract: a comment that tells
                // clients (and the benchmark) the agent has taken the run.
                if matches!(ev, AgentEvent::Started { .. }) {
                    return Ok(Event::default().comment("agent started"));
                }
                seq += 1;
                Ok(Event::default()
                    .id(seq.to_string())
                    .event(ev.name())
                    .data(ev.data().to_string()))
            }
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
