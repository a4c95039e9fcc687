//! The session endpoint from the test's side: a WebSocket that carries
//! the CLI's stream-json lines, one text message each (docs/sdk.md).

use super::daemon::Daemon;
use serde_json::{json, Value};
use std::time::Duration;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session on `conversation` as `token` with `options`: the
/// socket, or the HTTP status and body of the refusal.
pub async fn open_session(
    d: &Daemon,
    token: &str,
    conversation: &str,
    options: Value,
) -> Result<Ws, (u16, String)> {
    open_session_narrowed(d, token, conversation, options, None).await
}

/// [`open_session`], keeping only the named egress rules of the tenant
/// (the `egress_rules` query parameter) when `egress_rules` is given.
pub async fn open_session_narrowed(
    d: &Daemon,
    token: &str,
    conversation: &str,
    options: Value,
    egress_rules: Option<&[&str]>,
) -> Result<Ws, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = d
        .url(&format!("/v1/conversations/{conversation}/session"))
        .replacen("http://", "ws://", 1);
    let mut url = format!("{url}?options={}", urlencode(&options.to_string()));
    if let Some(names) = egress_rules {
        url.push_str(&format!("&egress_rules={}", urlencode(&names.join(","))));
    }
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("connect: {e}"),
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn send_line(ws: &mut Ws, line: Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        line.to_string(),
    ))
    .await
    .unwrap();
}

pub fn user_line(prompt: &str) -> Value {
    json!({"type": "user", "session_id": "", "message": {"role": "user", "content": prompt}, "parent_tool_use_id": null})
}

/// The CLI's lines until one of `type` `until`, within 120 s.
pub async fn lines_until(ws: &mut Ws, until: &str) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(msg) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg.unwrap() {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let done = v["type"] == until;
                lines.push(v);
                if done {
                    return;
                }
            }
        }
        panic!("the session ended before a {until} line: {lines:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {until} line within 120 s"));
    lines
}

/// Runs an SDK client program (Python or node) to its end, within 180 s:
/// the JSON of the last `RESULT ` line it printed. `what` names it in
/// failures.
pub async fn program_result(mut cmd: tokio::process::Command, what: &str) -> Value {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        child.wait_with_output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the {what} program ends within 180 s"))
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).unwrap()
}
