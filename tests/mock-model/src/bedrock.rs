//! The Bedrock side of the mock: the calls the Claude Code CLI makes in
//! Bedrock mode, each checked for a valid SigV4 signature first.
//!
//! - `POST /model/{id}/invoke-with-response-stream`: the scripted turn as
//!   AWS event-stream `chunk` frames, one Anthropic stream event each.
//! - `POST /model/{id}/invoke`: the same turn as one JSON message.
//! - `GET /inference-profiles`: an empty listing.
//!
//! Unsigned or tampered requests get AWS's 403 and are counted.

use axum::body::{Body, Bytes};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::script::{self, BadRequest, Block};
use crate::server::Shared;
use crate::{eventstream, sigv4, sse};

/// Answers Bedrock paths; `None` for every other path.
pub async fn route(
    shared: &Shared,
    method: &Method,
    path_and_query: &str,
    headers: &[(String, String)],
    raw: &Bytes,
    body: Option<&Value>,
) -> Option<Response> {
    let path = path_and_query.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let endpoint = match (method, segments.as_slice()) {
        (&Method::GET, ["inference-profiles", ..]) => Endpoint::Profiles,
        (&Method::POST, ["model", id, "invoke-with-response-stream"]) => {
            Endpoint::Stream(decode(id))
        }
        (&Method::POST, ["model", id, "invoke"]) => Endpoint::Invoke(decode(id)),
        (_, ["model", ..]) | (_, ["inference-profiles", ..]) => {
            return Some(aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "unknown operation",
            ))
        }
        _ => return None,
    };
    let Some(key) = shared.bedrock_key.as_ref() else {
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "mock has no AWS key configured",
        ));
    };
    if let Err(why) = sigv4::verify(key, method.as_str(), path_and_query, headers, raw) {
        shared.reject(why.clone());
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            &why,
        ));
    }
    Some(match endpoint {
        Endpoint::Profiles => json_response(json!({"inferenceProfileSummaries": []})),
        Endpoint::Stream(model) | Endpoint::Invoke(model) if body.is_none() => {
            let _ = model;
            aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "body is not JSON",
            )
        }
        Endpoint::Stream(model) => stream(shared, &model, body.unwrap_or(&Value::Null)).await,
        Endpoint::Invoke(model) => invoke(shared, &model, body.unwrap_or(&Value::Null)).await,
    })
}

enum Endpoint {
    Profiles,
    Stream(String),
    Invoke(String),
}

async fn plan_for(body: &Value) -> Result<script::Plan, Response> {
    let plan = script::plan(body)
        .map_err(|BadRequest(m)| aws_error(StatusCode::BAD_REQUEST, "ValidationException", &m))?;
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    Ok(plan)
}

async fn stream(shared: &Shared, model: &str, body: &Value) -> Response {
    let plan = match plan_for(body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let sse_text = sse::render(&plan, model, input_tokens(body), &shared.ids);
    let mut out = Vec::new();
    for event in sse_text.split("\n\n") {
        if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                out.extend(eventstream::chunk(&v));
            }
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")
        .header("x-amzn-bedrock-content-type", "application/json")
        .header("x-amzn-requestid", shared.ids.next("req"))
        .body(Body::from(out))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn invoke(shared: &Shared, model: &str, body: &Value) -> Response {
    let plan = match plan_for(body).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let content: Vec<Value> = plan
        .blocks
        .iter()
        .map(|b| match b {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { name, input } => {
                json!({"type": "tool_use", "id": shared.ids.next("toolu"), "name": name, "input": input})
            }
        })
        .collect();
    json_response(json!({
        "id": shared.ids.next("msg"), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": plan.stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens(body), "output_tokens": 10}
    }))
}

fn input_tokens(body: &Value) -> u64 {
    (body.to_string().len() / 4) as u64 + 1
}

/// Model ids arrive path-encoded (`...-v1%3A0`).
fn decode(id: &str) -> String {
    let b = id.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&id[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static("x-amzn-errortype"),
                kind.to_owned(),
            ),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}
