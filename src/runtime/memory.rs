//! An in-memory [`ContainerRuntime`] for unit tests: containers with names,
//! labels and a running or exited state, failures injected per call, and a
//! small agent served on each started container's `agent.sock`.
//!
//! The agent speaks the real protocol (`GET /health`, `POST /execute` with
//! NDJSON) over a real Unix socket, so the orchestrator and the executor run
//! unchanged against it; what it answers to `/execute` is a [`Script`].

use super::{
    ContainerRuntime, ContainerSpec, ContainerStats, EngineInfo, ManagedContainer, RuntimeError,
    LABEL_INSTANCE, LABEL_MANAGED,
};
use agent_protocol::{
    AgentEvent, Confinement, Enforcement, ExecuteRequest, Health, PathLayer, AGENT_SOCKET,
};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// A runtime call a failure can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Create,
    IsRunning,
    Remove,
    List,
    Ping,
    Update,
}

/// One thing the fake agent does while answering `/execute`.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Event(AgentEvent),
    /// Bytes sent as they are, e.g. a line past `[agent]`'s bounds.
    Raw(Vec<u8>),
    Pause(Duration),
    /// The container exits mid-stream, as if its process were killed.
    Crash,
}

/// The fake agent's answer to one `/execute`.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Stream(Vec<Step>),
    Refuse(StatusCode, String),
}

pub(crate) type Script = Arc<dyn Fn(&ExecuteRequest) -> Reply + Send + Sync>;

/// What a healthy run of the CLI looks like: started, a session, some text
/// and a `result`.
pub(crate) fn ok_run(session_id: &str) -> Vec<Step> {
    vec![
        Step::Event(AgentEvent::Started { prestarted: false }),
        Step::Event(AgentEvent::Session {
            session_id: session_id.to_owned(),
        }),
        Step::Event(AgentEvent::TextDelta {
            text: "done".to_owned(),
        }),
        Step::Event(result(session_id)),
    ]
}

pub(crate) fn result(session_id: &str) -> AgentEvent {
    AgentEvent::Result {
        session_id: session_id.to_owned(),
        is_error: false,
        subtype: "success".to_owned(),
        num_turns: 1,
        duration_ms: 1,
        total_cost_usd: 0.0,
        usage: serde_json::json!({}),
        result: Some("done".to_owned()),
        interrupted: false,
    }
}

struct Container {
    id: String,
    labels: HashMap<String, String>,
    running: bool,
    cpu_shares: i64,
    /// Started on a weight of its own: like Docker's runtime, a weight
    /// can be written to it directly once.
    weight_file: bool,
    /// The agent's accept loop; aborting it ends its connections too.
    agent: Option<AbortHandle>,
}

#[derive(Default)]
struct Engine {
    containers: BTreeMap<String, Container>,
    failures: HashMap<Op, VecDeque<RuntimeError>>,
    silent_starts: usize,
    created: usize,
    next_id: u64,
    /// Starts in `create_and_start` now, and the most at once so far.
    starting: usize,
    most_starting: usize,
    /// CPU weight changes through the engine (`set_cpu_shares`).
    cpu_updates: usize,
}

impl Engine {
    fn fault(&mut self, op: Op) -> Result<(), RuntimeError> {
        match self.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn find(&mut self, id: &str) -> Option<(&String, &mut Container)> {
        self.containers
            .iter_mut()
            .find(|(name, c)| name.as_str() == id || c.id == id)
    }

    fn exit(&mut self, id: &str) -> bool {
        let Some((_, c)) = self.find(id) else {
            return false;
        };
        c.running = false;
        if let Some(agent) = c.agent.take() {
            agent.abort();
        }
        true
    }
}

#[derive(Clone)]
pub(crate) struct MemoryRuntime {
    engine: Arc<Mutex<Engine>>,
    script: Arc<Mutex<Script>>,
    /// When set, each start waits for a permit of it (see [`Self::gate_starts`]).
    gate: Arc<Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self {
            engine: Arc::default(),
            script: Arc::new(Mutex::new(Arc::new(|_: &ExecuteRequest| {
                Reply::Stream(ok_run("session-1"))
            }))),
            gate: Arc::default(),
        }
    }
}

