//! Packaging: the systemd unit (verified, hardened, its mount-namespace
//! choice proven), the config example (parses, every key with its
//! default), the installer (idempotent into a scratch root), the Debian
//! package (built from the debug binaries, listed, installed and purged in
//! a throwaway container) and the daemon run exactly as the unit runs it,
//! speaking the sd_notify protocol and passing `doctor`.
//!
//! The last test installs the package on a machine running systemd (a
//! container with systemd as PID 1, `tests/packaging/systemd.Dockerfile`)
//! and runs agentbox.service there with every hardening directive.
//!
//! Tools come from `tests/setup/ensure-packaging-tools.sh`; a missing tool
//! is installed, never skipped.

use crate::harness::{docker, repo_root, serial};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const UNIT: &str = "appliance/agentbox.service";
const EXAMPLE: &str = "appliance/agentbox.toml.example";
/// The exposure score `systemd-analyze security` gave when the unit was
/// written; a change that raises it must be deliberate.
const MAX_EXPOSURE: f64 = 4.5;

/// A running engine, loop devices, the workspace image (built only when
/// missing, so an existing tag is never rebuilt here) and the Debian base
/// image the package is installed into.
fn engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        for script in [
            "tests/setup/ensure-docker.sh",
            "tests/setup/ensure-isolation-tools.sh",
            "tests/setup/ensure-gvisor.sh",
            "appliance/register-gvisor.sh",
            "workspace-base/build-base.sh",
        ] {
            let path = repo_root().join(script);
            let status = Command::new("bash")
                .arg(&path)
                .status()
                .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
            assert!(status.success(), "{script} failed");
        }
        let image = crate::harness::test_image();
        if !docker(&["image", "inspect", &image]).status.success() {
            crate::harness::prerequisites();
        }
    });
}

fn tools() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let script = repo_root().join("tests/setup/ensure-packaging-tools.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run ensure-packaging-tools.sh");
        assert!(status.success(), "ensure-packaging-tools.sh failed");
    });
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn agentbox_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentbox"))
}

/// The unit with the installed binary path pointed at this build, so
/// `systemd-analyze` finds every command it names.
fn scratch_unit(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo_root().join(UNIT)).expect("read unit");
    let path = dir.join("agentbox.service");
    let bin = agentbox_bin();
    let bin = bin.to_str().expect("utf-8 binary path");
    std::fs::write(&path, unit.replace("/usr/bin/agentbox", bin)).expect("write unit");
    path
}

