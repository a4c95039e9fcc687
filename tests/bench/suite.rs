//! The benchmark suite. `just bench` runs it in release mode and prints
//! markdown tables (median and spread over several runs) to paste into
//! `docs/benchmarks.md`; `--smoke` runs every scenario tiny, inside the
//! test suite, so the harness never rots. Benchmarks print figures; they
//! never assert on time.
//!
//! Scenarios (run all, or name some):
//! - `claim`: request -> first byte from the agent and -> the CLI's first
//!   model request, warm pool vs empty pool, with `docker run --rm` of the
//!   same image and flags as the floor of a cold start.
//! - `restart`: `kill -9` of the daemon with many live containers, then
//!   the time until it has reconciled and serves, and until the pool is
//!   whole again.
//! - `density`: the idle RSS of the agent, the pre-started CLI and
//!   docker-init, each found by its executable, and the host memory per
//!   idle warm container; how many would fit in this host's available memory.
//! - `throughput`: concurrent multi-turn conversations with tool use.
//! - `tiers`: runc and gVisor side by side.
//! - `burst`: many conversations at once on a small pool, beside a cold
//!   start measured alone in the same run.
//! - `claims`: as many runs at once as the pool holds warm containers, in
//!   rounds; the daemon's steps of those runs and the state commits they
//!   made (group commit: `src/state/writer.rs`); at the pool's default and
//!   low CPU weight, and with the daemon at nice -5.
//! - `streaming`: the delay from a model's streamed event to the client's
//!   `text_delta`, beside the CLI read directly on the host.
//!
//! - `limit`: conversations running at once (paced tool-calling agents)
//!   against a new warm run's time to the first event, in steps until it
//!   passes 2 s.
//! - `idle`: idle warm containers in steps of 50 on one daemon (the pool
//!   grown by a reload) against a warm run's time to the first event, with
//!   the host memory and CPU they take, until it passes 2 s or memory
//!   runs short; see `idle.rs`.
//!
//! Every run also writes its raw results (samples, command, commit, load)
//! as JSON; see `record.rs`.
//! - `session`: the session endpoint (the Agent SDK's path) beside the SSE
//!   API on a warm pool: time to the first message and to the `result`.
//! - `failover`: two hosts behind HAProxy, one killed mid-run: the time
//!   until HAProxy takes it out, and until its conversation's next message
//!   has its first event and its `result` on the other host.
//! - `cli`: the CLI alone on this host with each setting that might spare
//!   it work (its boot CPU, prompt -> first model request, turn CPU); see
//!   `cli_settings.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod cli_settings;
mod failover;
#[path = "../e2e/harness/mod.rs"]
mod harness;
mod idle;
mod record;

use harness::*;
use record::{header, note, row, summarize, table, Summary};
use serde_json::json;
use std::time::Instant;

struct Args {
    smoke: bool,
    runs: usize,
    /// Where the raw results go (`--out FILE`).
    out: Option<String>,
    scenarios: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        smoke: false,
        runs: 15,
        out: None,
        scenarios: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--runs" => a.runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.runs),
            "--out" => a.out = it.next(),
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

impl Args {
    fn wants(&self, name: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == name)
    }

    /// `full` normally, `smoke` in smoke mode.
    fn size(&self, full: usize, smoke: usize) -> usize {
        if self.smoke {
            smoke
        } else {
            full
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The HTTP client every run shares (a clone shares its connection
/// pool), built once in `main`. A client reads the host's trust roots
/// when it is built, about 4 ms of CPU: one built per run inside a burst
/// of 50 took 210 ms of the two cores in the burst's first 150 ms,
/// ahead of the daemon it measures.
fn bench_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(crate::harness::client).clone()
}

/// What one run took, in milliseconds from sending the request.
struct Timing {
    /// The `agent started` comment: the first byte from the agent.
    agent: f64,
    /// The first SSE event.
    first_event: f64,
    /// The stream's end.
    total: f64,
    /// Unix ms when the request went out (for the mock's timestamps).
    sent_at_ms: u64,
    /// The agent's CLI was already running.
    prestarted: bool,
}

async fn timed_run(d: &Daemon, conversation: &str, prompt: &str) -> Result<Timing, String> {
    let client = bench_client();
    let sent_at_ms = now_ms();
    let started = Instant::now();
    let mut resp = client
        .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
        .bearer_auth(TOKEN)
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let (mut agent, mut first_event) = (None, None);
    let mut body = String::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        body.push_str(&String::from_utf8_lossy(&chunk));
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if agent.is_none() && body.contains(": agent started") {
            agent = Some(elapsed);
        }
        if first_event.is_none() && (body.contains("\nevent:") || body.starts_with("event:")) {
            first_event = Some(elapsed);
        }
    }
    let events = parse_sse(&body);
    let ok = events
        .iter()
        .any(|e| e.event == "result" && e.data["is_error"] == false);
    if !ok {
        return Err(format!("run failed: {body}"));
    }
    Ok(Timing {
        agent: agent.ok_or("no `agent started` comment")?,
        first_event: first_event.ok_or("no event")?,
        total: started.elapsed().as_secs_f64() * 1000.0,
        sent_at_ms,
        prestarted: body.contains(": agent started; cli prestarted"),
    })
}

/// Milliseconds from sending to the first model request the mock saw after.
fn to_first_model_request(mock: &mock_model::MockModel, sent_at_ms: u64) -> f64 {
    mock.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages") && r.at_ms >= sent_at_ms)
        .map(|r| (r.at_ms - sent_at_ms) as f64)
        .fold(f64::INFINITY, f64::min)
}

async fn claim(a: &Args) {
    let runs = a.runs;
    let mut rows = Vec::new();
    let mut warm_steps = None;
    for (label, pool) in [("warm pool", 2), ("empty pool", 0)] {
        let (mock, d) = start_with_mock_opts("bench-key", pool, "").await;
        let (mut agent, mut model, mut event) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh_cli = 0;
        for i in 0..runs {
            if pool > 0 {
                tokio::task::block_in_place(|| {
                    d.wait_status(120, "a ready container", |s| s["pool"]["ready"] == pool)
                });
            }
            let t = timed_run(&d, &format!("c-{i}"), "!text hi")
                .await
                .expect("run");
            agent.push(t.agent);
            fresh_cli += usize::from(!t.prestarted);
            model.push(to_first_model_request(&mock, t.sent_at_ms));
            event.push(t.first_event);
        }
        if pool > 0 {
            assert_eq!(
                d.status()["pool"]["cold_starts_total"],
                0,
                "a warm run started cold"
            );
            let cli: Vec<f64> = model.iter().zip(&agent).map(|(m, a)| m - a).collect();
            warm_steps = Some((run_steps(&d), cli));
        }
        println!(
            "{label}: {fresh_cli} of {runs} runs started a fresh CLI (no pre-started one fitted)"
        );
        rows.push((label, summarize(agent), summarize(model), summarize(event)));
    }
    let floor = docker_run_floor("runc", runs);
    table("Claim latency (ms)");
    for (label, agent, _, _) in &rows {
        row(
            &format!("{label}: request -> first byte from the agent"),
            agent,
        );
    }
    row(
        "`docker run --rm`, same image and flags (floor of a cold start)",
        &floor,
    );
    for (label, _, model, _) in &rows {
        row(
            &format!("{label}: request -> the CLI's first model request"),
            model,
        );
    }
    for (label, _, _, event) in &rows {
        row(&format!("{label}: request -> first SSE event"), event);
    }
    note(&format!(
        "warm p50 is {:.1}x faster than cold p50 (first byte from the agent)",
        rows[1].1.p50 / rows[0].1.p50
    ));
    if let Some((steps, cli)) = warm_steps {
        table("The warm path step by step (ms)");
        for (name, samples) in steps {
            row(&format!("daemon: {name}"), &summarize(samples));
        }
        row(
            "the agent took the run -> the CLI's first model request",
            &summarize(cli),
        );
    }
}

/// The daemon's `Run reached the agent.` lines: each step's samples, in
/// the order the daemon logs them (see `src/execute/steps.rs`), and the
/// whole from the run's start.
fn run_steps(d: &Daemon) -> Vec<(String, Vec<f64>)> {
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for line in d.logs() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] != "Run reached the agent." {
            continue;
        }
        let total = (
            "total (run start -> agent)".to_owned(),
            f["total_ms"].as_f64(),
        );
        let pairs = f["steps"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .filter_map(|p| {
                let (name, ms) = p.split_once('=')?;
                Some((name.to_owned(), ms.parse::<f64>().ok()))
            });
        for (name, ms) in pairs.chain(std::iter::once(total)) {
            let Some(ms) = ms else { continue };
            match steps.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => steps.push((name, vec![ms])),
            }
        }
    }
    steps
}

