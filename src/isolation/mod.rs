//! Isolation layers that depend on the host: which seccomp profile, which
//! path confinement (AppArmor where the host has it and the profile is
//! loaded, Landlock otherwise), userns-remap id mapping, the workspace
//! disk quota, and whether the engine can run the gVisor tier. Detected
//! once at start-up; [`IsolationReport`] says what is
//! active and what the host lacks, for the log, `doctor` and the status page.
//!
//! **Invariant:** detection only reads the host; it never loads profiles or
//! changes engine settings.

pub mod apparmor;
pub mod quota;
pub mod seccomp;
pub mod userns;

use crate::config::Config;
use crate::runtime::spec::Confinement;
use crate::runtime::{EngineFacts, EngineRuntime};
use agent_protocol::PathLayer;
use quota::{Quota, QuotaError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use userns::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("cannot read seccomp profile {path}: {source}")]
    SeccompRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid seccomp profile ({origin}): {message}")]
    SeccompInvalid { origin: String, message: String },
    #[error("the engine runs with userns-remap but its id mapping is unknown (docker root dir {0:?}, no dockremap in /etc/subuid)")]
    UnknownRemap(String),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("the gVisor tier is configured but the engine has no runtime {0:?}; install runsc and register it in /etc/docker/daemon.json (see docs/isolation.md), or set every tier to runc")]
    GvisorMissing(String),
    #[error("the engine's runtime {0:?} lacks --host-uds=all, without which the agent cannot serve or reach its sockets; add it to runtimeArgs in /etc/docker/daemon.json (see docs/isolation.md)")]
    GvisorHostUds(String),
}

/// Which layers protect every container on this host, and what is missing.
#[derive(Clone, Debug, Serialize)]
pub struct IsolationReport {
    /// `embedded` or the operator's profile path.
    pub seccomp: String,
    pub path_layer: PathLayer,
    pub apparmor_engine_support: bool,
    pub apparmor_profile_loaded: bool,
    pub userns_remap: Option<IdMap>,
    /// 0 when the workspace quota is off.
    pub disk_quota_mb: u64,
    /// The gVisor tier's runtime as the engine knows it; `None` when it
    /// does not.
    pub gvisor: Option<GvisorRuntime>,
    /// What this host loses against the full set of layers.
    pub gaps: Vec<String>,
}

impl IsolationReport {
    pub fn log(&self) {
        let remap = self
            .userns_remap
            .map_or_else(|| "off".to_owned(), |m| format!("uid+{}", m.uid_base));
        let gvisor = self.gvisor.as_ref().map_or_else(
            || "not registered".to_owned(),
            |g| format!("{} ({}, platform {})", g.name, g.path, g.platform),
        );
        tracing::info!(
            message = "Isolation layers.",
            seccomp = %self.seccomp,
            path_layer = self.path_layer.as_str(),
            apparmor_engine_support = self.apparmor_engine_support,
            apparmor_profile_loaded = self.apparmor_profile_loaded,
            userns_remap = %remap,
            disk_quota_mb = self.disk_quota_mb,
            gvisor = %gvisor,
        );
        for gap in &self.gaps {
            tracing::warn!(message = "Isolation layer missing.", gap = %gap);
        }
    }
}

/// The engine's gVisor runtime, as the status page and the log show it.
#[derive(Clone, Debug, Serialize)]
pub struct GvisorRuntime {
    /// Its name in the engine (`container.gvisor_runtime`).
    pub name: String,
    pub path: String,
    /// `ptrace` or `kvm`.
    pub platform: String,
    /// `--oci-seccomp`: our seccomp profile also applies inside gVisor.
    pub oci_seccomp: bool,
    /// Whether any tier setting or tenant uses it.
    pub in_use: bool,
}

/// The host-dependent isolation settings every container start uses.
#[derive(Clone, Debug)]
pub struct Isolation {
    pub confinement: Confinement,
    pub id_map: Option<IdMap>,
    pub quota: Option<Quota>,
    pub report: IsolationReport,
}

impl Default for Isolation {
    /// Embedded seccomp and Landlock, no remap, no quota: what a runtime
    /// without detection (unit tests, fakes) gets.
    fn default() -> Self {
        Self {
            // Uncompacted is fine for Docker; the embedded text is what
            // `seccomp` checks in its tests.
            confinement: Confinement {
                seccomp_profile: Arc::from(seccomp::EMBEDDED_PROFILE),
                apparmor_profile: None,
            },
            id_map: None,
            quota: None,
            report: IsolationReport {
                seccomp: "embedded".to_owned(),
                path_layer: PathLayer::Landlock,
                apparmor_engine_support: false,
                apparmor_profile_loaded: false,
                userns_remap: None,
                disk_quota_mb: 0,
                gvisor: None,
                gaps: Vec::new(),
            },
        }
    }
}

/// Where the host shows its loaded AppArmor profiles and subordinate ids;
/// tests point these at fixtures.
#[derive(Clone, Debug)]
pub struct HostFiles {
    pub apparmor_profiles: PathBuf,
    pub subuid: PathBuf,
    pub subgid: PathBuf,
}