/// `[Service]` settings of a unit file, in order (keys repeat).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = if line == "[Service]" { "service" } else { "" };
            continue;
        }
        if section == "service" {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    out
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_verifies_and_its_hardening_holds() {
    tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = scratch_unit(dir.path());
    let out = ok(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        text(&out).trim().is_empty(),
        "systemd-analyze verify printed:\n{}",
        text(&out)
    );

    let text_unit = std::fs::read_to_string(repo_root().join(UNIT)).expect("read unit");
    let s = service_settings(&text_unit);
    let one = |k: &str| -> String {
        let v = setting(&s, k);
        assert_eq!(v.len(), 1, "{k} should be set once: {v:?}");
        v[0].to_owned()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert!(one("ExecStartPre").contains("agentbox validate --config"));
    assert!(one("EnvironmentFile").starts_with('-'));
    let bounding = one("CapabilityBoundingSet");
    let caps: BTreeSet<&str> = bounding
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_"))
        .collect();
    let want: BTreeSet<&str> = ["SYS_ADMIN", "CHOWN", "FOWNER", "DAC_OVERRIDE"].into();
    assert_eq!(caps, want, "the capability bounding set changed");
    // Grace for streams (server.shutdown_grace_secs) must fit in the stop timeout.
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let grace = agentbox::config::Config::default()
        .server
        .shutdown_grace_secs;
    assert!(
        stop > grace + 30,
        "TimeoutStopSec {stop} leaves no room after a {grace}s grace"
    );
    // Under CPU contention the daemon goes before the containers: with the
    // systemd cgroup driver they are its siblings in system.slice.
    let weight: u32 = one("CPUWeight").parse().expect("CPUWeight a number");
    assert!(weight > 100, "CPUWeight {weight}: not above a container's");
    // No secret in the unit: the API key comes from the EnvironmentFile.
    for env in setting(&s, "Environment") {
        assert!(!env.contains("API_KEY") && !env.contains("TOKEN"), "{env}");
    }

    // Each of these gives the service a private mount namespace, where the
    // workspace quota mounts would never reach dockerd (see
    // `mounts_in_a_service_namespace_never_reach_the_host`).
    for forbidden in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "MountFlags",
        "RootDirectory",
    ] {
        assert!(
            setting(&s, forbidden).is_empty(),
            "{forbidden}= would put the daemon in its own mount namespace"
        );
    }

    let out = ok(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for agentbox.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{report}"
    );
}

/// systemd sets up a unit's private mount namespace by making every mount
/// a slave of the host's, then marking it shared again; this replays that
/// with `unshare` and shows that a mount made inside never reaches the
/// host, which is why the unit has no mount-namespacing directive. The
/// control run (no slave step) shows the experiment can see propagation.
#[test]
fn mounts_in_a_service_namespace_never_reach_the_host() {
    tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let target = base.join("m");
    std::fs::create_dir(&target).expect("mkdir");
    // A shared mount point, as / is on a systemd host.
    ok(Command::new("mount").arg("--bind").arg(base).arg(base));
    let _unmount = Unmount(base.to_owned());
    ok(Command::new("mount").arg("--make-shared").arg(base));
    let seen_on_host = |script: &str| -> bool {
        ok(Command::new("unshare")
            .args(["--mount", "--propagation", "unchanged", "sh", "-c", script])
            .env("T", &target));
        let visible = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .any(|l| l.split(' ').nth(4) == target.to_str());
        if visible {
            ok(Command::new("umount").arg(&target));
        }
        visible
    };
    assert!(
        seen_on_host(r#"mount -t tmpfs control "$T""#),
        "control: a mount in a namespace sharing the host's peer group must propagate"
    );
    assert!(
        !seen_on_host(
            r#"mount --make-rslave / && mount --make-rshared / && mount -t tmpfs probe "$T""#
        ),
        "after systemd's slave-then-shared set-up a mount must not reach the host"
    );
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every key the config structs accept, found by asking them: with
/// `deny_unknown_fields` an unknown key's error lists the expected ones.
fn struct_keys(prefix: &str, probe_table: impl Fn(&str) -> String) -> BTreeSet<String> {
    let doc = probe_table("__probe__ = 0");
    let err = agentbox::config::Config::from_toml(&doc, Vec::<(String, String)>::new())
        .expect_err("an unknown key must be refused")
        .to_string();
    if err.contains("there are no fields") {
        return BTreeSet::new();
    }
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .unwrap_or_else(|| panic!("cannot read the expected keys from: {err}"))
        .1;
    // "`a`, `b`, `c`" or "`a` or `b`": the odd pieces between backticks.
    // The error goes on with "in `section`" on its next line.
    let list = list.lines().next().unwrap_or_default();
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(|k| format!("{prefix}{k}"))
        .collect()
}

/// The example with every commented `key = value` line and `[[...]]`
/// table header uncommented: the full set of keys it documents.
fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|l| {
            let body = l.strip_prefix("# ").unwrap_or(l);
            let is_setting = body.split_once(" = ").is_some_and(|(k, _)| {
                k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            let is_array_table = body.starts_with("[[") && body.ends_with("]]");
            if body != l && (is_setting || is_array_table) {
                body.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn example_keys(doc: &toml::Table) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (section, value) in doc {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_table).collect(),
            _ => panic!("top-level key {section} in the example is not a section"),
        };
        keys.insert(section.clone());
        for t in tables {
            for k in t.keys() {
                keys.insert(format!("{section}.{k}"));
            }
        }
    }
    keys
}

#[test]
fn config_example_has_every_key_with_its_default() {
    let example = std::fs::read_to_string(repo_root().join(EXAMPLE)).expect("read example");
    // As shipped: the uncommented values are exactly the built-in defaults.
    let parsed = agentbox::config::Config::from_toml(&example, Vec::<(String, String)>::new())
        .expect("the example parses");
    parsed.validate().expect("the example validates");
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", agentbox::config::Config::default()),
        "a value in {EXAMPLE} differs from its default"
    );

    // Every key the structs know, including the optional ones, is there.
    let full = uncommented(&example);
    let full_cfg = agentbox::config::Config::from_toml(&full, Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("the example with its commented keys: {e}"));
    full_cfg
        .validate()
        .unwrap_or_else(|e| panic!("the example with its commented keys: {e}"));
    let documented = example_keys(&full.parse().expect("toml"));
    let sections = struct_keys("", |probe| probe.to_owned());
    let mut known = sections.clone();
    for section in &sections {
        let prefix = format!("{section}.");
        known.extend(if section == "tenants" {
            struct_keys(&prefix, |probe| format!("[[tenants]]\n{probe}"))
        } else {
            struct_keys(&prefix, |probe| format!("[{section}]\n{probe}"))
        });
    }
    let missing: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{EXAMPLE}: missing {missing:?}, not config keys {unknown:?}"
    );

    // The same file through the binary, as the unit's ExecStartPre runs it.
    for (name, body) in [("shipped", example.clone()), ("uncommented", full)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, body).expect("write");
        let out = ok(Command::new(agentbox_bin())
            .args(["validate", "--config"])
            .arg(&path)
            .env_remove("AGENTBOX_CONFIG"));
        assert!(text(&out).contains("config ok"), "{}", text(&out));
    }

    // Every key is described in docs/configuration.md too.
    let docs =
        std::fs::read_to_string(repo_root().join("docs/configuration.md")).expect("read docs");
    for key in known.iter().filter(|k| k.contains('.')) {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        assert!(
            docs.contains(&format!("`{leaf}`")),
            "docs/configuration.md does not mention {key}"
        );
    }
}

/// JSON has no comments, so every key of the recommended engine settings
/// must have its reason in docs/operations.md.
#[test]
fn docker_daemon_json_is_explained() {
    let text = std::fs::read_to_string(repo_root().join("appliance/docker-daemon.json"))
        .expect("read docker-daemon.json");
    let doc: Value = serde_json::from_str(&text).expect("docker-daemon.json is JSON");
    let obj = doc.as_object().expect("an object");
    assert_eq!(doc["userns-remap"], "default");
    assert_eq!(doc["no-new-privileges"], true);
    assert_eq!(doc["live-restore"], true);
    assert_eq!(doc["icc"], false);
    assert!(doc["log-opts"]["max-size"].is_string(), "{doc}");
    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("read docs");
    let section = ops
        .split_once("## Docker engine settings")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("docs/operations.md has a Docker engine settings section");
    for key in obj.keys() {
        assert!(
            section.contains(&format!("`{key}`")),
            "docs/operations.md does not explain {key}"
        );
    }
}

#[test]
fn scripts_are_shellcheck_clean() {
    tools();
    let root = repo_root();
    let mut cmd = Command::new("shellcheck");
    for s in [
        "appliance/install.sh",
        "appliance/uninstall.sh",
        "appliance/build-deb.sh",
        "tests/setup/ensure-packaging-tools.sh",
        "tests/setup/ensure-isolation-tools.sh",
        "tests/setup/ensure-gvisor.sh",
        "appliance/register-gvisor.sh",
        "tests/demo.sh",
        "tests/run.sh",
        ".ci/run",
    ] {
        cmd.arg(root.join(s));
    }
    ok(&mut cmd);
    let mut sh = Command::new("shellcheck");
    sh.args(["-s", "sh"]);
    for s in ["postinst", "prerm", "postrm"] {
        sh.arg(root.join("appliance/debian").join(s));
    }
    ok(&mut sh);
}

/// `path -> "type mode uid:gid sha256"` for everything under `root`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let rel = format!("/{}", p.strip_prefix(root).expect("prefix").display());
            let mode = m.permissions().mode() & 0o7777;
            let what = if m.is_dir() {
                walk(root, &p, out);
                "dir".to_owned()
            } else if m.is_file() {
                let data = std::fs::read(&p).expect("read");
                format!("file {}", hex::encode(Sha256::digest(&data)))
            } else {
                "other".to_owned()
            };
            out.insert(rel, format!("{what} {mode:o} {}:{}", m.uid(), m.gid()));
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn install(root: &Path, extra: &[&str]) -> String {
    let agent = agent_binary();
    let out = ok(Command::new("bash")
        .arg(repo_root().join("appliance/install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--binary")
        .arg(agentbox_bin())
        .arg("--agent-binary")
        .arg(&agent)
        .args(extra));
    text(&out)
}

/// The cargo target directory this test binary was built in.
fn target_dir() -> PathBuf {
    agentbox_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// The workspace agent the package ships, here its debug build (built
/// when missing; a release build would take minutes).
fn agent_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = target_dir();
            ok(Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "workspace-agent"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(repo_root()));
            let bin = target.join("debug/workspace-agent");
            assert!(bin.is_file(), "no {}", bin.display());
            bin
        })
        .clone()
}

