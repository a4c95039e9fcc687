//! The orchestrator on a real engine: warm pool, claims, refill, SIGHUP
//! resize and image roll, crash-safe restart, and the idle sweeper.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const KEY: &str = "sk-orchestrator-test";

fn ready_names(s: &Value) -> BTreeSet<String> {
    s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "ready")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn run_ok(events: &str) {
    let evs = parse_sse(events);
    let result = evs.iter().find(|e| e.event == "result");
    assert!(
        result.is_some_and(|r| r.data["is_error"] == false),
        "run did not succeed: {evs:#?}"
    );
}

/// The engine and the state agree: nothing leaked, nothing phantom.
fn assert_consistent(d: &Daemon) {
    let engine = d.engine_names();
    let state = d.state_names();
    assert_eq!(engine, state, "engine and state disagree");
    for name in &engine {
        let c = inspect(name);
        assert_eq!(c["State"]["Running"], true, "{name} is not running");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_prewarms_serves_claims_and_refills() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock_opts(KEY, 2, "").await;
    let s = d.wait_status(120, "pool at 2", |s| s["pool"]["ready"] == 2);
    let warm = ready_names(&s);
    // The pool starts on `pool.refill_cpu_shares` (default 64), so the
    // refill yields to running conversations; the cgroup has it too.
    let mut low = 0;
    for name in &warm {
        assert_eq!(inspect(name)["HostConfig"]["CpuShares"], 64, "{name}");
        let (file, weight) = cgroup::Cgroups::of(name).cpu_weight();
        if file == "cpu.shares" {
            assert_eq!(weight, 64, "{name}'s cgroup");
        }
        low = weight;
    }
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "pooled",
        json!({"prompt": "!write a.txt x"}),
    )
    .await;
    assert_eq!(status, 200);
    run_ok(&body);
    let used = d.container_of(TENANT, "pooled").expect("bound");
    assert!(
        warm.contains(&used),
        "{used} did not come from the pool {warm:?}"
    );
    // Claimed: the default weight, written into the cgroup before the run
    // reached the agent (on cgroup v1; v2 goes through the engine)...
    let (file, weight) = cgroup::Cgroups::of(&used).cpu_weight();
    let via = if file == "cpu.shares" {
        assert_eq!(weight, 1024, "{used}'s cgroup right after its run");
        "cgroup"
    } else {
        "engine"
    };
    let raised = format!("agentbox_pool_weight_raises_total{{via=\"{via}\"}} 1");
    wait_until(
        30,
        || format!("{raised} in /metrics"),
        || {
            let url = format!("http://{}/metrics", d.admin_addr);
            let out = std::process::Command::new("curl")
                .args(["-sf", &url])
                .output()
                .ok()?;
            let scrape = String::from_utf8_lossy(&out.stdout);
            scrape.lines().any(|l| l == raised).then_some(())
        },
    );
    // ...and the engine's record follows, off the claim's path.
    wait_until(
        30,
        || {
            format!(
                "{used}'s CPU weight back to 1024: {}",
                inspect(&used)["HostConfig"]
            )
        },
        || (inspect(&used)["HostConfig"]["CpuShares"] == 1024).then_some(()),
    );
    assert!(
        cgroup::Cgroups::of(&used).cpu_weight().1 > low,
        "raised from {low}"
    );
    let s = d.wait_status(120, "refill to 2", |s| s["pool"]["ready"] == 2);
    assert_eq!(s["pool"]["warm_claims_total"], 1);
    assert_eq!(s["pool"]["cold_starts_total"], 0);
    assert_eq!(s["pool"]["claimed"], 1);
    // A second message reuses the conversation's container.
    let (_, body) = post_message(
        &d,
        Some(TOKEN),
        "pooled",
        json!({"prompt": "!write b.txt y"}),
    )
    .await;
    run_ok(&body);
    assert_eq!(
        d.container_of(TENANT, "pooled").as_deref(),
        Some(used.as_str())
    );
    assert_consistent(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_pool_falls_back_to_a_cold_start() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock_opts(KEY, 0, "").await;
    let (status, body) =
        post_message(&d, Some(TOKEN), "cold", json!({"prompt": "!write a.txt x"})).await;
    assert_eq!(status, 200);
    run_ok(&body);
    let s = d.status();
    assert_eq!(s["pool"]["cold_starts_total"], 1);
    let name = d.container_of(TENANT, "cold").unwrap();
    // A cold start serves a waiting run: no weight set, so the engine's
    // default (1024) from the start.
    assert_eq!(inspect(&name)["HostConfig"]["CpuShares"], 0);
    // A cold container knows its conversation early enough to be labelled.
    assert_eq!(
        inspect(&name)["Config"]["Labels"]["agentbox.conversation"],
        "cold"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_resizes_the_pool_and_rolls_the_image() {
    let _engine = serial::shared().await;
    let (_mock, d) = start_with_mock_opts(KEY, 1, "").await;
    d.wait_status(120, "pool at 1", |s| s["pool"]["ready"] == 1);
    let (_, body) =
        post_message(&d, Some(TOKEN), "keep", json!({"prompt": "!write a.txt x"})).await;
    run_ok(&body);
    let claimed = d.container_of(TENANT, "keep").unwrap();

    d.reload(|c| c.replace("min_size = 1", "min_size = 3"));
    d.wait_status(180, "pool grown to 3", |s| s["pool"]["ready"] == 3);

    let roll = format!("agentbox/workspace-base:roll-{}", std::process::id());
    docker_ok(&["tag", &test_image(), &roll]);
    let image_line = format!("image = \"{}\"", test_image());
    d.reload(|c| {
        c.replace("min_size = 3", "min_size = 1")
            .replace(&image_line, &format!("image = \"{roll}\""))
    });
    let s = d.wait_status(180, "pool rolled to the new image", |s| {
        s["pool"]["ready"] == 1
            && s["pool"]["warming"] == 0
            && s["containers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["state"] != "ready" || c["image"] == roll.as_str())
    });
    for name in ready_names(&s) {
        assert_eq!(inspect(&name)["Config"]["Image"], roll.as_str());
    }
    // The claimed container was left alone.
    assert_eq!(
        d.container_of(TENANT, "keep").as_deref(),
        Some(claimed.as_str())
    );
    assert_eq!(inspect(&claimed)["State"]["Running"], true);
    assert_consistent(&d);
    drop(d);
    let _ = docker(&["rmi", &roll]);
}

/// `kill -9` while the pool fills: each new pool container pauses at the
/// test build's `pool_start` fault point (started, its agent not waited
/// for), the test waits for that log line, kills the daemon and adds an
/// orphan. The restart removes both the half-made containers and the
/// orphan, and refills the pool. A crash during a run is covered phase by
/// phase, claim included, by the `crash::kill_9_*` tests.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_pool_fills_leaves_nothing_leaked() {
    let _engine = serial::shared().await;
    let fault = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(fault.path(), "pool_start").unwrap();
    let env = vec![(
        "AGENTBOX_FAULT_PAUSE_AT".to_owned(),
        fault.path().display().to_string(),
    )];
    let (_mock, mut d) = start_with_mock_env(KEY, 2, "", env).await;
    tokio::task::block_in_place(|| {
        d.wait_log(
            120,
            "Fault point reached; pausing.",
            &[("phase", "pool_start")],
        );
        let half_made = d.engine_names();
        assert!(
            !half_made.is_empty(),
            "the paused creation has no container"
        );
        d.kill9();
        // An orphan: ours by its labels, unknown to the state.
        let orphan = format!("agentbox-orphan-{}", std::process::id());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &orphan,
            "--network",
            "none",
            "--label",
            "agentbox.managed=true",
            "--label",
            &format!("agentbox.instance={}", d.instance),
            "--entrypoint",
            "sleep",
            &test_image(),
            "300",
        ]);
        std::fs::write(fault.path(), "").unwrap();
        d.restart();
        d.wait_status(120, "pool back at 2", |s| {
            s["pool"]["ready"] == 2 && s["pool"]["warming"] == 0
        });
        assert_consistent(&d);
        let now = d.engine_names();
        assert!(!now.contains(&orphan), "the orphan survived");
        assert!(
            half_made.is_disjoint(&now),
            "a half-made pool container survived: {half_made:?}"
        );
    });
    // The pool works: a conversation runs on it.
    let (status, body) = post_message(
        &d,
        Some(TOKEN),
        "after-the-crash",
        json!({"prompt": "!write again.txt ok"}),
    )
    .await;
    assert_eq!(status, 200);
    run_ok(&body);
    tokio::task::block_in_place(|| assert_consistent(&d));
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_removes_idle_containers_but_never_a_running_one() {
    let _engine = serial::shared().await;
    let gc = "[gc]\nidle_ttl_secs = 2\ninterval_secs = 1\n";
    let (_mock, d) = start_with_mock_opts(KEY, 0, gc).await;
    let (_, body) =
        post_message(&d, Some(TOKEN), "idle", json!({"prompt": "!write a.txt x"})).await;
    run_ok(&body);
    let idle = d.container_of(TENANT, "idle").unwrap();

    let busy = spawn_run(&d, TOKEN, "busy", "!sleep 6000\n!write late.txt done");
    // Wait until the busy run has its container, then past the idle TTL.
    let d_ref = &d;
    let busy_container = tokio::task::block_in_place(|| {
        d_ref.wait_status(60, "busy claimed", |s| {
            s["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["binding"]["conversation_id"] == "busy")
        });
        d_ref.container_of(TENANT, "busy").unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(
        d.container_of(TENANT, "idle").is_none(),
        "idle container still bound"
    );
    assert!(
        !d.engine_names().contains(&idle),
        "idle container still in the engine"
    );
    assert!(
        d.engine_names().contains(&busy_container),
        "the busy container was removed mid-run"
    );

    run_ok(&busy.await.unwrap());
    // Once idle, it goes too.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(!d.engine_names().contains(&busy_container));
    assert_consistent(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_all_removes_containers_sockets_and_records() {
    let _engine = serial::shared().await;
    let (_mock, mut d) = start_with_mock_opts(KEY, 2, "").await;
    d.wait_status(120, "pool at 2", |s| s["pool"]["ready"] == 2);
    d.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentbox"))
        .args(["destroy-all", "--config"])
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 2 containers"), "{text}");
    assert!(d.engine_names().is_empty());
    let sockets = std::fs::read_dir(d.dir.path().join("sockets"))
        .unwrap()
        .count();
    assert_eq!(sockets, 0, "socket directories left behind");
    // The state forgot them too: a restart without a pool knows none.
    d.edit_config(|c| c.replace("min_size = 2", "min_size = 0"));
    d.restart();
    assert_eq!(d.status()["containers"], json!([]));
}

/// A burst larger than the pool, with one start at a time
/// (`pool.max_parallel_starts = 1`): every run is served, the pool grows to
/// the burst size afterwards and falls back once the burst window passed.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_served_and_the_pool_follows_demand() {
    let _engine = serial::shared().await;
    let env = vec![
        (
            "AGENTBOX_POOL_MAX_PARALLEL_STARTS".to_owned(),
            "1".to_owned(),
        ),
        ("AGENTBOX_POOL_BURST_MAX_SIZE".to_owned(), "3".to_owned()),
        (
            "AGENTBOX_POOL_BURST_WINDOW_SECS".to_owned(),
            "20".to_owned(),
        ),
    ];
    let (_mock, d) = start_with_mock_env(KEY, 1, "", env).await;
    d.wait_status(120, "pool at 1", |s| s["pool"]["ready"] == 1);
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let url = d.url(&format!("/v1/conversations/burst-{i}/messages"));
            tokio::spawn(async move {
                let resp = crate::harness::client()
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&json!({"prompt": format!("!write b{i}.txt burst")}))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    for run in runs {
        let (status, body) = run.await.unwrap();
        assert_eq!(status, 200, "{body}");
        run_ok(&body);
    }
    // Four claims in the window: the pool grows to the burst size (3)...
    let s = d.wait_status(180, "the pool grown to 3", |s| {
        s["pool"]["ready"] == 3 && s["pool"]["warming"] == 0
    });
    assert_eq!(s["pool"]["target"], 3, "{s:#}");
    // ...and falls back to its size once no claim came for the window.
    let s = d.wait_status(120, "the pool back to 1", |s| s["pool"]["ready"] == 1);
    assert_eq!(s["pool"]["target"], 1, "{s:#}");
    // The shrunk containers leave the engine too (their removal may still
    // be under way): four claimed and one ready remain.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (engine, state) = (d.engine_names(), d.state_names());
        if engine == state && engine.len() == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "engine {engine:?} and state {state:?} never settled at 5 containers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_consistent(&d);
}
