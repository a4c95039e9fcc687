//! `POST /v1/conversations/{id}/messages`: start a run and stream its
//! events as SSE.

use super::error::ApiError;
use super::{AppState, Tenant};
use crate::execute::ConversationKey;
use crate::ids::is_valid_id;
use agent_protocol::{AgentOptions, ExecuteRequest};
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use std::convert::Infallible;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    prompt: String,
    #[serde(default)]
    options: AgentOptions,
}

pub(super) async fn post_message(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    tenant: Tenant,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
    req.options.validate().map_err(ApiError::BadRequest)?;
    let key = ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    };
    let exec = ExecuteRequest {
        prompt: req.prompt,
        options: req.options,
        resume_session_id: None,
    };
    let live = state
        .conversations
        .send(key, exec, tenant.max_concurrent_runs)
        .await
        .map_err(ApiError::from)?;
    let heartbeat = state.conversations.sse_heartbeat();
    Ok(super::events::sse(live.run, live.subscribe(0), heartbeat))
}