async fn restart(a: &Args) {
    let n = a.size(50, 3);
    let env = vec![("AGENTBOX_POOL_MAX_SIZE".to_owned(), (n + 8).to_string())];
    let (_mock, mut d) = start_with_mock_env("bench-key", n, "", env).await;
    let fill = Instant::now();
    tokio::task::block_in_place(|| {
        d.wait_status(900, "the pool filled", |s| s["pool"]["ready"] == n as u64)
    });
    let fill_s = fill.elapsed().as_secs_f64();
    let (mut serving, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..a.size(3, 1) {
        d.kill9();
        let t = Instant::now();
        tokio::task::block_in_place(|| d.restart());
        serving.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::task::block_in_place(|| {
            d.wait_status(120, "the pool adopted", |s| {
                s["pool"]["ready"] == n as u64 && s["pool"]["warming"] == 0
            })
        });
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(d.engine_names().len(), n, "containers leaked or lost");
    }
    record::set_table(&format!(
        "Restart after `kill -9` with {n} live containers (ms)"
    ));
    println!("\n### Restart after `kill -9` with {n} live containers (ms)\n");
    println!("(filling the pool of {n} took {fill_s:.1} s)\n");
    header();
    row("restart -> reconciled and serving", &summarize(serving));
    row(
        "restart -> pool whole again (all adopted)",
        &summarize(whole),
    );
}

/// What one turn over the session endpoint took, in milliseconds from the
/// upgrade request.
struct SessionTiming {
    /// The CLI's first line.
    first_message: f64,
    /// The turn's `result` line.
    result: f64,
}

/// Opens a session on `conversation`, sends `prompt` as its one user
/// message, reads to the `result`, then ends the session and waits for
/// the daemon's close (each within 120 s).
async fn timed_session(
    d: &Daemon,
    conversation: &str,
    prompt: &str,
) -> Result<SessionTiming, String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let bound = std::time::Duration::from_secs(120);
    let started = Instant::now();
    let mut ws = open_session(d, TOKEN, conversation, json!({}))
        .await
        .map_err(|(status, body)| format!("upgrade refused: {status} {body}"))?;
    send_line(&mut ws, user_line(prompt)).await;
    let mut first_message = None;
    let result = tokio::time::timeout(bound, async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.map_err(|e| e.to_string())? else {
                continue;
            };
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            first_message.get_or_insert(elapsed);
            let line: serde_json::Value =
                serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
            if line["type"] == "result" {
                return match line["is_error"] == false {
                    true => Ok(elapsed),
                    false => Err(format!("turn failed: {line}")),
                };
            }
        }
        Err("the session closed before its result".to_owned())
    })
    .await
    .map_err(|_| "no result within 120 s".to_owned())??;
    send_line(&mut ws, json!({"type": "end_input"})).await;
    tokio::time::timeout(bound, async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                return;
            }
        }
    })
    .await
    .map_err(|_| "the session did not close within 120 s".to_owned())?;
    Ok(SessionTiming {
        first_message: first_message.ok_or("no message")?,
        result,
    })
}

