//! The admin listener end to end: the status page in a real headless
//! Chromium, updating live while the daemon changes; the operator CLI
//! (`status`, `gc`, `doctor`, `image build`) against a running daemon; and
//! the admin token.

#[path = "../browser/webdriver.rs"]
mod webdriver;

use crate::harness::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

const KEY: &str = "sk-admin-test";
/// The container's CLI asks the proxy for an outside host: the proxy
/// refuses it and records a `proxy_request_blocked` audit event.
const BLOCKED_EGRESS: &str = "!bash curl -s -x http://127.0.0.1:8080 http://example.com";

async fn agentbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentbox"));
    cmd.args(args).env_remove("AGENTBOX_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run agentbox")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn artifacts() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("test-artifacts")
}

fn run_ok(body: &str) {
    let evs = parse_sse(body);
    assert!(
        evs.iter()
            .any(|e| e.event == "result" && e.data["is_error"] == false),
        "run did not succeed: {evs:#?}"
    );
}

fn text_of(id: &str) -> String {
    format!("return document.getElementById('{id}').textContent")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_updates_live_in_chromium() {
    let _engine = serial::shared().await;
    webdriver::ensure_installed(&repo_root());
    let (_mock, d) = start_with_mock_opts(KEY, 1, "").await;
    d.wait_status(120, "a ready pool container", |s| s["pool"]["ready"] == 1);
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "egress",
        json!({ "prompt": BLOCKED_EGRESS }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    run_ok(&body);
    let container = d.container_of(TENANT, "egress").expect("bound container");

    let browser = webdriver::Browser::start().await;
    browser.goto(&format!("http://{}/", d.admin_addr)).await;
    // Set after load: still there later means the page never reloaded.
    browser
        .eval("window.__loadedOnce = true; return null")
        .await;
    browser
        .wait_for(30, "pool target 1", &text_of("pool-target"), |v| v == "1")
        .await;
    browser
        .wait_for(30, "the live connection", &text_of("conn"), |v| {
            v.as_str().is_some_and(|s| s.starts_with("live"))
        })
        .await;
    let row = browser
        .wait_for(
            30,
            "the conversation's container row",
            &format!(
                "const r = document.querySelector('#containers tr[data-name=\"{container}\"]'); \
                 return r ? r.textContent : null"
            ),
            |v| v.is_string(),
        )
        .await;
    let row = row.as_str().unwrap_or_default();
    assert!(row.contains("claimed") && row.contains("egress"), "{row}");
    assert!(row.contains("runc"), "no isolation tier in {row}");
    assert!(row.contains("MiB"), "no memory reading in {row}");
    browser
        .wait_for(
            30,
            "a highlighted blocked-egress event",
            "return Array.from(document.querySelectorAll('#events tr.blocked'))\
               .map(r => r.textContent).join('|')",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains("example.com") && s.contains("blocked"))
            },
        )
        .await;
    browser
        .wait_for(
            30,
            "the conversation's last run",
            "return document.querySelector('#conversations tbody').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains("egress") && s.contains("ok"))
            },
        )
        .await;
    // The run's model calls, as the gateway counted them.
    let spend = browser
        .wait_for(
            30,
            "the tenant's spend today",
            &format!(
                "const r = document.querySelector('#spend tr[data-tenant=\"{TENANT}\"]'); \
                 return r ? Number(r.children[1].textContent) : null"
            ),
            |v| v.as_u64().is_some_and(|n| n > 0),
        )
        .await;
    eprintln!("spend shown: {spend} tokens");
    let health = browser
        .eval("return document.getElementById('isolation').textContent")
        .await;
    assert!(
        health.as_str().is_some_and(|s| s.contains("Landlock")),
        "{health}"
    );

    // SIGHUP with a bigger pool: the open page follows without a reload.
    d.reload(|c| c.replace("min_size = 1", "min_size = 2"));
    browser
        .wait_for(30, "pool target 2", &text_of("pool-target"), |v| v == "2")
        .await;
    browser
        .wait_for(120, "pool ready 2", &text_of("pool-ready"), |v| v == "2")
        .await;
    browser
        .wait_for(
            30,
            "the new container's row",
            "return document.querySelectorAll('#containers tbody tr[data-state=\"ready\"]').length",
            |v| v == 2,
        )
        .await;
    assert_eq!(
        browser.eval("return window.__loadedOnce === true").await,
        true
    );

    let height = browser
        .eval("return document.documentElement.scrollHeight")
        .await
        .as_u64()
        .unwrap_or(900);
    browser.set_size(1440, height.clamp(600, 4000) + 100).await;
    let shot = artifacts().join("admin-status.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000));
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_status_gc_and_doctor_against_a_running_daemon() {
    let _engine = serial::shared().await;
    let (_mock, d) =
        start_with_mock_opts(KEY, 1, "[gc]\nidle_ttl_secs = 1\ninterval_secs = 3600\n").await;
    d.wait_status(120, "a ready pool container", |s| s["pool"]["ready"] == 1);
    let cfg = d.config_path.to_string_lossy().into_owned();
    let admin = ["--config", cfg.as_str(), "--admin", d.admin_addr.as_str()];

    let out = agentbox(&[&["status"][..], &admin].concat(), &[]).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for want in ["POOL  ready 1/1", "CONTAINER", "reconcile", "landlock"] {
        assert!(shown.contains(want), "no {want:?} in\n{shown}");
    }
    let out = agentbox(&[&["status", "--json"][..], &admin].concat(), &[]).await;
    let s: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(s["pool"]["target"], 1);
    assert!(s["workers"]["pool_refill"].is_object(), "{s:#}");

    // A claimed container idle past the 1 s TTL goes on request.
    let (_, body) = post_message(&d, Some(TOKEN), "sweep-me", json!({"prompt": "!text hi"})).await;
    run_ok(&body);
    assert!(d.container_of(TENANT, "sweep-me").is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = agentbox(&[&["gc"][..], &admin].concat(), &[]).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let removed: u64 = shown
        .trim()
        .strip_prefix("swept: ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected gc output: {shown}"));
    assert!(removed >= 1, "{shown}");
    assert_eq!(d.container_of(TENANT, "sweep-me"), None);
    let s = d.status();
    assert!(
        s["workers"]["gc"]["status"]
            .as_str()
            .is_some_and(|st| st.contains("on request")),
        "{s:#}"
    );

    // Doctor on this host, with the daemon holding the state file.
    std::fs::create_dir_all(d.dir.path().join("objects")).expect("objects dir");
    let out = agentbox(&[&["doctor", "--json"][..], &admin].concat(), &[]).await;
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out)));
    let check = |name: &str| -> Value {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
    };
    // Unused, the gVisor tier passes: runsc registered (the test setup) or absent.
    assert_eq!(check("gvisor")["level"], "pass", "{report:#}");
    let apparmor_on = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    if apparmor_on {
        assert_ne!(check("apparmor")["level"], "warn", "{report:#}");
    } else {
        // This host: AppArmor absent is a warning, never a silent pass.
        let a = check("apparmor");
        assert_eq!(a["level"], "warn", "{a}");
        assert!(
            a["detail"].as_str().unwrap_or_default().contains("absent"),
            "{a}"
        );
        let l = check("landlock");
        assert_eq!(l["level"], "pass", "{l}");
        assert!(
            l["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("available"),
            "{l}"
        );
    }
    let userns =
        docker_ok(&["info", "--format", "{{json .SecurityOptions}}"]).contains("name=userns");
    assert_eq!(
        check("userns-remap")["level"],
        if userns { "pass" } else { "warn" }
    );
    assert_eq!(check("docker")["level"], "pass");
    assert_eq!(check("seccomp")["level"], "pass");
    assert_eq!(check("image")["level"], "pass");
    assert_eq!(check("object-store")["level"], "pass");
    assert_eq!(check("disk-quota")["level"], "pass");
    let state = check("state-file");
    assert!(
        state["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("held by the running daemon"),
        "{state}"
    );
    let clock = check("clock");
    assert_eq!(
        clock["level"], "warn",
        "the mock model is plain HTTP: {clock}"
    );
    let any_fail = report["checks"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["level"] == "fail"));
    assert_eq!(out.status.success(), !any_fail, "exit status vs {report:#}");
    let out = agentbox(&[&["doctor"][..], &admin].concat(), &[]).await;
    let shown = text(&out);
    assert!(shown.contains("PASS  docker"), "{shown}");
    assert!(
        shown.contains(" pass, ") && shown.contains(" fail\n"),
        "{shown}"
    );

    // No daemon there: a clear error, not a hang.
    let out = agentbox(&["status", "--config", &cfg, "--admin", "127.0.0.1:9"], &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("not reachable"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn image_build_wraps_the_build_script() {
    let _engine = serial::shared().await;
    tokio::task::spawn_blocking(prerequisites)
        .await
        .expect("prerequisites");
    let context = repo_root().join("workspace-base");
    let image = test_image();
    let out = agentbox(
        &[
            "image",
            "build",
            "--context",
            &context.to_string_lossy(),
            &image,
        ],
        &[],
    )
    .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("image build: running"), "{shown}");
    assert!(shown.contains("up to date"), "{shown}");
    assert!(shown.contains("image build: finished"), "{shown}");
    let out = agentbox(&["image", "build", "--context", "/nonexistent"], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

/// A daemon of our own with an admin token and an empty pool.
struct TokenDaemon {
    child: tokio::process::Child,
    admin: String,
    _dir: tempfile::TempDir,
}

const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn token_config(dir: &std::path::Path, admin_listen: &str, token: Option<&str>) -> PathBuf {
    let hash = token
        .map(|t| format!("admin_token_sha256 = \"{}\"", agentbox::token_sha256(t)))
        .unwrap_or_default();
    let root = dir.display();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "{admin_listen}"
{hash}
instance = "e2e-admin-token-{pid}"

[state]
path = "{root}/state.redb"

[container]
workspace_root = "{root}/workspaces"
socket_root = "{root}/sockets"
image = "{image}"

[pool]
min_size = 0

[[tenants]]
id = "{TENANT}"
token_sha256 = "{tenant}"
"#,
        pid = std::process::id(),
        image = test_image(),
        tenant = agentbox::token_sha256(TOKEN),
    );
    let path = dir.join("agentbox.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

async fn start_token_daemon() -> TokenDaemon {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = token_config(dir.path(), "127.0.0.1:0", Some(ADMIN_TOKEN));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agentbox");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let admin = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "Listening." {
                return v["fields"]["admin_addr"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("daemon did not log its admin address");
    // Keep draining the log so the daemon never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    TokenDaemon {
        child,
        admin,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_the_listener() {
    let _engine = serial::shared().await;
    tokio::task::spawn_blocking(prerequisites)
        .await
        .expect("prerequisites");
    // Off loopback without a token: refused before anything starts.
    let dir = tempfile::tempdir().expect("tempdir");
    let open = token_config(dir.path(), "0.0.0.0:0", None);
    let open = open.to_string_lossy();
    for cmd in ["validate", "serve"] {
        let out = agentbox(&[cmd, "--config", &open], &[]).await;
        assert_eq!(out.status.code(), Some(64), "{cmd}: {}", text(&out));
        assert!(
            text(&out).contains("server.admin_token_sha256"),
            "{}",
            text(&out)
        );
    }

    let mut d = start_token_daemon().await;
    let http = crate::harness::client();
    let url = format!("http://{}/admin/api/status", d.admin);
    let r = http.get(&url).send().await.expect("status");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 401, "a tenant's token is not the admin's");
    let r = http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200);
    let page = http
        .get(format!("http://{}/", d.admin))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let health = http
        .get(format!("http://{}/healthz", d.admin))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let out = agentbox(&["status", "--admin", &d.admin], &[]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("401"), "{}", text(&out));
    let out = agentbox(
        &["status", "--admin", &d.admin],
        &[("AGENTBOX_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("POOL  ready 0/0"), "{}", text(&out));
    let _ = d.child.kill().await;
}
