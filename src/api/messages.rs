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
    /// Names of the tenant's egress rules this run keeps; every other rule
    /// and the domain allowlist are off for it. Absent: all of them.
    #[serde(default)]
    egress_rules: Option<Vec<String>>,
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
    if let Some(names) = &req.egress_rules {
        super::check_egress_rules(&state, &tenant.id, names)?;
    }
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
        .send_narrowed(key, exec, tenant.max_concurrent_runs, req.egress_rules)
        .await
        .map_err(ApiError::from)?;
    let heartbeat = state.conversations.sse_heartbeat();
    Ok(super::events::sse(live.run, live.subscribe(0), heartbeat))
}