/// The session endpoint beside the SSE API, each turn on a warm
/// container: a new conversation per turn, the pool refilled in between.
async fn session(a: &Args) {
    let runs = a.runs;
    let pool = 2;
    let (_mock, d) = start_with_mock_opts("bench-key", pool, "").await;
    let (mut sse_first, mut sse_result) = (Vec::new(), Vec::new());
    let (mut ws_first, mut ws_result) = (Vec::new(), Vec::new());
    let warm = |d: &Daemon| {
        tokio::task::block_in_place(|| {
            d.wait_status(120, "a ready container", |s| s["pool"]["ready"] == pool)
        });
    };
    for i in 0..runs {
        warm(&d);
        let t = timed_run(&d, &format!("sse-{i}"), "!text hi")
            .await
            .expect("SSE run");
        sse_first.push(t.first_event);
        sse_result.push(t.total);
        warm(&d);
        let t = timed_session(&d, &format!("ws-{i}"), "!text hi")
            .await
            .expect("session");
        ws_first.push(t.first_message);
        ws_result.push(t.result);
    }
    assert_eq!(
        d.status()["pool"]["cold_starts_total"],
        0,
        "a warm run started cold"
    );
    table("Session endpoint vs SSE API, warm container (ms)");
    row("SSE: request -> first event", &summarize(sse_first));
    row(
        "session: upgrade request -> first message",
        &summarize(ws_first),
    );
    row(
        "SSE: request -> end of stream (after `result`)",
        &summarize(sse_result),
    );
    row(
        "session: upgrade request -> `result` line",
        &summarize(ws_result),
    );
}

fn mib(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.trim().parse().unwrap_or(f64::NAN);
    match unit.trim() {
        "B" => v / 1048576.0,
        "KiB" | "kB" => v / 1024.0,
        "MiB" | "MB" => v,
        "GiB" | "GB" => v * 1024.0,
        _ => f64::NAN,
    }
}

/// One process inside a container, as its `/proc` shows it.
#[derive(Debug)]
struct Proc {
    pid: u64,
    ppid: u64,
    /// The resolved `/proc/PID/exe`: what the process runs, which (unlike
    /// its command line or `comm`) it cannot rename.
    exe: String,
    rss_kib: u64,
    rss_anon_kib: u64,
}

impl Proc {
    fn runs(&self, program: &str) -> bool {
        self.exe.rsplit('/').next() == Some(program)
    }
}

/// Every process in `container`. The shell of `docker exec` shows up too,
/// as a process of its own that no lookup below matches.
fn container_procs(container: &str) -> Vec<Proc> {
    const LIST: &str = r#"for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || exe='?'
  st=$(grep -E '^(PPid|VmRSS|RssAnon):' "$p/status" 2>/dev/null) || continue
  echo "${p#/proc/} $exe" $st
done"#;
    docker_ok(&["exec", container, "sh", "-c", LIST])
        .lines()
        .filter_map(|line| {
            // "PID EXE PPid: N VmRSS: N kB RssAnon: N kB"
            let f: Vec<&str> = line.split_whitespace().collect();
            let field = |key: &str| {
                f.iter()
                    .position(|w| *w == key)
                    .and_then(|i| f.get(i + 1)?.parse().ok())
            };
            Some(Proc {
                pid: f.first()?.parse().ok()?,
                exe: (*f.get(1)?).to_owned(),
                ppid: field("PPid:")?,
                rss_kib: field("VmRSS:")?,
                rss_anon_kib: field("RssAnon:")?,
            })
        })
        .collect()
}

/// The one process in `procs` that `what` describes, or why not.
fn only<'a>(
    procs: &'a [Proc],
    what: &str,
    matches: impl Fn(&Proc) -> bool,
) -> Result<&'a Proc, String> {
    let found: Vec<&Proc> = procs.iter().filter(|p| matches(p)).collect();
    match found[..] {
        [one] => Ok(one),
        _ => Err(format!(
            "expected one {what}, found {}; processes: {procs:?}",
            found.len()
        )),
    }
}

/// The idle memory of one warm container, in MiB; `cli` is zero for a
/// container without a pre-started CLI.
struct IdleMemory {
    agent: f64,
    cli: f64,
    cli_anon: f64,
    init: f64,
}

fn idle_memory(container: &str, prestarted: bool) -> Result<IdleMemory, String> {
    let procs = container_procs(container);
    let init = only(&procs, "docker-init as PID 1", |p| {
        p.pid == 1 && p.runs("docker-init")
    })?;
    let agent = only(&procs, "workspace-agent under docker-init", |p| {
        p.ppid == init.pid && p.runs("workspace-agent")
    })?;
    let is_cli = |p: &Proc| p.ppid == agent.pid && p.runs("claude");
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (cli, cli_anon) = if prestarted {
        let cli = only(&procs, "pre-started CLI (`claude`) under the agent", is_cli)?;
        (mib(cli.rss_kib), mib(cli.rss_anon_kib))
    } else if procs.iter().any(is_cli) {
        return Err(format!("a CLI runs though none should: {procs:?}"));
    } else {
        (0.0, 0.0)
    };
    Ok(IdleMemory {
        agent: mib(agent.rss_kib),
        cli,
        cli_anon,
        init: mib(init.rss_kib),
    })
}

/// One pool's figures for the density table.
struct PoolMemory {
    agent: Summary,
    cli: Summary,
    cli_anon: Summary,
    init: Summary,
    /// cgroup usage without the page cache, as `docker stats` shows it.
    host: Summary,
    page_cache: Summary,
    /// A warm claim: request -> the CLI's first model request.
    first_model: Summary,
}

/// `n` idle warm containers, with or without a pre-started CLI each.
async fn pool_memory(a: &Args, n: usize, prestarted: bool) -> PoolMemory {
    let env = vec![(
        "AGENTBOX_POOL_PRESTARTED_MAX".to_owned(),
        if prestarted { n } else { 0 }.to_string(),
    )];
    let (mock, d) = start_with_mock_env("bench-key", n, "", env).await;
    let s = tokio::task::block_in_place(|| {
        d.wait_status(300, "the pool filled", |s| s["pool"]["ready"] == n as u64)
    });
    // Let start-up settle before measuring idle memory.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let names: Vec<String> = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let (mut agent, mut cli, mut cli_anon, mut init, mut host, mut cache) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for name in &names {
        // A process not found fails the bench: a figure from the wrong
        // process is worse than none.
        let m = idle_memory(name, prestarted)
            .unwrap_or_else(|e| panic!("density: container {name}: {e}"));
        agent.push(m.agent);
        cli.push(m.cli);
        cli_anon.push(m.cli_anon);
        init.push(m.init);
        let usage = docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name]);
        host.push(mib(usage.split('/').next().unwrap_or("")));
        let stat = cgroup::read(name, "memory", "memory.stat");
        let bytes = cgroup::keyed(&stat, "total_cache")
            .or_else(|| cgroup::keyed(&stat, "file"))
            .unwrap_or(0);
        cache.push(bytes as f64 / 1048576.0);
    }
    let mut first_model = Vec::new();
    for i in 0..a.size(5, 1).min(n) {
        let t = timed_run(&d, &format!("density-{i}"), "!text hi")
            .await
            .expect("run");
        first_model.push(to_first_model_request(&mock, t.sent_at_ms));
    }
    PoolMemory {
        agent: summarize(agent),
        cli: summarize(cli),
        cli_anon: summarize(cli_anon),
        init: summarize(init),
        host: summarize(host),
        page_cache: summarize(cache),
        first_model: summarize(first_model),
    }
}

