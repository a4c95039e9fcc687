//! HAProxy in front of several daemons, run with the shipped
//! configuration (`appliance/haproxy/haproxy.cfg`): the scale-out test and
//! the `failover` benchmark share it.

use super::{client, haproxy_prerequisites, repo_root, Daemon, TOKEN};
use serde_json::json;
use std::io::{Read, Write};

/// HAProxy in the foreground with the shipped configuration, listening on
/// a free loopback port in front of `hosts`.
pub struct Balancer {
    child: std::process::Child,
    pub url: String,
    /// HAProxy's runtime API, to read what it thinks of each server.
    stats: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// The servers are named `host-0`, `host-1`, … in the order of `hosts`.
    pub fn start(hosts: &[&Daemon]) -> Balancer {
        haproxy_prerequisites();
        let shipped = std::fs::read_to_string(repo_root().join("appliance/haproxy/haproxy.cfg"))
            .expect("the shipped HAProxy configuration");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("haproxy.sock");
        // Only what differs on a test machine: no syslog socket, a loopback
        // port, the daemons as servers, a runtime API socket to read.
        let mut cfg = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("log /dev/log") || t.starts_with("server ") {
                continue;
            }
            if t.starts_with("bind ") {
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
                continue;
            }
            cfg.push_str(line);
            cfg.push('\n');
            if t == "global" {
                cfg.push_str(&format!("    stats socket {}\n", stats.display()));
            }
        }
        for (i, d) in hosts.iter().enumerate() {
            cfg.push_str(&format!("    server host-{i} {} check\n", d.addr));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        Balancer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stats,
            _dir: dir,
        }
    }

    /// HAProxy's status of a server (`UP`, `DOWN`, `UP 1/2`, …), from
    /// `show stat` on its runtime API; `None` while it cannot be read.
    pub fn server_status(&self, server: &str) -> Option<String> {
        let mut sock = std::os::unix::net::UnixStream::connect(&self.stats).ok()?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        sock.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        sock.read_to_string(&mut csv).ok()?;
        // pxname,svname,…: the status is the 18th column.
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 17 && f[0] == "agentbox_hosts" && f[1] == server)
            .map(|f| f[17].to_owned())
    }

    /// The host that answers for `conversation` now.
    pub async fn host_of(&self, conversation: &str) -> Option<String> {
        let resp = client()
            .get(format!("{}/v1/conversations/{conversation}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        resp.headers()
            .get("x-agentbox-host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Posts a message through the balancer; the answer as it comes.
    pub async fn post(&self, conversation: &str, prompt: &str) -> reqwest::Response {
        post_prompt(&self.url, conversation, prompt).await
    }

    /// A message through the balancer: the serving host and the SSE body.
    pub async fn message(&self, conversation: &str, prompt: &str) -> (String, String) {
        let resp = self.post(conversation, prompt).await;
        assert_eq!(resp.status(), 200, "{conversation}");
        let host = resp.headers()["x-agentbox-host"]
            .to_str()
            .unwrap()
            .to_owned();
        (host, resp.text().await.unwrap())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts a message to `base` (a daemon or the balancer); the answer as it
/// comes.
pub async fn post_prompt(base: &str, conversation: &str, prompt: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/conversations/{conversation}/messages"))
        .bearer_auth(TOKEN)
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .unwrap()
}
