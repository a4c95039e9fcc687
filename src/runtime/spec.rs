//! The one place that turns a [`ContainerSpec`] into Docker's create
//! request with every hardening layer switched on.

use super::ContainerSpec;
use agent_protocol::{PathLayer, L2_ENV, SOCKET_DIR};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// Docker's json-file driver keeps logs forever unless capped.
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILES: &str = "2";

/// Host tasks the gVisor tier's host pids limit allows per sandboxed
/// process. runsc's ptrace platform backs every process in the sandbox
/// with stub processes and tracer threads in the container's host pids
/// cgroup (runsc 20221219: an idle container holds 82 host tasks, 100
/// sleeping processes 976). At the runc limit about 20 processes used it
/// all up, and the Sentry, unable to start a thread, ended the whole
/// sandbox (exit status 2) in the middle of an ordinary tool call.
pub(crate) const GVISOR_HOST_TASKS_PER_PROCESS: i64 = 10;

/// The host pids cgroup limit of a container: `pids_limit` for runc; for
/// gVisor, whose sandbox has no process limit of its own, the same count
/// scaled to the host tasks each process costs there.
pub(crate) fn host_pids_limit(pids_limit: i64, gvisor: bool) -> i64 {
    if gvisor {
        pids_limit.saturating_mul(GVISOR_HOST_TASKS_PER_PROCESS)
    } else {
        pids_limit
    }
}

/// The kernel-side confinement of one container: its seccomp profile and
/// which layer confines its paths.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// Seccomp profile JSON, handed to Docker inline.
    pub seccomp_profile: Arc<str>,
    /// The loaded AppArmor profile to use, or `None` for Landlock, which
    /// the agent then applies to itself.
    pub apparmor_profile: Option<String>,
}

impl Confinement {
    pub fn path_layer(&self) -> PathLayer {
        match self.apparmor_profile {
            Some(_) => PathLayer::Apparmor,
            None => PathLayer::Landlock,
        }
    }
}

