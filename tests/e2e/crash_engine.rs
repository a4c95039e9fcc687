//! A Docker engine restart with a run in flight. Restarting the host's
//! engine would break every other test, so this one runs the daemon on an
//! engine of its own (`tests/setup/ensure-restart-docker.sh`), stops it
//! with SIGTERM (no `live-restore`: its containers stop with it) and
//! starts it again, while it holds the engine lock alone.

use crate::harness::*;
use serde_json::{json, Value};
use std::process::Command;

const KEY: &str = "sk-engine-restart";

fn restart_script(arg: &str) -> String {
    let script = repo_root().join("tests/setup/ensure-restart-docker.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(arg)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run ensure-restart-docker.sh");
    assert!(out.status.success(), "{} {arg} failed", script.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds the image in the host's engine (while `DOCKER_HOST` still names
/// it), then starts the test's engine with the image copied in; returns
/// its `DOCKER_HOST`.
fn start_the_engine() -> String {
    prerequisites();
    restart_script(&test_image())
}

/// Stops the test's engine (SIGTERM to its dockerd, returns once it has
/// exited) and starts it again when told, or on drop: declared after the
/// daemon, it drops first, so a failed assertion never leaves the engine
/// down, nor the daemon's clean-up without an engine.
#[derive(Default)]
struct Outage {
    on: bool,
}

impl Outage {
    fn begin(&mut self) {
        self.on = true;
        restart_script("stop");
    }

    fn end(&mut self) {
        restart_script(&test_image());
        self.on = false;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.on {
            // Not `restart_script`: a failed assertion while unwinding
            // would abort the whole test binary.
            let _ = Command::new("bash")
                .arg(repo_root().join("tests/setup/ensure-restart-docker.sh"))
                .arg(test_image())
                .status();
        }
    }
}

async fn metrics(d: &Daemon) -> String {
    client()
        .get(format!("http://{}/metrics", d.admin_addr))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// The value of an unlabelled series in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn error_codes(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "error")
        .filter_map(|e| e.data["code"].as_str().map(str::to_owned))
        .collect()
}

fn engine_up(s: &Value) -> bool {
    s["engine"]["up"] == true
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_restart_with_a_run_in_flight_recovers_without_a_daemon_restart() {
    let _engine = serial::exclusive().await;
    let host = tokio::task::spawn_blocking(start_the_engine).await.unwrap();
    // Dropped last: the daemon cleans up on this engine first.
    let _host = DockerHost::set(&host);
    let (_mock, d) = start_with_mock_env(KEY, 1, "", Vec::new()).await;
    let mut outage = Outage::default();
    let conv = "through-the-restart";

    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        conv,
        json!({"prompt": "!write kept.txt stored-before-the-restart"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(final_error(&parse_sse(&body)), None, "{body}");
    let first = tokio::task::block_in_place(|| d.container_of(TENANT, conv)).unwrap();
    assert_eq!(readiness(&d).await, (200, None));

    // A run in flight: the model's answer streams at a slow pace, then a
    // tool call that waits for a file nobody writes.
    let mut run = LiveStream::start(
        &d,
        TOKEN,
        conv,
        "!pace 50\n!write during.txt written-during-the-run\n!bash while [ ! -e /workspace/never ]; do sleep 0.2; done",
    )
    .await;
    assert_eq!(run.status, 200);
    run.wait_for(120, "the waiting Bash", |e| {
        e.event == "tool_use" && e.data["name"] == "Bash"
    })
    .await;

    tokio::task::block_in_place(|| outage.begin());
    // The client learns that the container went with the engine, and that
    // no new one could be had.
    let seen = run.end(120).await;
    assert_eq!(
        error_codes(&seen),
        ["container_lost", "runtime_unavailable"],
        "{seen:#?}"
    );

    // While the engine is down: the status, the health check and the
    // metrics say so, and new runs are refused with a clear 503.
    let s = tokio::task::block_in_place(|| {
        d.wait_status(30, "the engine seen down", |s| {
            !engine_up(s) && s["health"]["docker"]["level"] != "pass"
        })
    });
    assert_eq!(s["engine"]["outages_total"], 1, "{s:#}");
    assert!(s["engine"]["down_since_ms"].is_u64(), "{s:#}");
    let scrape = metrics(&d).await;
    assert_eq!(sample(&scrape, "agentbox_engine_up"), Some(0.0));
    assert_eq!(sample(&scrape, "agentbox_engine_outages_total"), Some(1.0));
    assert_eq!(
        readiness(&d).await,
        (503, Some("runtime_unavailable".to_owned()))
    );
    for conversation in [conv, "newcomer"] {
        let resp = client()
            .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
            .bearer_auth(TOKEN)
            .json(&json!({"prompt": "!text hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{conversation}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "runtime_unavailable", "{v:#}");
    }
    assert!(
        d.audit_events()
            .iter()
            .any(|e| e["event"] == "engine_unavailable"),
        "no engine_unavailable audit event"
    );

    // The engine comes back: the same daemon process admits runs again
    // once it has reconciled, and the pool refills.
    tokio::task::block_in_place(|| outage.end());
    let s = tokio::task::block_in_place(|| {
        d.wait_status(60, "the engine seen up", |s| {
            engine_up(s) && s["health"]["docker"]["level"] == "pass"
        })
    });
    assert_eq!(s["engine"]["outages_total"], 1, "{s:#}");
    assert!(s["engine"]["down_since_ms"].is_null(), "{s:#}");
    assert_eq!(readiness(&d).await, (200, None));
    let scrape = metrics(&d).await;
    assert_eq!(sample(&scrape, "agentbox_engine_up"), Some(1.0));
    assert_eq!(sample(&scrape, "agentbox_engine_outages_total"), Some(1.0));
    let recovered = d
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "engine_recovered")
        .expect("an engine_recovered audit event");
    assert!(recovered["down_ms"].as_u64().unwrap() > 0, "{recovered}");

    // The conversation carries on, on a new container, with both the file
    // stored before the restart and the one its cut run wrote.
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        conv,
        json!({"prompt": "!bash cat /workspace/kept.txt /workspace/during.txt"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    assert_eq!(final_error(&events), None, "{events:#?}");
    assert!(body.contains("stored-before-the-restart"), "{events:#?}");
    assert!(body.contains("written-during-the-run"), "{events:#?}");
    let now = tokio::task::block_in_place(|| d.container_of(TENANT, conv)).unwrap();
    assert_ne!(now, first, "the stopped container was reused");

    // Nothing leaked: engine and state name the same containers, all
    // running, the stopped ones gone.
    tokio::task::block_in_place(|| {
        d.wait_status(120, "the pool refilled", |s| {
            s["pool"]["ready"] == 1 && s["pool"]["warming"] == 0
        });
        let names = d.engine_names();
        assert_eq!(names, d.state_names(), "engine and state disagree");
        assert!(!names.contains(&first), "{first} is still there");
        for name in &names {
            let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", name]);
            assert_eq!(running.trim(), "true", "{name} is not running");
        }
    });
}
