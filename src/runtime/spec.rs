//! The one place that turns a [`ContainerSpec`] into Docker's create
//! request with every hardening layer switched on.

use super::ContainerSpec;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use std::collections::HashMap;
use workspace_agent::protocol::SOCKET_DIR;

/// Docker's json-file driver keeps logs forever unless capped.
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILES: &str = "2";

pub fn hardened_create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let host_config = HostConfig {
        network_mode: Some("none".to_owned()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
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
        pids_limit: Some(spec.pids_limit),
        // Docker's bind syntax takes no nosuid/nodev; no-new-privileges
        // already makes setuid files on the workspace give nothing.
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
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
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
            pids_limit: 256,
            tmp_size_bytes: 1 << 26,
        }
    }

    #[test]
    fn every_layer_is_on() {
        let body = hardened_create_body(&spec());
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert!(hc
            .security_opt
            .unwrap()
            .contains(&"no-new-privileges:true".to_owned()));
        assert_eq!(hc.memory, hc.memory_swap);
        assert_eq!(hc.pids_limit, Some(256));
        assert!(hc.tmpfs.unwrap()["/tmp"].contains("nosuid,nodev"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.env.unwrap(), vec!["A=1".to_owned()]);
        let binds = hc.binds.unwrap();
        assert_eq!(
            binds.len(),
            2,
            "only the workspace and the socket dir: {binds:?}"
        );
    }
}
