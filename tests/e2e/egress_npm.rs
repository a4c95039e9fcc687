//! `npm install` from a private registry through a brokered bearer token,
//! end to end: real dockerd, the real image, the real CLI's Bash tool and
//! npm in the container, a real registry (verdaccio over HTTPS on the
//! host, `tests/setup/ensure-verdaccio.sh`) that serves nothing without a
//! token. One rule allows only `GET` of one scoped package and its
//! tarballs and adds the token; the container's `~/.npmrc` names the
//! registry and holds no token. The install works; another package and a
//! publish are refused (403, audited with the rule) and never reach the
//! registry; the token is nowhere in the container nor in the daemon's log.

use crate::harness::*;
use mock_model::MockModel;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HOST: &str = "registry.test";
/// The package the rule allows (scoped, so its packument path has the
/// escaped `/` that the proxy's normal form spells `%2F`).
const ALLOWED: &str = "@e2e/allowed";
/// Published too, but outside the rule's paths.
const OTHER: &str = "e2e-other";

/// Starts verdaccio on an ephemeral loopback port and prints `port=N`;
/// appends `METHOD URL AUTHORIZATION` for every request it receives to a
/// log, so the test sees what reached the registry and with what.
const LAUNCHER: &str = r#"
const fs = require('fs');
const [dir, config, log] = process.argv.slice(2);
const { runServer } = require(dir + '/node_modules/verdaccio');
runServer(config).then((server) => {
  server.prependListener('request', (req) => {
    fs.appendFileSync(log, `${req.method} ${req.url} ${req.headers.authorization || '-'}\n`);
  });
  server.listen(0, '127.0.0.1', () => console.log(`port=${server.address().port}`));
}, (err) => { console.error(err); process.exit(1); });
"#;

/// The registry process; killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    requests: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// What reached the registry, one request a line.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.requests)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The verdaccio install (`tests/setup/ensure-verdaccio.sh` prints it).
fn verdaccio_dir() -> PathBuf {
    let script = repo_root().join("tests/setup/ensure-verdaccio.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run ensure-verdaccio.sh");
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// verdaccio over HTTPS: every package needs an authenticated user, no
/// uplinks (nothing is fetched from elsewhere), users by its REST API.
fn start_registry(dir: &Path) -> Registry {
    let d = dir.display();
    let config = format!(
        r#"storage: {d}/storage
auth:
  htpasswd:
    file: {d}/htpasswd
    max_users: 10
uplinks: {{}}
packages:
  '@*/*':
    access: $authenticated
    publish: $authenticated
  '**':
    access: $authenticated
    publish: $authenticated
https:
  key: {d}/key.pem
  cert: {d}/cert.pem
listen: https://127.0.0.1:0
log: {{ type: file, path: {d}/verdaccio.log, level: warn }}
web: {{ enable: false }}
"#
    );
    std::fs::write(dir.join("verdaccio.yaml"), config).unwrap();
    std::fs::write(dir.join("verdaccio.js"), LAUNCHER).unwrap();
    let requests = dir.join("requests.log");
    let mut child = Command::new("node")
        .arg(dir.join("verdaccio.js"))
        .arg(verdaccio_dir())
        .arg(dir.join("verdaccio.yaml"))
        .arg(&requests)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix("port=") {
                let _ = tx.send(port.parse::<u16>());
                break;
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(port)) => port,
        other => {
            let _ = child.kill();
            panic!(
                "verdaccio did not start ({other:?}): {}",
                std::fs::read_to_string(dir.join("verdaccio.log")).unwrap_or_default()
            )
        }
    };
    Registry {
        child,
        port,
        requests,
    }
}

/// A user made through the registry's REST API; its bearer token.
async fn create_user(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .put(format!("{base}/-/user/org.couchdb.user:e2e"))
        .json(&json!({"name": "e2e", "password": "e2e-password-1"}))
        .send()
        .await
        .expect("create user");
    assert_eq!(resp.status().as_u16(), 201, "create user");
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().expect("a token").to_owned()
}