pub(crate) fn hardened_create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    // The seccomp profile goes to runsc too, which applies it inside the
    // sandbox only with `--oci-seccomp` (off by default: docs/isolation.md).
    let mut security_opt = vec![
        "no-new-privileges:true".to_owned(),
        format!("seccomp={}", spec.confinement.seccomp_profile),
    ];
    let path_layer = match spec.gvisor_runtime {
        Some(_) => PathLayer::Gvisor,
        None => spec.confinement.path_layer(),
    };
    // Docker silently drops an AppArmor option on hosts without AppArmor,
    // so it is only set where detection found the profile loaded; runsc
    // applies no host LSM profile to the agent, so gVisor goes without.
    if let (PathLayer::Apparmor, Some(profile)) = (path_layer, &spec.confinement.apparmor_profile) {
        security_opt.push(format!("apparmor={profile}"));
    }
    let host_config = HostConfig {
        runtime: spec.gvisor_runtime.clone(),
        network_mode: Some("none".to_owned()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(security_opt),
        // tini as PID 1 reaps the zombies the agent's tools leave behind.
        init: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={}", spec.tmp_size_bytes),
        )])),
        memory: Some(spec.memory_bytes),
        // Equal to memory: no swap on top of the limit.
        memory_swap: Some(spec.memory_bytes),
        nano_cpus: Some(spec.nano_cpus),
        cpu_shares: spec.cpu_shares,
        pids_limit: Some(host_pids_limit(
            spec.pids_limit,
            spec.gvisor_runtime.is_some(),
        )),
        // Docker's bind syntax takes no nosuid/nodev; no-new-privileges
        // already makes setuid files on the workspace give nothing, and the
        // quota filesystem under it is mounted nosuid,nodev on the host.
        binds: Some(vec![
            format!("{}:/workspace:rw", spec.workspace_dir.display()),
            format!("{}:{SOCKET_DIR}:rw", spec.socket_dir.display()),
        ]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), LOG_MAX_FILES.to_owned()),
            ])),
        }),
        ..Default::default()
    };
    let mut env: Vec<String> = spec
        .env
        .iter()
        .filter(|(k, _)| k != L2_ENV)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    // The agent applies Landlock to itself unless AppArmor (or gVisor,
    // which has none) confines it.
    env.push(format!("{L2_ENV}={}", path_layer.as_str()));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        env: Some(env),
        labels: Some(spec.labels.clone()),
        working_dir: Some("/workspace".to_owned()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "agentbox-x".into(),
            image: "img".into(),
            env: vec![("A".into(), "1".into())],
            labels: HashMap::from([("agentbox.managed".into(), "true".into())]),
            workspace_dir: "/w".into(),
            socket_dir: "/s".into(),
            user: "1000:1000".into(),
            memory_bytes: 1 << 30,
            nano_cpus: 1_000_000_000,
            cpu_shares: None,
            pids_limit: 256,
            tmp_size_bytes: 1 << 26,
            confinement: Confinement {
                seccomp_profile: Arc::from(r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#),
                apparmor_profile: None,
            },
            gvisor_runtime: None,
        }
    }

    #[test]
    fn every_layer_is_on() {
        let body = hardened_create_body(&spec());
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        let opts = hc.security_opt.unwrap();
        assert!(opts.contains(&"no-new-privileges:true".to_owned()));
        assert!(
            opts.iter()
                .any(|o| o.starts_with("seccomp={") && o.contains("SCMP_ACT_ERRNO")),
            "{opts:?}"
        );
        assert!(!opts.iter().any(|o| o.starts_with("apparmor=")));
        assert_eq!(hc.memory, hc.memory_swap);
        assert_eq!(hc.pids_limit, Some(256));
        assert!(hc.tmpfs.unwrap()["/tmp"].contains("nosuid,nodev"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            body.env.unwrap(),
            vec!["A=1".to_owned(), "AGENTBOX_L2=landlock".to_owned()]
        );
        let binds = hc.binds.unwrap();
        assert_eq!(
            binds.len(),
            2,
            "only the workspace and the socket dir: {binds:?}"
        );
    }

    #[test]
    fn apparmor_replaces_landlock_and_cannot_be_overridden_by_env() {
        let mut s = spec();
        s.confinement.apparmor_profile = Some("workspace-container".into());
        s.env.push((L2_ENV.into(), "none".into()));
        let body = hardened_create_body(&s);
        let opts = body.host_config.unwrap().security_opt.unwrap();
        assert!(opts.contains(&"apparmor=workspace-container".to_owned()));
        let env = body.env.unwrap();
        assert_eq!(
            env.iter().filter(|e| e.starts_with("AGENTBOX_L2=")).count(),
            1
        );
        assert!(env.contains(&"AGENTBOX_L2=apparmor".to_owned()), "{env:?}");
    }

    #[test]
    fn gvisor_tier_names_its_runtime_and_keeps_every_layer() {
        let mut s = spec();
        s.confinement.apparmor_profile = Some("workspace-container".into());
        s.gvisor_runtime = Some("runsc".into());
        let body = hardened_create_body(&s);
        let hc = body.host_config.unwrap();
        assert_eq!(hc.runtime.as_deref(), Some("runsc"));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        let opts = hc.security_opt.unwrap();
        assert!(opts.iter().any(|o| o.starts_with("seccomp={")), "{opts:?}");
        assert!(opts.contains(&"no-new-privileges:true".to_owned()));
        assert!(!opts.iter().any(|o| o.starts_with("apparmor=")), "{opts:?}");
        assert!(body.env.unwrap().contains(&"AGENTBOX_L2=gvisor".to_owned()));
        // The host limit leaves room for the Sentry's own tasks.
        assert_eq!(hc.pids_limit, Some(256 * GVISOR_HOST_TASKS_PER_PROCESS));
        assert_eq!(
            hardened_create_body(&spec()).host_config.unwrap().runtime,
            None
        );
    }
}
