//! Scripted mock of the Anthropic Messages API (streaming SSE), for the
//! daemon's tests and the demo. Owns the public handle ([`MockModel`]) and
//! the recorded-request type; the script lives in [`script`], the event
//! stream in [`sse`], HTTP in [`server`].
//!
//! The prompt scripts the model: `!write <path> <content>`, `!bash <cmd>`,
//! `!tool <name> <json>`, `!text <words>` and `!sleep <ms>` lines (see
//! [`script`]).

pub mod bedrock;
pub mod eventstream;
pub mod script;
pub mod server;
pub mod sigv4;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub use server::REQUESTS_PATH;

/// A running mock; the server stops when this is dropped.
pub struct MockModel {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    task: JoinHandle<()>,
}

impl MockModel {
    /// Binds to `addr` (e.g. "127.0.0.1:0") and serves in a background tokio task.
    pub async fn start(addr: &str) -> anyhow::Result<MockModel> {
        Self::start_with(addr, None).await
    }

    /// Like [`MockModel::start`], also serving Bedrock's endpoints for
    /// requests signed (SigV4) with `key`.
    pub async fn start_bedrock(addr: &str, key: sigv4::AwsKey) -> anyhow::Result<MockModel> {
        Self::start_with(addr, Some(key)).await
    }

    async fn start_with(
        addr: &str,
        bedrock_key: Option<sigv4::AwsKey>,
    ) -> anyhow::Result<MockModel> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding mock model to {addr}"))?;
        let addr = listener.local_addr().context("reading bound address")?;
        let shared = Arc::new(server::Shared {
            bedrock_key,
            ..Default::default()
        });
        let app = server::router(shared.clone());
        let task = tokio::spawn(async move {
            // Serving only ends on an accept error; nothing to recover then.
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockModel { addr, shared, task })
    }

    /// Base URL, e.g. "http://127.0.0.1:PORT" (use as ANTHROPIC_BASE_URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Why each refused Bedrock request was refused (bad or no signature).
    pub fn bedrock_rejections(&self) -> Vec<String> {
        self.shared
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything received so far, in order (except `GET /_mock/requests`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.snapshot()
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path including the query string, e.g. "/v1/messages?beta=true".
    pub path: String,
    /// Header names are lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body, or Null when the body is empty or not JSON.
    pub body: serde_json::Value,
    /// When it arrived, in Unix milliseconds (benchmarks time against it).
    #[serde(default)]
    pub at_ms: u64,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
