//! The execute service: finds or starts the conversation's container, runs
//! the agent on a prompt and relays its events.
//!
//! **Invariant:** API handlers never touch containers; they call
//! [`Executor::start_run`] and read the events it sends.

use crate::agent_client::AgentClient;
use crate::config::Config;
use crate::proxy::{Gateway, ProxyContext, ProxyRegistry};
use crate::runtime::{
    ContainerRuntime, ContainerSpec, LABEL_CONVERSATION, LABEL_INSTANCE, LABEL_MANAGED,
    LABEL_TENANT,
};
use crate::state::{now_ms, ConversationRecord, StateError, Store};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedMutexGuard};
use workspace_agent::protocol::{AgentEvent, ExecuteRequest, GATEWAY_ADDR};

/// The key the CLI sends to the gateway; the proxy replaces it.
pub const PLACEHOLDER_API_KEY: &str = "agentbox-placeholder-key";
/// `HOME` inside the container: inside the workspace, so the CLI's session
/// files travel with it and a conversation can resume in a new container.
pub const CONTAINER_HOME: &str = "/workspace/.agentbox/home";

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("a run is already in progress for this conversation")]
    Busy,
    #[error(transparent)]
    State(#[from] StateError),
}

/// Identifies one conversation of one tenant.
#[derive(Clone, Debug)]
pub struct ConversationKey {
    pub tenant_id: String,
    pub conversation_id: String,
}

