//! The benchmark suite. `just bench` runs it in release mode and prints
//! markdown tables (median and spread over several runs) to paste into
//! `docs/benchmarks.md`; `--smoke` runs every scenario tiny, inside the
//! test suite, so the harness never rots. Benchmarks print figures; they
//! never assert on time.
//!
//! Scenarios: `claim` (request -> first byte from the agent, warm pool vs
//! empty pool, with `docker run --rm` of the same image and flags as the
//! floor of a cold start).

#[path = "../common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use std::time::Instant;

struct Args {
    smoke: bool,
    runs: usize,
    scenarios: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        smoke: false,
        runs: 15,
        scenarios: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--runs" => a.runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.runs),
            // Passed by `cargo bench` / `cargo test`; nothing to do.
            "--bench" | "--test" | "--nocapture" => {}
            s if !s.starts_with('-') => a.scenarios.push(s.to_owned()),
            other => eprintln!("bench: ignoring unknown argument {other}"),
        }
    }
    if a.smoke {
        a.runs = 2;
    }
    a
}

/// Median and spread of a sample, in milliseconds.
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    min: f64,
    max: f64,
}

fn summarize(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Summary {
        n: ms.len(),
        p50: pick(0.5),
        p90: pick(0.9),
        min: ms[0],
        max: ms[ms.len() - 1],
    }
}

fn row(name: &str, s: &Summary) -> String {
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.n, s.p50, s.p90, s.min, s.max
    )
}

/// One request: milliseconds to the agent's first byte (the `agent started`
/// comment) and to the first event, and whether the run succeeded.
async fn timed_run(d: &Daemon, conversation: &str) -> (f64, f64) {
    let started = Instant::now();
    let mut resp = reqwest::Client::new()
        .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": "!text hi"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let (mut agent, mut first_event) = (None, None);
    let mut body = String::new();
    while let Some(chunk) = resp.chunk().await.expect("read stream") {
        body.push_str(&String::from_utf8_lossy(&chunk));
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if agent.is_none() && body.contains(": agent started") {
            agent = Some(elapsed);
        }
        if first_event.is_none() && body.contains("\nevent:") || body.starts_with("event:") {
            first_event.get_or_insert(elapsed);
        }
    }
    assert!(body.contains("event: result"), "run failed: {body}");
    (
        agent.expect("no `agent started` comment"),
        first_event.expect("no event"),
    )
}

async fn claim(a: &Args) {
    let runs = a.runs;
    // Warm: a pool big enough that every request finds a ready container.
    let (_mock, d) = start_with_mock_opts("bench-key", 2, "").await;
    let (mut warm_agent, mut warm_event) = (Vec::new(), Vec::new());
    for i in 0..runs {
        tokio::task::block_in_place(|| {
            d.wait_status(120, "a ready container", |s| s["pool"]["ready"] == 2)
        });
        let (agent, event) = timed_run(&d, &format!("warm-{i}")).await;
        warm_agent.push(agent);
        warm_event.push(event);
    }
    let s = d.status();
    assert_eq!(s["pool"]["cold_starts_total"], 0, "a warm run started cold");
    drop(d);

    let (_mock, d) = start_with_mock_opts("bench-key", 0, "").await;
    let (mut cold_agent, mut cold_event) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (agent, event) = timed_run(&d, &format!("cold-{i}")).await;
        cold_agent.push(agent);
        cold_event.push(event);
    }
    drop(d);

    let mut floor = Vec::new();
    let image = test_image();
    for _ in 0..runs {
        let t = Instant::now();
        docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=64m",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "512",
            "--memory",
            "1g",
            "--user",
            "1000:1000",
            "--init",
            "--entrypoint",
            "true",
            &image,
        ]);
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let (wa, ca) = (summarize(warm_agent), summarize(cold_agent));
    println!("\n### Claim latency (ms)\n");
    println!("| measure | runs | p50 | p90 | min | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        row("warm pool: request -> first byte from the agent", &wa)
    );
    println!(
        "{}",
        row("empty pool: request -> first byte from the agent", &ca)
    );
    println!(
        "{}",
        row(
            "`docker run --rm` same image and flags (floor of a cold start)",
            &summarize(floor)
        )
    );
    println!(
        "{}",
        row(
            "warm pool: request -> first SSE event (includes the CLI start)",
            &summarize(warm_event)
        )
    );
    println!(
        "{}",
        row(
            "empty pool: request -> first SSE event",
            &summarize(cold_event)
        )
    );
    println!(
        "\nwarm p50 is {:.1}x faster than cold p50\n",
        ca.p50 / wa.p50
    );
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let all = a.scenarios.is_empty();
    let t = Instant::now();
    rt.block_on(async {
        if all || a.scenarios.iter().any(|s| s == "claim") {
            claim(&a).await;
        }
    });
    eprintln!(
        "bench: done in {:.1}s{}",
        t.elapsed().as_secs_f64(),
        if a.smoke { " (smoke)" } else { "" }
    );
}
