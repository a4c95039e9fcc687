//! [`ContainerRuntime`] on a Docker engine through bollard.

use super::cgroup::CpuWeightFile;
use super::spec::hardened_create_body;
use super::EngineFacts;
use super::{
    ContainerRuntime, ContainerSpec, ContainerStats, EngineInfo, ManagedContainer, RuntimeError,
    LABEL_INSTANCE, LABEL_MANAGED,
};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct DockerRuntime {
    docker: Docker,
    /// The cgroup weight files of containers started on a weight of their
    /// own, by name, until raised (see [`super::cgroup`]).
    weight_files: Mutex<HashMap<String, CpuWeightFile>>,
}

impl DockerRuntime {
    /// Connects through `DOCKER_HOST` or the default socket and settles on
    /// an API version the engine speaks (Debian 12 ships engine 20.10).
    pub(crate) async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unreachable(e.into()))?
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.into()))?;
        Ok(Self {
            docker,
            weight_files: Mutex::default(),
        })
    }

    fn weight_files(&self) -> std::sync::MutexGuard<'_, HashMap<String, CpuWeightFile>> {
        // A panic elsewhere cannot leave the map half-written.
        self.weight_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds the cgroup weight file of a container just started on a
    /// weight of its own. Not found only means its raise goes through the
    /// engine.
    async fn remember_weight_file(&self, name: &str, id: &str) {
        let pid = match self.docker.inspect_container(id, None).await {
            Ok(c) => c.state.and_then(|s| s.pid).unwrap_or(0),
            Err(_) => 0,
        };
        match CpuWeightFile::of_container(id, pid) {
            Ok(file) => {
                self.weight_files().insert(name.to_owned(), file);
            }
            Err(error) => {
                tracing::debug!(message = "No cgroup weight file; weights go through the engine.",
                    container_id = %name, pid, %error);
            }
        }
    }

    /// The engine's security options and data root (`docker info`), from
    /// which the daemon decides AppArmor and userns-remap handling.
    pub(crate) async fn engine_facts(&self) -> Result<EngineFacts, RuntimeError> {
        let info = self.docker.info().await.map_err(engine)?;
        Ok(EngineFacts {
            security_options: info.security_options.unwrap_or_default(),
            root_dir: info.docker_root_dir.unwrap_or_default(),
            runtimes: runtimes(info.runtimes),
        })
    }
}

fn runtimes(
    from: Option<HashMap<String, bollard::models::Runtime>>,
) -> std::collections::BTreeMap<String, super::EngineRuntime> {
    from.unwrap_or_default()
        .into_iter()
        .map(|(name, r)| {
            let rt = super::EngineRuntime {
                path: r.path.unwrap_or_default(),
                args: r.runtime_args.unwrap_or_default(),
            };
            (name, rt)
        })
        .collect()
}

/// The engine's own refusals are `Engine`; an engine that cannot be
/// reached at all (socket gone, connection refused or cut, no answer) is
/// `Unreachable`, so a run says `runtime_unavailable`, not that its
/// container failed.
fn engine(e: BollardError) -> RuntimeError {
    match e {
        BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_) => RuntimeError::Unreachable(e.into()),
        e => RuntimeError::Engine(e.into()),
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(opts), hardened_create_body(spec))
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    RuntimeError::ImageMissing(spec.image.clone())
                } else {
                    engine(e)
                }
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // Do not leave a created-but-dead container behind.
            let _ = self.remove(&created.id).await;
            return Err(engine(e));
        }
        if spec.cpu_shares.is_some() {
            self.remember_weight_file(&spec.name, &created.id).await;
        }
        Ok(created.id)
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(engine(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.weight_files().remove(id);
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }

    async fn set_cpu_shares(&self, id: &str, shares: i64) -> Result<(), RuntimeError> {
        let body = bollard::models::ContainerUpdateBody {
            cpu_shares: Some(shares),
            ..Default::default()
        };
        self.docker
            .update_container(id, body)
            .await
            .map(|_| ())
            .map_err(engine)
    }

    fn write_cpu_weight(&self, id: &str, shares: i64) -> bool {
        let Some(file) = self.weight_files().remove(id) else {
            return false;
        };
        match file.write(shares) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(message = "Writing a container's CPU weight to its cgroup failed.",
                    container_id = %id, path = %file.path().display(), %error);
                false
            }
        }
    }

    async fn list_managed(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(instance) = instance {
            labels.push(format!("{LABEL_INSTANCE}={instance}"));
        }
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(engine)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                // The engine reports names with a leading slash.
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
                Some(ManagedContainer { name, running })
            })
            .collect())
    }

    async fn stats(&self, id: &str) -> Result<Option<ContainerStats>, RuntimeError> {
        // One-shot: one reading now instead of the engine waiting a second
        // for a second one; the caller keeps the previous reading for rates.
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(id, Some(opts));
        let s = match stream.next().await {
            Some(Ok(s)) => s,
            Some(Err(e)) if is_not_found(&e) => return Ok(None),
            Some(Err(e)) => return Err(engine(e)),
            None => return Ok(None),
        };
        let cpu = s.cpu_stats.unwrap_or_default();
        let mem = s.memory_stats.unwrap_or_default();
        // cgroup v1 reports the page cache as `total_inactive_file`, v2 as
        // `inactive_file`; `docker stats` subtracts it, and so do we.
        let cache = mem
            .stats
            .as_ref()
            .and_then(|m| {
                m.get("total_inactive_file")
                    .or_else(|| m.get("inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Ok(Some(ContainerStats {
            memory_bytes: mem.usage.unwrap_or(0).saturating_sub(cache),
            memory_limit_bytes: mem.limit.unwrap_or(0),
            cpu_total_ns: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
            system_cpu_ns: cpu.system_cpu_usage.unwrap_or(0),
            online_cpus: cpu.online_cpus.unwrap_or(0),
            pids: s.pids_stats.and_then(|p| p.current).unwrap_or(0),
        }))
    }

    async fn engine_info(&self) -> Result<EngineInfo, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.into()))?;
        let version = self.docker.version().await.map_err(engine)?;
        Ok(EngineInfo {
            version: info.server_version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            security_options: info.security_options.unwrap_or_default(),
            storage_driver: info.driver.unwrap_or_default(),
            cgroup_version: info
                .cgroup_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            cgroup_driver: info
                .cgroup_driver
                .map(|v| v.to_string())
                .unwrap_or_default(),
            runtimes: runtimes(info.runtimes),
        })
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Unreachable(e.into()))
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(engine(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_out_of_reach_is_told_from_its_refusals() {
        let gone = engine(BollardError::SocketNotFoundError("/run/docker.sock".into()));
        assert!(matches!(gone, RuntimeError::Unreachable(_)), "{gone:?}");
        let cut = engine(BollardError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert!(matches!(cut, RuntimeError::Unreachable(_)), "{cut:?}");
        let refused = engine(BollardError::DockerResponseServerError {
            status_code: 500,
            message: "no space left on device".into(),
        });
        assert!(matches!(refused, RuntimeError::Engine(_)), "{refused:?}");
    }
}