pub struct Executor {
    cfg: Config,
    runtime: Arc<dyn ContainerRuntime>,
    store: Store,
    gateway: Arc<Gateway>,
    proxies: ProxyRegistry,
    /// One run per conversation at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Executor {
    pub fn new(
        cfg: Config,
        runtime: Arc<dyn ContainerRuntime>,
        store: Store,
        gateway: Arc<Gateway>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            runtime,
            store,
            gateway,
            proxies: ProxyRegistry::default(),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Takes the conversation's run lock and starts the run in the
    /// background; its events arrive on the returned channel, ending with
    /// `result` or `error`.
    pub fn start_run(
        self: &Arc<Self>,
        key: ConversationKey,
        exec: ExecuteRequest,
    ) -> Result<mpsc::Receiver<AgentEvent>, ExecuteError> {
        let guard = self.lock(&key)?;
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(ev) = this.run(&key, exec, &tx).await {
                tracing::warn!(message = "Run failed.", tenant_id = %key.tenant_id,
                    conversation_id = %key.conversation_id, error = ?ev);
                let _ = tx.send(ev).await;
            }
        });
        Ok(rx)
    }

    fn lock(&self, key: &ConversationKey) -> Result<OwnedMutexGuard<()>, ExecuteError> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{}/{}", key.tenant_id, key.conversation_id))
            .or_default()
            .clone();
        lock.try_lock_owned().map_err(|_| ExecuteError::Busy)
    }

    async fn run(
        &self,
        key: &ConversationKey,
        mut exec: ExecuteRequest,
        tx: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), AgentEvent> {
        let state_err = |e: StateError| AgentEvent::error("state_error", e.to_string());
        let mut rec = self
            .store
            .conversation(&key.tenant_id, &key.conversation_id)
            .await
            .map_err(state_err)?
            .unwrap_or_else(|| ConversationRecord::new(&key.tenant_id, &key.conversation_id));
        let container_id = self.ensure_container(&mut rec).await?;
        rec.last_activity_ms = now_ms();
        self.store.put_conversation(&rec).await.map_err(state_err)?;

        exec.resume_session_id = rec.session_id.clone();
        let (agent_tx, mut agent_rx) = mpsc::channel(256);
        let client = AgentClient::new(&self.socket_dir(&container_id));
        let relay = async {
            while let Some(ev) = agent_rx.recv().await {
                if let AgentEvent::Session { session_id } | AgentEvent::Result { session_id, .. } =
                    &ev
                {
                    if !session_id.is_empty() && rec.session_id.as_deref() != Some(session_id) {
                        rec.session_id = Some(session_id.clone());
                    }
                }
                let _ = tx.send(ev).await;
            }
        };
        let (outcome, ()) = tokio::join!(
            async {
                let r = client.execute(&exec, &agent_tx).await;
                drop(agent_tx);
                r
            },
            relay
        );
        rec.last_activity_ms = now_ms();
        self.store.put_conversation(&rec).await.map_err(state_err)?;
        outcome.map_err(|e| AgentEvent::error("agent_failed", e.to_string()))
    }

    /// The conversation's running container, or a new one.
    async fn ensure_container(&self, rec: &mut ConversationRecord) -> Result<String, AgentEvent> {
        let ctx = |id: &str| ProxyContext {
            container_id: id.to_owned(),
            tenant_id: rec.tenant_id.clone(),
            conversation_id: rec.conversation_id.clone(),
        };
        if let Some(id) = rec.container_id.clone() {
            match self.runtime.is_running(&id).await {
                Ok(true) => {
                    // After a daemon restart no proxy serves it yet.
                    self.proxies
                        .ensure(self.gateway.clone(), &self.socket_dir(&id), ctx(&id))
                        .map_err(|e| AgentEvent::error("proxy_failed", e.to_string()))?;
                    return Ok(id);
                }
                Ok(false) => {
                    tracing::info!(message = "Conversation container is gone; starting a new one.", container_id = %id);
                    self.proxies.stop(&id);
                    let _ = self.runtime.remove(&id).await;
                }
                Err(e) => return Err(AgentEvent::error("runtime_unavailable", e.to_string())),
            }
        }
        let id = self.start_container(rec).await?;
        rec.container_id = Some(id.clone());
        Ok(id)
    }

    async fn start_container(&self, rec: &ConversationRecord) -> Result<String, AgentEvent> {
        let c = &self.cfg.container;
        let name = format!("agentbox-{}", uuid::Uuid::new_v4().simple());
        let workspace = self.workspace_dir(rec);
        // The socket directory is named after the container name because
        // the id is known only after create, and the mount needs the path.
        let socket_dir = c.socket_root.join(&name);
        let io_err = |e: std::io::Error| AgentEvent::error("workspace_failed", e.to_string());
        prepare_dir(&workspace, c.uid, c.gid).map_err(io_err)?;
        prepare_dir(&workspace.join(".agentbox/home"), c.uid, c.gid).map_err(io_err)?;
        prepare_dir(&socket_dir, c.uid, c.gid).map_err(io_err)?;
        let spec = ContainerSpec {
            name: name.clone(),
            image: c.image.clone(),
            env: self.container_env(),
            labels: HashMap::from([
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_INSTANCE.to_owned(), self.cfg.server.instance.clone()),
                (LABEL_CONVERSATION.to_owned(), rec.conversation_id.clone()),
                (LABEL_TENANT.to_owned(), rec.tenant_id.clone()),
            ]),
            workspace_dir: workspace,
            socket_dir: socket_dir.clone(),
            user: format!("{}:{}", c.uid, c.gid),
            memory_bytes: (c.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (c.cpus * 1e9) as i64,
            pids_limit: c.pids_limit,
            tmp_size_bytes: c.tmp_size_mb * 1024 * 1024,
        };
        let ctx = |id: &str| ProxyContext {
            container_id: id.to_owned(),
            tenant_id: rec.tenant_id.clone(),
            conversation_id: rec.conversation_id.clone(),
        };
        // The proxy listens before the container starts, so the CLI's first
        // request never finds the socket missing.
        self.proxies
            .ensure(self.gateway.clone(), &socket_dir, ctx(&name))
            .map_err(|e| AgentEvent::error("proxy_failed", e.to_string()))?;
        let id = match self.runtime.create_and_start(&spec).await {
            Ok(id) => id,
            Err(e) => {
                self.proxies.stop(&name);
                return Err(AgentEvent::error("container_start_failed", e.to_string()));
            }
        };
        tracing::info!(message = "Container started.", container_id = %id, container_name = %name,
            tenant_id = %rec.tenant_id, conversation_id = %rec.conversation_id);
        let timeout = Duration::from_secs(c.start_timeout_secs);
        if let Err(e) = AgentClient::new(&socket_dir).wait_ready(timeout).await {
            self.proxies.stop(&name);
            let _ = self.runtime.remove(&id).await;
            return Err(AgentEvent::error("container_start_failed", e.to_string()));
        }
        Ok(name)
    }

    fn container_env(&self) -> Vec<(String, String)> {
        let gateway = format!("http://{GATEWAY_ADDR}");
        [
            ("ANTHROPIC_BASE_URL", gateway.as_str()),
            ("ANTHROPIC_API_KEY", PLACEHOLDER_API_KEY),
            ("HOME", CONTAINER_HOME),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "CLAUDE_CODE_MAX_RETRIES".to_owned(),
            self.cfg.model.max_retries.to_string(),
        )])
        .collect()
    }

    /// `{workspace_root}/{tenant}/{conversation}`; both ids are validated
    /// path components.
    pub fn workspace_dir(&self, rec: &ConversationRecord) -> PathBuf {
        self.cfg
            .container
            .workspace_root
            .join(&rec.tenant_id)
            .join(&rec.conversation_id)
    }

    fn socket_dir(&self, container_name: &str) -> PathBuf {
        self.cfg.container.socket_root.join(container_name)
    }
}

/// Creates `dir` owned by the container user, private to it.
fn prepare_dir(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
