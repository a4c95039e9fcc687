//! Creating one container: record it, prepare its directories and proxy,
//! start it with the hardened spec, wait until its agent answers.

use super::{proxy_ctx, Orchestrator, OrchestratorError, CONTAINER_HOME};
use crate::agent_client::AgentClient;
use crate::audit::AuditEvent;
use crate::config::IsolationTier;
use crate::proxy::container_env;
use crate::runtime::{
    ContainerSpec, LABEL_CONVERSATION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_TENANT, LABEL_TIER,
};
use crate::state::{Binding, ContainerRecord, ContainerState};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

impl Orchestrator {
    /// Creates and starts pool container `name` once a start slot is free
    /// (see [`Orchestrator::create_in_slot`]); its agent pre-starts a CLI
    /// when `prestart` (and `container.prestart_cli`) says so.
    pub(super) async fn create(
        &self,
        name: &str,
        tier: IsolationTier,
        prestart: bool,
    ) -> Result<(), OrchestratorError> {
        // Never closed; a closed semaphore would only mean no limit.
        let _slot = self.starts.acquire().await.ok();
        self.create_in_slot(name, None, tier, prestart).await
    }

    /// Creates and starts `name`; the caller holds a start slot. A pool
    /// container (`binding` None) ends `Ready`; a cold one stays `Warming`
    /// for the caller to claim. On any failure the container is destroyed
    /// again.
    pub(super) async fn create_in_slot(
        &self,
        name: &str,
        binding: Option<&Binding>,
        tier: IsolationTier,
        prestart: bool,
    ) -> Result<(), OrchestratorError> {
        let cfg = self.cfg();
        let c = &cfg.container;
        let prestart = prestart && c.prestart_cli;
        let cpu_shares = refill_cpu_shares(&cfg.pool, binding, tier);
        let record = ContainerRecord::warming(name, &c.image, binding.is_some())
            .with_tier(tier)
            .with_prestarted(prestart)
            .with_low_cpu_weight(cpu_shares.is_some());
        self.store.insert_container(&record).await?;
        let result = self
            .create_inner(name, binding, tier, prestart, cpu_shares)
            .await;
        if let Err(e) = &result {
            tracing::warn!(message = "Container creation failed.", container_id = %name, error = %e);
            self.destroy(name, crate::codes::DestroyReason::CreateFailed)
                .await;
        }
        result
    }

    async fn create_inner(
        &self,
        name: &str,
        binding: Option<&Binding>,
        tier: IsolationTier,
        prestart: bool,
        cpu_shares: Option<i64>,
    ) -> Result<(), OrchestratorError> {
        let cfg = self.cfg();
        let c = &cfg.container;
        let workspace_dir = self.workspace_dir(name);
        let socket_dir = self.socket_dir(name);
        // Under userns-remap the container's uid is a different host uid.
        let (uid, gid) = self.isolation.host_owner(c.uid, c.gid);
        if let Some(quota) = &self.isolation.quota {
            quota.ensure(&workspace_dir, uid, gid).await?;
        }
        prepare_dir(&workspace_dir, uid, gid)?;
        prepare_dir(&workspace_dir.join(".agentbox/home"), uid, gid)?;
        prepare_dir(&socket_dir, uid, gid)?;
        let mut env = container_env(&cfg);
        env.push(("HOME".to_owned(), CONTAINER_HOME.to_owned()));
        let prestart = if prestart { "1" } else { "0" };
        env.push(("AGENTBOX_PRESTART_CLI".to_owned(), prestart.to_owned()));
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.server.instance.clone()),
            (LABEL_TIER.to_owned(), tier.as_str().to_owned()),
        ]);
        // Labels cannot change after create: only a cold start knows its
        // conversation this early; pool containers' bindings live in state.
        if let Some(b) = binding {
            labels.insert(LABEL_CONVERSATION.to_owned(), b.conversation_id.clone());
            labels.insert(LABEL_TENANT.to_owned(), b.tenant_id.clone());
        }
        let spec = ContainerSpec {
            name: name.to_owned(),
            image: c.image.clone(),
            env,
            labels,
            workspace_dir,
            socket_dir: socket_dir.clone(),
            user: format!("{}:{}", c.uid, c.gid),
            memory_bytes: (c.memory_mb * 1024 * 1024) as i64,
            nano_cpus: (c.cpus * 1e9) as i64,
            cpu_shares,
            pids_limit: c.pids_limit,
            tmp_size_bytes: c.tmp_size_mb * 1024 * 1024,
            confinement: self.isolation.confinement.clone(),
            gvisor_runtime: (tier == IsolationTier::Gvisor).then(|| c.gvisor_runtime.clone()),
        };
        // The proxy listens before the container starts, so the CLI's first
        // request never finds the socket missing.
        self.proxies
            .ensure(self.gateway.clone(), &socket_dir, proxy_ctx(name, binding))
            .map_err(OrchestratorError::Proxy)?;
        let started = std::time::Instant::now();
        self.runtime.create_and_start(&spec).await?;
        crate::faults::reach(match binding {
            Some(_) => crate::faults::Phase::ContainerStart,
            None => crate::faults::Phase::PoolStart,
        })
        .await;
        let timeout = Duration::from_secs(c.start_timeout_secs);
        let agent = AgentClient::new(&socket_dir);
        agent
            .wait_ready(timeout)
            .await
            .map_err(|e| OrchestratorError::NotReady(e.to_string()))?;
        crate::metrics::container_started(started.elapsed());
        // The agent has bound its socket: from now on the directory is the
        // host's, so nothing in the container can remove or replace the
        // two sockets (under runc Landlock forbids it too; gVisor has no
        // Landlock, and an `rm -rf /` there cut the container off).
        seal_dir(&socket_dir, gid)?;
        agent.log_confinement(name).await;
        if binding.is_none() {
            self.store.transition(name, ContainerState::Ready).await?;
            self.ready.notify_waiters();
        }
        crate::audit::emit(&AuditEvent::ContainerCreated {
            subject: super::subject(name, binding),
            image: c.image.clone(),
            tier,
        });
        Ok(())
    }
}

/// The CPU weight a new container starts with: `pool.refill_cpu_shares`
/// for a `runc` pool container (nobody waits on it yet, so its start
/// yields to the conversations running), the engine's default otherwise:
/// a cold start serves a waiting run, and runsc cannot raise a gVisor
/// container's weight at its claim.
fn refill_cpu_shares(
    pool: &crate::config::PoolConfig,
    binding: Option<&Binding>,
    tier: IsolationTier,
) -> Option<i64> {
    let shares = pool.refill_cpu_shares;
    (binding.is_none() && tier == IsolationTier::Runc && shares > 0).then_some(shares as i64)
}

/// Hands `dir` to root: the container user keeps, through its group, the
/// right to list it and connect to the sockets inside, not to change it;
/// other host users still cannot reach the proxy socket.
fn seal_dir(dir: &Path, gid: u32) -> Result<(), OrchestratorError> {
    let wrap = |source| OrchestratorError::Prepare {
        path: dir.to_owned(),
        source,
    };
    std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(wrap)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(wrap)
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