#[test]
fn installer_fills_a_scratch_root_once() {
    tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let log = install(root, &[]);
    assert!(log.contains("scratch root"), "{log}");
    let first = tree(root);
    let expect = [
        ("/usr/bin/agentbox", "file", 0o755),
        ("/lib/systemd/system/agentbox.service", "file", 0o644),
        ("/etc/agentbox", "dir", 0o755),
        ("/etc/agentbox/agentbox.toml", "file", 0o644),
        ("/etc/agentbox/agentbox.env", "file", 0o600),
        ("/etc/apparmor.d/workspace-container", "file", 0o644),
        ("/usr/share/agentbox/agentbox.toml.example", "file", 0o644),
        ("/usr/share/agentbox/docker-daemon.json", "file", 0o644),
        ("/usr/share/agentbox/register-gvisor.sh", "file", 0o755),
        ("/usr/share/agentbox/seccomp/workspace.json", "file", 0o644),
        (
            "/usr/share/agentbox/workspace-base/build-image.sh",
            "file",
            0o755,
        ),
        (
            "/usr/share/agentbox/workspace-base/workspace-agent",
            "file",
            0o755,
        ),
        ("/usr/share/doc/agentbox/operations.md", "file", 0o644),
        ("/var/lib/agentbox", "dir", 0o700),
        ("/var/log/agentbox", "dir", 0o750),
    ];
    for (path, kind, mode) in expect {
        let entry = first
            .get(path)
            .unwrap_or_else(|| panic!("{path} not installed: {first:#?}"));
        assert!(entry.starts_with(kind), "{path}: {entry}");
        assert!(
            entry.ends_with(&format!(" {mode:o} 0:0")),
            "{path}: want mode {mode:o} owned by root, got {entry}"
        );
    }
    assert!(
        !first
            .keys()
            .any(|p| p.contains("/agent/src") || p.contains(".build")),
        "the agent's sources or build leftovers were installed"
    );
    assert_eq!(
        std::fs::read(root.join("etc/agentbox/agentbox.toml")).expect("config"),
        std::fs::read(repo_root().join(EXAMPLE)).expect("example")
    );

    // Twice in a row: nothing changes, and it says so.
    let log = install(root, &[]);
    assert!(log.contains("0 change(s)"), "{log}");
    assert_eq!(tree(root), first, "the second run changed the tree");

    // An edited config and secrets file survive; the new example lands beside.
    let cfg = root.join("etc/agentbox/agentbox.toml");
    let edited = "[pool]\nmin_size = 1\n";
    std::fs::write(&cfg, edited).expect("edit config");
    std::fs::write(
        root.join("etc/agentbox/agentbox.env"),
        "ANTHROPIC_API_KEY=x\n",
    )
    .expect("env");
    let log = install(root, &[]);
    assert!(log.contains("kept your edited"), "{log}");
    assert_eq!(std::fs::read_to_string(&cfg).expect("config"), edited);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/agentbox/agentbox.env")).expect("env"),
        "ANTHROPIC_API_KEY=x\n"
    );
    assert!(root.join("etc/agentbox/agentbox.toml.new").is_file());
    let again = tree(root);
    install(root, &[]);
    assert_eq!(tree(root), again, "the .new file was rewritten");

    // Uninstall keeps state and config; --purge removes everything.
    let uninstall = |args: &[&str]| {
        ok(Command::new("bash")
            .arg(repo_root().join("appliance/uninstall.sh"))
            .arg("--root")
            .arg(root)
            .args(args))
    };
    uninstall(&[]);
    let left: BTreeSet<String> = tree(root).into_keys().collect();
    assert!(left.contains("/etc/agentbox/agentbox.toml"), "{left:?}");
    assert!(left.contains("/var/lib/agentbox"), "{left:?}");
    assert!(
        !left.iter().any(|p| p.starts_with("/usr/bin/agentbox")),
        "{left:?}"
    );
    uninstall(&["--purge"]);
    let left: Vec<String> = tree(root)
        .into_iter()
        .filter(|(_, v)| !v.starts_with("dir"))
        .map(|(k, _)| k)
        .collect();
    assert!(left.is_empty(), "files left after --purge: {left:?}");
}

