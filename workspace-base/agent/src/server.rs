//! The agent's HTTP API on its Unix socket, served to the host daemon only.
//!
//! Routes: `GET /health` (200 once the agent is up, with a JSON
//! [`Health`] body saying how it is confined), `POST /execute`
//! (NDJSON [`AgentEvent`] stream in the response body) and
//! `POST /interrupt` (stops the run's turn: 202, or 409 with no run).
//!
//! One run at a time: the host allows one run per conversation, so a new
//! `/execute` while a run is going means the host that asked for the old
//! one is gone (it crashed or restarted). The old run is stopped, CLI and
//! all, and the new one starts.

use crate::cli::{CliConfig, CliProcess};
use agent_protocol::{
    AgentEvent, AgentOptions, Confinement, ExecuteRequest, Health, SessionStart, INTERRUPT_PATH,
    SESSION_PATH,
};
use bytes::Bytes;
use http_body_util::{channel::Channel, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;

/// Largest request body the agent reads; the host enforces its own limit.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

type Body = http_body_util::Either<Full<Bytes>, Channel<Bytes, Infallible>>;

pub struct Agent {
    cli: CliConfig,
    confinement: Confinement,
    /// The run in progress, if any, and what interrupts its turn.
    current: Mutex<Option<(JoinHandle<()>, Arc<Notify>)>>,
    /// A CLI waiting on stdin: pre-started for a first turn with default
    /// options, or kept after a turn for the session's next one.
    idle: Mutex<Option<CliProcess>>,
}

/// Files the CLI reads once at start-up. A pre-started CLI predates the
/// workspace a claim restores, so when any of these exist it is not used.
const STARTUP_FILES: &[&str] = &[
    "CLAUDE.md",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".claude/CLAUDE.md",
    ".mcp.json",
];

impl Agent {
    /// With `prestart`, a CLI with default options is started now, so the
    /// first prompt does not wait for the CLI's start-up.
    pub fn new(cli: CliConfig, confinement: Confinement, prestart: bool) -> Arc<Self> {
        let idle = if prestart {
            match CliProcess::spawn(&cli, &AgentOptions::default(), None) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("workspace-agent: pre-starting the CLI failed: {e}");
                    None
                }
            }
        } else {
            None
        };
        Arc::new(Self {
            cli,
            confinement,
            current: Mutex::new(None),
            idle: Mutex::new(idle),
        })
    }

    /// The idle CLI when it fits the request, else a new one; the flag
    /// says whether the idle one was used.
    async fn process_for(&self, req: &ExecuteRequest) -> (Result<CliProcess, String>, bool) {
        let idle = self.idle.lock().await.take();
        if let Some(mut p) = idle {
            let workspace_changed = p.is_fresh()
                && STARTUP_FILES.iter().any(|f| {
                    self.cli.workdir.join(f).exists()
                        || self.cli.home.join(".claude").join(f).exists()
                });
            if p.fits(req) && !workspace_changed {
                return (Ok(p), true);
            }
        }
        let fresh = CliProcess::spawn(&self.cli, &req.options, req.resume_session_id.as_deref());
        (fresh, false)
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(agent.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => health(&agent),
        (&Method::POST, "/execute") => execute(agent, req).await,
        (&Method::POST, INTERRUPT_PATH) => interrupt(&agent).await,
        (&Method::POST, SESSION_PATH) => session(agent, req).await,
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    })
}

async fn execute(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let exec: ExecuteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut current = agent.current.lock().await;
    if let Some((old, _)) = current.take().filter(|(h, _)| !h.is_finished()) {
        eprintln!("workspace-agent: a new run replaces one whose host went away");
        // Dropping the run's future kills its CLI (kill_on_drop).
        old.abort();
        let _ = old.await;
    }
    let (mut body_tx, body) = Channel::new(16);
    let (tx, mut rx) = mpsc::channel::<AgentEvent>(64);
    let runner = agent.clone();
    let stop = Arc::new(Notify::new());
    let interrupt = stop.clone();
    let handle = tokio::spawn(async move {
        let turn = async move {
            let (process, reused) = runner.process_for(&exec).await;
            let _ = tx.send(AgentEvent::Started { prestarted: reused }).await;
            let outcome = match process {
                Ok(mut p) => match p.turn(&exec.prompt, &tx, &interrupt).await {
                    Ok(true) => {
                        runner.idle.lock().await.replace(p);
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(message) = outcome {
                let _ = tx.send(AgentEvent::error("agent_failed", message)).await;
            }
        };
        tokio::join!(turn, async {
            while let Some(ev) = rx.recv().await {
                if body_tx.send_data(Bytes::from(ev.to_line())).await.is_err() {
                    break;
                }
            }
        });
    });
    *current = Some((handle, stop));
    drop(current);
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::Right(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// An Agent SDK session: the body carries a [`SessionStart`] line, then
/// the client's lines for the CLI; the answer streams the CLI's lines and
/// their events. Like `/execute`, it replaces a run whose host is gone.
async fn session(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut splitter = crate::session::LineSplitter::new();
    let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    let start: SessionStart = loop {
        if let Some(first) = pending.pop_front() {
            match serde_json::from_slice::<SessionStart>(&first) {
                Ok(start) => break start,
                Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("session start: {e}")),
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    match splitter.push(&data) {
                        Ok(lines) => pending.extend(lines),
                        Err(e) => return plain(StatusCode::PAYLOAD_TOO_LARGE, &e),
                    }
                }
            }
            _ => return plain(StatusCode::BAD_REQUEST, "the session start line is missing"),
        }
    };
    let mut current = agent.current.lock().await;
    if let Some((old, _)) = current.take().filter(|(h, _)| !h.is_finished()) {
        eprintln!("workspace-agent: a session replaces a run whose host went away");
        old.abort();
        let _ = old.await;
    }
    let (mut body_tx, answer) = Channel::new(16);
    let (tx, mut rx) = mpsc::channel::<AgentEvent>(64);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let cli = agent.cli.clone();
    let handle = tokio::spawn(async move {
        let feed = async move {
            for line in pending {
                if in_tx.send(line).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let Ok(lines) = splitter.push(&data) else {
                    return;
                };
                for line in lines {
                    if in_tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        };
        let run = async move {
            if let Err(message) = crate::session::run(&cli, start, in_rx, &tx).await {
                let _ = tx.send(AgentEvent::error("agent_failed", message)).await;
            }
        };
        let send = async {
            while let Some(ev) = rx.recv().await {
                if body_tx.send_data(Bytes::from(ev.to_line())).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(feed, run, send);
    });
    // A session's interrupts travel in its own stream, as control requests.
    *current = Some((handle, Arc::new(Notify::new())));
    drop(current);
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::Right(answer))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// Stops the turn of the run in progress. A notification that arrives
/// before the turn reads it is kept, so an interrupt right after
/// `/execute` is not lost.
async fn interrupt(agent: &Agent) -> Response<Body> {
    match agent.current.lock().await.as_ref() {
        Some((run, stop)) if !run.is_finished() => {
            stop.notify_one();
            plain(StatusCode::ACCEPTED, "interrupt sent")
        }
        _ => plain(StatusCode::CONFLICT, "no run in progress"),
    }
}

fn health(agent: &Agent) -> Response<Body> {
    let body = Health {
        status: "ok".to_owned(),
        confinement: agent.confinement.clone(),
    };
    match serde_json::to_vec(&body) {
        Ok(json) => {
            let mut resp = Response::new(Body::Left(Full::new(Bytes::from(json))));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::Left(Full::new(Bytes::from(text.to_owned()))));
    *resp.status_mut() = status;
    resp
}
