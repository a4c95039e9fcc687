//! `cli`: what each setting the CLI reads does to its own work, for the
//! settings that might spare a remote run work it does not need. The CLI
//! runs alone on this host (no container, agent or daemon, which add the
//! same for every setting) against the mock model, as the agent runs it:
//! stream-json in and out, the agent's flags, a fresh `HOME` and working
//! directory per run (a new conversation's). For each setting and run:
//! - **boot CPU**: the CPU time (user + system) the CLI uses in its first
//!   3 s, waiting for its prompt (what a pre-started CLI has spent before a
//!   claim, and what a cold start pays; see [`SETTLE`]);
//! - **prompt -> first model request**: from writing the prompt line to the
//!   mock's receipt of the first `/v1/messages` request (the warm path's
//!   last step);
//! - **turn CPU**: the CPU time from the prompt to the `result` line.
//!
//! The settings take turns within each run, so a drift in the machine's
//! load falls on all of them alike.

use crate::record::{note, row, summarize, table};
use crate::Args;
use std::io::Write;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// A setting under test: its name, environment and extra arguments.
struct Setting {
    name: &'static str,
    env: &'static [&'static str],
    args: &'static [&'static str],
}

/// The switches `docs/benchmarks.md` names as possibly sparing work, one by
/// one, all together, and the CLI's own minimal mode.
const SIX: &[&str] = &[
    "CLAUDE_CODE_DISABLE_BUNDLED_SKILLS",
    "CLAUDE_CODE_DISABLE_ATTACHMENTS",
    "CLAUDE_CODE_DISABLE_FILE_CHECKPOINTING",
    "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS",
    "CLAUDE_CODE_DISABLE_CRON",
    "CLAUDE_CODE_DISABLE_FEATURE_FLAGS",
];

fn settings() -> Vec<Setting> {
    let mut v = vec![Setting {
        name: "none (as shipped)",
        env: &[],
        args: &[],
    }];
    for name in SIX {
        v.push(Setting {
            name,
            env: std::slice::from_ref(name),
            args: &[],
        });
    }
    v.push(Setting {
        name: "all six",
        env: SIX,
        args: &[],
    });
    v.push(Setting {
        name: "--bare",
        env: &[],
        args: &["--bare"],
    });
    v.push(Setting {
        name: "--bare and all six",
        env: SIX,
        args: &["--bare"],
    });
    v
}

/// One run's figures, in milliseconds.
struct Figures {
    boot_cpu: f64,
    to_request: f64,
    turn_cpu: f64,
}

/// How long a new CLI is left to start before its prompt. It does its
/// start-up in steps: most by 0.4 s, then more at about 1 s and 2 s
/// (deferred work on timers), then nothing until its prompt (sampled every
/// 0.2 s for 6 s by hand: 300, 380, 450, 460 ms of CPU). A pre-started CLI
/// has done all of it before a claim; a cold start pays it.
const SETTLE: Duration = Duration::from_secs(3);

async fn one_run(mock: &mock_model::MockModel, s: &Setting, settle: Duration) -> Figures {
    let home = tempfile::tempdir().expect("HOME");
    let work = tempfile::tempdir().expect("working directory");
    let mut cmd = tokio::process::Command::new("claude");
    cmd.args(["-p", "--output-format", "stream-json", "--verbose"])
        .args([
            "--input-format",
            "stream-json",
            "--include-partial-messages",
        ])
        .args(["--settings", r#"{"skipWebFetchPreflight":true}"#])
        .args(["--permission-mode", "bypassPermissions"])
        .args(s.args)
        .current_dir(work.path())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", mock.url())
        .env("ANTHROPIC_API_KEY", "bench-key")
        // The image's defaults (workspace-base/Dockerfile).
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        // Root on this host; the container's user is not.
        .env("IS_SANDBOX", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in s.env {
        cmd.env(name, "1");
    }
    if let Some(ca) = mock.ca_file() {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let mut child = cmd
        .spawn()
        .expect("claude on the host (tests/setup/ensure-claude.sh)");
    let pid = child.id().expect("pid");
    tokio::time::sleep(settle).await;
    let boot_cpu = crate::process_cpu_ms(pid).expect("the CLI exited before its prompt");

    let line = serde_json::json!({
        "type": "user",
        "session_id": "",
        "message": {"role": "user", "content": "!text hi"},
        "parent_tool_use_id": null,
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let sent_at_ms = crate::now_ms();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{line}\n").as_bytes())
        .await
        .expect("prompt to the CLI");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Some(l) = lines.next_line().await.expect("CLI stdout") {
        if l.contains(r#""type":"result""#) {
            assert!(l.contains(r#""is_error":false"#), "the run failed: {l}");
            break;
        }
    }
    let turn_cpu = crate::process_cpu_ms(pid).expect("the CLI is still running") - boot_cpu;
    drop(stdin);
    let _ = child.wait().await;
    let to_request = crate::to_first_model_request(mock, sent_at_ms);
    assert!(to_request.is_finite(), "the mock saw no model request");
    Figures {
        boot_cpu,
        to_request,
        turn_cpu,
    }
}

pub async fn cli_settings(a: &Args) {
    let mock = mock_model::MockModel::start_tls("127.0.0.1:0")
        .await
        .expect("mock model");
    let all = settings();
    let chosen: Vec<&Setting> = if a.smoke {
        vec![&all[0], &all[all.len() - 1]]
    } else {
        all.iter().collect()
    };
    let settle = if a.smoke {
        Duration::from_millis(500)
    } else {
        SETTLE
    };
    let mut figures: Vec<Vec<Figures>> = chosen.iter().map(|_| Vec::new()).collect();
    for run in 0..a.runs {
        // Each run starts with another setting, so none always goes first.
        for k in 0..chosen.len() {
            let i = (k + run) % chosen.len();
            figures[i].push(one_run(&mock, chosen[i], settle).await);
        }
        print!(".");
        let _ = std::io::stdout().flush();
    }
    println!();
    type Pick = fn(&Figures) -> f64;
    let tables: [(&str, Pick); 3] = [
        (
            "The CLI alone: boot CPU, its first 3 s waiting for its prompt (ms of CPU)",
            |f| f.boot_cpu,
        ),
        (
            "The CLI alone: prompt -> its first model request (ms)",
            |f| f.to_request,
        ),
        (
            "The CLI alone: CPU for a one-turn run after the prompt (ms of CPU)",
            |f| f.turn_cpu,
        ),
    ];
    for (title, pick) in tables {
        table(title);
        for (s, f) in chosen.iter().zip(&figures) {
            row(s.name, &summarize(f.iter().map(pick).collect()));
        }
    }
    note(&format!(
        "{} runs per setting, settings in turn; the CLI {} on the host, fresh HOME per run",
        a.runs,
        cli_version()
    ));
}

fn cli_version() -> String {
    std::process::Command::new("claude")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