impl MemoryRuntime {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on each start waits until the test adds a permit to the
    /// returned semaphore (one permit lets one start through).
    pub(crate) fn gate_starts(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate.clone());
        gate
    }

    /// Starts in flight now, and the most that were at once.
    pub(crate) fn starting(&self) -> (usize, usize) {
        let engine = self.engine();
        (engine.starting, engine.most_starting)
    }

    /// The next call of `op` fails with `error` (queued: one per call).
    pub(crate) fn fail_next(&self, op: Op, error: RuntimeError) {
        self.engine()
            .failures
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// The next container starts but its agent never answers.
    pub(crate) fn silent_next_start(&self) {
        self.engine().silent_starts += 1;
    }

    /// What every agent answers to `/execute` from now on.
    pub(crate) fn set_script(
        &self,
        script: impl Fn(&ExecuteRequest) -> Reply + Send + Sync + 'static,
    ) {
        *self.script.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(script);
    }

    /// The container exits (its main process died); false when absent.
    pub(crate) fn kill(&self, name: &str) -> bool {
        self.engine().exit(name)
    }

    /// A container the engine has without the daemon having asked for it
    /// (an orphan, another instance's), with no agent.
    pub(crate) fn insert(&self, name: &str, labels: &[(&str, &str)], running: bool) {
        let mut engine = self.engine();
        engine.next_id += 1;
        let id = format!("mem-{}", engine.next_id);
        engine.containers.insert(
            name.to_owned(),
            Container {
                id,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                running,
                cpu_shares: super::DEFAULT_CPU_SHARES,
                weight_file: false,
                agent: None,
            },
        );
    }

    /// Names of the containers the engine has, running or not.
    pub(crate) fn names(&self) -> Vec<String> {
        self.engine().containers.keys().cloned().collect()
    }

    pub(crate) fn running(&self, name: &str) -> bool {
        self.engine()
            .containers
            .get(name)
            .is_some_and(|c| c.running)
    }

    pub(crate) fn labels(&self, name: &str) -> HashMap<String, String> {
        self.engine()
            .containers
            .get(name)
            .map(|c| c.labels.clone())
            .unwrap_or_default()
    }

    /// How many CPU weight changes went through the engine.
    pub(crate) fn cpu_updates(&self) -> usize {
        self.engine().cpu_updates
    }

    /// The container's CPU weight (`cpu_shares`), if the engine has it.
    pub(crate) fn cpu_shares(&self, name: &str) -> Option<i64> {
        self.engine().containers.get(name).map(|c| c.cpu_shares)
    }

    /// How many containers were created successfully.
    pub(crate) fn created(&self) -> usize {
        self.engine().created
    }
}

impl MemoryRuntime {
    /// The start itself, once the gate let it through.
    async fn start_now(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let silent = {
            let mut engine = self.engine();
            engine.fault(Op::Create)?;
            if engine.containers.contains_key(&spec.name) {
                return Err(RuntimeError::Engine(
                    format!(
                        "Conflict. The container name \"/{}\" is already in use",
                        spec.name
                    )
                    .into(),
                ));
            }
            let silent = engine.silent_starts > 0;
            engine.silent_starts = engine.silent_starts.saturating_sub(1);
            silent
        };
        let agent = if silent {
            None
        } else {
            let script = self.script.clone();
            let listener = bind_agent(&spec.socket_dir).map_err(|e| {
                RuntimeError::Engine(format!("starting the fake agent: {e}").into())
            })?;
            let agent = tokio::spawn(serve_agent(
                listener,
                script,
                self.engine.clone(),
                spec.name.clone(),
            ));
            Some(agent.abort_handle())
        };
        let mut engine = self.engine();
        engine.next_id += 1;
        engine.created += 1;
        let id = format!("mem-{}", engine.next_id);
        engine.containers.insert(
            spec.name.clone(),
            Container {
                id: id.clone(),
                labels: spec.labels.clone(),
                running: true,
                cpu_shares: spec.cpu_shares.unwrap_or(super::DEFAULT_CPU_SHARES),
                weight_file: spec.cpu_shares.is_some(),
                agent,
            },
        );
        Ok(id)
    }
}

