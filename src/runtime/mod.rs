//! Container runtime: the narrow interface the rest of the daemon uses to
//! create, check and remove workspace containers.
//!
//! **Invariant:** only [`docker`] talks to bollard; everything else sees
//! [`ContainerRuntime`], so unit tests swap the engine for `memory`'s.

mod cgroup;
pub(crate) mod docker;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod spec;

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Label every agentbox container carries; operators and tests filter on it.
pub(crate) const LABEL_MANAGED: &str = "agentbox.managed";
pub(crate) const LABEL_INSTANCE: &str = "agentbox.instance";
pub(crate) const LABEL_CONVERSATION: &str = "agentbox.conversation";
pub(crate) const LABEL_TENANT: &str = "agentbox.tenant";
pub(crate) const LABEL_TIER: &str = "agentbox.tier";

/// What the engine says about itself (`docker info`).
#[derive(Clone, Debug, Default)]
pub struct EngineFacts {
    pub security_options: Vec<String>,
    pub root_dir: String,
    /// The runtimes the engine knows (`daemon.json` `runtimes`), by name.
    pub runtimes: BTreeMap<String, EngineRuntime>,
}

/// One OCI runtime the engine can start containers with.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineRuntime {
    /// The binary, as registered (a bare name is looked up on `PATH`).
    pub path: String,
    /// The arguments the engine passes it (`runtimeArgs`).
    pub args: Vec<String>,
}

impl EngineRuntime {
    /// The value of `--flag=v` or `--flag v` (one or two dashes) among the
    /// runtime's arguments.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let name = flag.trim_start_matches('-');
        let mut args = self.args.iter();
        while let Some(a) = args.next() {
            let bare = a.trim_start_matches('-');
            if bare == name {
                return args.next().map(String::as_str);
            }
            if let Some(v) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
        None
    }

    /// Whether a boolean flag is on (`--flag`, `--flag=true`).
    pub fn flag(&self, flag: &str) -> bool {
        let name = flag.trim_start_matches('-');
        self.args.iter().any(|a| {
            let bare = a.trim_start_matches('-');
            bare == name || bare.strip_prefix(name) == Some("=true")
        })
    }

    /// gVisor's platform: `--platform`, else runsc's default, ptrace.
    pub fn gvisor_platform(&self) -> &str {
        self.arg("platform").unwrap_or("ptrace")
    }

    /// Whether gVisor may both create and connect to host Unix sockets,
    /// which the agent's two sockets in the bind-mounted directory need.
    pub fn gvisor_host_uds(&self) -> bool {
        self.arg("host-uds") == Some("all") || self.flag("fsgofer-host-uds")
    }
}

#[cfg(test)]
mod tests {
    use super::EngineRuntime;

    #[test]
    fn runtime_args_are_read_in_both_spellings() {
        let rt = |args: &[&str]| EngineRuntime {
            path: "/usr/bin/runsc".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        let r = rt(&["--host-uds=all", "--oci-seccomp", "-platform", "kvm"]);
        assert!(r.gvisor_host_uds());
        assert!(r.flag("oci-seccomp"));
        assert_eq!(r.gvisor_platform(), "kvm");
        let r = rt(&["--host-uds=open"]);
        assert!(!r.gvisor_host_uds());
        assert!(!r.flag("oci-seccomp"));
        assert_eq!(r.gvisor_platform(), "ptrace");
    }
}

/// The engine client's own error, kept as the source; boxed so that only
/// `runtime::docker` names bollard.
pub(crate) type EngineError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("docker engine unreachable: {0}")]
    Unreachable(#[source] EngineError),
    #[error("container image {0} is missing; build it with `just image`")]
    ImageMissing(String),
    #[error("docker: {0}")]
    Engine(#[source] EngineError),
}

/// Everything needed to start one workspace container; turned into the
/// engine's hardened create request by [`spec::hardened_create_body`].
#[derive(Clone, Debug)]
pub(crate) struct ContainerSpec {
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
    /// Its CPU weight against the other containers under contention
    /// (`cpu_shares`); `None` keeps the engine's default
    /// ([`DEFAULT_CPU_SHARES`]).
    pub cpu_shares: Option<i64>,
    pub pids_limit: i64,
    pub tmp_size_bytes: u64,
    /// Seccomp and path confinement; its default is the embedded seccomp
    /// profile with Landlock.
    pub confinement: spec::Confinement,
    /// The engine runtime for the gVisor tier (`container.gvisor_runtime`);
    /// `None` runs the engine's default runtime (runc).
    pub gvisor_runtime: Option<String>,
}

/// A container the engine has with our labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManagedContainer {
    pub name: String,
    pub running: bool,
}

/// One reading of a container's resource use, as the engine reports it.
/// CPU figures are cumulative: a rate needs two readings.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ContainerStats {
    /// Memory in use without the reclaimable page cache (what `docker stats` shows).
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Nanoseconds of CPU the container used since it started.
    pub cpu_total_ns: u64,
    /// Nanoseconds of CPU the whole host used, on the same clock.
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    pub pids: u64,
}

/// What the engine says about itself, for `doctor` and the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EngineInfo {
    pub version: String,
    pub api_version: String,
    /// Docker's `SecurityOptions`, e.g. `name=seccomp,profile=default`,
    /// `name=apparmor`, `name=userns`.
    pub security_options: Vec<String>,
    pub storage_driver: String,
    /// `1` or `2`, as Docker reports it; empty when it does not say.
    pub cgroup_version: String,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    /// The runtimes the engine knows, by name.
    pub runtimes: BTreeMap<String, EngineRuntime>,
}

/// The engine's CPU weight of a container that sets none (Docker's
/// `--cpu-shares` default).
pub(crate) const DEFAULT_CPU_SHARES: i64 = 1024;

#[async_trait]
pub(crate) trait ContainerRuntime: Send + Sync {
    /// Creates and starts the container; returns its id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Whether the container exists and is running.
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError>;
    /// Removes the container, killing it if needed; absent is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Changes a running container's CPU weight (`cpu_shares`) through
    /// the engine.
    async fn set_cpu_shares(&self, id: &str, shares: i64) -> Result<(), RuntimeError>;
    /// Writes a CPU weight straight into the container's cgroup, where the
    /// runtime knows it (a container started with its own weight); true
    /// when written. Immediate, unlike the engine's update; the engine's
    /// record is not changed by it.
    fn write_cpu_weight(&self, _id: &str, _shares: i64) -> bool {
        false
    }
    /// All running or stopped containers labelled as this instance's
    /// (every instance's with `None`).
    async fn list_managed(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError>;
    /// One resource reading of a running container; `None` when absent.
    async fn stats(&self, id: &str) -> Result<Option<ContainerStats>, RuntimeError>;
    /// The engine's version and security options.
    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError>;
    /// Whether the engine has this image locally.
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Whether the engine answers at all (`/_ping`): the cheapest call,
    /// for the engine watch.
    async fn ping(&self) -> Result<(), RuntimeError>;
}
