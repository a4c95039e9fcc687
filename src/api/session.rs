//! `GET /v1/conversations/{id}/session`: an Agent SDK session over a
//! WebSocket. The options (`ClaudeAgentOptions` names, JSON in the
//! `options` query parameter) are checked before the upgrade, so a refused
//! option, a busy conversation or a tenant at its run limit get an HTTP
//! error. After it, each text message from the client is one stream-json
//! line for the CLI's stdin, and each message to the client one line the
//! CLI printed; `{"type":"end_input"}` closes the CLI's stdin. The session ends when the client closes (the CLI finishes
//! its turn, the files are synced) or the CLI exits; the daemon then
//! closes with `1000`, or `1011` and the error's code and message.

use super::error::ApiError;
use super::{AppState, Tenant};
use crate::agent_client::SessionLines;
use crate::execute::ConversationKey;
use crate::ids::is_valid_id;
use crate::runs::LiveRun;
use agent_protocol::SessionOptions;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest message either way; a CLI line longer than `agent.max_line_bytes`
/// never gets this far.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// The client's message that closes the CLI's stdin (the SDK transport's
/// `end_input()`), leaving the session open for the CLI's output.
const END_INPUT: &str = r#"{"type":"end_input"}"#;
/// Longest close reason (the WebSocket limit is 123 bytes).
const MAX_CLOSE_REASON: usize = 120;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionQuery {
    #[serde(default)]
    options: Option<String>,
    /// Names of the tenant's egress rules the session keeps, separated by
    /// commas (rule names have none); empty keeps none. Absent: all.
    #[serde(default)]
    egress_rules: Option<String>,
}

pub(super) async fn get_session(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    Query(query): Query<SessionQuery>,
    tenant: Tenant,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !is_valid_id(&conversation_id) {
        return Err(ApiError::BadRequest(
            "conversation id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$".to_owned(),
        ));
    }
    let options: SessionOptions = match &query.options {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ApiError::BadRequest(format!("invalid options: {e}")))?,
        None => SessionOptions::default(),
    };
    options.validate().map_err(ApiError::BadRequest)?;
    let egress_rules: Option<Vec<String>> = query.egress_rules.as_deref().map(|list| {
        list.split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    });
    if let Some(names) = &egress_rules {
        super::check_egress_rules(&state, &tenant.id, names)?;
    }
    let (in_tx, inbound) = mpsc::channel(16);
    let (outbound, out_rx) = mpsc::channel(64);
    let key = ConversationKey {
        tenant_id: tenant.id,
        conversation_id,
    };
    let live = state
        .conversations
        .open_session(
            key,
            options,
            SessionLines { inbound, outbound },
            tenant.max_concurrent_runs,
            egress_rules,
        )
        .await
        .map_err(ApiError::from)?;
    Ok(ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| pump(socket, in_tx, out_rx, live)))
}

/// Carries lines both ways until the session ends. The session's run
/// holds `in_tx`'s far end: dropping `in_tx` (the client left) ends it.
async fn pump(
    mut socket: WebSocket,
    in_tx: mpsc::Sender<Bytes>,
    mut out_rx: mpsc::Receiver<serde_json::Value>,
    live: Arc<LiveRun>,
) {
    let mut in_tx = Some(in_tx);
    loop {
        tokio::select! {
            msg = socket.recv(), if in_tx.is_some() => match msg {
                Some(Ok(Message::Text(text))) if text.as_str().trim() == END_INPUT => {
                    // The SDK's end_input(): the CLI's stdin closes, its
                    // output still comes.
                    in_tx = None;
                }
                Some(Ok(Message::Text(text))) => {
                    let sent = match &in_tx {
                        Some(tx) => tx.send(Bytes::from(text.as_str().trim_end().to_owned())).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        in_tx = None;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let _ = socket
                        .send(close(1003, "send stream-json lines as text messages"))
                        .await;
                    return;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client is gone: the CLI's stdin closes (with
                    // `in_tx`), its turn ends and is recorded; nobody reads
                    // the rest.
                    tracing::info!(message = "Session client left.", run = live.run);
                    return;
                }
                Some(Ok(_)) => {}
            },
            line = out_rx.recv() => match line {
                Some(line) => {
                    if socket.send(Message::Text(line.to_string().into())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    // The CLI has exited; the run's last event says how it ended.
    let frame = match ending(&live).await {
        Some((code, message)) => close(1011, &format!("{code}: {message}")),
        None => close(1000, "session ended"),
    };
    let _ = socket.send(frame).await;
}

/// The run's ending error (code, message), once the run is over.
async fn ending(live: &Arc<LiveRun>) -> Option<(String, String)> {
    let events: Vec<_> = live.subscribe(0).collect().await;
    let last = events.last()?;
    if last.event != "error" {
        return None;
    }
    let data: serde_json::Value = serde_json::from_str(last.data.get()).ok()?;
    Some((
        data["code"].as_str().unwrap_or("internal").to_owned(),
        data["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn close(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_owned();
    if reason.len() > MAX_CLOSE_REASON {
        let mut cut = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
