//! Every isolation layer, proven by attacks from inside real containers
//! that the real daemon started: the probes run through the CLI's own Bash
//! tool (a prompt-injected agent's position) or `docker exec` where the
//! point is what the kernel limits, not what the agent may do.

use crate::harness::*;
use crate::probes::*;
use agent_protocol::{Enforcement, PathLayer};
use agentbox::agent_client::AgentClient;
use agentbox::isolation::quota::{self, parse_mountinfo, Quota};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn attacks_from_the_agents_own_tools_are_refused() {
    let _engine = serial::shared().await;
    let (_mock, daemon) = daemon_with(&[]).await;
    let conv = "attack";
    bash(&daemon, conv, "true").await;
    let ws = daemon.workspace(TENANT, conv);
    stage_probe(&ws, "syscalls.py");
    stage_probe(&ws, "paths.py");
    stage_probe(&ws, "network.py");
    bash(
        &daemon,
        conv,
        "python3 /workspace/syscalls.py > /workspace/syscalls.json; \
         python3 /workspace/paths.py > /workspace/paths.json; \
         python3 /workspace/network.py > /workspace/network.json; \
         node -e 'require(\"fs\").writeFileSync(\"/workspace/node.txt\", \"1\")'; \
         git init -q /workspace/repo",
    )
    .await;
    // Ordinary tools still work under every layer.
    assert_eq!(read_file(&ws.join("node.txt")), "1");
    assert!(ws.join("repo/.git/HEAD").is_file(), "git init failed");
    // No route anywhere but the gateway bridge on loopback.
    let net = read_json(&ws.join("network.json"));
    for unreachable in ["metadata_v4", "metadata_v6", "public_v4", "docker_bridge"] {
        // No route (v4) or no usable source address (v6 without one):
        // refused at once, never a timeout.
        let answer = net[unreachable].as_str().unwrap_or("");
        assert!(
            ["ENETUNREACH", "EADDRNOTAVAIL"].contains(&answer),
            "{unreachable}: {net}"
        );
    }
    assert_eq!(net["gateway"], "ok", "{net}");
    let container = container_of(&daemon, conv);

    // Seccomp: every refused syscall fails with EPERM from the filter.
    assert_seccomp_refusals(&read_json(&ws.join("syscalls.json")));
    // Control: under Docker's default profile io_uring reaches the kernel
    // (EFAULT), so the EPERM above is our profile's doing.
    let script = std::fs::read(repo_root().join("tests/isolation/syscalls.py")).unwrap();
    let mut control = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
        ])
        .args(["--security-opt", "no-new-privileges", "--user", "1000:1000"])
        .args(["--entrypoint", "python3", &test_image(), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker run");
    std::io::Write::write_all(&mut control.stdin.take().unwrap(), &script).unwrap();
    let out = control.wait_with_output().unwrap();
    let default_profile: Value = serde_json::from_slice(&out.stdout).expect("control json");
    assert_eq!(default_profile["io_uring_setup"], 14, "{default_profile}");
    assert_ne!(default_profile["socket_netlink"], 1, "{default_profile}");

    // Landlock: outside the workspace and /tmp nothing is writable, even
    // where DAC allows it; the control through `docker exec` (outside the
    // agent's domain) shows DAC would.
    assert_landlock_paths(&read_json(&ws.join("paths.json")));
    let out = exec(&container, "python3 /workspace/paths.py");
    let outside: Value = serde_json::from_slice(&out.stdout).expect("exec paths json");
    for dac_allows in ["dev_shm_file", "proc_self_comm", "read_pid1_environ"] {
        assert_eq!(outside[dac_allows], "ok", "{dac_allows}: {outside}");
    }
    // Once the agent is up the host seals the socket directory (root's,
    // 0750): not even DAC lets the container user change it.
    assert_ne!(outside["socket_dir_file"], "ok", "{outside}");
    let _ = exec(&container, "rm -f /run/agentbox/probe-* /dev/shm/probe-*");

    // The agent reports its confinement, and the daemon logged it.
    let socket_dir = daemon.dir.path().join("sockets").join(
        inspect(&container)["Name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/'),
    );
    let c = AgentClient::new(&socket_dir)
        .confinement()
        .await
        .expect("health");
    assert_eq!(c.layer, PathLayer::Landlock);
    assert_eq!(c.landlock, Enforcement::FullyEnforced, "{c:?}");
    assert!(c.landlock_abi.is_some_and(|v| v >= 1), "{c:?}");
    let logged = log_line(&daemon, "Container confinement.");
    assert_eq!(logged["fields"]["landlock"], "fully_enforced", "{logged}");
    let report = log_line(&daemon, "Isolation layers.");
    assert_eq!(report["fields"]["path_layer"], "landlock", "{report}");
    assert_eq!(report["fields"]["seccomp"], "embedded", "{report}");

    // Process state: filtered, no new privileges, no capabilities.
    let status = exec(
        &container,
        "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/1/status /proc/self/status",
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.matches("Seccomp:\t2").count(), 2, "{status}");
    assert_eq!(status.matches("NoNewPrivs:\t1").count(), 2, "{status}");
    assert_eq!(
        status.matches("CapEff:\t0000000000000000").count(),
        2,
        "{status}"
    );

    // Network: only loopback; no engine socket anywhere we look.
    let nets = exec(&container, "ls /sys/class/net");
    assert_eq!(String::from_utf8_lossy(&nets.stdout).trim(), "lo");
    let sock = exec(
        &container,
        "ls /var/run/docker.sock /run/docker.sock /run/containerd 2>/dev/null; true",
    );
    assert!(
        sock.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&sock.stdout)
    );

    // The workspace is its own ext4 filesystem, nosuid and nodev.
    let mount = mount_of(&ws).expect("workspace is not a mount point");
    assert!(mount.contains(" - ext4 /dev/loop"), "{mount}");
    assert!(
        mount.contains("nosuid") && mount.contains("nodev"),
        "{mount}"
    );

    // `docker inspect` shows every field of the hardened spec.
    let c = inspect(&container);
    let hc = &c["HostConfig"];
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert_eq!(hc["Init"], true);
    let opts: Vec<&str> = hc["SecurityOpt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(
        opts.iter().any(|o| o.starts_with("no-new-privileges")),
        "{opts:?}"
    );
    let seccomp = opts
        .iter()
        .find_map(|o| o.strip_prefix("seccomp="))
        .expect("seccomp option");
    let seccomp: Value = serde_json::from_str(seccomp).expect("inline profile");
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(!opts.iter().any(|o| o.starts_with("apparmor=")), "{opts:?}");
    assert_eq!(hc["Memory"], 1024 * 1024 * 1024);
    assert_eq!(hc["MemorySwap"], hc["Memory"]);
    assert_eq!(hc["NanoCpus"], 1_000_000_000);
    assert_eq!(hc["PidsLimit"], 512);
    let tmp = hc["Tmpfs"]["/tmp"].as_str().unwrap();
    assert!(
        tmp.contains("nosuid") && tmp.contains("nodev") && tmp.contains("size="),
        "{tmp}"
    );
    assert_eq!(hc["LogConfig"]["Type"], "json-file");
    assert_eq!(hc["LogConfig"]["Config"]["max-size"], "10m");
    assert_eq!(hc["LogConfig"]["Config"]["max-file"], "2");
    assert_eq!(hc["Binds"].as_array().unwrap().len(), 2, "{}", hc["Binds"]);
    assert_eq!(c["Config"]["User"], "1000:1000");
    let env = c["Config"]["Env"].to_string();
    assert!(env.contains("AGENTBOX_L2=landlock"), "{env}");
    let log_path = PathBuf::from(c["LogPath"].as_str().unwrap());
    assert!(
        log_path.is_file(),
        "json-file log missing at {}",
        log_path.display()
    );
    assert_eq!(c["State"]["Running"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_limits_bite_and_only_the_guilty_container_suffers() {
    let _engine = serial::shared().await;
    const PIDS: i64 = 128;
    let pids = PIDS.to_string();
    let (_mock, daemon) = daemon_with(&[
        ("cpus", "0.5"),
        ("pids_limit", &pids),
        ("disk_quota_mb", "64"),
    ])
    .await;
    bash(&daemon, "guilty", "true").await;
    bash(&daemon, "bystander", "true").await;
    let guilty = container_of(&daemon, "guilty");
    let bystander = container_of(&daemon, "bystander");

    // Read-only rootfs.
    let out = exec(&guilty, "touch /evil 2>&1; echo rc=$?");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Read-only file system") && !text.contains("rc=0"),
        "{text}"
    );

    // Fork bomb, bounded: fork until the kernel refuses, children linger
    // a few seconds; the pids cgroup caps it below the limit.
    let bomb = r#"timeout 60 python3 -c '
import os, time, errno
n = 0
try:
    while n < 5000:
        if os.fork() == 0:
            time.sleep(4); os._exit(0)
        n += 1
    print("forks", n, "unlimited")
except OSError as e:
    print("forks", n, errno.errorcode[e.errno])
'"#;
    let out = exec(&guilty, bomb);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let forks: i64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "bomb output: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("fork bomb stopped after {forks} forks (pids_limit {PIDS})");
    assert!(text.contains("EAGAIN"), "{text}");
    assert!(forks < PIDS, "{forks} forks with pids_limit {PIDS}");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Memory hog: killed by the OOM killer inside its own cgroup.
    let out = exec(
        &guilty,
        "python3 -c 'a = []\nwhile True: a.append(bytearray(32 << 20))'",
    );
    assert_eq!(
        out.status.code(),
        Some(137),
        "hog was not OOM-killed: {out:?}"
    );
    // Read from the host, in whichever cgroup layout it has (v1 here, v2
    // on a stock Debian 12 host): what the kernel enforced.
    let kills = cgroup::oom_kills(&guilty);
    assert!(
        kills >= 1,
        "no OOM kill counted in the guilty container's cgroup"
    );

    // CPU: two busy processes get at most the 0.5-core quota.
    assert_eq!(cgroup::cpu_quota(&guilty), Some((50_000, 100_000)));
    let busy = "for i in 1 2; do timeout 3.5 sh -c 'while :; do :; done' & done; wait";
    let loops = std::thread::spawn({
        let guilty = guilty.clone();
        move || exec(&guilty, busy)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (u0, t0) = (cgroup::cpu_ns(&guilty), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u1, t1) = (cgroup::cpu_ns(&guilty), std::time::Instant::now());
    loops.join().expect("busy loops");
    let share = (u1 - u0) as f64 / 1e9 / (t1 - t0).as_secs_f64();
    eprintln!("cpu share of two busy loops at cpus=0.5: {share:.3}");
    assert!(share < 0.5 * 1.2, "CPU not throttled: {share:.3} cores");
    assert!(share > 0.05, "busy loop did not run: {share:.3}");

    // Both containers and the daemon survived; both agents still work.
    for c in [&guilty, &bystander] {
        assert_eq!(inspect(c)["State"]["Running"], true, "{c} died");
    }
    assert_eq!(
        cgroup::oom_kills(&bystander),
        0,
        "the bystander saw an OOM kill"
    );
    bash(&daemon, "guilty", "echo still-alive").await;
    bash(&daemon, "bystander", "echo still-alive").await;
    assert_eq!(
        container_of(&daemon, "guilty"),
        guilty,
        "container was replaced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_fill_stops_at_the_quota_and_the_host_is_untouched() {
    let _engine = serial::shared().await;
    let (_mock, mut daemon) = daemon_with(&[("disk_quota_mb", "64")]).await;
    let conv = "filler";
    bash(&daemon, conv, "true").await;
    let ws = daemon.workspace(TENANT, conv);
    let container = container_of(&daemon, conv);
    let image = daemon
        .dir
        .path()
        .join("quota-images")
        .join(format!("{}.ext4", container_of(&daemon, conv)));
    assert!(image.is_file(), "no image at {}", image.display());
    let host_free_before = free_bytes(daemon.dir.path());

    let out = exec(
        &container,
        "dd if=/dev/zero of=/workspace/fill bs=1M count=200 2>&1; echo rc=$?",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    let filled = std::fs::metadata(ws.join("fill")).unwrap().len();
    eprintln!("dd wrote {} MiB into a 64 MiB workspace", filled >> 20);
    assert!(filled <= 64 << 20, "{filled} bytes written");
    assert!(filled >= 40 << 20, "only {filled} bytes written");
    // The host paid at most the image size: its allocated blocks are the
    // only host space the fill could take. (The host's free space is only
    // reported: other tests and builds write to the same disk meanwhile.)
    let allocated = image_allocated(&image);
    assert!(allocated <= 66 << 20, "image allocates {allocated} bytes");
    let host_drop = host_free_before.saturating_sub(free_bytes(daemon.dir.path()));
    eprintln!("host free space moved by {} MiB meanwhile", host_drop >> 20);

    // The workspace still works once the file is gone.
    let out = exec(
        &container,
        "rm /workspace/fill && echo ok > /workspace/after && cat /workspace/after",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // Destroying the conversation releases the mount and the image.
    daemon.terminate();
    for id in daemon.containers() {
        docker_ok(&["rm", "-f", "-v", &id]);
    }
    quota::release(&ws).expect("release");
    assert!(mount_of(&ws).is_none(), "still mounted");
    assert!(!image.exists(), "image left behind");
    assert!(!ws.exists(), "mount point left behind");
    quota::release(&ws).expect("release twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_mount_is_idempotent_and_keeps_existing_files() {
    let _engine = serial::shared().await;
    prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspaces");
    let ws = root.join("t").join("c");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("before.txt"), "kept").unwrap();
    let q = Quota::new(&root, &dir.path().join("images"), 16);
    q.ensure(&ws, 1000, 1000).await.expect("first ensure");
    q.ensure(&ws, 1000, 1000).await.expect("second ensure");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.mount_point == ws)
        .count();
    assert_eq!(mounts, 1, "ensure stacked mounts");
    assert_eq!(read_file(&ws.join("before.txt")), "kept");
    assert!(!ws.join("lost+found").exists());
    let meta = std::fs::metadata(&ws).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
    // A daemon restart after a reboot: the image exists, nothing mounted.
    Command::new("umount").arg(&ws).status().unwrap();
    q.ensure(&ws, 1000, 1000).await.expect("remount");
    assert_eq!(read_file(&ws.join("before.txt")), "kept");
    quota::release(&ws).expect("release");
    assert!(mount_of(&ws).is_none());
    assert!(!q.image_path(&ws).unwrap().exists());
}

#[test]
fn apparmor_profile_parses_and_a_broken_one_does_not() {
    let _engine = serial::shared_blocking();
    prerequisites();
    let profile = repo_root().join("apparmor/workspace-container");
    let parse = |path: &Path| {
        Command::new("apparmor_parser")
            .args(["-Q", "-K"])
            .arg(path)
            .output()
            .expect("apparmor_parser (Debian package apparmor)")
    };
    let out = parse(&profile);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check is real: the same profile with one bad rule is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let text = read_file(&profile).replace("deny mount,", "deny mount, bogus_rule /x,");
    std::fs::write(&broken, text).unwrap();
    assert!(!parse(&broken).status.success(), "a broken profile parsed");
    let text = read_file(&profile);
    for rule in [
        "/workspace/** mrwlkix",
        "/opt/venv/** mrwlkix",
        "deny @{PROC}/*/mem",
        "deny @{PROC}/kcore",
        "deny @{PROC}/sysrq-trigger",
        "deny @{PROC}/sys/** w",
        "deny /sys/** w",
        "deny /etc/shadow r",
        "deny /etc/passwd w",
        "deny network raw",
        "deny network packet",
        "deny mount",
    ] {
        assert!(text.contains(rule), "profile lacks {rule:?}");
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

fn image_allocated(image: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(image).unwrap()) * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_knobs_replace_the_profile_and_turn_the_quota_off_loudly() {
    let _engine = serial::shared().await;
    prerequisites();
    let dir = tempfile::tempdir().unwrap();
    // A replacement profile that also allows io_uring_setup: the daemon
    // must hand exactly this one to Docker.
    let mut profile: Value =
        serde_json::from_str(agentbox::isolation::seccomp::EMBEDDED_PROFILE).unwrap();
    profile["syscalls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"names": ["io_uring_setup"], "action": "SCMP_ACT_ALLOW"}));
    let custom = dir.path().join("custom.json");
    std::fs::write(&custom, profile.to_string()).unwrap();
    let custom_path = custom.display().to_string();
    let (_mock, daemon) =
        daemon_with(&[("disk_quota_mb", "0"), ("seccomp_profile", &custom_path)]).await;
    let conv = "knobs";
    bash(&daemon, conv, "true").await;
    let ws = daemon.workspace(TENANT, conv);
    stage_probe(&ws, "syscalls.py");
    bash(
        &daemon,
        conv,
        "python3 /workspace/syscalls.py > /workspace/syscalls.json",
    )
    .await;
    let sys = read_json(&ws.join("syscalls.json"));
    assert_eq!(
        sys["io_uring_setup"], 14,
        "custom profile not applied: {sys}"
    );
    assert_eq!(sys["io_uring_enter"], 1, "{sys}");
    assert!(mount_of(&ws).is_none(), "quota mounted although disabled");
    let report = log_line(&daemon, "Isolation layers.");
    assert_eq!(report["fields"]["disk_quota_mb"], 0, "{report}");
    assert_eq!(report["fields"]["seccomp"], custom.display().to_string());
    let gaps: Vec<String> = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("Isolation layer missing."))
        .cloned()
        .collect();
    assert!(
        gaps.iter().any(|g| g.contains("disk_quota_mb = 0")),
        "{gaps:#?}"
    );

    // A profile that allows by default is refused at start-up.
    let permissive = dir.path().join("permissive.json");
    std::fs::write(
        &permissive,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#,
    )
    .unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"{root}/s.redb\"\n\
             [container]\nworkspace_root = \"{root}/w\"\nsocket_root = \"{root}/k\"\n\
             seccomp_profile = \"{p}\"\n",
            root = dir.path().display(),
            p = permissive.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run agentbox");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with an allow-all profile");
    assert!(stderr.contains("invalid seccomp profile"), "{stderr}");
}
