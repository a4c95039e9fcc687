//! The orchestrator: gives a conversation a running, hardened container,
//! reusing its own when alive and starting a new one otherwise.
//!
//! **Invariant:** every container it starts has its proxy socket listening
//! before the container runs, and is recorded in the state file only once
//! its agent answers.

use crate::agent_client::AgentClient;
use crate::audit::{AuditEvent, Subject};
use crate::config::Config;
use crate::proxy::{container_env, Gateway, ProxyContext, ProxyRegistry};
use crate::runtime::{
    ContainerRuntime, ContainerSpec, RuntimeError, LABEL_CONVERSATION, LABEL_INSTANCE,
    LABEL_MANAGED, LABEL_TENANT,
};
use crate::state::ConversationRecord;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `HOME` inside the container: inside the workspace, so the CLI's session
/// files travel with it and a conversation can resume in a new container.
pub const CONTAINER_HOME: &str = "/workspace/.agentbox/home";

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("container engine: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("preparing {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proxy socket: {0}")]
    Proxy(std::io::Error),
    #[error("container did not become ready: {0}")]
    NotReady(String),
}

impl OrchestratorError {
    /// Stable code for the SSE `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Runtime(RuntimeError::Unreachable(_)) => "runtime_unavailable",
            Self::Runtime(_) | Self::NotReady(_) => "container_start_failed",
            Self::Prepare { .. } => "workspace_failed",
            Self::Proxy(_) => "proxy_failed",
        }
    }
}

/// A container ready to run the agent for one conversation.
#[derive(Clone, Debug)]
pub struct Assigned {
    /// The container's name, which the state records as its id.
    pub container: String,
    pub socket_dir: PathBuf,
    pub workspace_dir: PathBuf,
    /// True when the container was started for this request.
    pub fresh: bool,
}

pub struct Orchestrator {
    cfg: Config,
    runtime: Arc<dyn ContainerRuntime>,
    gateway: Arc<Gateway>,
    proxies: ProxyRegistry,
}

impl Orchestrator {
    pub fn new(cfg: Config, runtime: Arc<dyn ContainerRuntime>, gateway: Arc<Gateway>) -> Self {
        Self {
            cfg,
            runtime,
            gateway,
            proxies: ProxyRegistry::default(),
        }
    }

    /// The conversation's running container, or a new one; a new one
    /// updates `rec.container_id` and bumps `rec.generation` (the caller
    /// persists both).
    pub async fn acquire(
        &self,
        rec: &mut ConversationRecord,
    ) -> Result<Assigned, OrchestratorError> {
        let workspace_dir = self.workspace_dir(rec);
        if let Some(name) = rec.container_id.clone() {
            if self.runtime.is_running(&name).await? {
                let socket_dir = self.socket_dir(&name);
                // After a daemon restart no proxy serves it yet.
                self.proxies
                    .ensure(self.gateway.clone(), &socket_dir, proxy_ctx(&name, rec))
                    .map_err(OrchestratorError::Proxy)?;
                return Ok(Assigned {
                    container: name,
                    socket_dir,
                    workspace_dir,
                    fresh: false,
                });
            }
            tracing::info!(message = "Conversation container is gone; starting a new one.", container_id = %name);
            self.release(&name).await;
        }
        let assigned = self.start(rec, workspace_dir).await?;
        rec.container_id = Some(assigned.container.clone());
        rec.generation += 1;
        Ok(assigned)
    }

    /// Stops the container's proxy and removes the container.
    pub async fn release(&self, name: &str) {
        self.proxies.stop(name);
        if let Err(error) = self.runtime.remove(name).await {
            tracing::warn!(message = "Container removal failed.", container_id = %name, %error);
        }
        let _ = std::fs::remove_dir_all(self.socket_dir(name));
    }

    async fn start(
        &self,
        rec: &ConversationRecord,
        workspace_dir: PathBuf,
    ) -> Result<Assigned, OrchestratorError> {
        let c = &self.cfg.container;
        let name = format!("agentbox-{}", uuid::Uuid::new_v4().simple());
        // Named by the container name: the id is known only after create,
        // and the mount needs the path before.
        let socket_dir = self.socket_dir(&name);
        prepare_dir(&workspace_dir, c.uid, c.gid)?;
        prepare_dir(&workspace_dir.join(".agentbox/home"), c.uid, c.gid)?;
        prepare_dir(&socket_dir, c.uid, c.gid)?;
        let mut env = container_env(&self.cfg);
        env.push(("HOME".to_owned(), CONTAINER_HOME.to_owned()));
        let spec = ContainerSpec {
            name: name.clone(),
            image: c.image.clone(),
            env,
            labels: HashMap::from([
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_INSTANCE.to_owned(), self.cfg.server.instance.clone()),
                (LABEL_CONVERSATION.to_owned(), rec.conversation_id.clone()),
                (LABEL_TENANT.to_owned(), rec.tenant_id.clone()),
            ]),
            workspace_dir: workspace_dir.clone(),
            socket_dir: socket_dir.clone(),
            user: format!("{}:{}", c.uid, c.gid),
            memory_bytes: (c.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (c.cpus * 1e9) as i64,
            pids_limit: c.pids_limit,
            tmp_size_bytes: c.tmp_size_mb * 1024 * 1024,
        };
        // The proxy listens before the container starts, so the CLI's first
        // request never finds the socket missing.
        self.proxies
            .ensure(self.gateway.clone(), &socket_dir, proxy_ctx(&name, rec))
            .map_err(OrchestratorError::Proxy)?;
        if let Err(e) = self.runtime.create_and_start(&spec).await {
            self.proxies.stop(&name);
            return Err(e.into());
        }
        crate::audit::emit(&AuditEvent::ContainerCreated {
            subject: Subject {
                tenant_id: rec.tenant_id.clone(),
                conversation_id: rec.conversation_id.clone(),
                container_id: name.clone(),
            },
            image: c.image.clone(),
        });
        let timeout = Duration::from_secs(c.start_timeout_secs);
        if let Err(e) = AgentClient::new(&socket_dir).wait_ready(timeout).await {
            self.release(&name).await;
            return Err(OrchestratorError::NotReady(e.to_string()));
        }
        Ok(Assigned {
            container: name,
            socket_dir,
            workspace_dir,
            fresh: true,
        })
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

fn proxy_ctx(container: &str, rec: &ConversationRecord) -> ProxyContext {
    ProxyContext {
        container_id: container.to_owned(),
        tenant_id: rec.tenant_id.clone(),
        conversation_id: rec.conversation_id.clone(),
    }
}

/// Creates `dir` owned by the container user, private to it.
fn prepare_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), OrchestratorError> {
    let wrap = |source| OrchestratorError::Prepare {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(wrap)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(wrap)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(wrap)
}