async fn density(a: &Args) {
    let n = a.size(10, 2);
    let with = pool_memory(a, n, true).await;
    let without = pool_memory(a, n, false).await;
    let available_mib = mem_available_mib();
    table(&format!("Density: {n} idle warm containers (MiB)"));
    row("workspace-agent idle RSS", &with.agent);
    row("pre-started CLI (`claude`) idle RSS", &with.cli);
    row(
        "pre-started CLI, anonymous part of its RSS (RssAnon)",
        &with.cli_anon,
    );
    row("docker-init (PID 1) RSS", &with.init);
    row(
        "host memory per idle warm container (cgroup usage)",
        &with.host,
    );
    row("page cache charged to the container", &with.page_cache);
    row(
        "without a pre-started CLI: host memory per container",
        &without.host,
    );
    row(
        "without a pre-started CLI: page cache charged",
        &without.page_cache,
    );
    row(
        "without a pre-started CLI: workspace-agent idle RSS",
        &without.agent,
    );
    table("Pre-started CLI or not: a warm claim (ms)");
    row(
        "pre-started: request -> the CLI's first model request",
        &with.first_model,
    );
    row(
        "not pre-started: request -> the CLI's first model request",
        &without.first_model,
    );
    note(&format!(
        "MemAvailable {available_mib:.0} MiB / {:.1} MiB per idle container = about {:.0} warm \
         containers with a pre-started CLI, {:.0} without",
        with.host.p50,
        available_mib / with.host.p50,
        available_mib / without.host.p50
    ));
}

/// The host's MemAvailable in MiB (NaN where it cannot be read).
fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn throughput(a: &Args) {
    let (conversations, turns) = (a.size(20, 3), a.size(3, 2));
    let env = vec![(
        "AGENTBOX_POOL_MAX_SIZE".to_owned(),
        (conversations + 8).to_string(),
    )];
    let (_mock, d) = start_with_mock_env("bench-key", 4, "", env).await;
    tokio::task::block_in_place(|| {
        d.wait_status(300, "the pool filled", |s| s["pool"]["ready"] == 4)
    });
    let d = std::sync::Arc::new(d);
    let started = Instant::now();
    let tasks: Vec<_> = (0..conversations)
        .map(|c| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for t in 0..turns {
                    let prompt =
                        format!("turn {t}\n!write f{t}.txt content {t}\n!bash cat f{t}.txt");
                    out.push(timed_run(&d, &format!("tp-{c}"), &prompt).await);
                }
                out
            })
        })
        .collect();
    let (mut first, mut total, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        for r in task.await.expect("conversation task") {
            match r {
                Ok(t) => {
                    first.push(t.first_event);
                    total.push(t.total);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    table(&format!(
        "Throughput: {conversations} concurrent conversations x {turns} turns with tools"
    ));
    note(&format!(
        "errors: {} of {} runs; wall time {wall:.1} s",
        errors.len(),
        conversations * turns
    ));
    if !first.is_empty() {
        row("time to first event (ms)", &summarize(first));
        row("run time (ms)", &summarize(total));
    }
    for e in errors.iter().take(3) {
        println!("\nerror: {}", e.chars().take(300).collect::<String>());
    }
    assert!(errors.is_empty(), "throughput runs failed");
}

/// One tier's figures for the side-by-side table.
struct TierFigures {
    warm_agent: Summary,
    warm_model: Summary,
    cold_agent: Summary,
    tool_turn: Summary,
    idle_mib: Summary,
    floor: Summary,
}

/// `docker run --rm` of a no-op under `runtime`, with the containers' flags.
fn docker_run_floor(runtime: &str, runs: usize) -> Summary {
    let image = test_image();
    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        docker_ok(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
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
    summarize(floor)
}

/// A large file tree written and read back by the agent's Bash tool.
const TOOL_TURN: &str = "!bash mkdir -p tree && for i in $(seq 1 2000); do echo line $i > tree/f$i.txt; done && cat tree/*.txt | wc -l > count.txt && rm -rf tree\n!text done";

async fn tier_figures(a: &Args, tier: &str) -> TierFigures {
    let runs = a.runs;
    let pool = 2usize;
    let env = |warm: usize| {
        let (runc, gvisor) = if tier == "gvisor" {
            (0, warm)
        } else {
            (warm, 0)
        };
        vec![
            (
                "AGENTBOX_CONTAINER_ISOLATION_TIER".to_owned(),
                tier.to_owned(),
            ),
            ("AGENTBOX_POOL_MIN_SIZE".to_owned(), runc.to_string()),
            (
                "AGENTBOX_POOL_GVISOR_MIN_SIZE".to_owned(),
                gvisor.to_string(),
            ),
        ]
    };
    let ready = move |s: &serde_json::Value| {
        s["pool"]["tiers"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["tier"] == tier && t["ready"] == pool))
    };
    let (mock, d) = start_with_mock_env("bench-key", pool, "", env(pool)).await;
    let s = tokio::task::block_in_place(|| d.wait_status(300, "the tier's pool filled", ready));
    // Idle memory of the warm containers, as the engine's cgroup counts it.
    let mut idle = Vec::new();
    for c in s["containers"].as_array().unwrap() {
        let usage = docker_ok(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            c["name"].as_str().unwrap(),
        ]);
        idle.push(mib(usage.split('/').next().unwrap_or("")));
    }
    let (mut warm_agent, mut warm_model, mut tool_turn) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        tokio::task::block_in_place(|| d.wait_status(300, "a ready container", ready));
        let t = timed_run(&d, &format!("w-{i}"), "!text hi")
            .await
            .expect("warm run");
        warm_agent.push(t.agent);
        warm_model.push(to_first_model_request(&mock, t.sent_at_ms));
        let t = timed_run(&d, &format!("w-{i}"), TOOL_TURN)
            .await
            .expect("tool turn");
        tool_turn.push(t.total);
    }
    drop(d);
    let (_mock, d) = start_with_mock_env("bench-key", 0, "", env(0)).await;
    let mut cold_agent = Vec::new();
    for i in 0..runs {
        let t = timed_run(&d, &format!("c-{i}"), "!text hi")
            .await
            .expect("cold run");
        cold_agent.push(t.agent);
    }
    drop(d);
    let runtime = if tier == "gvisor" { "runsc" } else { "runc" };
    TierFigures {
        warm_agent: summarize(warm_agent),
        warm_model: summarize(warm_model),
        cold_agent: summarize(cold_agent),
        tool_turn: summarize(tool_turn),
        idle_mib: summarize(idle),
        floor: docker_run_floor(runtime, runs),
    }
}

/// Both isolation tiers side by side: warm claim, cold start, time to the
/// first model request, a tool-heavy turn and idle memory per container.
async fn tiers(a: &Args) {
    tokio::task::block_in_place(gvisor_prerequisites);
    let runc = tier_figures(a, "runc").await;
    let gvisor = tier_figures(a, "gvisor").await;
    record::set_table("Isolation tiers side by side");
    println!("\n### Isolation tiers side by side (p50, in brackets p90; ms unless said)\n");
    println!("| | runc | gVisor (runsc) |\n|---|---:|---:|");
    let both = |name: &str, r: &Summary, g: &Summary| {
        record::record(&format!("runc: {name}"), r);
        record::record(&format!("gvisor: {name}"), g);
        println!(
            "| {name} | {:.1} [{:.1}] | {:.1} [{:.1}] |",
            r.p50, r.p90, g.p50, g.p90
        );
    };
    both(
        "warm claim: request -> first byte from the agent",
        &runc.warm_agent,
        &gvisor.warm_agent,
    );
    both(
        "warm claim: request -> the CLI's first model request",
        &runc.warm_model,
        &gvisor.warm_model,
    );
    both(
        "cold start: request -> first byte from the agent",
        &runc.cold_agent,
        &gvisor.cold_agent,
    );
    both(
        "`docker run --rm` of a no-op, same flags",
        &runc.floor,
        &gvisor.floor,
    );
    both(
        "tool-heavy turn: 2000 files written, read, removed (whole run)",
        &runc.tool_turn,
        &gvisor.tool_turn,
    );
    both(
        "idle warm container, cgroup memory (MiB)",
        &runc.idle_mib,
        &gvisor.idle_mib,
    );
    println!(
        "\n({} runs per figure; idle memory over {} warm containers)\n",
        runc.warm_agent.n, runc.idle_mib.n
    );
}

/// `n` one-turn runs sent at once, on conversations `{prefix}-{i}`: each
/// run's time to the agent's first byte and to the first SSE event.
async fn simultaneous(d: &std::sync::Arc<Daemon>, prefix: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let (d, conversation) = (d.clone(), format!("{prefix}-{c}"));
            tokio::spawn(async move { timed_run(&d, &conversation, "!text hi").await })
        })
        .collect();
    let (mut agent, mut first) = (Vec::new(), Vec::new());
    for task in tasks {
        let t = task.await.expect("run task").expect("run");
        agent.push(t.agent);
        first.push(t.first_event);
    }
    (agent, first)
}