/// Builds the .deb from the debug binaries (not a release build: that takes
/// minutes on two cores). They are linked into a scratch target directory
/// under `release/`, the path cargo-deb packages; the version carries
/// `~debug` so the result is never mistaken for a release.
fn debug_deb() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        tools();
        // Under the cargo target dir, replaced on every run.
        let scratch = target_dir().join("packaging-test");
        let release = scratch.join("target/release");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&release).expect("scratch target dir");
        std::fs::copy(agentbox_bin(), release.join("agentbox")).expect("copy agentbox");
        std::fs::copy(agent_binary(), release.join("workspace-agent")).expect("copy agent");
        let out_dir = scratch.join("out");
        let started = Instant::now();
        ok(Command::new(env!("CARGO"))
            .args(["deb", "--no-build", "--fast", "-p", "agentbox"])
            .args(["--deb-revision", "0~debug", "-o"])
            .arg(&out_dir)
            .env("CARGO_TARGET_DIR", scratch.join("target"))
            .current_dir(repo_root()));
        let deb = std::fs::read_dir(&out_dir)
            .expect("deb output dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("a .deb");
        let size = std::fs::metadata(&deb).expect("deb size").len();
        eprintln!(
            "built {} (debug binaries, stripped): {} bytes in {:?}",
            deb.display(),
            size,
            started.elapsed()
        );
        deb
    })
    .clone()
}

