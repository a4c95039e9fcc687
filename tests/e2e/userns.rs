//! The daemon on a Docker engine with `--userns-remap=default`: container
//! uid 1000 is a high host uid, yet workspace and sockets work, and the
//! isolation layers hold. A second engine runs beside the host's one
//! (`tests/setup/ensure-userns-docker.sh`); this module's only test points
//! `DOCKER_HOST` at it while it holds the engine alone (`harness::serial`).

use crate::harness::*;
use crate::probes::*;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

/// Builds the image in the host's engine, starts the remapped engine with
/// the image copied in, and returns its `DOCKER_HOST`.
fn remapped_engine() -> String {
    // First, while DOCKER_HOST still names the host's engine.
    prerequisites();
    let script = repo_root().join("tests/setup/ensure-userns-docker.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(test_image())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run ensure-userns-docker.sh");
    assert!(out.status.success(), "{} failed", script.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn remapped_engine_runs_the_flow_and_isolation_holds() {
    let _engine = serial::exclusive().await;
    let host = tokio::task::spawn_blocking(remapped_engine).await.unwrap();
    // No other test touches the engine while this one holds it alone, and
    // the host's engine is named again before it lets go (the daemon and
    // its containers go first: they are declared later).
    let _remapped = DockerHost::set(&host);
    let info = docker_ok(&["info", "-f", "{{json .SecurityOptions}}"]);
    assert!(info.contains("name=userns"), "{info}");

    let (mock, daemon) = daemon_with(&[("disk_quota_mb", "64")]).await;
    let report = log_line(&daemon, "Isolation layers.");
    let remap = report["fields"]["userns_remap"]
        .as_str()
        .unwrap()
        .to_owned();
    let base: u32 = remap
        .strip_prefix("uid+")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("remap not detected: {report}"));
    assert!(base > 0, "{report}");

    // The skeleton flow: the Write tool lands in the workspace.
    let conv = "remapped";
    let prompt = "Write it.\n!write hello.txt Hello through the remap";
    let (status, body) = post_message(&daemon, Some(TOKEN), conv, json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let result = events.iter().find(|e| e.event == "result");
    assert_eq!(
        result.map(|r| r.data["is_error"].clone()),
        Some(json!(false)),
        "{events:#?}"
    );
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.path.starts_with("/v1/messages")),
        "the model was never reached through proxy.sock"
    );
    let ws = daemon.workspace(TENANT, conv);
    let hello = ws.join("hello.txt");
    assert_eq!(read_file(&hello), "Hello through the remap");

    // Host ownership is the mapped uid: container 1000 -> host base + 1000.
    let mapped = base + 1000;
    for path in [&ws, &hello] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (mapped, mapped),
            "{}",
            path.display()
        );
    }
    let container = container_of(&daemon, conv);
    let name = inspect(&container)["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();
    let socket_dir = daemon.dir.path().join("sockets").join(&name);
    let meta = std::fs::metadata(&socket_dir).unwrap();
    // Sealed once the agent was up: the host's root owns it, the
    // container's group may only list and traverse it.
    assert_eq!(meta.uid(), 0, "socket dir owner");
    assert_eq!(meta.gid(), mapped, "socket dir group");
    assert_eq!(meta.mode() & 0o777, 0o750);
    let agent_sock = std::fs::metadata(socket_dir.join("agent.sock")).unwrap();
    assert_eq!(
        agent_sock.uid(),
        mapped,
        "agent.sock is created by the container user"
    );

    // Inside: uid 1000, mapped onto the subordinate range.
    let out = exec(&container, "id -u; cat /proc/self/uid_map");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("1000"), "{text}");
    let map: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map.first().copied(), Some("0"), "{text}");
    assert_eq!(
        map.get(1).copied(),
        Some(base.to_string().as_str()),
        "{text}"
    );

    // The isolation layers still hold under the remap.
    stage_probe(&ws, "syscalls.py");
    stage_probe(&ws, "paths.py");
    bash(
        &daemon,
        conv,
        "python3 /workspace/syscalls.py > /workspace/syscalls.json; \
         python3 /workspace/paths.py > /workspace/paths.json",
    )
    .await;
    assert_seccomp_refusals(&read_json(&ws.join("syscalls.json")));
    assert_landlock_paths(&read_json(&ws.join("paths.json")));
    let mount = mount_of(&ws).expect("workspace quota not mounted");
    assert!(mount.contains(" - ext4 /dev/loop"), "{mount}");
    let out = exec(
        &container,
        "dd if=/dev/zero of=/workspace/fill bs=1M count=100 2>&1; rm -f /workspace/fill",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No space left on device"), "{text}");
}