/// `npm publish` of a one-file package from the host, with the token in
/// a user config of the test's own (never the host's npm settings).
fn publish_from_host(dir: &Path, port: u16, token: &str, name: &str) {
    let pkg = dir.join("publish").join(name);
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        json!({"name": name, "version": "1.0.0", "main": "index.js"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        pkg.join("index.js"),
        format!("module.exports = {:?};\n", format!("{name} ok")),
    )
    .unwrap();
    let npmrc = dir.join("host-npmrc");
    std::fs::write(&npmrc, format!("//localhost:{port}/:_authToken={token}\n")).unwrap();
    let out = Command::new("npm")
        .current_dir(&pkg)
        .args([
            "publish",
            "--registry",
            &format!("https://localhost:{port}/"),
        ])
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--cafile")
        .arg(dir.join("ca.pem"))
        .arg("--cache")
        .arg(dir.join("host-npm-cache"))
        .env("NO_PROXY", "localhost")
        .output()
        .expect("npm must be installed");
    assert!(
        out.status.success(),
        "npm publish {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last line of a step's output file: the exit code it appended.
fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_install_with_a_brokered_bearer_token_only_of_the_allowed_package() {
    let _engine = serial::shared().await;
    let dir = tempfile::tempdir().unwrap();
    // `registry.test` is the name containers use, `localhost` the one the
    // host publishes to.
    server_certificates(dir.path(), "e2e npm registry CA", &[HOST, "localhost"]);
    let registry = start_registry(dir.path());
    let port = registry.port;

    // The registry itself: no token, no package; a user's token opens it.
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let _ = client(); // installs the crypto provider
    let host_client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(HOST, ([127, 0, 0, 1], port).into())
        .no_proxy()
        .build()
        .unwrap();
    let base = format!("https://{HOST}:{port}");
    let token = create_user(&host_client, &base).await;
    for name in [ALLOWED, OTHER] {
        publish_from_host(dir.path(), port, &token, name);
    }
    let packument = format!("{base}/@e2e%2fallowed");
    let anonymous = host_client.get(&packument).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "the registry needs a token"
    );
    let authorized = host_client
        .get(&packument)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(authorized.status().as_u16(), 200);
    let before = registry.requests().len();

    let secret_file = dir.path().join("npm-token");
    std::fs::write(&secret_file, &token).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mock = MockModel::start("127.0.0.1:0").await.expect("mock model");
    // npm asks for `/@e2e%2fallowed`; the rule is written in the normal
    // form the proxy matches (and forwards): `%2F`.
    let extra = host_server_config(port, &[HOST], dir.path())
        + &format!(
            r#"
[[egress.credentials]]
name = "npm-token"
format = "bearer"
secret_file = "{secret}"

[[egress.rules]]
name = "npm-allowed"
host = "{HOST}"
methods = ["GET"]
paths = ["/@e2e%2Fallowed", "/@e2e/allowed/-/*.tgz"]
credential = "npm-token"
"#,
            secret = secret_file.display(),
        );
    let opts = DaemonOptions {
        pool_min: 1,
        env: vec![],
        model_url: mock.url(),
        api_key: "sk-ant-egress-npm".to_owned(),
        extra_config: extra,
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(opts))
        .await
        .expect("daemon start");

    // The container's npm settings: the registry, no token. `npm publish`
    // sends nothing without a token of its own (ENEEDAUTH), so it gets a
    // decoy on its command line; the PUT must still be refused.
    let prompt = format!(
        "!bash printf 'registry=https://{HOST}:{port}/\\naudit=false\\nfund=false\\nupdate-notifier=false\\n' > ~/.npmrc\n\
         !bash mkdir -p /workspace/app && cd /workspace/app && echo '{{\"name\":\"app\",\"version\":\"1.0.0\",\"private\":true}}' > package.json && npm install {ALLOWED} > ../install-allowed.txt 2>&1; echo $? >> /workspace/install-allowed.txt\n\
         !bash cd /workspace/app && node -p 'require(\"{ALLOWED}\")' > ../require.txt 2>&1\n\
         !bash cd /workspace/app && npm install {OTHER} > ../install-other.txt 2>&1; echo $? >> /workspace/install-other.txt\n\
         !bash mkdir -p /workspace/pub && cd /workspace/pub && echo '{{\"name\":\"{ALLOWED}\",\"version\":\"1.0.1\"}}' > package.json && npm publish --//{HOST}:{port}/:_authToken=container-decoy > ../publish.txt 2>&1; echo $? >> /workspace/publish.txt\n\
         !text done"
    );
    let (status, body) =
        post_message(&daemon, Some(TOKEN), "npm", json!({ "prompt": prompt })).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    assert!(events.iter().any(|e| e.event == "result"), "{events:#?}");
    let ws = daemon.workspace(TENANT, "npm");
    let out = |f: &str| read_file(&ws.join(f));

    // The allowed package: installed, with no token in the container.
    let installed = out("install-allowed.txt");
    assert_eq!(last_line(&installed), "0", "{installed}");
    assert_eq!(out("require.txt").trim(), format!("{ALLOWED} ok"));

    // Another package and a publish: refused by the proxy.
    for f in ["install-other.txt", "publish.txt"] {
        let text = out(f);
        assert_ne!(last_line(&text), "0", "{f}: {text}");
        assert!(text.contains("403"), "{f}: {text}");
    }
    assert!(
        !ws.join("app/node_modules").join(OTHER).exists(),
        "{OTHER} was installed"
    );

    // What reached the registry from the container: only the allowed
    // package's packument and tarball, each with the brokered token.
    let reached = registry.requests().split_off(before);
    let bearer = format!("Bearer {token}");
    assert!(
        reached
            .iter()
            .any(|l| l.starts_with("GET /@e2e%2Fallowed "))
            && reached
                .iter()
                .any(|l| l.starts_with("GET /@e2e/allowed/-/allowed-1.0.0.tgz ")),
        "{reached:#?}"
    );
    for line in &reached {
        assert!(
            line.starts_with("GET /@e2e") && line.ends_with(&bearer),
            "only the allowed package, always with the brokered token: {line}"
        );
    }

    // Audited with the rule: the allowed requests name the credential,
    // the refusals the host's rule.
    let allowed: Vec<Value> = daemon
        .logged_audit("proxy_request_allowed")
        .into_iter()
        .filter(|e| e["route"] == "intercept" && e["host"] == HOST)
        .collect();
    assert!(
        allowed.len() >= 2
            && allowed.iter().all(|e| e["rule"] == "npm-allowed"
                && e["credential"] == "npm-token"
                && e["method"] == "GET"),
        "{allowed:#?}"
    );
    let blocked: Vec<Value> = daemon
        .logged_audit("proxy_request_blocked")
        .into_iter()
        .filter(|e| e["route"] == "intercept" && e["host"] == HOST)
        .collect();
    for (reason, method) in [("path_not_allowed", "GET"), ("method_not_allowed", "PUT")] {
        assert!(
            blocked.iter().any(|e| e["reason"] == reason
                && e["method"] == method
                && e["rule"] == "npm-allowed"
                && e["status"] == 403),
            "{reason}: {blocked:#?}"
        );
    }

    // The token is nowhere in the container: the workspace (with HOME,
    // its .npmrc and npm's cache), /tmp, the socket directory, npm's
    // effective configuration, and every process's environment.
    let container = daemon
        .container_of(TENANT, "npm")
        .expect("the conversation has a container");
    let (code, found) = agent_shell(
        &container,
        &format!(
            "cache=$(npm config get cache); case $cache in /workspace/*) ;; *) echo cache outside the workspace: $cache;; esac; \
             grep -rl '{token}' /workspace /tmp /run/agentbox \"$HOME\" \"$cache\" 2>/dev/null; \
             npm config list -l 2>/dev/null | grep -c '{token}'"
        ),
    );
    assert_eq!(
        (code, found.trim()),
        (1, "0"),
        "the token reached the container (grep -c exits 1 when it counts none): {found}"
    );
    assert_secret_in_no_environment(&container, &token);
    let (code, npmrc) = agent_shell(&container, "cat ~/.npmrc");
    assert_eq!(code, 0, "{npmrc}");
    assert!(
        npmrc.contains(&format!("registry=https://{HOST}:{port}/")) && !npmrc.contains("_auth"),
        "{npmrc}"
    );

    for line in daemon.logs() {
        assert!(
            !line.contains(&token),
            "the token reached a log line: {line}"
        );
    }
}