impl Default for HostFiles {
    fn default() -> Self {
        Self {
            apparmor_profiles: apparmor::PROFILES_FILE.into(),
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
        }
    }
}

impl Isolation {
    /// Decides every host-dependent layer from the config, the engine's
    /// facts and the host's files. Fails when a layer the config asks for
    /// cannot work here (unreadable profile, no loop devices, unknown
    /// remap), so the daemon refuses to start instead of running weaker.
    pub fn detect(
        config: &Config,
        engine: &EngineFacts,
        host: &HostFiles,
    ) -> Result<Self, IsolationError> {
        let cfg = &config.container;
        let mut gaps = Vec::new();
        let gvisor = gvisor_runtime(config, engine.runtimes.get(&cfg.gvisor_runtime), &mut gaps)?;
        let profile = seccomp::load(cfg.seccomp_profile.as_deref())?;
        let seccomp_origin = cfg
            .seccomp_profile
            .as_ref()
            .map_or_else(|| "embedded".to_owned(), |p| p.display().to_string());

        let engine_aa = apparmor::engine_supports(&engine.security_options);
        let loaded = apparmor::host_profile_loaded(&host.apparmor_profiles, apparmor::PROFILE_NAME);
        let apparmor_profile = (engine_aa && loaded).then(|| apparmor::PROFILE_NAME.to_owned());
        if apparmor_profile.is_none() {
            gaps.push(if engine_aa {
                format!("AppArmor profile {} is not loaded (see apparmor/README.md); Landlock confines paths instead", apparmor::PROFILE_NAME)
            } else {
                "no AppArmor on this host; Landlock confines paths instead (no /proc and /sys write masking beyond Docker's, no network-family rules)".to_owned()
            });
        }

        let id_map = if userns::engine_remaps(&engine.security_options) {
            let from_files = || {
                let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
                userns::from_subid_files(&read(&host.subuid), &read(&host.subgid), "dockremap")
            };
            Some(
                userns::from_root_dir(&engine.root_dir)
                    .or_else(from_files)
                    .ok_or_else(|| IsolationError::UnknownRemap(engine.root_dir.clone()))?,
            )
        } else {
            gaps.push(
                "the engine runs without userns-remap: container uid 1000 is host uid 1000"
                    .to_owned(),
            );
            None
        };

        let quota = if cfg.disk_quota_mb == 0 {
            gaps.push("container.disk_quota_mb = 0: workspaces have no disk quota".to_owned());
            None
        } else {
            quota::preflight()?;
            let images = cfg
                .quota_dir
                .clone()
                .unwrap_or_else(|| default_quota_dir(&cfg.workspace_root));
            Some(Quota::new(&cfg.workspace_root, &images, cfg.disk_quota_mb))
        };

        let confinement = Confinement {
            seccomp_profile: Arc::from(profile),
            apparmor_profile,
        };
        let report = IsolationReport {
            seccomp: seccomp_origin,
            path_layer: confinement.path_layer(),
            apparmor_engine_support: engine_aa,
            apparmor_profile_loaded: loaded,
            userns_remap: id_map,
            disk_quota_mb: cfg.disk_quota_mb,
            gvisor,
            gaps,
        };
        Ok(Self {
            confinement,
            id_map,
            quota,
            report,
        })
    }

    /// Host owner for a directory the container user must own.
    pub fn host_owner(&self, uid: u32, gid: u32) -> (u32, u32) {
        self.id_map.map_or((uid, gid), |m| m.host_ids(uid, gid))
    }
}

/// The gVisor tier's runtime: required, with host Unix sockets allowed,
/// when anything uses the tier; its missing seccomp pass-through is a gap.
fn gvisor_runtime(
    config: &Config,
    registered: Option<&EngineRuntime>,
    gaps: &mut Vec<String>,
) -> Result<Option<GvisorRuntime>, IsolationError> {
    let name = &config.container.gvisor_runtime;
    let in_use = config.uses_gvisor();
    let Some(rt) = registered else {
        return match in_use {
            true => Err(IsolationError::GvisorMissing(name.clone())),
            false => Ok(None),
        };
    };
    if in_use && !rt.gvisor_host_uds() {
        return Err(IsolationError::GvisorHostUds(name.clone()));
    }
    let oci_seccomp = rt.flag("oci-seccomp");
    if in_use && !oci_seccomp {
        gaps.push(format!(
            "gVisor containers (runtime {name:?}) run our seccomp profile only as far as runsc takes it: without --oci-seccomp not inside the sandbox, where gVisor's own filter shields the host kernel instead"
        ));
    }
    Ok(Some(GvisorRuntime {
        name: name.clone(),
        path: rt.path.clone(),
        platform: rt.gvisor_platform().to_owned(),
        oci_seccomp,
        in_use,
    }))
}

