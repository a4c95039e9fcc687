//! The host's side of an Agent SDK session on the agent's socket
//! (`POST /session`): the client's lines go up the request body, the
//! agent's events come down the answer, within the same bounds as a run's
//! (`[agent]`: line length, events, idle time).

use super::{AgentClient, AgentError};
use crate::config::AgentConfig;
use agent_protocol::{AgentEvent, SessionStart, SESSION_PATH};
use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use hyper::Request;
use std::convert::Infallible;
use tokio::sync::mpsc;

/// Where a session's traffic goes: the client's lines come from `inbound`
/// (its end closes the CLI's stdin), the CLI's lines go to `outbound`.
pub struct SessionLines {
    pub inbound: mpsc::Receiver<Bytes>,
    pub outbound: mpsc::Sender<serde_json::Value>,
}

impl AgentClient {
    /// Runs a session until the agent's answer ends: each CLI line to
    /// `lines.outbound` (dropped once nobody reads them), every other
    /// event to `tx`. A stream that breaks a bound of `limits` yields
    /// [`AgentError::Protocol`]; a session with nothing from the agent for
    /// `agent.idle_timeout_secs` (the client sent nothing either) ends.
    pub async fn session(
        &self,
        start: &SessionStart,
        mut lines: SessionLines,
        tx: &mpsc::Sender<AgentEvent>,
        limits: &AgentConfig,
    ) -> Result<(), AgentError> {
        let mut first =
            serde_json::to_vec(start).map_err(|e| AgentError::Connection(e.to_string()))?;
        first.push(b'\n');
        let (mut up, body) = Channel::<Bytes, Infallible>::new(16);
        let req = Request::post(SESSION_PATH)
            .header("host", "agent")
            .header("content-type", "application/x-ndjson")
            .body(body)
            .map_err(|e| AgentError::Connection(e.to_string()))?;
        let feed = async move {
            if up.send_data(Bytes::from(first)).await.is_err() {
                return;
            }
            while let Some(line) = lines.inbound.recv().await {
                let mut framed = line.to_vec();
                framed.push(b'\n');
                if up.send_data(Bytes::from(framed)).await.is_err() {
                    return;
                }
            }
            // Dropping `up` ends the body: the CLI's stdin closes.
        };
        let outbound = lines.outbound;
        let read = async {
            let mut body = self.open_stream(req).await?;
            let mut reader =
                super::LineReader::new(limits.max_line_bytes, limits.max_events_per_run);
            let idle = limits.idle_timeout();
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        return Err(AgentError::Connection(format!(
                            "the session was idle for {idle:?}"
                        )))
                    }
                    Ok(None) => return Ok(()),
                    Ok(Some(frame)) => frame.map_err(|e| AgentError::Connection(e.to_string()))?,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                for line in reader.push(&data)? {
                    match serde_json::from_slice::<AgentEvent>(&line) {
                        Ok(AgentEvent::Stream { line }) => {
                            // A client that left stops reading; the session
                            // still runs its turn to the end and records it.
                            let _ = outbound.send(line).await;
                        }
                        Ok(AgentEvent::ContainerRecovered { .. }) | Err(_) => {}
                        Ok(ev) => {
                            let _ = tx.send(ev).await;
                        }
                    }
                }
            }
        };
        tokio::pin!(feed);
        tokio::pin!(read);
        tokio::select! {
            r = &mut read => r,
            () = &mut feed => read.await,
        }
    }
}