/// CPU time (ms) a container has used since it started: the engine's
/// cumulative count (`cpu_stats.cpu_usage.total_usage`, ns), which other
/// work on the machine does not inflate the way it does wall time.
fn container_cpu_ms(container: &str) -> Option<f64> {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    let out = std::process::Command::new("curl")
        .args(["-sf", "--unix-socket", &socket])
        .arg(format!(
            "http://engine/containers/{container}/stats?stream=false&one-shot=true"
        ))
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["cpu_stats"]["cpu_usage"]["total_usage"]
        .as_f64()
        .map(|ns| ns / 1e6)
}

/// The CPU time the containers of `conversations` have used (ms each).
fn conversations_cpu_ms(d: &Daemon, conversations: &[String]) -> Vec<f64> {
    conversations
        .iter()
        .filter_map(|c| d.container_of(TENANT, c))
        .filter_map(|name| container_cpu_ms(&name))
        .collect()
}

/// CPU time (user + system) of a process so far, in ms.
fn process_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks * 1000.0 / hz)
}

/// CPU time of every container of the engine together so far, in ms
/// (cgroup v1's `docker` group, as here); `None` elsewhere.
fn all_containers_cpu_ms() -> Option<f64> {
    let ns: f64 = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(ns / 1e6)
}

/// Busy and total jiffies of the whole machine (`/proc/stat`'s cpu line).
fn host_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// A cold start measured alone, then `n` conversations at once on a pool
/// of `pool`: the burst's tail against the single cold start of the same
/// run (issue target: p99 at most 3x). Then, once the pool has grown after
/// the burst (`pool.burst_max_size`), a second burst of `n`.
async fn burst(a: &Args) {
    let (n, pool, grown) = (a.size(20, 3), a.size(4, 1), a.size(8, 2));
    let (mut single, mut single_cpu) = (Vec::new(), Vec::new());
    {
        let (_mock, d) = start_with_mock_opts("bench-key", 0, "").await;
        for i in 0..a.size(5, 1) {
            let conversation = format!("single-{i}");
            let t = timed_run(&d, &conversation, "!text hi")
                .await
                .expect("single cold run");
            single.push(t.first_event);
            single_cpu.extend(tokio::task::block_in_place(|| {
                conversations_cpu_ms(&d, &[conversation])
            }));
        }
    }
    let env = vec![
        (
            "AGENTBOX_POOL_MAX_SIZE".to_owned(),
            (2 * n + grown + 4).to_string(),
        ),
        ("AGENTBOX_POOL_BURST_MAX_SIZE".to_owned(), grown.to_string()),
    ];
    let (_mock, d) = start_with_mock_env("bench-key", pool, "", env).await;
    tokio::task::block_in_place(|| {
        d.wait_status(300, "the pool filled", |s| {
            s["pool"]["ready"] == pool as u64
        })
    });
    let d = std::sync::Arc::new(d);
    // The pool's CPU so far (its CLIs' pre-start), taken off the burst's:
    // the burst claims every one of them.
    let before: f64 = tokio::task::block_in_place(|| {
        d.status()["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| container_cpu_ms(c["name"].as_str()?))
            .sum()
    });
    let started = Instant::now();
    let jiffies = host_jiffies();
    let (agent, first) = simultaneous(&d, "burst", n).await;
    let wall = started.elapsed().as_secs_f64();
    let (busy, total) = host_jiffies();
    let host_busy = (busy - jiffies.0) as f64 / (total - jiffies.1).max(1) as f64;
    let burst_cpu = tokio::task::block_in_place(|| {
        conversations_cpu_ms(
            &d,
            &(0..n).map(|c| format!("burst-{c}")).collect::<Vec<_>>(),
        )
    });
    let cold = d.status()["pool"]["cold_starts_total"]
        .as_u64()
        .unwrap_or(0);
    tokio::task::block_in_place(|| {
        d.wait_status(600, "the pool grew after the burst", |s| {
            s["pool"]["ready"] == grown as u64 && s["pool"]["warming"] == 0
        })
    });
    let (agent2, first2) = simultaneous(&d, "again", n).await;
    let cold2 = d.status()["pool"]["cold_starts_total"]
        .as_u64()
        .unwrap_or(0)
        - cold;
    let single = summarize(single);
    let (first, first2) = (summarize(first), summarize(first2));
    table(&format!(
        "Burst: {n} conversations at once on a pool of {pool} (ms)"
    ));
    row(
        "single cold start, alone: request -> first SSE event",
        &single,
    );
    row(
        "burst: request -> first byte from the agent",
        &summarize(agent),
    );
    row("burst: request -> first SSE event", &first);
    row(
        &format!("second burst, pool grown to {grown}: request -> first byte from the agent"),
        &summarize(agent2),
    );
    row(
        &format!("second burst, pool grown to {grown}: request -> first SSE event"),
        &first2,
    );
    note(&format!(
        "burst p99 / single cold start p50 = {:.1}x (target at most 3x), second burst {:.1}x; \
         {cold} then {cold2} cold starts; first burst wall time {wall:.1} s",
        first.p99 / single.p50,
        first2.p99 / single.p50
    ));
    // Where the tail's floor is: the CPU the burst's containers need,
    // spread perfectly over the machine's cores.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let burst_cpu_total: f64 = burst_cpu.iter().sum::<f64>() - before;
    let (single_cpu, burst_cpu) = (summarize(single_cpu), summarize(burst_cpu));
    table("CPU time the containers used for one one-turn run (ms of CPU)");
    row("single cold start, alone: its container", &single_cpu);
    row(
        "first burst: each conversation's container (a warm one's CLI pre-start included)",
        &burst_cpu,
    );
    note(&format!(
        "the first burst's containers used {:.1} CPU-s together during the burst; on {cores} cores that alone \
         takes {:.1} s with perfect packing ({:.1}x the single cold start's first event); the \
         machine was {:.0}% busy over the burst's {wall:.1} s",
        burst_cpu_total / 1000.0,
        burst_cpu_total / 1000.0 / cores as f64,
        burst_cpu_total / cores as f64 / single.p50,
        host_busy * 100.0
    ));
}

/// `n` runs at once on a pool of `n` warm containers, in rounds (`--runs`,
/// at most 5; the pool refills between them): claim to the first byte
/// from the agent (issue target: p99 at most 100 ms), the daemon's steps
/// of those runs, how many durable state commits each round made and where
/// the CPU went. Three times: with the pool refilling at the engine's
/// default CPU weight (`pool.refill_cpu_shares = 0`), at the shipped low
/// one, and at the low one with the daemon at nice -5 (ahead of the
/// engine's processes and the containers on the CPU).
async fn claims(a: &Args) {
    for (shares, nice) in [(0, 0), (64, 0), (64, -5)] {
        claims_with(a, shares, nice).await;
    }
}

async fn claims_with(a: &Args, shares: u64, nice: i32) {
    let n = a.size(50, 2);
    let rounds = a.size(a.runs.clamp(1, 5), 1);
    // Each round's conversations keep their containers: room for all.
    let env = vec![
        (
            "AGENTBOX_POOL_MAX_SIZE".to_owned(),
            (n * rounds + 8).to_string(),
        ),
        (
            "AGENTBOX_POOL_REFILL_CPU_SHARES".to_owned(),
            shares.to_string(),
        ),
    ];
    let (_mock, d) = start_with_mock_env("bench-key", n, "", env).await;
    if nice != 0 {
        renice(d.child.id(), nice);
    }
    let d = std::sync::Arc::new(d);
    let (mut agent, mut first, mut commits) = (Vec::new(), Vec::new(), Vec::new());
    let mut commit_ms = Vec::new();
    // CPU-s per round: the daemon, this process (the mock model and the
    // clients), every container, the whole machine.
    let mut cpu: [Vec<f64>; 4] = Default::default();

    for round in 0..rounds {
        tokio::task::block_in_place(|| {
            d.wait_status(900, "the pool filled", |s| {
                s["pool"]["ready"] == n as u64 && s["pool"]["warming"] == 0
            })
        });
        // Ready is when the agent answers; its CLI's start-up goes on for a
        // second or two after. Warm means done with it.
        wait_containers_quiet().await;
        // The setting under test took: the ready containers' weight.
        for c in d.status()["containers"].as_array().expect("containers") {
            if c["state"] == "ready" {
                let name = c["name"].as_str().expect("name");
                assert_eq!(inspect(name)["HostConfig"]["CpuShares"], shares, "{name}");
            }
        }
        let before = state_write_totals(&d);
        let cpu_before = cpu_split(&d);
        let (a, f) = simultaneous(&d, &format!("claim{round}"), n).await;
        let cpu_after = cpu_split(&d);
        let after = state_write_totals(&d);

        for (k, (x, y)) in cpu_before.iter().zip(&cpu_after).enumerate() {
            cpu[k].push((y - x) / 1000.0);
        }
        let count = after.0 - before.0;
        commits.push(count);
        commit_ms.push(format!(
            "{:.1}",
            (after.1 - before.1) * 1000.0 / count.max(1) as f64
        ));
        agent.extend(a);
        first.extend(f);
    }
    let cold = d.status()["pool"]["cold_starts_total"]
        .as_u64()
        .unwrap_or(0);
    let daemon = match nice {
        0 => String::new(),
        n => format!(", the daemon at nice {n}"),
    };
    table(&format!(
        "{n} claims at once on a pool of {n}, the refill at CPU weight {}{daemon} (ms)",
        if shares == 0 { 1024 } else { shares }
    ));
    row("request -> first byte from the agent", &summarize(agent));
    row("request -> first SSE event", &summarize(first));
    for (name, samples) in run_steps(&d) {
        row(&format!("daemon: {name}"), &summarize(samples));
    }
    note(&format!(
        "{cold} of {} runs started cold; {rounds} rounds; state write commits per round of {n} runs \
         (until all {n} had ended): {commits:?}, each taking {commit_ms:?} ms on average \
         (flush included)",
        n * rounds
    ));
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    note(&format!(
        "CPU-seconds per round, from the first request until all {n} runs had ended: \
         the daemon [{}], the bench process (mock model and clients) [{}], all containers \
         (the claimed ones and the refill behind them) [{}], the whole machine [{}]",
        fmt(&cpu[0]),
        fmt(&cpu[1]),
        fmt(&cpu[2]),
        fmt(&cpu[3])
    ));
}

/// Sets every thread of process `pid` to `nice`, as a unit's `Nice=` sets
/// a daemon before it starts; threads it starts later inherit it.
fn renice(pid: u32, nice: i32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    for task in tasks {
        let tid: libc::id_t = task
            .expect("a thread")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("a thread id");
        // SAFETY: setpriority takes plain integers.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        assert_eq!(
            rc,
            0,
            "nice {nice} for thread {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Waits until all containers together use under a twentieth of a core
/// over a second (at most two minutes; then goes on and says so).
async fn wait_containers_quiet() {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let Some(mut last) = all_containers_cpu_ms() else {
        return;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(now) = all_containers_cpu_ms() else {
            return;
        };
        if now - last < 50.0 {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("bench: the containers never went quiet; measuring anyway");
            return;
        }
        last = now;
    }
}

/// CPU ms so far of the daemon, this process, every container and the
/// whole machine (NaN where it cannot be read).
fn cpu_split(d: &Daemon) -> [f64; 4] {
    let (busy, _) = host_jiffies();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    [
        process_cpu_ms(d.child.id()).unwrap_or(f64::NAN),
        process_cpu_ms(std::process::id()).unwrap_or(f64::NAN),
        all_containers_cpu_ms().unwrap_or(f64::NAN),
        busy as f64 * 1000.0 / hz,
    ]
}

/// How many write transactions the daemon's state file has committed and
/// the seconds they took together, flush included (the
/// `agentbox_state_transaction_duration_seconds` count and sum).
fn state_write_totals(d: &Daemon) -> (u64, f64) {
    let url = format!("http://{}/metrics", d.admin_addr);
    let out = std::process::Command::new("curl")
        .args(["-sf", &url])
        .output()
        .expect("curl the metrics");
    let text = String::from_utf8_lossy(&out.stdout);
    let total = |series: &str| {
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains("kind=\"write\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (
        total("agentbox_state_transaction_duration_seconds_count") as u64,
        total("agentbox_state_transaction_duration_seconds_sum"),
    )
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// For each arrival, the time since the mock last handed out an event
/// before it, in ms: how long the chain took to bring the token over.
fn delays_ms(arrivals_us: &[u64], sent_us: &[u64]) -> Vec<f64> {
    let mut sent = sent_us.to_vec();
    sent.sort_unstable();
    arrivals_us
        .iter()
        .filter_map(|&at| {
            let i = sent.partition_point(|&s| s <= at);
            let before = *sent.get(i.checked_sub(1)?)?;
            Some((at - before) as f64 / 1000.0)
        })
        .collect()
}

/// The streamed answer's prompt: three text blocks of three pieces each,
/// `pace` ms between the model's events, so each piece is its own event.
const STREAMED: &str =
    "!pace 40\n!text alpha beta gamma delta\n!text epsilon zeta eta\n!text theta iota kappa";

/// A run through the daemon: the arrival of each `text_delta` event.
async fn text_delta_arrivals(d: &Daemon, conversation: &str) -> Vec<u64> {
    let mut resp = bench_client()
        .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
        .bearer_auth(TOKEN)
        .json(&json!({ "prompt": STREAMED }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let (mut buf, mut arrivals) = (String::new(), Vec::new());
    while let Some(chunk) = resp.chunk().await.expect("stream") {
        let at = now_us();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: text_delta") {
                arrivals.push(at);
            }
        }
    }
    arrivals
}

/// The same answer through the session endpoint (the Agent SDK's path, its
/// partial messages on): the arrival of each `text_delta` stream event.
async fn session_delta_arrivals(d: &Daemon, conversation: &str) -> Vec<u64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = open_session(
        d,
        TOKEN,
        conversation,
        json!({"include_partial_messages": true}),
    )
    .await
    .expect("the session upgrade");
    send_line(&mut ws, user_line(STREAMED)).await;
    let mut arrivals = Vec::new();
    let finished = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(msg) = ws.next().await {
            let at = now_us();
            let Message::Text(text) = msg.expect("session message") else {
                continue;
            };
            if text.contains("\"text_delta\"") {
                arrivals.push(at);
            }
            if text.contains("\"type\":\"result\"") {
                return;
            }
        }
        panic!("the session closed before its result");
    })
    .await;
    finished.expect("the session's result within 120 s");
    send_line(&mut ws, json!({"type": "end_input"})).await;
    arrivals
}

/// The same answer read straight from the CLI on this host (no container,
/// agent, daemon or proxy): the arrival of each partial text delta line.
async fn cli_delta_arrivals(mock: &mock_model::MockModel, home: &std::path::Path) -> Vec<u64> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new("claude");
    cmd.args([
        "-p",
        STREAMED,
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ])
    .env("HOME", home)
    .env("ANTHROPIC_BASE_URL", mock.url())
    .env("ANTHROPIC_API_KEY", "bench-key")
    .stdout(std::process::Stdio::piped())
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    if let Some(ca) = mock.ca_file() {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let mut child = cmd
        .spawn()
        .expect("claude on the host (tests/setup/ensure-claude.sh)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut arrivals = Vec::new();
    while let Some(line) = lines.next_line().await.expect("cli stdout") {
        let at = now_us();
        if line.contains("\"text_delta\"") {
            arrivals.push(at);
        }
    }
    let status = child.wait().await.expect("cli exit");
    assert!(status.success(), "host CLI failed: {status}");
    arrivals
}

/// The delay the whole chain (CLI stdout, agent, bridge, daemon, SSE, and
/// the proxy on the way in) adds between a model's streamed event and the
/// client's `text_delta`, beside the CLI read directly on the host.
async fn streaming(a: &Args) {
    let (mock, d) = start_with_mock_opts("bench-key", 1, "").await;
    let home = tempfile::tempdir().expect("home for the host CLI");
    let (mut via, mut direct, mut session) = (Vec::new(), Vec::new(), Vec::new());
    let warm = |d: &Daemon| {
        tokio::task::block_in_place(|| {
            d.wait_status(120, "a ready container", |s| s["pool"]["ready"] == 1)
        })
    };
    for i in 0..a.runs {
        warm(&d);
        let arrivals = text_delta_arrivals(&d, &format!("stream-{i}")).await;
        via.extend(delays_ms(&arrivals, &mock.sent_event_times_us()));
        warm(&d);
        let arrivals = session_delta_arrivals(&d, &format!("stream-session-{i}")).await;
        session.extend(delays_ms(&arrivals, &mock.sent_event_times_us()));
        let arrivals = cli_delta_arrivals(&mock, home.path()).await;
        direct.extend(delays_ms(&arrivals, &mock.sent_event_times_us()));
    }
    let (via, direct, session) = (summarize(via), summarize(direct), summarize(session));
    table("Streaming: model event -> text delta at the reader (ms)");
    row(
        "through agentbox: model event -> client's SSE `text_delta`",
        &via,
    );
    row(
        "through agentbox's session endpoint: model event -> client's `text_delta` message",
        &session,
    );
    row(
        "the CLI alone on the host: model event -> its stdout line",
        &direct,
    );
    note(&format!(
        "agentbox adds {:.2} ms at p50 and {:.2} ms at p99 over the CLI alone through SSE, \
         {:.2} ms and {:.2} ms through the session endpoint (target p50 under 1 ms)",
        via.p50 - direct.p50,
        via.p99 - direct.p99,
        session.p50 - direct.p50,
        session.p99 - direct.p99
    ));
}

/// How many conversations running at once (each an agent making paced
/// tool-calling turns) the host carries before a new warm run's time to
/// the first event passes 2 s: steps of `k` running, three warm runs
/// measured at each, until one step's median passes 2 s.
async fn limit(a: &Args) {
    let steps: Vec<usize> = if a.smoke {
        vec![1]
    } else {
        vec![5, 10, 20, 40, 60]
    };
    // About 20 model turns of ten events 100 ms apart, each with a tool.
    let busy = format!("!pace 100\n{}", "!bash true\n".repeat(20));
    let mut rows = Vec::new();
    for &k in &steps {
        let measured = 3;
        let env = vec![
            (
                "AGENTBOX_POOL_MAX_SIZE".to_owned(),
                (k + measured + 4).to_string(),
            ),
            ("AGENTBOX_AGENT_MAX_RUN_SECS".to_owned(), "600".to_owned()),
        ];
        let (_mock, d) = start_with_mock_env("bench-key", k + measured, "", env).await;
        tokio::task::block_in_place(|| {
            d.wait_status(900, "the pool filled", |s| {
                s["pool"]["ready"] == (k + measured) as u64 && s["pool"]["warming"] == 0
            })
        });
        let mut running = Vec::new();
        for i in 0..k {
            running.push(LiveStream::start(&d, TOKEN, &format!("busy-{i}"), &busy).await);
        }
        for live in &mut running {
            live.wait_for(300, "the running agent's first tool", |e| {
                e.event == "tool_use"
            })
            .await;
        }
        let mut first = Vec::new();
        for i in 0..measured {
            let t = timed_run(&d, &format!("probe-{i}"), "!text hi")
                .await
                .expect("probe run");
            first.push(t.first_event);
        }
        let first = summarize(first);
        let p50 = first.p50;
        println!("limit: {k} running -> first event p50 {p50:.0} ms");
        rows.push((k, first));
        drop(running);
        if p50 > 2000.0 {
            break;
        }
    }
    table("Conversations running at once vs a new run's time to the first event (ms)");
    for (k, first) in &rows {
        row(&format!("{k} running: request -> first SSE event"), first);
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let recorded = record::start();
    bench_client();
    println!(
        "bench on {} cores, kernel {}, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        if a.smoke { "smoke mode" } else { "full" }
    );
    rt.block_on(async {
        if a.wants("claim") {
            claim(&a).await;
        }
        if a.wants("restart") {
            restart(&a).await;
        }
        if a.wants("density") {
            density(&a).await;
        }
        if a.wants("throughput") {
            throughput(&a).await;
        }
        if a.wants("tiers") {
            tiers(&a).await;
        }
        if a.wants("burst") {
            burst(&a).await;
        }
        if a.wants("claims") {
            claims(&a).await;
        }
        if a.wants("streaming") {
            streaming(&a).await;
        }
        if a.wants("session") {
            session(&a).await;
        }
        if a.wants("limit") {
            limit(&a).await;
        }
        if a.wants("idle") {
            idle::idle(&a).await;
        }
        if a.wants("failover") {
            failover::failover(&a).await;
        }
        if a.wants("cli") {
            cli_settings::cli_settings(&a).await;
        }
    });
    record::save("suite", recorded, a.out.as_deref());
    eprintln!("bench: done in {:.1}s", t.elapsed().as_secs_f64());
}
