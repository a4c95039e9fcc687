//! Helpers shared by the isolation end-to-end tests: a daemon with extra
//! `[container]` keys, runs through the CLI's Bash tool, container lookup,
//! and the expectations on the probe scripts in this directory.

#![allow(dead_code)]

use crate::harness::*;
use agentbox::isolation::quota::parse_mountinfo;
use serde_json::{json, Value};
use std::path::Path;

pub const KEY: &str = "sk-ant-isolation-test";

/// A daemon with cold starts only (no warm pool), its `[container]` keys
/// overridden from the environment (`AGENTBOX_CONTAINER_<KEY>`).
pub async fn daemon_with(container: &[(&str, &str)]) -> (mock_model::MockModel, Daemon) {
    let mock = mock_model::MockModel::start("127.0.0.1:0")
        .await
        .expect("start mock model");
    let opts = DaemonOptions {
        pool_min: 0,
        env: container
            .iter()
            .map(|(k, v)| {
                (
                    format!("AGENTBOX_CONTAINER_{}", k.to_ascii_uppercase()),
                    (*v).to_owned(),
                )
            })
            .collect(),
        model_url: mock.url(),
        api_key: KEY.to_owned(),
        extra_config: String::new(),
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(opts))
        .await
        .expect("daemon start");
    (mock, daemon)
}

/// Has the CLI run `command` with its Bash tool and asserts the run ended
/// with a successful result.
pub async fn bash(daemon: &Daemon, conversation: &str, command: &str) -> Vec<SseEvent> {
    let prompt = format!("Run it.\n!bash {command}");
    let (status, body) =
        post_message(daemon, Some(TOKEN), conversation, json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let result = events
        .iter()
        .find(|e| e.event == "result")
        .unwrap_or_else(|| panic!("no result: {events:#?}"));
    assert_eq!(result.data["is_error"], false, "{events:#?}");
    assert!(
        events.iter().any(|e| e.event == "tool_result"),
        "the Bash tool did not run: {events:#?}"
    );
    events
}

/// The container serving `conversation`, per the daemon's state.
pub fn container_of(daemon: &Daemon, conversation: &str) -> String {
    daemon
        .container_of(TENANT, conversation)
        .unwrap_or_else(|| panic!("{conversation} has no container"))
}

pub fn exec(container: &str, script: &str) -> std::process::Output {
    docker(&["exec", container, "sh", "-c", script])
}

/// Copies a probe script into the workspace, readable by the container user.
pub fn stage_probe(workspace: &Path, name: &str) {
    let src = repo_root().join("tests/isolation").join(name);
    let dst = workspace.join(name);
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read_file(path))
        .unwrap_or_else(|e| panic!("{}: {e}: {}", path.display(), read_file(path)))
}

pub fn mount_of(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| {
            parse_mountinfo(l)
                .first()
                .is_some_and(|m| m.mount_point == dir)
        })
        .map(str::to_owned)
}

pub fn log_line(daemon: &Daemon, message: &str) -> Value {
    daemon
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no log line {message:?}: {:#?}", daemon.logs()))
}

/// Every refused syscall failed with EPERM from the filter (clone3 with
/// ENOSYS), and the controls worked.
pub fn assert_seccomp_refusals(sys: &Value) {
    let mut wrong = Vec::new();
    for (name, errno) in sys.as_object().expect("probe json object") {
        let want = match name.as_str() {
            n if n.starts_with("ok_") => 0,
            "clone3" => 38, // ENOSYS, so that glibc falls back to clone
            _ => 1,         // EPERM
        };
        if errno != want {
            wrong.push(format!("{name}: errno {errno}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "seccomp: {wrong:#?}");
}

/// Under Landlock only the workspace, /tmp and devices are writable, even
/// where DAC would allow more.
pub fn assert_landlock_paths(paths: &Value) {
    for ok in ["workspace_file", "workspace_dir", "tmp_file", "dev_null"] {
        assert_eq!(paths[ok], "ok", "{ok}: {paths}");
    }
    for denied in ["dev_shm_file", "proc_self_comm", "socket_dir_file"] {
        assert_eq!(paths[denied], "EACCES", "{denied}: {paths}");
    }
    // Landlock refuses ptrace-mode access to processes outside the domain.
    for denied in ["read_pid1_environ", "read_pid1_mem"] {
        let answer = paths[denied].as_str().unwrap_or("");
        assert!(["EACCES", "EPERM"].contains(&answer), "{denied}: {paths}");
    }
    for denied in ["rootfs_file", "etc_passwd", "home_agent_file"] {
        assert_ne!(paths[denied], "ok", "{denied}: {paths}");
    }
}
