//! Drains and crashes with runs in flight: SIGTERM while runs stream,
//! `kill -9` of the daemon at named moments of a run. Every case ends by
//! checking the containers, the state file and the object store.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "sk-crash-test";

async fn get_json(d: &Daemon, path: &str) -> (u16, Value) {
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        crate::harness::client()
            .get(d.url(path))
            .bearer_auth(TOKEN)
            .send(),
    )
    .await
    .expect("in time")
    .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The conversation's recorded events of its latest run, replayed.
async fn replay(d: &Daemon, conversation: &str) -> Vec<SseEvent> {
    let resp = crate::harness::client()
        .get(d.url(&format!("/v1/conversations/{conversation}/events")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    LiveStream::follow(resp).end(60).await
}

/// The stored files' paths of a conversation, per the API.
async fn stored_files(d: &Daemon, conversation: &str) -> Vec<String> {
    let (status, v) = get_json(d, &format!("/v1/conversations/{conversation}/files")).await;
    assert_eq!(status, 200, "{v:#}");
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str().map(str::to_owned))
        .collect()
}

/// The outcome of the conversation's latest run, per the API.
async fn last_outcome(d: &Daemon, conversation: &str) -> String {
    let (status, v) = get_json(d, &format!("/v1/conversations/{conversation}")).await;
    assert_eq!(status, 200, "{v:#}");
    v["runs"][0]["outcome"].as_str().unwrap_or("").to_owned()
}

/// Engine and state name the same containers, all running.
fn assert_consistent(d: &Daemon) {
    let engine = d.engine_names();
    let state = d.state_names();
    assert_eq!(engine, state, "engine and state disagree");
    for name in &engine {
        let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", name]);
        assert_eq!(running.trim(), "true", "{name} is not running");
    }
}

fn is_tool_use(name: &'static str) -> impl Fn(&SseEvent) -> bool {
    move |e| e.event == "tool_use" && e.data["name"] == name
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_runs_in_flight_refuses_new_runs_and_ends_the_rest_cleanly() {
    let _engine = serial::shared().await;
    let env = vec![(
        "AGENTBOX_SERVER_SHUTDOWN_GRACE_SECS".to_owned(),
        "15".to_owned(),
    )];
    let (_mock, mut d) = start_with_mock_env(KEY, 2, "", env).await;
    // One run that ends within the grace period once the test lets it,
    // one that would run for ten minutes.
    let mut finishing = LiveStream::start(
        &d,
        TOKEN,
        "finishing",
        "!write before.txt a\n!bash while [ ! -e /workspace/go ]; do sleep 0.2; done\n!text finished",
    )
    .await;
    let mut cut = LiveStream::start(
        &d,
        TOKEN,
        "cut",
        "!write kept.txt kept-by-cut\n!bash while [ ! -e /workspace/never ]; do sleep 0.2; done",
    )
    .await;
    finishing
        .wait_for(120, "the waiting Bash", is_tool_use("Bash"))
        .await;
    cut.wait_for(120, "the long Bash", is_tool_use("Bash"))
        .await;

    d.signal_term();
    tokio::task::block_in_place(|| d.wait_log(30, "Draining: new runs are refused.", &[]));
    // The readiness probe says so too, so a load balancer looks elsewhere.
    assert_eq!(readiness(&d).await, (503, Some("shutting_down".to_owned())));
    // New runs are refused with a clear code while the others go on.
    for conversation in ["newcomer", "finishing"] {
        let resp = crate::harness::client()
            .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
            .bearer_auth(TOKEN)
            .json(&json!({"prompt": "!text hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{conversation}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "shutting_down", "{v:#}");
    }
    // A session is a run too: refused the same way, before the upgrade.
    match crate::harness::session::open_session(&d, TOKEN, "newcomer", json!({})).await {
        Ok(_) => panic!("a session opened while the daemon drains"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "shutting_down", "{v:#}");
        }
    }
    let go = tokio::task::block_in_place(|| d.workspace(TENANT, "finishing").join("go"));
    std::fs::write(go, b"").unwrap();

    let finished = finishing.end(60).await;
    let result = finished.iter().find(|e| e.event == "result");
    assert!(
        result.is_some_and(|r| r.data["is_error"] == false),
        "the run within the grace period ends with its result: {finished:#?}"
    );
    let cut_events = cut.end(60).await;
    assert_eq!(
        final_error(&cut_events).as_deref(),
        Some("shutting_down"),
        "{cut_events:#?}"
    );
    let status = tokio::task::block_in_place(|| d.wait_exit(60));
    assert!(status.success(), "exit status {status}");

    // After the restart the runs replay as their clients saw them, the
    // cut run's files are stored, and nothing leaked.
    tokio::task::block_in_place(|| d.restart());
    let replayed = replay(&d, "finishing").await;
    assert_eq!(names(&replayed), names(&finished));
    let replayed = replay(&d, "cut").await;
    assert_eq!(final_error(&replayed).as_deref(), Some("shutting_down"));
    assert_eq!(last_outcome(&d, "finishing").await, "completed");
    assert_eq!(last_outcome(&d, "cut").await, "interrupted");
    assert!(stored_files(&d, "cut")
        .await
        .contains(&"kept.txt".to_owned()));
    assert!(stored_files(&d, "finishing")
        .await
        .contains(&"before.txt".to_owned()));
    tokio::task::block_in_place(|| {
        d.wait_status(120, "the pool refilled", |s| s["pool"]["warming"] == 0)
    });
    tokio::task::block_in_place(|| assert_consistent(&d));
    // The conversation carries on where the cut left it.
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "cut",
        json!({"prompt": "!bash cat /workspace/kept.txt"}),
    )
    .await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    assert!(
        events
            .iter()
            .any(|e| e.event == "tool_result" && e.data.to_string().contains("kept-by-cut")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event == "result" && e.data["is_error"] == false),
        "{events:#?}"
    );
}

/// Which container a conversation has after a daemon crash.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Keeps {
    /// The one it had before the crashed run: containers outlive the
    /// daemon, and the restart adopts them.
    ItsOwn,
    /// The pool container its crashed run had claimed, adopted likewise.
    TheClaimed,
    /// A new one: the crash came while its container was being created,
    /// and the restart removed that half-made container.
    ANewOne,
}

/// `kill -9` of the daemon while a run of `victim` is paused at `phase`
/// (the test build's fault point, see `src/faults.rs`), then a restart.
/// The run before it stored `first.txt`; afterwards nothing leaked, that
/// file is still stored and restored, the interrupted run is marked and
/// its replay says so, and the conversation carries on, on the container
/// `keeps` says.
async fn crash_at(phase: &str, pool_min: usize, keeps: Keeps) {
    let _engine = serial::shared().await;
    let fault = tempfile::NamedTempFile::new().unwrap();
    let env = vec![(
        "AGENTBOX_FAULT_PAUSE_AT".to_owned(),
        fault.path().display().to_string(),
    )];
    let (_mock, mut d) = start_with_mock_env(KEY, pool_min, "", env).await;
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "victim",
        json!({"prompt": "!write first.txt synced-before-the-crash"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(final_error(&parse_sse(&body)), None, "{body}");
    let first = tokio::task::block_in_place(|| d.container_of(TENANT, "victim")).unwrap();
    // The claim and the cold start happen only for a conversation that
    // needs a new container: take its container away.
    if matches!(phase, "claim" | "container_start") {
        docker_ok(&["rm", "-f", "-v", &first]);
    }

    std::fs::write(fault.path(), phase).unwrap();
    let run = LiveStream::start(
        &d,
        TOKEN,
        "victim",
        "!write second.txt during-the-crashed-run\n!text done",
    )
    .await;
    assert_eq!(run.status, 200);
    tokio::task::block_in_place(|| {
        d.wait_log(180, "Fault point reached; pausing.", &[("phase", phase)])
    });
    // The container the conversation is bound to at the crash, if any yet.
    let at_crash = tokio::task::block_in_place(|| d.container_of(TENANT, "victim"));
    tokio::task::block_in_place(|| d.kill9());
    let seen_live = run.end(30).await;
    std::fs::write(fault.path(), "").unwrap();
    tokio::task::block_in_place(|| d.restart());

    // Containers: the engine and the state agree once the restart
    // reconciled, and every container is running.
    tokio::task::block_in_place(|| {
        d.wait_status(120, "the pool settled", |s| s["pool"]["warming"] == 0);
        assert_consistent(&d);
    });
    // The state file: the run is closed, and a client that reconnects
    // learns how it ended.
    let replayed = replay(&d, "victim").await;
    let outcome = last_outcome(&d, "victim").await;
    if phase == "after_result" {
        assert_eq!(outcome, "completed");
        assert_eq!(replayed.last().map(|e| e.event.as_str()), Some("result"));
        assert!(seen_live.iter().any(|e| e.event == "result"));
    } else {
        assert_eq!(outcome, "interrupted", "{replayed:#?}");
        assert_eq!(final_error(&replayed).as_deref(), Some("interrupted"));
        // The replay is what the client saw live, up to the crash: the
        // record may miss the last commit interval (at most 100 ms of
        // events), never anything before. A client that resumes from the
        // last event it saw gets the `interrupted` ending.
        let live_ids: Vec<_> = seen_live.iter().filter_map(|e| e.id.clone()).collect();
        let replay_ids: Vec<_> = replayed.iter().filter_map(|e| e.id.clone()).collect();
        let recorded = &replay_ids[..replay_ids.len() - 1];
        assert!(
            live_ids.starts_with(recorded) || recorded.starts_with(&live_ids),
            "{live_ids:?} / {replay_ids:?}"
        );
        if let Some(last) = live_ids.last() {
            let resp = crate::harness::client()
                .get(d.url("/v1/conversations/victim/events"))
                .bearer_auth(TOKEN)
                .header("last-event-id", last)
                .send()
                .await
                .unwrap();
            let resumed = LiveStream::follow(resp).end(60).await;
            assert_eq!(
                final_error(&resumed).as_deref(),
                Some("interrupted"),
                "after {last}: {resumed:#?}"
            );
        }
    }
    // The object store still has the file synced before the crash.
    assert!(
        stored_files(&d, "victim")
            .await
            .contains(&"first.txt".to_owned()),
        "first.txt lost"
    );
    // The conversation carries on, on its container or a clean
    // replacement with the stored files restored.
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "victim",
        json!({"prompt": "!bash cat /workspace/first.txt"}),
    )
    .await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    assert!(
        events
            .iter()
            .any(|e| e.event == "tool_result"
                && e.data.to_string().contains("synced-before-the-crash")),
        "{events:#?}"
    );
    assert_eq!(final_error(&events), None, "{events:#?}");
    // ... and its end-of-run sync kept the file in the store.
    assert!(
        stored_files(&d, "victim")
            .await
            .contains(&"first.txt".to_owned()),
        "first.txt lost by the run after the restart"
    );
    tokio::task::block_in_place(|| {
        let now = d.container_of(TENANT, "victim").expect("bound");
        assert!(d.engine_names().contains(&now));
        assert_consistent(&d);
        match keeps {
            Keeps::ItsOwn => {
                assert_eq!(at_crash.as_deref(), Some(first.as_str()));
                assert_eq!(now, first, "the conversation lost its container");
            }
            Keeps::TheClaimed => {
                let claimed = at_crash.expect("the run had claimed a container");
                assert_ne!(claimed, first);
                assert_eq!(now, claimed, "the claimed container was not kept");
            }
            Keeps::ANewOne => {
                assert_ne!(now, first);
                assert_ne!(
                    Some(&now),
                    at_crash.as_ref(),
                    "a half-made container was kept"
                );
                assert!(!d
                    .engine_names()
                    .iter()
                    .any(|n| Some(n) == at_crash.as_ref()));
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_claim() {
    crash_at("claim", 1, Keeps::TheClaimed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_container_start() {
    crash_at("container_start", 0, Keeps::ANewOne).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_once_the_agent_started() {
    crash_at("agent_started", 1, Keeps::ItsOwn).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream() {
    crash_at("mid_stream", 1, Keeps::ItsOwn).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_the_final_sync() {
    crash_at("final_sync", 1, Keeps::ItsOwn).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_the_result() {
    crash_at("after_result", 1, Keeps::ItsOwn).await;
}

/// A tmpfs of its own for a daemon's state file, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("agentbox-state-disk-")
            .tempdir()
            .unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        SmallDisk { dir }
    }

    /// Fills what is left with a filler file (written until ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // A last few bytes the big writes left over.
        while f.write_all(&[0u8]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_answers_503_corrupts_nothing_and_recovers_when_space_returns() {
    let _engine = serial::shared().await;
    let disk = SmallDisk::mount(16);
    let state = disk.dir.path().join("state.redb");
    let env = vec![
        (
            "AGENTBOX_STATE_PATH".to_owned(),
            state.display().to_string(),
        ),
        ("AGENTBOX_STATE_MIN_FREE_MB".to_owned(), "4".to_owned()),
    ];
    let (_mock, mut d) = start_with_mock_env(KEY, 1, "", env).await;
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "steady",
        json!({"prompt": "!write kept.txt before-the-disk-filled"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(final_error(&parse_sse(&body)), None, "{body}");

    disk.fill();
    // A new run needs the state file: refused with a clear 503, and the
    // daemon stays up; what is recorded can still be read.
    for _ in 0..3 {
        let resp = crate::harness::client()
            .post(d.url("/v1/conversations/steady/messages"))
            .bearer_auth(TOKEN)
            .json(&json!({"prompt": "!text hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "state_disk_full", "{v:#}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("state.min_free_mb"), "{message}");
    }
    assert_eq!(last_outcome(&d, "steady").await, "completed");
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon exited");
    assert_eq!(
        readiness(&d).await,
        (503, Some("state_disk_full".to_owned()))
    );

    // Space returns: the next message works without a restart.
    disk.free();
    assert_eq!(readiness(&d).await, (200, None));
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "steady",
        json!({"prompt": "!bash cat /workspace/kept.txt"}),
    )
    .await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    assert_eq!(final_error(&events), None, "{events:#?}");
    assert!(
        body.contains("before-the-disk-filled"),
        "the workspace is intact: {events:#?}"
    );

    // And the file reopens clean after a restart: every run recorded,
    // engine and state agree, the store has the file.
    tokio::task::block_in_place(|| {
        d.kill9();
        d.restart();
        d.wait_status(120, "the pool settled", |s| s["pool"]["warming"] == 0);
        assert_consistent(&d);
    });
    let (status, v) = get_json(&d, "/v1/conversations/steady").await;
    assert_eq!(status, 200);
    let outcomes: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["completed", "completed"], "{v:#}");
    assert!(stored_files(&d, "steady")
        .await
        .contains(&"kept.txt".to_owned()));
}
