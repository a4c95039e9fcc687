//! `POST /v1/conversations/{id}/interrupt`: stop the running turn. The
//! answer (`202`) says the request reached the run; the run's stream says
//! how it ended: a `result` with `interrupted: true`, or a normal one when
//! the turn finished before the interrupt reached the CLI.

use super::error::ApiError;
use super::{AppState, Tenant};
use crate::conversations::ConversationError;
use crate::ids::{is_valid_id, ConversationKey};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

pub(super) async fn post_interrupt(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    tenant: Tenant,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An id that cannot exist is simply not found, like any other.
    if !is_valid_id(&conversation_id) {
        return Err(ApiError::NotFound);
    }
    let key = ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    };
    let run = state
        .conversations
        .interrupt(&key)
        .await
        .map_err(|e| match e {
            ConversationError::NotFound => ApiError::NotFound,
            ConversationError::NoRun => ApiError::Conflict(e.to_string()),
            e => ApiError::Unavailable(e.to_string()),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "interrupt": "requested"})),
    ))
}
