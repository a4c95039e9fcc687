//! HTTP side of the mock: one handler that records each request and routes
//! it to the Messages endpoint, token counting, or a generic 200.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::faults::{self, Kind};
use crate::script::{self, BadRequest};
use crate::sse::{self, Ids};
use crate::stream::{self, Ending};
use crate::RecordedRequest;

/// The Messages API's own request size limit: larger requests get 413
/// `request_too_large`, announced ones before their body is read.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Path of the (unrecorded) endpoint listing recorded requests.
pub const REQUESTS_PATH: &str = "/_mock/requests";

/// State shared by all connections.
#[derive(Default)]
pub struct Shared {
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub ids: Ids,
    /// The AWS key Bedrock requests must be signed with (see [`crate::bedrock`]).
    pub bedrock_key: Option<crate::sigv4::AwsKey>,
    /// Why each refused Bedrock request was refused.
    pub rejections: Mutex<Vec<String>>,
    /// Failed requests per faulty prompt (see [`crate::faults`]).
    pub faults: faults::Counts,
    /// Delay between streamed events, unless the prompt sets `!pace`.
    pub pace: Duration,
    /// TLS handshakes completed (HTTPS mocks only).
    pub handshakes: Arc<std::sync::atomic::AtomicU64>,
    /// When each answer event was handed to the server, in Unix
    /// microseconds: the start of the streaming-overhead measure.
    pub sent_us: Arc<Mutex<Vec<u64>>>,
}

impl Shared {
    pub fn snapshot(&self) -> Vec<RecordedRequest> {
        // A poisoned lock only means a handler panicked mid-push; the data
        // is still a valid Vec.
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reject(&self, why: String) {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(why);
    }

    fn record(&self, request: RecordedRequest) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
    }
}

pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    if parts.method == Method::GET && parts.uri.path() == REQUESTS_PATH {
        return json_response(StatusCode::OK, json!(shared.snapshot()));
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT) {
        return too_large();
    }
    let bytes = match to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(e) if e.to_string().contains("length limit") => return too_large(),
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &format!("unreadable body: {e}")),
    };
    let parsed = serde_json::from_slice::<Value>(&bytes).ok();
    let headers = header_pairs(&parts.headers);
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: headers.clone(),
        body: parsed.clone().unwrap_or(Value::Null),
        at_ms,
    });
    let bedrock = crate::bedrock::route(
        &shared,
        &parts.method,
        &path,
        &headers,
        &bytes,
        parsed.as_ref(),
    );
    if let Some(resp) = bedrock.await {
        return resp;
    }
    route(&shared, &parts.method, parts.uri.path(), parsed, &bytes).await
}

async fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: Option<Value>,
    raw: &Bytes,
) -> Response {
    match (method, path) {
        (&Method::POST, "/v1/messages") => match body {
            Some(body) => messages(shared, &body).await,
            None => api_error(StatusCode::BAD_REQUEST, "body is not JSON"),
        },
        (&Method::POST, "/v1/messages/count_tokens") => {
            json_response(StatusCode::OK, json!({"input_tokens": 10}))
        }
        _ => json_response(
            StatusCode::OK,
            json!({"ok": true, "mock": "mock-model", "received_bytes": raw.len()}),
        ),
    }
}

/// Answers a Messages request with the scripted turn as an SSE stream,
/// or with the failure its prompt asks for.
async fn messages(shared: &Shared, body: &Value) -> Response {
    let plan = match script::plan(body) {
        Ok(plan) => plan,
        Err(BadRequest(message)) => return api_error(StatusCode::BAD_REQUEST, &message),
    };
    let prompt = script::scripted_prompt(body).unwrap_or_default();
    let fault = faults::parse(&prompt).filter(|f| shared.faults.strike(&prompt, f));
    if let Some(answer) = fault.as_ref().and_then(faults::error_answer) {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut resp = json_response(status, answer.body);
        for (name, value) in answer.headers {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, value);
            }
        }
        return resp;
    }
    let mut delay = plan.delay;
    if let Some(f) = fault.as_ref().filter(|f| f.kind == Kind::Stall) {
        delay += f.stall;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let ending = match fault.map(|f| f.kind) {
        Some(Kind::MidStream) => Ending::ErrorEvent,
        Some(Kind::Reset) => Ending::Cut,
        _ => Ending::Complete,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-mock");
    let events = sse::render_events(&plan, model, input_tokens(body), &shared.ids);
    let pace = stream::parse_pace(&prompt).unwrap_or(shared.pace);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", shared.ids.next("req"))
        .body(stream::body(events, pace, ending, shared.sent_us.clone()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A plausible token count: roughly four bytes of request per token.
fn input_tokens(body: &Value) -> u64 {
    (body.to_string().len() / 4) as u64 + 1
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Errors in the API's own shape so the CLI reports them sensibly.
fn api_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
    )
}

fn too_large() -> Response {
    json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"type": "error", "error": {"type": "request_too_large",
            "message": "Request exceeds the maximum allowed number of bytes."}}),
    )
}

