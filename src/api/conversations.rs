//! `GET` and `DELETE /v1/conversations/{id}`: a conversation's state, and
//! its end (final sync, container removed, runs forgotten; `?purge=true`
//! also deletes its stored files); `GET .../files` and `.../files/{path}`:
//! its stored workspace, one file streamed from the store (`range`).

mod range;

use super::error::ApiError;
use super::{AppState, Tenant};
use crate::conversations::ConversationError;
use crate::ids::{is_valid_id, ConversationKey};
use crate::sync::files::FilesError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

fn valid(id: &str) -> Result<(), ApiError> {
    // An id that cannot exist is simply not found, like any other.
    is_valid_id(id).then_some(()).ok_or(ApiError::NotFound)
}

fn key(tenant: Tenant, conversation_id: String) -> ConversationKey {
    ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    }
}

/// What every operation here can answer besides success.
fn api_error(e: ConversationError) -> ApiError {
    match e {
        ConversationError::NotFound => ApiError::NotFound,
        ConversationError::Busy => ApiError::Conflict(e.to_string()),
        ConversationError::Files(FilesError::NotFound) => ApiError::NotFound,
        ConversationError::Files(FilesError::BadPath(m)) => {
            ApiError::BadRequest(format!("bad file path: {m}"))
        }
        ConversationError::Files(FilesError::Store(m)) => ApiError::Unavailable(m),
        e => ApiError::Unavailable(e.to_string()),
    }
}

pub(super) async fn get_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = state.auth.authenticate(&headers)?;
    valid(&id)?;
    let view = state
        .conversations
        .show(&key(tenant, id))
        .await
        .map_err(api_error)?;
    let conv = view.conversation;
    Ok(Json(json!({
        "conversation_id": conv.conversation_id,
        "state": if view.running { "running" } else { "idle" },
        "container": view.container.map(|c| json!({
            "id": c.name,
            "state": c.state,
            "created_ms": c.created_ms,
            "last_activity_ms": c.last_activity_ms,
        })),
        "session_id": conv.session_id,
        "last_activity_ms": conv.last_activity_ms,
        "generation": conv.generation,
        "runs": view.runs,
    })))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

pub(super) async fn delete_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let purge = query
        .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?
        .purge;
    let tenant = state.auth.authenticate(&headers)?;
    valid(&id)?;
    state
        .conversations
        .delete(&key(tenant, id), purge)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = state.auth.authenticate(&headers)?;
    valid(&id)?;
    let files = state
        .conversations
        .files(&key(tenant, id))
        .await
        .map_err(api_error)?;
    Ok(Json(json!({ "files": files })))
}

pub(super) async fn get_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::http::header;
    let tenant = state.auth.authenticate(&headers)?;
    valid(&id)?;
    let file = state
        .conversations
        .file(&key(tenant, id), &path)
        .await
        .map_err(api_error)?;
    // Blobs are named by their content's hash: a strong validator.
    let etag = format!("\"{}\"", file.sha256);
    let wanted = match headers.get(header::IF_RANGE) {
        // A range of another version would be spliced into the wrong
        // bytes; RFC 9110 13.1.5 says send it all instead.
        Some(v) if v.as_bytes() != etag.as_bytes() => None,
        _ => headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
    };
    let (status, part) = match range::select(wanted, file.size) {
        range::Selection::Full => (StatusCode::OK, None),
        range::Selection::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        range::Selection::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(file.size)),
    };
    let length = part.as_ref().map_or(file.size, |r| r.end - r.start);
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag);
    if let Some(r) = &part {
        resp = resp.header(header::CONTENT_RANGE, range::content_range(r, file.size));
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        // Chunks flow from the store to the client as they come; memory
        // stays bounded however large the file.
        Body::from_stream(file.stream(part).await.map_err(|e| api_error(e.into()))?)
    };
    resp.body(body)
        .map_err(|e| ApiError::Unavailable(format!("building the response: {e}")))
}
