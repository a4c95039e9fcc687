//! `GET` and `DELETE /v1/conversations/{id}`: a conversation's state, and
//! its end (final sync, container removed, runs forgotten; `?purge=true`
//! also deletes its stored files); `GET .../files` and `.../files/{path}`:
//! its stored workspace, one file streamed from the store (`range`).

mod range;

use super::error::ApiError;
use super::AppState;
use crate::ids::is_valid_id;
use crate::ids::ConversationKey;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

/// How many recent runs `GET` lists.
const RECENT_RUNS: usize = 10;

fn valid(id: &str) -> Result<(), ApiError> {
    // An id that cannot exist is simply not found, like any other.
    is_valid_id(id).then_some(()).ok_or(ApiError::NotFound)
}

pub async fn get_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = state.auth.authenticate(&headers)?;
    valid(&id)?;
    let key = ConversationKey::new(tenant.id, id);
    let unavailable = |e: crate::state::StateError| ApiError::Unavailable(e.to_string());
    let store = state.executor.orchestrator().store();
    let conv = store
        .conversation(&key)
        .await
        .map_err(unavailable)?
        .ok_or(ApiError::NotFound)?;
    let container = match &conv.container_id {
        Some(name) => store.container(name).await.map_err(unavailable)?,
        None => None,
    };
    let runs = store.runs(&key, RECENT_RUNS).await.map_err(unavailable)?;
    let running = state.executor.hub().get(&key).is_some();
    Ok(Json(json!({
        "conversation_id": conv.conversation_id,
        "state": if running { "running" } else { "idle" },
        "container": container.map(|c| json!({
            "id": c.name,
            "state": c.state,
            "created_ms": c.created_ms,
            "last_activity_ms": c.last_activity_ms,
        })),
        "session_id": conv.session_id,
        "last_activity_ms": conv.last_activity_ms,
        "generation": conv.generation,
        "runs": runs,
    })))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

pub async fn delete_conversation(
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
    let key = ConversationKey::new(&tenant.id, &id);
    let orchestrator = state.executor.orchestrator();
    let store = orchestrator.store();
    let unavailable = |e: crate::state::StateError| ApiError::Unavailable(e.to_string());
    if store
        .conversation(&key)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        return Err(ApiError::NotFound);
    }
    let _guard = orchestrator
        .locks()
        .try_lock(&key)
        .ok_or_else(|| ApiError::Conflict("a run is in progress; delete it when it ends".into()))?;
    orchestrator
        .release_conversation(&key)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    store.delete_conversation(&key).await.map_err(unavailable)?;
    if purge {
        let objects = state
            .executor
            .sync()
            .purge(&key)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        tracing::info!(message = "Stored files purged.", tenant_id = %tenant.id, conversation_id = %id, objects);
    }
    tracing::info!(message = "Conversation deleted.", tenant_id = %tenant.id, conversation_id = %id, purge);
    Ok(StatusCode::NO_CONTENT)
}

/// The conversation must exist for this tenant (else 404, whatever is
/// stored).
async fn known(state: &AppState, key: &ConversationKey) -> Result<(), ApiError> {
    valid(&key.conversation_id)?;
    state
        .executor
        .orchestrator()
        .store()
        .conversation(key)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map(|_| ())
        .ok_or(ApiError::NotFound)
}

fn files_error(e: crate::sync::files::FilesError) -> ApiError {
    use crate::sync::files::FilesError;
    match e {
        FilesError::NotFound => ApiError::NotFound,
        FilesError::BadPath(m) => ApiError::BadRequest(format!("bad file path: {m}")),
        FilesError::Store(m) => ApiError::Unavailable(m),
    }
}

pub async fn list_files(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = state.auth.authenticate(&headers)?;
    let key = ConversationKey::new(tenant.id, id);
    known(&state, &key).await?;
    let files = state
        .executor
        .sync()
        .list_files(&key)
        .await
        .map_err(files_error)?;
    Ok(Json(json!({ "files": files })))
}

pub async fn get_file(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::http::header;
    let tenant = state.auth.authenticate(&headers)?;
    let key = ConversationKey::new(tenant.id, id);
    known(&state, &key).await?;
    let file = state
        .executor
        .sync()
        .stored_file(&key, &path)
        .await
        .map_err(files_error)?;
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
        Body::from_stream(file.stream(part).await.map_err(files_error)?)
    };
    resp.body(body)
        .map_err(|e| ApiError::Unavailable(format!("building the response: {e}")))
}
