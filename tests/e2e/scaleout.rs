//! Several hosts as one service (docs/scale-out.md): two daemons sharing
//! one S3 bucket, behind HAProxy run with the shipped configuration
//! (`appliance/haproxy/haproxy.cfg`).

use crate::harness::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEY: &str = "sk-scaleout-test";

/// HAProxy in the foreground with the shipped configuration, listening on
/// a free loopback port in front of `hosts`.
struct Balancer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(hosts: &[&Daemon]) -> Balancer {
        haproxy_prerequisites();
        let shipped = std::fs::read_to_string(repo_root().join("appliance/haproxy/haproxy.cfg"))
            .expect("the shipped HAProxy configuration");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Only what differs on a test machine: no syslog socket, a loopback
        // port, the two daemons as servers.
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
        }
        for (i, d) in hosts.iter().enumerate() {
            cfg.push_str(&format!("    server host-{i} {} check\n", d.addr));
        }
        let dir = tempfile::tempdir().unwrap();
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
            _dir: dir,
        }
    }

    /// The host that answers for `conversation` now.
    async fn host_of(&self, conversation: &str) -> Option<String> {
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

    /// A message through the balancer: the serving host and the SSE body.
    async fn message(&self, conversation: &str, prompt: &str) -> (String, String) {
        let resp = client()
            .post(format!(
                "{}/v1/conversations/{conversation}/messages",
                self.url
            ))
            .bearer_auth(TOKEN)
            .json(&json!({ "prompt": prompt }))
            .send()
            .await
            .unwrap();
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

/// Waits (bounded) until `conversation` is answered by `host`.
async fn until_served_by(lb: &Balancer, conversation: &str, host: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while lb.host_of(conversation).await.as_deref() != Some(host) {
        assert!(
            Instant::now() < deadline,
            "{conversation} not moved to {host} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Conversations stick to one host across turns and spread over both; a
/// drained host's conversations move to the other, which restores their
/// files from the shared bucket and resumes their CLI session.
#[tokio::test(flavor = "multi_thread")]
async fn conversations_stick_to_a_host_and_move_with_files_and_memory_when_it_drains() {
    let _engine = serial::shared().await;
    let endpoint = moto::endpoint();
    let bucket = moto::bucket(&endpoint).await;
    let env = moto::daemon_env(&endpoint, &bucket, "shared");
    let (_mock_a, a) = start_with_mock_env(KEY, 1, "", env.clone()).await;
    let (_mock_b, mut b) = start_with_mock_env(KEY, 1, "", env).await;
    let lb = Balancer::start(&[&a, &b]);
    // Both hosts up behind the balancer: twelve conversation ids spread.
    let ids: Vec<String> = (0..12).map(|i| format!("so-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let placed = loop {
        let mut placed = BTreeMap::new();
        for id in &ids {
            if let Some(host) = lb.host_of(id).await {
                placed.insert(id.clone(), host);
            }
        }
        let hosts: std::collections::BTreeSet<_> = placed.values().cloned().collect();
        if placed.len() == ids.len() && hosts.len() == 2 {
            break placed;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer did not spread over both hosts: {placed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let on_b: Vec<&String> = placed
        .iter()
        .filter(|(_, h)| **h == b.instance)
        .map(|(id, _)| id)
        .take(2)
        .collect();
    let on_a = placed
        .iter()
        .find(|(_, h)| **h == a.instance)
        .map(|(id, _)| id.clone())
        .unwrap();

    // Two turns each: the second on the same host, which sees the first's file.
    for id in on_b.iter().copied().chain(std::iter::once(&on_a)) {
        let (first, body) = lb.message(id, &format!("!write note.txt from-{id}")).await;
        assert!(body.contains("event: result"), "{body}");
        let (second, body) = lb
            .message(
                id,
                &format!("!bash cat /workspace/note.txt\n!text second-{id}"),
            )
            .await;
        assert_eq!(first, second, "{id} changed hosts between turns");
        assert_eq!(first, placed[id.as_str()]);
        assert!(body.contains(&format!("from-{id}")), "{body}");
    }

    // Drain B: its readiness fails, the balancer moves its conversations
    // to A, and A restores their files from the bucket.
    b.signal_term();
    for id in &on_b {
        until_served_by(&lb, id, &a.instance, 60).await;
    }
    for id in &on_b {
        let (host, body) = lb
            .message(id, "!bash cat /workspace/note.txt\n!recall")
            .await;
        assert_eq!(host, a.instance);
        assert!(
            body.contains(&format!("from-{id}")),
            "{id}'s file did not follow it to the other host: {body}"
        );
        // The model sees the turns B served: the session came along.
        assert!(
            body.contains(&format!("recall: second-{id}")),
            "{id}'s earlier turns did not follow it: {body}"
        );
    }
    // A's own conversation never moved.
    assert_eq!(
        lb.host_of(&on_a).await.as_deref(),
        Some(a.instance.as_str())
    );
    let status = tokio::task::block_in_place(|| b.wait_exit(60));
    assert!(status.success(), "host B's drain: {status}");
}
