//! Egress rules down to method and path, TLS interception and brokered
//! credentials, end to end: real dockerd, the real image, the real CLI's
//! Bash tool. A git server on the host (`git http-backend` behind a small
//! Python HTTPS server) requires basic auth; one rule brokers that
//! credential and allows only `org/a.git`. From the agent's Bash, `git
//! clone` and `git push` of that repository work with no credential in the
//! container; the other repository on the same host is refused (403,
//! audited with the rule), and the secret is nowhere in the container.
//! Then narrowing (a run's and a session's), the status's rule counts, and
//! a SIGHUP that takes the rules away from under open connections.

use crate::harness::session::{lines_until, open_session_narrowed, send_line, user_line};
use crate::harness::*;
use mock_model::MockModel;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SECRET: &str = "git-broker-canary-5e1d9a";
const GIT_USER: &str = "agent";
/// The rules: `repo-a` sees inside `git.test`, `open` is a blind tunnel
/// to the same server under another name. The reload at the end takes
/// both away.
const RULES: &str = r#"
[[egress.rules]]
name = "repo-a"
host = "git.test"
methods = ["GET", "POST"]
paths = ["/org/a.git/info/refs", "/org/a.git/git-upload-pack", "/org/a.git/git-receive-pack"]
credential = "git-basic"

[[egress.rules]]
name = "open"
host = "open.test"
"#;

/// A process the agent left running, holding an intercepted connection to
/// `git.test` and a blind tunnel to `open.test` open through the proxy.
/// One JSON line per step to `out`: each connection's answer before the
/// reload, on the same connections once `go` exists, then on new ones.
const HOLDER: &str = r#"
import http.client, json, os, ssl, sys, time
from urllib.parse import urlsplit
port, out, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
proxy = urlsplit(os.environ["HTTPS_PROXY"])
# The intercepted host shows the proxy's leaf (trusted through the
# bundle); the blind tunnel the server's own, of the test's CA, which the
# container does not hold: its TLS is end to end, not the proxy's concern.
ctx = {"git.test": ssl.create_default_context(), "open.test": ssl._create_unverified_context()}
def conn(host):
    c = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx[host], timeout=30)
    c.set_tunnel(host, port)
    return c
def get(c):
    try:
        c.request("GET", "/org/a.git/info/refs?service=git-upload-pack")
        r = c.getresponse()
        r.read()
        return str(r.status)
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
def step(name, a, b):
    with open(out, "a") as f:
        f.write(json.dumps({"step": name, "intercepted": a, "tunnel": b}) + "\n")
inter, tunnel = conn("git.test"), conn("open.test")
step("before", get(inter), get(tunnel))
while not os.path.exists(go):
    time.sleep(0.05)
step("open", get(inter), get(tunnel))
step("new", get(conn("git.test")), get(conn("open.test")))
"#;

/// An HTTPS git server: basic auth, then `git http-backend` as CGI. Prints
/// its port; logs one line per request it served to `requests.log`.
const GIT_SERVER: &str = r#"
import base64, os, ssl, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
cert, key, root, user, secret, log = sys.argv[1:7]
want = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def serve(self):
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path} auth={self.headers.get('Authorization') == want}\n")
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = self.headers.get("Content-Length")
            body = self.rfile.read(int(n)) if n else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER=user, REMOTE_ADDR="127.0.0.1")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            head, sep, rest = out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    do_GET = do_POST = serve

    def log_message(self, fmt, *args):
        pass

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The git server process; killed when dropped.
struct GitServer {
    child: Child,
    port: u16,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two bare repositories, `org/a.git` and `org/b.git`, one commit each.
fn repositories(root: &Path) {
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    run(Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(&seed));
    std::fs::write(seed.join("README"), "seed\n").unwrap();
    run(Command::new("git").current_dir(&seed).args([
        "-c",
        "user.email=e2e@agentbox.invalid",
        "-c",
        "user.name=e2e",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "seed",
    ]));
    run(Command::new("git")
        .current_dir(&seed)
        .args(["add", "README"]));
    run(Command::new("git").current_dir(&seed).args([
        "-c",
        "user.email=e2e@agentbox.invalid",
        "-c",
        "user.name=e2e",
        "commit",
        "-q",
        "-m",
        "readme",
    ]));
    for name in ["a", "b"] {
        let bare = root.join(format!("org/{name}.git"));
        run(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&seed)
            .arg(&bare));
        run(Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["config", "http.receivepack", "true"]));
    }
}

