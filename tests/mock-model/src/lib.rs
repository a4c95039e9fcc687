//! Scripted mock of the Anthropic Messages API (streaming SSE), for the
//! daemon's tests and the demo. Owns the public handle ([`MockModel`]) and
//! the recorded-request type; the script lives in [`script`], the event
//! stream in [`sse`], HTTP in [`server`].
//!
//! The prompt scripts the model: `!write <path> <content>`, `!bash <cmd>`,
//! `!tool <name> <json>`, `!text <words>` and `!sleep <ms>` lines (see
//! [`script`]); `!pace <ms>` paces the stream ([`stream`]) and
//! `!fault <kind>` fails the request the way the real API fails
//! ([`faults`]). [`MockModel::start_tls`] serves HTTPS with a test CA made
//! at start-up ([`tls`]).

pub mod bedrock;
pub mod eventstream;
pub mod faults;
pub mod script;
pub mod server;
pub mod sigv4;
pub mod sse;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub use server::REQUESTS_PATH;

/// A running mock; the server stops when this is dropped.
pub struct MockModel {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    task: JoinHandle<()>,
    /// The test CA's PEM when serving HTTPS.
    ca_pem: Option<String>,
    /// The same PEM in a file, for clients configured by path; removed on drop.
    ca_file: Option<PathBuf>,
}

/// How a mock serves.
#[derive(Default)]
pub struct Options {
    /// HTTPS with a fresh test CA instead of plain HTTP.
    pub tls: bool,
    /// Delay between streamed events (a prompt's `!pace` overrides it).
    pub pace: Duration,
    /// Also serve Bedrock's endpoints for requests signed with this key.
    pub bedrock_key: Option<sigv4::AwsKey>,
}

impl MockModel {
    /// Binds to `addr` (e.g. "127.0.0.1:0") and serves plain HTTP in a
    /// background tokio task.
    pub async fn start(addr: &str) -> anyhow::Result<MockModel> {
        Self::start_opts(addr, Options::default()).await
    }

    /// Like [`MockModel::start`] over HTTPS, as the real upstream is:
    /// clients trust [`MockModel::ca_pem`].
    pub async fn start_tls(addr: &str) -> anyhow::Result<MockModel> {
        let tls = Options {
            tls: true,
            ..Options::default()
        };
        Self::start_opts(addr, tls).await
    }

    /// Like [`MockModel::start`], also serving Bedrock's endpoints for
    /// requests signed (SigV4) with `key`.
    pub async fn start_bedrock(addr: &str, key: sigv4::AwsKey) -> anyhow::Result<MockModel> {
        let bedrock = Options {
            bedrock_key: Some(key),
            ..Options::default()
        };
        Self::start_opts(addr, bedrock).await
    }

    pub async fn start_opts(addr: &str, opts: Options) -> anyhow::Result<MockModel> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding mock model to {addr}"))?;
        let addr = listener.local_addr().context("reading bound address")?;
        let shared = Arc::new(server::Shared {
            bedrock_key: opts.bedrock_key,
            pace: opts.pace,
            ..Default::default()
        });
        let app = server::router(shared.clone());
        let (task, ca_pem) = if opts.tls {
            let ca = tls::TestCa::generate()?;
            let pem = ca.ca_pem.clone();
            let handshakes = shared.handshakes.clone();
            let task = tokio::spawn(async move {
                let _ = tls::serve(listener, app, &ca, handshakes).await;
            });
            (task, Some(pem))
        } else {
            let task = tokio::spawn(async move {
                // Serving only ends on an accept error; nothing to recover then.
                let _ = axum::serve(listener, app).await;
            });
            (task, None)
        };
        let ca_file = match &ca_pem {
            Some(pem) => {
                let path = std::env::temp_dir().join(format!(
                    "mock-model-ca-{}-{}.pem",
                    std::process::id(),
                    addr.port()
                ));
                std::fs::write(&path, pem)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        Ok(MockModel {
            addr,
            shared,
            task,
            ca_pem,
            ca_file,
        })
    }

    /// Base URL, e.g. "https://127.0.0.1:PORT" (use as ANTHROPIC_BASE_URL).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The test CA (PEM) a client must trust to reach an HTTPS mock.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// TLS handshakes completed so far: one per client connection.
    pub fn tls_handshakes(&self) -> u64 {
        self.shared
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A file holding [`MockModel::ca_pem`], while the mock lives.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Why each refused Bedrock request was refused (bad or no signature).
    pub fn bedrock_rejections(&self) -> Vec<String> {
        self.shared
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When each streamed answer event was handed to the server, in Unix
    /// microseconds, in order.
    pub fn sent_event_times_us(&self) -> Vec<u64> {
        self.shared
            .sent_us
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
        if let Some(path) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
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