#[test]
fn deb_carries_what_the_installer_installs() {
    let deb = debug_deb();
    let listing = text(&ok(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    // `-rwxr-xr-x 0/0  123 2026-01-01 00:00 ./usr/bin/agentbox`
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(perm), Some(owner), Some(path)) = (f.first(), f.get(1), f.last()) else {
            continue;
        };
        if perm.starts_with('-') {
            files.insert(
                path.trim_start_matches('.').to_owned(),
                format!("{perm} {owner}"),
            );
        }
    }
    assert!(files.values().all(|v| v.ends_with(" 0/0")), "{files:#?}");

    let dir = tempfile::tempdir().expect("tempdir");
    install(dir.path(), &[]);
    let installed = tree(dir.path());
    // Created at install time (postinst) rather than shipped, or generated.
    let not_shipped = ["/etc/agentbox/agentbox.env"];
    let from_installer: BTreeMap<String, String> = installed
        .iter()
        .filter(|(p, v)| v.starts_with("file") && !not_shipped.contains(&p.as_str()))
        .map(|(p, v)| {
            let mode = u32::from_str_radix(v.split(' ').nth(2).unwrap_or("0"), 8).unwrap_or(0);
            (p.clone(), mode_string(mode))
        })
        .collect();
    let from_deb: BTreeMap<String, String> = files
        .iter()
        .filter(|(p, _)| p.as_str() != "/usr/share/doc/agentbox/copyright")
        .map(|(p, v)| (p.clone(), v.split(' ').next().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        from_deb, from_installer,
        "the .deb and install.sh must ship the same files with the same modes"
    );

    let info = text(&ok(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    for want in [
        "Package: agentbox",
        "~debug",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
        "docker.io | docker-ce",
    ] {
        assert!(info.contains(want), "dpkg-deb -I lacks {want}:\n{info}");
    }
    let package = text(&ok(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Package")));
    assert_eq!(package.trim(), "agentbox");
    let ctrl = tempfile::tempdir().expect("tempdir");
    ok(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(ctrl.path()));
    let conffiles = std::fs::read_to_string(ctrl.path().join("conffiles")).expect("conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/agentbox/agentbox.toml"),
        "{conffiles}"
    );
}

fn mode_string(mode: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// dpkg installs, re-installs over an edited config and purges the
/// package inside a throwaway Debian container (no network, no systemd),
/// so the maintainer scripts run for real without touching this host.
#[test]
fn deb_installs_upgrades_and_purges_in_a_container() {
    let _engine = serial::shared_blocking();
    let deb = debug_deb();
    engine();
    let base = "debian:bookworm-slim";
    let deb_dir = deb.parent().expect("deb dir");
    let name = deb.file_name().and_then(|n| n.to_str()).expect("deb name");
    let script = format!(
        r#"set -eu
deb=/deb/{name}
dpkg -i --force-depends "$deb" >/tmp/install.log 2>&1 || {{ cat /tmp/install.log; exit 1; }}
grep -q 'installed but not started' /tmp/install.log
stat -c '%n %a %U' /etc/agentbox/agentbox.env /var/lib/agentbox /var/log/agentbox /usr/bin/agentbox
/usr/bin/agentbox validate --config /etc/agentbox/agentbox.toml
printf '[pool]\nmin_size = 1\n' >/etc/agentbox/agentbox.toml
echo 'ANTHROPIC_API_KEY=kept' >/etc/agentbox/agentbox.env
touch /var/lib/agentbox/state.redb
dpkg -i --force-depends "$deb" >/dev/null 2>&1
echo "config after reinstall: $(tr '\n' ' ' </etc/agentbox/agentbox.toml)"
echo "env after reinstall: $(cat /etc/agentbox/agentbox.env)"
dpkg -r agentbox >/dev/null 2>&1
test -e /var/lib/agentbox/state.redb && echo "state kept after remove"
test -e /etc/agentbox/agentbox.toml && echo "config kept after remove"
dpkg --purge agentbox >/dev/null 2>&1
for p in /var/lib/agentbox /var/log/agentbox /etc/agentbox /usr/bin/agentbox; do
  test -e "$p" && echo "left after purge: $p"
done
echo done
"#
    );
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/deb:ro", deb_dir.display()),
        base,
        "sh",
        "-c",
        &script,
    ]);
    let log = text(&out);
    assert!(
        out.status.success(),
        "install script failed ({}):\n{log}",
        out.status
    );
    for want in [
        "/etc/agentbox/agentbox.env 600 root",
        "/var/lib/agentbox 700 root",
        "/var/log/agentbox 750 root",
        "/usr/bin/agentbox 755 root",
        "config ok",
        "config after reinstall: [pool] min_size = 1",
        "env after reinstall: ANTHROPIC_API_KEY=kept",
        "state kept after remove",
        "config kept after remove",
        "done",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
    assert!(!log.contains("left after purge"), "{log}");
}

/// A minimal reader of the unit's command lines: `${VAR}` and `$VAR`
/// expanded from `env`, the way systemd expands them.
fn expand(cmd: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    cmd.split_whitespace()
        .map(|word| {
            let mut w = word.to_owned();
            for (k, v) in env {
                w = w
                    .replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v);
            }
            w
        })
        .collect()
}

/// What the notify socket received, in order.
struct NotifyListener {
    socket: UnixDatagram,
    seen: Mutex<Vec<String>>,
}

impl NotifyListener {
    fn wait_for(&self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self
                .seen
                .lock()
                .expect("lock")
                .iter()
                .find(|m| m.starts_with(prefix))
            {
                return m.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {prefix:?} notification within {secs}s; got {:?}",
                self.seen.lock().expect("lock")
            );
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .expect("timeout");
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.lock().expect("lock").push(msg);
            }
        }
    }

    fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

/// The daemon started with the unit's own environment and command lines
/// (config and secrets file swapped for scratch ones, as a drop-in would),
/// under a stand-in for systemd's notify socket: READY after start-up,
/// `doctor` passes beside it, RELOADING/READY frame a SIGHUP, the watchdog
/// pings, and SIGTERM ends in STOPPING and exit 0 within TimeoutStopSec.
#[test]
fn daemon_runs_as_the_unit_says_and_notifies_systemd() {
    let _engine = serial::shared_blocking();
    tools();
    engine();
    let image = crate::harness::test_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let instance = format!("pkg-{}", std::process::id());
    std::fs::create_dir_all(root.join("objects")).expect("objects dir");
    let config = root.join("agentbox.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
instance = "{instance}"
shutdown_grace_secs = 5
[state]
path = "{r}/state.redb"
[storage]
url = "file://{r}/objects"
[model]
anthropic_base_url = "http://127.0.0.1:9"
[container]
image = "{image}"
workspace_root = "{r}/workspaces"
socket_root = "{r}/sockets"
[pool]
min_size = 0
[telemetry]
audit_path = "{r}/log/audit.log"
"#,
            r = root.display()
        ),
    )
    .expect("write config");
    let env_file = root.join("agentbox.env");
    std::fs::write(&env_file, "ANTHROPIC_API_KEY=sk-test-not-a-real-key\n").expect("env file");

    let unit = std::fs::read_to_string(repo_root().join(UNIT)).expect("read unit");
    let s = service_settings(&unit);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in setting(&s, "Environment") {
        let (k, v) = e.split_once('=').expect("Environment=K=V");
        env.insert(k.to_owned(), v.to_owned());
    }
    assert!(env.contains_key("AGENTBOX_CONFIG"), "{env:?}");
    env.insert("AGENTBOX_CONFIG".into(), config.display().to_string());
    assert_eq!(
        setting(&s, "EnvironmentFile"),
        ["-/etc/agentbox/agentbox.env"]
    );
    for line in std::fs::read_to_string(&env_file).expect("env").lines() {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let bin = agentbox_bin().display().to_string();
    let command = |key: &str| -> Command {
        let line = setting(&s, key);
        assert_eq!(line.len(), 1, "{key}: {line:?}");
        let argv = expand(&line[0].replace("/usr/bin/agentbox", &bin), &env);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(&env);
        c
    };

    let out = ok(&mut command("ExecStartPre"));
    assert!(text(&out).contains("config ok"));

    let notify_path = root.join("notify.sock");
    let listener = NotifyListener {
        socket: UnixDatagram::bind(&notify_path).expect("bind notify socket"),
        seen: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    let mut child = command("ExecStart")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the daemon");
    let _guard = KillOnDrop(child.id(), root.to_owned());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "Listening." {
                    let field = |k: &str| v["fields"][k].as_str().unwrap_or("").to_owned();
                    let _ = tx.send((field("addr"), field("admin_addr")));
                }
            }
        }
    });
    let ready = listener.wait_for("READY=1", 60);
    eprintln!("READY after {:?}: {ready:?}", started.elapsed());
    assert!(ready.contains("STATUS=Serving on 127.0.0.1:"), "{ready}");
    let (api, admin) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the daemon logs its addresses");
    listener.wait_for("WATCHDOG=1", 5);

    let doctor = Command::new(&bin)
        .args(["doctor", "--json", "--admin", &admin, "--config"])
        .arg(&config)
        .output()
        .expect("run doctor");
    let report: Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&doctor)));
    assert!(
        doctor.status.success(),
        "doctor failed next to the unit-run daemon: {report:#}"
    );
    assert_ne!(report["worst"], "fail", "{report:#}");

    // A reload rotates tenant tokens: unknown before, known after.
    let token = "rotated-token";
    let status_of = || -> String {
        let out = ok(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("http://{api}/v1/conversations/none-such"),
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status_of(), "401");
    let mut cfg_text = std::fs::read_to_string(&config).expect("config");
    cfg_text.push_str(&format!(
        "[[tenants]]\nid = \"acme\"\ntoken_sha256 = \"{}\"\n",
        agentbox::token_sha256(token)
    ));
    std::fs::write(&config, cfg_text).expect("rewrite config");
    listener.clear();
    ok(Command::new("kill").args(["-HUP", &child.id().to_string()]));
    let reloading = listener.wait_for("RELOADING=1", 10);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    listener.wait_for("READY=1", 10);
    let order: Vec<String> = listener.seen.lock().expect("lock").clone();
    let pos = |p: &str| order.iter().position(|m| m.starts_with(p));
    assert!(pos("RELOADING=1") < pos("READY=1"), "{order:?}");
    assert_eq!(status_of(), "404", "the reloaded tenant's token is refused");

    let stop_timeout: u64 = setting(&s, "TimeoutStopSec")[0].parse().expect("seconds");
    let stop_started = Instant::now();
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    listener.wait_for("STOPPING=1", 10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            stop_started.elapsed() < Duration::from_secs(stop_timeout),
            "the daemon did not stop within TimeoutStopSec={stop_timeout}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
    eprintln!("stopped in {:?}", stop_started.elapsed());
}

struct KillOnDrop(u32, PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
        crate::harness::release_mounts_under(&self.1);
    }
}