/// `{workspace_root}/../quota-images`: beside the workspaces, never inside
/// them (an image must not be reachable from a container).
pub fn default_quota_dir(workspace_root: &Path) -> PathBuf {
    workspace_root
        .parent()
        .unwrap_or(Path::new("/"))
        .join("quota-images")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path, listing: &str) -> HostFiles {
        let profiles = dir.join("profiles");
        std::fs::write(&profiles, listing).unwrap();
        std::fs::write(dir.join("subuid"), "dockremap:165536:65536\n").unwrap();
        std::fs::write(dir.join("subgid"), "dockremap:165536:65536\n").unwrap();
        HostFiles {
            apparmor_profiles: profiles,
            subuid: dir.join("subuid"),
            subgid: dir.join("subgid"),
        }
    }

    fn no_quota() -> Config {
        let mut c = Config::default();
        c.container.disk_quota_mb = 0;
        c
    }

    #[test]
    fn landlock_without_apparmor_and_the_gaps_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let iso = Isolation::detect(
            &no_quota(),
            &EngineFacts {
                security_options: vec!["name=seccomp,profile=default".into()],
                root_dir: "/var/lib/docker".into(),
                ..Default::default()
            },
            &host(dir.path(), ""),
        )
        .unwrap();
        assert_eq!(iso.confinement.apparmor_profile, None);
        assert_eq!(iso.report.path_layer, PathLayer::Landlock);
        assert_eq!(iso.host_owner(1000, 1000), (1000, 1000));
        assert_eq!(iso.report.gaps.len(), 3, "{:?}", iso.report.gaps);
    }

    #[test]
    fn apparmor_only_when_the_engine_has_it_and_the_profile_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = EngineFacts {
            security_options: vec!["name=apparmor".into(), "name=userns".into()],
            root_dir: "/var/lib/docker/165536.165536".into(),
            ..Default::default()
        };
        let iso = Isolation::detect(&no_quota(), &engine, &host(dir.path(), "")).unwrap();
        assert_eq!(iso.confinement.apparmor_profile, None);
        let listing = "workspace-container (enforce)\n";
        let iso = Isolation::detect(&no_quota(), &engine, &host(dir.path(), listing)).unwrap();
        assert_eq!(
            iso.confinement.apparmor_profile.as_deref(),
            Some("workspace-container")
        );
        assert_eq!(iso.host_owner(1000, 1000), (166536, 166536));
    }

    #[test]
    fn remap_falls_back_to_subuid_and_fails_when_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let engine = EngineFacts {
            security_options: vec!["name=userns".into()],
            root_dir: "/srv/docker".into(),
            ..Default::default()
        };
        let iso = Isolation::detect(&no_quota(), &engine, &host(dir.path(), "")).unwrap();
        assert_eq!(iso.host_owner(1, 2), (165537, 165538));
        let empty = HostFiles {
            subuid: dir.path().join("none"),
            subgid: dir.path().join("none"),
            ..host(dir.path(), "")
        };
        assert!(matches!(
            Isolation::detect(&no_quota(), &engine, &empty),
            Err(IsolationError::UnknownRemap(_))
        ));
    }

    #[test]
    fn gvisor_tier_needs_its_runtime_with_host_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = no_quota();
        cfg.container.isolation_tier = crate::config::IsolationTier::Gvisor;
        let mut engine = EngineFacts::default();
        let err = Isolation::detect(&cfg, &engine, &host(dir.path(), "")).unwrap_err();
        assert!(matches!(err, IsolationError::GvisorMissing(_)), "{err}");
        assert!(err.to_string().contains("runsc"), "{err}");
        let mut rt = EngineRuntime {
            path: "/usr/bin/runsc".into(),
            args: vec!["--network=none".into()],
        };
        engine.runtimes.insert("runsc".into(), rt.clone());
        let err = Isolation::detect(&cfg, &engine, &host(dir.path(), "")).unwrap_err();
        assert!(matches!(err, IsolationError::GvisorHostUds(_)), "{err}");
        rt.args.push("--host-uds=all".into());
        engine.runtimes.insert("runsc".into(), rt);
        let iso = Isolation::detect(&cfg, &engine, &host(dir.path(), "")).unwrap();
        let gv = iso.report.gvisor.unwrap();
        assert_eq!(
            (gv.platform.as_str(), gv.oci_seccomp, gv.in_use),
            ("ptrace", false, true)
        );
        assert!(
            iso.report.gaps.iter().any(|g| g.contains("--oci-seccomp")),
            "{:?}",
            iso.report.gaps
        );
        // Unused, an absent runtime is no error.
        let iso = Isolation::detect(&no_quota(), &EngineFacts::default(), &host(dir.path(), ""));
        assert!(iso.unwrap().report.gvisor.is_none());
    }

    #[test]
    fn quota_images_default_beside_the_workspaces() {
        assert_eq!(
            default_quota_dir(Path::new("/var/lib/agentbox/workspaces")),
            PathBuf::from("/var/lib/agentbox/quota-images")
        );
    }
}
