//! The daemon under test: the real `agentbox` binary started on a config
//! of its own (state, workspaces, sockets, instance label) against a mock
//! model; its logs, status and audit file, its restarts and its end.

use super::engine::{docker, docker_ok};
use super::host::release_mounts_under;
use super::prereq::{prerequisites, test_image};
use mock_model::MockModel;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TENANT: &str = "acme";
pub const TOKEN: &str = "test-token-acme";
pub const OTHER_TENANT: &str = "globex";
pub const OTHER_TOKEN: &str = "test-token-globex";

/// A running daemon with its own state, workspaces, sockets and instance
/// label; removes its containers when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub admin_addr: String,
    pub config_path: PathBuf,
    pub instance: String,
    pub dir: tempfile::TempDir,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub api_key: String,
    pub env: Vec<(String, String)>,
}

pub struct DaemonOptions {
    pub pool_min: usize,
    /// Extra environment for the daemon (e.g. `AGENTBOX_SERVER_*` overrides).
    pub env: Vec<(String, String)>,
    pub model_url: String,
    pub api_key: String,
    pub extra_config: String,
}

impl Daemon {
    pub fn start(opts: DaemonOptions) -> Daemon {
        Self::start_with_env(opts, &[])
    }

    /// Like [`Daemon::start`], with extra environment for the daemon
    /// (`AGENTBOX_<SECTION>_<KEY>` overrides, `AWS_*` credentials).
    pub fn start_with_env(mut opts: DaemonOptions, env: &[(String, String)]) -> Daemon {
        opts.env.extend(env.iter().cloned());
        prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("agentbox-e2e-")
            .tempdir()
            .expect("tempdir");
        let instance = format!(
            "e2e-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .trim_start_matches('.')
                .replace('-', "")
        );
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
instance = "{instance}"
shutdown_grace_secs = 5

[state]
path = "{root}/state.redb"

[storage]
url = "file://{root}/objects"

[model]
anthropic_base_url = "{model}"
max_retries = 0

[container]
workspace_root = "{root}/workspaces"
socket_root = "{root}/sockets"
memory_mb = 1024
image = "{image}"

[pool]
min_size = {pool_min}
burst_max_size = 0

[telemetry]
audit_path = "{root}/audit.log"

{extra}

[[tenants]]
id = "{TENANT}"
token_sha256 = "{t1}"

[[tenants]]
id = "{OTHER_TENANT}"
token_sha256 = "{t2}"
max_concurrent_runs = 1
"#,
            root = dir.path().display(),
            model = opts.model_url,
            extra = opts.extra_config,
            image = test_image(),
            pool_min = opts.pool_min,
            t1 = agentbox::token_sha256(TOKEN),
            t2 = agentbox::token_sha256(OTHER_TOKEN),
        );
        // Each daemon's egress CA in its own directory, never the
        // host's default one.
        opts.env.push((
            "AGENTBOX_EGRESS_CA_DIR".to_owned(),
            format!("{}/egress-ca", dir.path().display()),
        ));
        let config_path = dir.path().join("agentbox.toml");
        std::fs::write(&config_path, config).expect("write config");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (child, addr, admin_addr) = spawn_daemon(&config_path, &opts.api_key, &opts.env, &logs);
        Daemon {
            child,
            addr,
            admin_addr,
            config_path,
            instance,
            dir,
            logs,
            api_key: opts.api_key,
            env: opts.env,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin status JSON (pool, containers, workers).
    pub fn status(&self) -> Value {
        let url = format!("http://{}/admin/api/status", self.admin_addr);
        let out = Command::new("curl")
            .args(["-sf", &url])
            .output()
            .expect("curl the admin status");
        assert!(out.status.success(), "admin status failed");
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// Polls the status until `pred` holds, or panics after `secs`.
    pub fn wait_status(&self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container serving a conversation, per the daemon's state.
    pub fn container_of(&self, tenant: &str, conversation: &str) -> Option<String> {
        let s = self.status();
        s["containers"].as_array()?.iter().find_map(|c| {
            let b = &c["binding"];
            (b["tenant_id"] == tenant && b["conversation_id"] == conversation)
                .then(|| c["name"].as_str().unwrap_or_default().to_owned())
        })
    }

    /// The host directory mounted at /workspace in the conversation's container.
    pub fn workspace(&self, tenant: &str, conversation: &str) -> PathBuf {
        let name = self
            .container_of(tenant, conversation)
            .expect("the conversation has a container");
        self.dir.path().join("workspaces").join(name)
    }

    /// Ids of this daemon's containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        docker_ok(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=agentbox.instance={}", self.instance),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// `kill -9`: no chance to clean up, as after a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again on the same config and state (after `kill9`).
    pub fn restart(&mut self) {
        let (child, addr, admin_addr) =
            spawn_daemon(&self.config_path, &self.api_key, &self.env, &self.logs);
        self.child = child;
        self.addr = addr;
        self.admin_addr = admin_addr;
    }

    /// Rewrites the config file with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, edit(text)).expect("write config");
    }

    /// Rewrites the config file with `edit` and sends SIGHUP.
    pub fn reload(&self, edit: impl FnOnce(String) -> String) {
        self.edit_config(edit);
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Container names the engine has for this daemon, running or not.
    pub fn engine_names(&self) -> std::collections::BTreeSet<String> {
        docker_ok(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=agentbox.instance={}", self.instance),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Container names the daemon's state knows.
    pub fn state_names(&self) -> std::collections::BTreeSet<String> {
        self.status()["containers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for id in self.containers() {
            let _ = docker(&["rm", "-f", "-v", &id]);
        }
        release_mounts_under(self.dir.path());
    }
}

/// Starts `agentbox serve` and waits for its listen addresses.
fn spawn_daemon(
    config_path: &Path,
    api_key: &str,
    env: &[(String, String)],
    logs: &Arc<Mutex<Vec<String>>>,
) -> (Child, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentbox"));
    // moto's dummy credentials sit in this process's environment for the
    // in-process S3 suite; a daemon gets only those its test passes, so no
    // area depends on whether the sync tests ran before it.
    for (key, _) in super::moto::PROCESS_ENV {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config_path)
        .envs(env.iter().cloned())
        .env("ANTHROPIC_API_KEY", api_key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentbox");
    // stderr is kept with the log lines (a panic lands there) and still
    // shown in the test's output.
    let stderr = child.stderr.take().expect("stderr");
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            sink.lock().unwrap().push(line);
        }
    });
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "Listening." {
                    let field = |k: &str| v["fields"][k].as_str().unwrap_or("").to_owned();
                    let _ = addr_tx.send((field("addr"), field("admin_addr")));
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let (addr, admin_addr) = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("daemon did not log its listen address");
    (child, addr, admin_addr)
}

/// `env` plus the setting that makes the daemon trust an HTTPS mock's
/// test CA (`model.extra_ca_file`), as an operator would a private CA.
pub fn with_mock_ca(mut env: Vec<(String, String)>, mock: &MockModel) -> Vec<(String, String)> {
    if let Some(path) = mock.ca_file() {
        env.push((
            "AGENTBOX_MODEL_EXTRA_CA_FILE".to_owned(),
            path.display().to_string(),
        ));
    }
    env
}

/// A mock model (HTTPS, like the real upstream) plus a daemon pointed at it.
pub async fn start_with_mock(api_key: &str) -> (MockModel, Daemon) {
    start_with_mock_opts(api_key, 1, "").await
}

/// Like [`start_with_mock`] with a pool size and extra config sections.
pub async fn start_with_mock_opts(
    api_key: &str,
    pool_min: usize,
    extra: &str,
) -> (MockModel, Daemon) {
    start_with_mock_env(api_key, pool_min, extra, Vec::new()).await
}

/// Like [`start_with_mock_opts`] with extra environment for the daemon.
pub async fn start_with_mock_env(
    api_key: &str,
    pool_min: usize,
    extra: &str,
    env: Vec<(String, String)>,
) -> (MockModel, Daemon) {
    let mock = MockModel::start_tls("127.0.0.1:0")
        .await
        .expect("start mock model");
    let opts = DaemonOptions {
        env: with_mock_ca(env, &mock),
        pool_min,
        model_url: mock.url(),
        api_key: api_key.to_owned(),
        extra_config: extra.to_owned(),
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(opts))
        .await
        .expect("daemon start");
    (mock, daemon)
}

impl Daemon {
    /// The audit events written so far (one JSON object a line).
    /// The audit events of one kind as the daemon logged them (the
    /// `audit` field of its tracing lines).
    pub fn logged_audit(&self, event: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["fields"]["audit"]
                    .as_str()
                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
            })
            .filter(|a| a["event"] == event)
            .collect()
    }

    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
