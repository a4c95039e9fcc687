//! Container runtime: the narrow interface the rest of the daemon uses to
//! create, check and remove workspace containers.
//!
//! **Invariant:** only [`docker`] talks to bollard; everything else sees
//! [`ContainerRuntime`], so tests can swap the engine for a fake.

pub mod docker;
pub mod spec;

use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;

/// Label every agentbox container carries; operators and tests filter on it.
pub const LABEL_MANAGED: &str = "agentbox.managed";
pub const LABEL_INSTANCE: &str = "agentbox.instance";
pub const LABEL_CONVERSATION: &str = "agentbox.conversation";
pub const LABEL_TENANT: &str = "agentbox.tenant";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("docker engine unreachable: {0}")]
    Unreachable(String),
    #[error("container image {0} is missing; build it with `just image`")]
    ImageMissing(String),
    #[error("docker: {0}")]
    Engine(String),
}

/// Everything needed to start one workspace container; turned into the
/// engine's hardened create request by [`spec::hardened_create_body`].
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    /// Host directory mounted read-write at `/workspace`.
    pub workspace_dir: PathBuf,
    /// Host directory mounted at the agent's socket directory.
    pub socket_dir: PathBuf,
    pub user: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub tmp_size_bytes: u64,
    /// Seccomp and path confinement; its default is the embedded seccomp
    /// profile with Landlock.
    pub confinement: spec::Confinement,
}

/// A container the engine has with our labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedContainer {
    pub name: String,
    pub running: bool,
}

#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts the container; returns its id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Whether the container exists and is running.
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError>;
    /// Removes the container, killing it if needed; absent is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// All running or stopped containers labelled as this instance's
    /// (every instance's with `None`).
    async fn list_managed(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError>;
}