/// The systemd test machine's image, built once from
/// `tests/packaging/systemd.Dockerfile` (its tag carries the file's hash,
/// so an edit rebuilds it).
fn systemd_image() -> String {
    let dockerfile = repo_root().join("tests/packaging/systemd.Dockerfile");
    let text = std::fs::read(&dockerfile).expect("read systemd.Dockerfile");
    let tag = format!(
        "agentbox-test/systemd:{}",
        &hex::encode(Sha256::digest(&text))[..12]
    );
    if !docker(&["image", "inspect", &tag]).status.success() {
        let ctx = tempfile::tempdir().expect("tempdir");
        std::fs::write(ctx.path().join("Dockerfile"), &text).expect("write Dockerfile");
        ok(Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(ctx.path())
            .env("DOCKER_BUILDKIT", "0"));
    }
    tag
}

/// Removes the systemd machine, the containers its daemon made and the
/// mounts under the shared directory, whatever the test got to.
struct SystemdMachine {
    name: String,
    instance: String,
    shared: PathBuf,
}

impl SystemdMachine {
    /// Boots the machine: systemd as PID 1, this host's engine socket,
    /// `extra` docker arguments (volumes), and a directory shared at the
    /// same path on both sides with mount propagation into the host.
    fn boot(tag: &str, extra: &[&str]) -> SystemdMachine {
        engine();
        let image = systemd_image();
        let sock = "/var/run/docker.sock";
        assert!(
            Path::new(sock).exists(),
            "the engine's socket {sock} is missing"
        );
        let id = format!("{tag}-{}", std::process::id());
        let shared = std::env::temp_dir().join(format!("agentbox-systemd-{id}"));
        std::fs::create_dir_all(&shared).expect("shared dir");
        let machine = SystemdMachine {
            name: format!("agentbox-systemd-test-{id}"),
            instance: format!("pkg-sd-{id}"),
            shared: shared.clone(),
        };
        ok(Command::new("mount")
            .arg("--bind")
            .arg(&shared)
            .arg(&shared));
        ok(Command::new("mount").arg("--make-rshared").arg(&shared));
        let shared_s = shared.display().to_string();
        let shared_volume = format!("{shared_s}:{shared_s}:rshared");
        let sock_volume = format!("{sock}:/var/run/docker.sock");
        // The package depends on docker.io: its CLI is this host's.
        let cli = String::from_utf8_lossy(
            &ok(Command::new("sh").args(["-c", "command -v docker"])).stdout,
        )
        .trim()
        .to_owned();
        let cli_volume = format!("{cli}:/usr/bin/docker:ro");
        // Not --privileged: a host that is itself a container may lack a
        // capability (CAP_SYS_RESOURCE here), and --privileged then fails.
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &machine.name,
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device",
            "/dev/loop-control",
            "--device-cgroup-rule",
            "b 7:* rwm",
            "--network",
            "none",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "-v",
            &sock_volume,
            "-v",
            &shared_volume,
            "-v",
            &cli_volume,
        ];
        args.extend_from_slice(extra);
        args.push(&image);
        docker_ok_str(&args);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = machine.sh("systemctl is-system-running");
            let s = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if s == "running" || s == "degraded" {
                break;
            }
            assert!(Instant::now() < deadline, "systemd did not come up: {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Loop device nodes for whatever number the kernel hands out (a
        // container's /dev is static; a host's devtmpfs has them already).
        machine.sh_ok(
            "for i in $(seq 0 255); do [ -e /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done",
        );
        machine
    }