fn start_git_server(dir: &Path) -> GitServer {
    let script = dir.join("git_server.py");
    std::fs::write(&script, GIT_SERVER).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(dir.join("repos"))
        .arg(GIT_USER)
        .arg(SECRET)
        .arg(dir.join("requests.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 must be installed");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("git server printed {line:?}"));
    GitServer { child, port }
}

fn container_of(daemon: &Daemon, conversation: &str) -> String {
    daemon
        .container_of(TENANT, conversation)
        .expect("the conversation has a container")
}

#[tokio::test(flavor = "multi_thread")]
async fn git_clone_and_push_with_a_brokered_credential_only_to_the_allowed_repository() {
    let _engine = serial::shared().await;
    let dir = tempfile::tempdir().unwrap();
    server_certificates(dir.path(), "e2e git server CA", &["git.test", "open.test"]);
    repositories(&dir.path().join("repos"));
    let git = start_git_server(dir.path());
    let mock = MockModel::start("127.0.0.1:0").await.expect("mock model");
    let extra = host_server_config(git.port, &["git.test", "open.test"], dir.path())
        + &format!(
            r#"
[[egress.credentials]]
name = "git-basic"
format = "basic"
user = "{GIT_USER}"
secret_env = "E2E_GIT_SECRET"

{RULES}"#
        );
    let opts = DaemonOptions {
        pool_min: 1,
        env: vec![("E2E_GIT_SECRET".to_owned(), SECRET.to_owned())],
        model_url: mock.url(),
        api_key: "sk-ant-egress-rules".to_owned(),
        extra_config: extra,
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(opts))
        .await
        .expect("daemon start");

    let url = |repo: &str| format!("https://git.test:{}/org/{repo}.git", git.port);
    let prompt = format!(
        "!bash cd /workspace && git clone -q {a} a > clone-a.txt 2>&1; echo $? >> clone-a.txt\n\
         !bash cd /workspace/a && echo agent > AGENT && git add AGENT && git -c user.email=agent@agentbox.invalid -c user.name=agent commit -q -m agent && git push -q origin HEAD:main > ../push-a.txt 2>&1; echo $? >> ../push-a.txt\n\
         !bash cd /workspace && git clone -q {b} b > clone-b.txt 2>&1; echo $? >> clone-b.txt\n\
         !bash cd /workspace/a && git push -q {b} HEAD:main > ../push-b.txt 2>&1; echo $? >> ../push-b.txt\n\
         !text done",
        a = url("a"),
        b = url("b"),
    );
    let (status, body) =
        post_message(&daemon, Some(TOKEN), "git", json!({ "prompt": prompt })).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    assert!(events.iter().any(|e| e.event == "result"), "{events:#?}");
    let ws = daemon.workspace(TENANT, "git");
    let out = |f: &str| read_file(&ws.join(f));

    // Repository a: cloned and pushed, with no credential in the container.
    assert!(
        out("clone-a.txt").trim_end().ends_with('0'),
        "{}",
        out("clone-a.txt")
    );
    assert_eq!(read_file(&ws.join("a/README")), "seed\n");
    assert!(
        out("push-a.txt").trim_end().ends_with('0'),
        "{}",
        out("push-a.txt")
    );
    let log = Command::new("git")
        .arg("-C")
        .arg(dir.path().join("repos/org/a.git"))
        .args(["log", "--format=%s", "-1", "main"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log.stdout).trim(),
        "agent",
        "the push landed"
    );

    // Repository b on the same host: refused by the proxy, never reached.
    for f in ["clone-b.txt", "push-b.txt"] {
        let text = out(f);
        assert!(!text.trim_end().ends_with('0'), "{f}: {text}");
        assert!(text.contains("403"), "{f}: {text}");
    }
    let served = read_file(&dir.path().join("requests.log"));
    assert!(!served.contains("/org/b.git"), "{served}");
    assert!(
        served.lines().all(|l| l.ends_with("auth=True")),
        "every request reached the server with the brokered credential: {served}"
    );
    let b_log = Command::new("git")
        .arg("-C")
        .arg(dir.path().join("repos/org/b.git"))
        .args(["log", "--format=%s", "-1", "main"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&b_log.stdout).trim(), "readme");

    // Audited with the rule: allowed requests name the credential, the
    // refusals the host's rule.
    let allowed: Vec<Value> = daemon
        .logged_audit("proxy_request_allowed")
        .into_iter()
        .filter(|e| e["route"] == "intercept")
        .collect();
    assert!(
        allowed.iter().any(|e| e["rule"] == "repo-a"
            && e["credential"] == "git-basic"
            && e["method"] == "POST"),
        "{allowed:#?}"
    );
    let blocked: Vec<Value> = daemon
        .logged_audit("proxy_request_blocked")
        .into_iter()
        .filter(|e| e["route"] == "intercept")
        .collect();
    assert!(
        blocked.iter().any(|e| e["reason"] == "path_not_allowed"
            && e["rule"] == "repo-a"
            && e["status"] == 403),
        "{blocked:#?}"
    );

    // curl, Python's urllib and Node's fetch trust the intercepted host
    // with no flag (the bundle's variables), and meet the same rules.
    let container = container_of(&daemon, "git");
    let refs = format!("{}/info/refs?service=git-upload-pack", url("a"));
    let other = format!("{}/info/refs?service=git-upload-pack", url("b"));
    for (tool, cmd) in [
        ("curl", format!("curl -sS -o /dev/null -w '%{{http_code}}' '{refs}'; echo; curl -sS -o /dev/null -w '%{{http_code}}' '{other}'")),
        ("python", format!("python3 -c \"import urllib.request as u, urllib.error as e\nfor x in ['{refs}', '{other}']:\n  try: print(u.urlopen(x).status)\n  except e.HTTPError as err: print(err.code)\"")),
        ("node", format!("node -e \"(async () => {{ for (const x of ['{refs}', '{other}']) console.log((await fetch(x)).status) }})()\"")),
    ] {
        let (code, text) = agent_shell(&container, &cmd);
        assert_eq!((code, text.split_whitespace().collect::<Vec<_>>()), (0, vec!["200", "403"]), "{tool}: {text}");
    }

    // The secret is nowhere in the container: files it can write, the
    // socket directory, and the environment of every process (all run as
    // the agent user, whose environments it may read).
    let (code, found) = agent_shell(
        &container,
        &format!("grep -rl '{SECRET}' /workspace /tmp /run/agentbox 2>/dev/null; true"),
    );
    assert_eq!((code, found.trim()), (0, ""), "the secret reached a file");
    assert_secret_in_no_environment(&container, SECRET);
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{GIT_USER}:{SECRET}"))
    };
    let (_, found) = agent_shell(
        &container,
        &format!("grep -rl '{basic}' /workspace /tmp /run/agentbox 2>/dev/null; true"),
    );
    assert_eq!(
        found.trim(),
        "",
        "the encoded credential reached the container"
    );

    // A run narrows its tenant's rules, never widens them: a rule the
    // tenant lacks is a 400; a run that keeps none reaches nothing.
    let (status, body) = post_message(
        &daemon,
        Some(TOKEN),
        "git",
        json!({"prompt": "!text hi", "egress_rules": ["repo-a", "not-a-rule"]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not-a-rule"), "{body}");
    let (status, body) = post_message(
        &daemon,
        Some(TOKEN),
        "git",
        json!({
            "prompt": format!("!bash cd /workspace && git ls-remote {} > narrowed.txt 2>&1; echo $? >> narrowed.txt\n!text done", url("a")),
            "egress_rules": [],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let narrowed = out("narrowed.txt");
    assert!(
        !narrowed.trim_end().ends_with('0') && narrowed.contains("403"),
        "{narrowed}"
    );

    // An SDK session narrows the same way: the `egress_rules` query
    // parameter, checked before the upgrade.
    let Err(refused) =
        open_session_narrowed(&daemon, TOKEN, "git", json!({}), Some(&["nope"])).await
    else {
        panic!("an unknown rule is refused before the upgrade");
    };
    assert_eq!(refused.0, 400, "{}", refused.1);
    assert!(refused.1.contains("nope"), "{}", refused.1);
    let mut ws = open_session_narrowed(
        &daemon,
        TOKEN,
        "git",
        json!({"permission_mode": "bypassPermissions"}),
        Some(&[]),
    )
    .await
    .expect("a session keeping no rule opens");
    send_line(
        &mut ws,
        user_line(&format!(
            "!bash cd /workspace && git ls-remote {} > session.txt 2>&1; echo $? >> session.txt\n!text done",
            url("a")
        )),
    )
    .await;
    lines_until(&mut ws, "result").await;
    send_line(&mut ws, json!({"type": "end_input"})).await;
    drop(ws);
    let session = out("session.txt");
    assert!(
        !session.trim_end().ends_with('0') && session.contains("403"),
        "{session}"
    );

    // The status page's view: the tenant's rule with what it allowed and
    // refused, the refusals by reason.
    let status = daemon.status();
    let rule = status["egress_rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["tenant_id"] == TENANT)
        .flat_map(|t| t["rules"].as_array().cloned().unwrap_or_default())
        .find(|r| r["name"] == "repo-a")
        .unwrap_or_else(|| panic!("repo-a on the status: {status:#}"));
    assert_eq!(rule["scope"], "global", "{rule:#}");
    assert_eq!(rule["credential"], "git-basic", "{rule:#}");
    assert!(rule["allowed"].as_u64().unwrap() >= 4, "{rule:#}");
    assert!(
        rule["refusals"]["path_not_allowed"].as_u64().unwrap() >= 2,
        "{rule:#}"
    );
    assert_eq!(
        rule["refused"].as_u64(),
        Some(
            rule["refusals"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum()
        ),
        "{rule:#}"
    );

    for line in daemon.logs() {
        assert!(
            !line.contains(SECRET) && !line.contains(&basic),
            "a credential reached a log line: {line}"
        );
    }

    // SIGHUP takes both rules away: the connections a process left open
    // (one intercepted, one blind tunnel) are closed, and new ones refused.
    let (status, body) = post_message(
        &daemon,
        Some(TOKEN),
        "hold",
        json!({"prompt": "!text ready"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let holder = container_of(&daemon, "hold");
    let hold_ws = daemon.workspace(TENANT, "hold");
    std::fs::write(hold_ws.join("holder.py"), HOLDER).unwrap();
    let port = git.port.to_string();
    docker_ok(&[
        "exec",
        "-d",
        "--user",
        "1000:1000",
        &holder,
        "sh",
        "-c",
        &format!(
            "python3 /workspace/holder.py {port} /workspace/holder.jsonl /workspace/go \
             2> /workspace/holder.err"
        ),
    ]);
    let steps = |n: usize| -> Vec<Value> {
        tokio::task::block_in_place(|| {
            let what = || {
                format!(
                    "the holder's steps (its stderr: {:?})",
                    std::fs::read_to_string(hold_ws.join("holder.err")).unwrap_or_default()
                )
            };
            wait_until(60, what, || {
                let text =
                    std::fs::read_to_string(hold_ws.join("holder.jsonl")).unwrap_or_default();
                let lines: Vec<Value> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                (lines.len() >= n).then_some(lines)
            })
        })
    };
    let before = &steps(1)[0];
    assert_eq!(
        (&before["intercepted"], &before["tunnel"]),
        (&json!("200"), &json!("401")),
        "the intercepted request has the credential, the tunnel goes blind: {before}"
    );
    tokio::task::block_in_place(|| daemon.reload(|c| c.replace(RULES, "")));
    let closed = tokio::task::block_in_place(|| {
        wait_until(
            30,
            || "both connections closed by the reload".into(),
            || {
                let closed: Vec<Value> = daemon
                    .logged_audit("proxy_request_blocked")
                    .into_iter()
                    .filter(|e| e["reason"] == "closed_by_reload")
                    .collect();
                (closed.len() >= 2).then_some(closed)
            },
        )
    });
    let hosts: std::collections::BTreeSet<_> = closed
        .iter()
        .map(|e| e["host"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        hosts,
        ["git.test", "open.test"].map(str::to_owned).into(),
        "{closed:#?}"
    );
    std::fs::write(hold_ws.join("go"), b"").unwrap();
    let after = steps(3);
    for conn in ["intercepted", "tunnel"] {
        let open = after[1][conn].as_str().unwrap_or_default();
        // Closed: the request fails on the connection (no 200, and no 401
        // from the server behind the tunnel).
        assert!(
            !open.starts_with('2') && !open.starts_with("401"),
            "{conn} still answered after the reload: {open}"
        );
        let new = after[2][conn].as_str().unwrap_or_default();
        assert!(new.contains("403"), "a new {conn} after the reload: {new}");
    }
    let status = daemon.status();
    let removed: Vec<&Value> = status["egress_rules"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["scope"] == "removed")
        .collect();
    assert!(
        removed
            .iter()
            .any(|r| r["name"] == "repo-a" && r["allowed"].as_u64() > Some(0)),
        "the removed rule stays on the status with its counts: {status:#}"
    );
}