#[cfg(test)]
mod tests {
    //! Drives a real listening mock over plain TCP, so routing, recording
    //! and the SSE wire format are checked end to end.

    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::MockModel;

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    /// Minimal HTTP/1.1 client: one request per connection, read to EOF.
    async fn send(mock: &MockModel, method: &str, path: &str, body: &str) -> Reply {
        let addr = mock.url().trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             X-Api-Key: placeholder\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        Reply {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    /// (event name, data) pairs of an SSE body.
    fn events(body: &str) -> Vec<(String, Value)> {
        body.split("\n\n")
            .filter(|chunk| !chunk.trim().is_empty())
            .map(|chunk| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in chunk.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).expect("data is JSON");
                    }
                }
                (name, data)
            })
            .collect()
    }

    fn conversation(extra: Vec<Value>) -> String {
        let mut messages = vec![
            json!({"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nbe nice\n</system-reminder>\n"},
                {"type": "text", "text": "please:\n!write out/a.txt one\\ntwo\n!bash echo hi\n!text all good"}
            ]}),
            json!({"role": "system", "content": "# Environment\n - Primary working directory: /work\n"}),
        ];
        messages.extend(extra);
        json!({
            "model": "claude-test-1",
            "stream": true,
            "tools": [{"name": "Write"}, {"name": "Bash"}],
            "messages": messages
        })
        .to_string()
    }

    fn tool_turn(id: &str) -> Vec<Value> {
        vec![
            json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "X", "input": {}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "ok"}]}),
        ]
    }

    /// Event names with each run of deltas folded into one `..._delta*`.
    fn collapsed_names(events: &[(String, Value)]) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in events {
            let name = if name == "content_block_delta" {
                "content_block_delta*"
            } else {
                name
            };
            if names.last().map(String::as_str) != Some("content_block_delta*")
                || name != "content_block_delta*"
            {
                names.push(name.to_string());
            }
        }
        names
    }

    /// Concatenated deltas of block `index`.
    fn block_payload(events: &[(String, Value)], index: u64) -> String {
        events
            .iter()
            .filter(|(name, data)| name == "content_block_delta" && data["index"] == index)
            .map(|(_, data)| {
                let delta = &data["delta"];
                delta["text"]
                    .as_str()
                    .or(delta["partial_json"].as_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[tokio::test]
    async fn first_turn_streams_text_then_write_tool_use() {
        let mock = MockModel::start("127.0.0.1:0").await.unwrap();
        let reply = send(
            &mock,
            "POST",
            "/v1/messages?beta=true",
            &conversation(vec![]),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(reply
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"));
        let events = events(&reply.body);
        assert_eq!(
            collapsed_names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta*",
                "content_block_stop",
                "content_block_start",
                "content_block_delta*",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );

        let message = &events[0].1["message"];
        assert_eq!(message["model"], "claude-test-1");
        assert!(message["id"].as_str().unwrap().starts_with("msg_01"));
        let tool = events
            .iter()
            .find(|(n, d)| n == "content_block_start" && d["index"] == 1)
            .unwrap();
        assert_eq!(tool.1["content_block"]["name"], "Write");
        assert!(tool.1["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_01"));
        let input: Value = serde_json::from_str(&block_payload(&events, 1)).unwrap();
        assert_eq!(
            input,
            json!({"file_path": "/work/out/a.txt", "content": "one\ntwo"})
        );
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn later_turns_follow_the_count_of_tool_results() {
        let mock = MockModel::start("127.0.0.1:0").await.unwrap();
        let second = send(
            &mock,
            "POST",
            "/v1/messages",
            &conversation(tool_turn("toolu_a")),
        )
        .await;
        let second = events(&second.body);
        let input: Value = serde_json::from_str(&block_payload(&second, 1)).unwrap();
        assert_eq!(
            input,
            json!({"command": "echo hi", "description": "run command"})
        );

        let mut both = tool_turn("toolu_a");
        both.extend(tool_turn("toolu_b"));
        let last = events(
            &send(&mock, "POST", "/v1/messages", &conversation(both))
                .await
                .body,
        );
        assert_eq!(block_payload(&last, 0), "all good");
        assert_eq!(last[last.len() - 2].1["delta"]["stop_reason"], "end_turn");
        assert!(!last
            .iter()
            .any(|(_, d)| d["content_block"]["type"] == "tool_use"));
    }

    #[tokio::test]
    async fn sleep_directive_delays_the_answer() {
        let mock = MockModel::start("127.0.0.1:0").await.unwrap();
        let body = json!({
            "model": "m", "tools": [{"name": "Bash"}],
            "messages": [{"role": "user", "content": "!sleep 300\n!text late"}]
        });
        let started = Instant::now();
        let reply = send(&mock, "POST", "/v1/messages", &body.to_string()).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(block_payload(&events(&reply.body), 0), "late");
    }

    #[tokio::test]
    async fn side_endpoints_and_recording() {
        let mock = MockModel::start("127.0.0.1:0").await.unwrap();
        let bad = send(&mock, "POST", "/v1/messages?beta=true", "not json").await;
        assert_eq!(bad.status, 400);
        assert!(bad.body.contains("invalid_request_error"));
        let count = send(&mock, "POST", "/v1/messages/count_tokens", "{}").await;
        assert_eq!(
            serde_json::from_str::<Value>(&count.body).unwrap(),
            json!({"input_tokens": 10})
        );
        assert_eq!(send(&mock, "HEAD", "/", "").await.status, 200);
        assert_eq!(send(&mock, "GET", "/api/hello", "").await.status, 200);

        let listed = send(&mock, "GET", super::REQUESTS_PATH, "").await;
        let listed: Vec<crate::RecordedRequest> = serde_json::from_str(&listed.body).unwrap();
        let recorded = mock.requests();
        assert_eq!(listed.len(), 4, "the listing itself is not recorded");
        assert_eq!(recorded.len(), 4);
        assert_eq!(recorded[0].path, "/v1/messages?beta=true");
        assert_eq!(recorded[0].body, Value::Null);
        assert_eq!(recorded[0].header("X-API-KEY"), Some("placeholder"));
        assert_eq!(recorded[1].body, json!({}));
        assert_eq!(recorded[2].method, "HEAD");
    }
}