    /// A config for this machine: loopback model URL, the test image, the
    /// workspace and socket roots on the shared directory.
    fn config(&self, pool_min: usize) -> String {
        let shared = self.shared.display();
        format!(
            "[server]\ninstance = \"{instance}\"\n\
             [model]\nanthropic_base_url = \"http://127.0.0.1:9\"\n\
             [container]\nimage = \"{image}\"\n\
             workspace_root = \"{shared}/workspaces\"\nsocket_root = \"{shared}/sockets\"\n\
             [pool]\nmin_size = {pool_min}\n",
            instance = self.instance,
            image = crate::harness::test_image(),
        )
    }

    /// Writes `/etc/agentbox/agentbox.toml` in the machine.
    fn write_config(&self, text: &str) {
        let staged = self.shared.join("agentbox.toml");
        std::fs::write(&staged, text).expect("stage config");
        self.sh_ok(&format!(
            "mkdir -p /etc/agentbox && cp {} /etc/agentbox/agentbox.toml",
            staged.display()
        ));
    }

    fn sh(&self, script: &str) -> Output {
        docker(&["exec", &self.name, "sh", "-c", script])
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the systemd machine: {script}\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, prop: &str) -> String {
        self.sh_ok(&format!("systemctl show -p {prop} --value agentbox"))
            .trim()
            .to_owned()
    }

    fn status(&self) -> Value {
        let out = self.sh_ok("agentbox status --json --config /etc/agentbox/agentbox.toml");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json: {e}: {out}"))
    }

    fn journal(&self) -> String {
        self.sh_ok("journalctl -u agentbox -o cat --no-pager")
    }
}

impl Drop for SystemdMachine {
    fn drop(&mut self) {
        let _ = self.sh(
            "systemctl stop agentbox; agentbox destroy-all --config /etc/agentbox/agentbox.toml",
        );
        let _ = docker(&["rm", "-f", &self.name]);
        let filter = format!("label=agentbox.instance={}", self.instance);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
        crate::harness::release_mounts_under(&self.shared);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.shared)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

/// The .deb installed on a machine that runs systemd (a container with
/// systemd as PID 1, using this host's engine through its socket), and
/// agentbox.service run by it with every hardening directive in force:
/// `systemctl start` returns on READY, a warm container is created (its
/// workspace loop-mounted, chowned, its agent answering: the bounding set,
/// syscall filter and device list are enough), the watchdog is fed, reload
/// and stop are clean, and a restart adopts the running container.
///
/// The workspace and socket directories live at the same path on this
/// host and in the machine, on a shared mount, so the engine sees the
/// daemon's quota mounts exactly as on a real host.
#[test]
fn unit_runs_under_real_systemd() {
    let _engine = serial::shared_blocking();
    let deb = debug_deb();
    let deb_dir = deb.parent().expect("deb dir").display().to_string();
    let machine = SystemdMachine::boot("deb", &["-v", &format!("{deb_dir}:/deb:ro")]);
    let shared = machine.shared.clone();
    let shared_s = shared.display().to_string();
    let name = deb.file_name().and_then(|n| n.to_str()).expect("deb name");
    let log = machine.sh_ok(&format!(
        "dpkg -i --force-depends /deb/{name} 2>&1; systemctl is-enabled agentbox || true"
    ));
    assert!(log.contains("installed but not started"), "{log}");
    assert!(log.contains("disabled"), "enabled on first install: {log}");
    assert_eq!(machine.show("ActiveState"), "inactive");

    machine.write_config(&machine.config(1));
    machine.sh_ok("echo ANTHROPIC_API_KEY=sk-test-not-real >>/etc/agentbox/agentbox.env");
    let started = Instant::now();
    machine.sh_ok("systemctl start agentbox");
    eprintln!("systemctl start returned after {:?}", started.elapsed());
    assert_eq!(machine.show("ActiveState"), "active");
    let status_text = machine.show("StatusText");
    assert!(
        status_text.starts_with("Serving on 127.0.0.1:8787"),
        "{status_text}"
    );

    // A warm container, made by the hardened daemon end to end.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let s = machine.status();
        if s["pool"]["ready"] == 1 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no warm container under systemd: {s:#}\n{}",
            machine.journal()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let container = status["containers"][0]["name"]
        .as_str()
        .expect("container name")
        .to_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let workspace = format!("{shared_s}/workspaces/{container}");
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(workspace.as_str()) && l.contains(" ext4 ")),
        "the quota mount {workspace} did not reach the host"
    );
    assert_eq!(
        status["health"]["isolation"]["landlock"]["state"], "available",
        "the syscall filter hides Landlock from the daemon: {status:#}"
    );
    assert!(!machine.show("WatchdogTimestamp").is_empty());
    assert_eq!(machine.show("NRestarts"), "0");