#[async_trait]
impl ContainerRuntime for MemoryRuntime {
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        {
            let mut engine = self.engine();
            engine.starting += 1;
            engine.most_starting = engine.most_starting.max(engine.starting);
        }
        let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let result = self.start_now(spec).await;
        self.engine().starting -= 1;
        result
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        let mut engine = self.engine();
        engine.fault(Op::IsRunning)?;
        Ok(engine.find(id).is_some_and(|(_, c)| c.running))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut engine = self.engine();
        engine.fault(Op::Remove)?;
        engine.exit(id);
        engine
            .containers
            .retain(|name, c| name.as_str() != id && c.id != id);
        Ok(())
    }

    async fn set_cpu_shares(&self, id: &str, shares: i64) -> Result<(), RuntimeError> {
        let mut engine = self.engine();
        engine.fault(Op::Update)?;
        engine.cpu_updates += 1;
        match engine.find(id) {
            Some((_, c)) => {
                c.cpu_shares = shares;
                Ok(())
            }
            None => Err(RuntimeError::Engine(
                format!("no such container: {id}").into(),
            )),
        }
    }

    fn write_cpu_weight(&self, id: &str, shares: i64) -> bool {
        let mut engine = self.engine();
        match engine.find(id) {
            Some((_, c)) if c.weight_file => {
                c.cpu_shares = shares;
                c.weight_file = false;
                true
            }
            _ => false,
        }
    }

    async fn list_managed(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let mut engine = self.engine();
        engine.fault(Op::List)?;
        Ok(engine
            .containers
            .iter()
            .filter(|(_, c)| c.labels.get(LABEL_MANAGED).is_some_and(|v| v == "true"))
            .filter(|(_, c)| {
                instance.is_none_or(|i| c.labels.get(LABEL_INSTANCE).is_some_and(|v| v == i))
            })
            .map(|(name, c)| ManagedContainer {
                name: name.clone(),
                running: c.running,
            })
            .collect())
    }

    async fn stats(&self, id: &str) -> Result<Option<ContainerStats>, RuntimeError> {
        let mut engine = self.engine();
        Ok(engine
            .find(id)
            .filter(|(_, c)| c.running)
            .map(|_| ContainerStats::default()))
    }

    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(EngineInfo {
            version: "memory".to_owned(),
            ..EngineInfo::default()
        })
    }

    async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.engine().fault(Op::Ping)
    }
}

fn bind_agent(socket_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_dir.join(AGENT_SOCKET);
    // A restarted container's agent binds afresh, as the real one does.
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(path)
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve_agent(
    listener: UnixListener,
    script: Arc<Mutex<Script>>,
    engine: Arc<Mutex<Engine>>,
    name: String,
) {
    // Owned here, so aborting this task closes every open connection.
    let mut conns = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let (script, engine, name) = (script.clone(), engine.clone(), name.clone());
        let svc = hyper::service::service_fn(move |req| {
            answer(req, script.clone(), engine.clone(), name.clone())
        });
        conns.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    script: Arc<Mutex<Script>>,
    engine: Arc<Mutex<Engine>>,
    name: String,
) -> Result<Response<Body>, Infallible> {
    let full = |status: StatusCode, body: Vec<u8>| {
        let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
        *resp.status_mut() = status;
        Ok(resp)
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/health") => {
            let health = Health {
                status: "ok".to_owned(),
                confinement: Confinement {
                    layer: PathLayer::Landlock,
                    landlock: Enforcement::FullyEnforced,
                    landlock_abi: Some(4),
                    detail: None,
                },
            };
            full(
                StatusCode::OK,
                serde_json::to_vec(&health).unwrap_or_default(),
            )
        }
        ("POST", "/execute") => {
            let Ok(body) = req.into_body().collect().await else {
                return full(StatusCode::BAD_REQUEST, b"unreadable body".to_vec());
            };
            let Ok(exec) = serde_json::from_slice::<ExecuteRequest>(&body.to_bytes()) else {
                return full(StatusCode::BAD_REQUEST, b"bad request".to_vec());
            };
            let script = script.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match script(&exec) {
                Reply::Refuse(status, message) => full(status, message.into_bytes()),
                Reply::Stream(steps) => {
                    let (tx, rx) = mpsc::channel::<Bytes>(4);
                    tokio::spawn(play(steps, tx, engine, name));
                    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                        let data = rx.recv().await?;
                        Some((Ok::<_, Infallible>(Frame::data(data)), rx))
                    });
                    Ok(Response::new(BodyExt::boxed(StreamBody::new(frames))))
                }
            }
        }
        _ => full(StatusCode::NOT_FOUND, Vec::new()),
    }
}

async fn play(steps: Vec<Step>, tx: mpsc::Sender<Bytes>, engine: Arc<Mutex<Engine>>, name: String) {
    for step in steps {
        let data = match step {
            Step::Event(ev) => ev.to_line().into_bytes(),
            Step::Raw(bytes) => bytes,
            Step::Pause(d) => {
                tokio::time::sleep(d).await;
                continue;
            }
            Step::Crash => {
                engine.lock().unwrap_or_else(|e| e.into_inner()).exit(&name);
                // Held until the aborted connection drops the body, so the
                // stream is cut rather than ended cleanly.
                tx.closed().await;
                return;
            }
        };
        if tx.send(Bytes::from(data)).await.is_err() {
            return;
        }
    }
}