    machine.sh_ok("systemctl reload agentbox");
    assert_eq!(machine.show("ActiveState"), "active");
    assert_eq!(
        machine.show("StatusText"),
        "Serving (configuration reloaded)"
    );
    assert!(machine.journal().contains("Configuration reloaded."));

    machine.sh_ok("systemctl stop agentbox");
    assert_eq!(machine.show("Result"), "success");
    assert_eq!(machine.show("ExecMainStatus"), "0");
    let running = docker_ok_str(&["inspect", "-f", "{{.State.Running}}", &container]);
    assert_eq!(
        running.trim(),
        "true",
        "stopping the daemon stopped a container"
    );

    machine.sh_ok("systemctl start agentbox");
    let journal = machine.journal();
    assert!(
        journal.contains(r#""adopted":1"#),
        "the restarted daemon did not adopt its container:\n{journal}"
    );

    // Purge: the daemon stops and its container goes, nobody else's.
    machine.sh_ok("dpkg --purge agentbox >/dev/null 2>&1");
    assert_ne!(machine.show("ActiveState"), "active");
    assert!(
        !docker(&["inspect", &container]).status.success(),
        "purge left {container} running"
    );
    let left = machine.sh_ok("ls -d /var/lib/agentbox /etc/agentbox /var/log/agentbox 2>&1; true");
    assert!(
        left.lines().all(|l| l.contains("No such file")),
        "left after purge: {left}"
    );
}

fn docker_ok_str(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `appliance/install.sh` and `uninstall.sh --purge` on a host that runs
/// systemd: the script keeps a pre-seeded config, says AppArmor is absent,
/// enables and starts the service, ends with a passing `doctor`, changes
/// nothing when run again, and the purge leaves no trace.
#[test]
fn install_script_on_a_systemd_host() {
    let _engine = serial::shared_blocking();
    let bin = agentbox_bin().display().to_string();
    let agent = agent_binary().display().to_string();
    let repo = repo_root().display().to_string();
    let machine = SystemdMachine::boot(
        "script",
        &[
            "-v",
            &format!("{repo}:/src:ro"),
            "-v",
            &format!("{bin}:/opt/build/agentbox:ro"),
            "-v",
            &format!("{agent}:/opt/build/workspace-agent:ro"),
        ],
    );
    let seeded = machine.config(0);
    machine.write_config(&seeded);
    let install = "bash /src/appliance/install.sh --binary /opt/build/agentbox \
                   --agent-binary /opt/build/workspace-agent --skip-image 2>&1";
    let log = machine.sh_ok(install);
    for want in [
        "kept your edited /etc/agentbox/agentbox.toml",
        "confine themselves with Landlock instead",
        "agentbox.service enabled and (re)started",
        " 0 fail",
    ] {
        assert!(
            log.contains(want),
            "install.sh output lacks {want:?}:\n{log}"
        );
    }
    assert_eq!(machine.show("ActiveState"), "active");
    assert_eq!(
        machine.sh_ok("systemctl is-enabled agentbox").trim(),
        "enabled"
    );
    assert_eq!(
        machine.sh_ok("cat /etc/agentbox/agentbox.toml"),
        seeded,
        "the seeded config was overwritten"
    );

    let again = machine.sh_ok(install);
    assert!(again.contains("0 change(s)"), "{again}");
    assert_eq!(machine.show("ActiveState"), "active");

    let log = machine.sh_ok("bash /src/appliance/uninstall.sh --purge 2>&1");
    assert!(
        log.contains("agentbox.service stopped and disabled"),
        "{log}"
    );
    let left = machine.sh_ok(
        "for p in /usr/bin/agentbox /lib/systemd/system/agentbox.service /usr/share/agentbox \
         /etc/agentbox /var/lib/agentbox /var/log/agentbox; do [ -e $p ] && echo $p; done; true",
    );
    assert!(left.trim().is_empty(), "left after --purge: {left}");
    assert_ne!(machine.show("LoadState"), "loaded");
}
