//! Runs the real Claude Code CLI against the mock: proves the scripted
//! Write and Bash tools really execute and that `--resume` replays earlier
//! turns to the model. Fails (never skips) when no CLI binary is found.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mock_model::MockModel;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Generous: the CLI is a 400 MB binary and cold starts can be slow.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `CLAUDE_CLI`, then `claude` on PATH.
fn find_cli() -> PathBuf {
    if let Some(path) = std::env::var_os("CLAUDE_CLI") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CLAUDE_CLI={} is not a file",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("claude"))
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return path;
    }
    panic!(
        "Claude Code CLI not found: set CLAUDE_CLI or put `claude` on PATH \
         (tests/setup/ensure-claude.sh installs it; the README's test command runs that)"
    );
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("mock-model-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("home")).expect("create scratch home");
        std::fs::create_dir_all(dir.join("work")).expect("create scratch work dir");
        Scratch(dir)
    }
    fn home(&self) -> PathBuf {
        self.0.join("home")
    }
    fn work(&self) -> PathBuf {
        self.0.join("work")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one conversation turn and returns the CLI's stdout lines as JSON.
/// stdin stays open until the `result` line, as a driving daemon would.
async fn run_turn(
    cli: &Path,
    mock: &MockModel,
    scratch: &Scratch,
    prompt: &str,
    resume: Option<&str>,
) -> Vec<Value> {
    let mut command = Command::new(cli);
    command
        .args([
            "--output-format",
            "stream-json",
            "--verbose",
            "--input-format",
            "stream-json",
        ])
        .args([
            "--include-partial-messages",
            "--permission-mode",
            "bypassPermissions",
        ])
        .args(["--settings", r#"{"skipWebFetchPreflight":true}"#])
        .args(resume.map(|id| vec!["--resume", id]).unwrap_or_default())
        .current_dir(scratch.work())
        // A clean env so a developer's real key or proxy never leaks in.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.home())
        .env("ANTHROPIC_BASE_URL", mock.url())
        .env("ANTHROPIC_API_KEY", "placeholder")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        // bypassPermissions refuses to run as root without it (CI often is root).
        .env("IS_SANDBOX", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", cli.display()));
    let mut stdin = child.stdin.take().expect("stdin piped");
    let line = json!({
        "type": "user", "session_id": "",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": null
    });
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write prompt");
    let stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let lines = tokio::time::timeout(RUN_TIMEOUT, read_until_result(stdout, stdin))
        .await
        .expect("CLI produced no result line in time");
    let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
        .await
        .expect("CLI did not exit after stdin closed")
        .expect("waiting for CLI");
    assert!(
        status.success(),
        "CLI exited with {status}; output: {lines:#?}"
    );
    lines
}

/// Collects stdout lines up to `result`, then closes stdin so the CLI exits.
async fn read_until_result(
    stdout: BufReader<tokio::process::ChildStdout>,
    stdin: tokio::process::ChildStdin,
) -> Vec<Value> {
    let mut reader = stdout.lines();
    let mut lines = Vec::new();
    while let Some(line) = reader.next_line().await.expect("read CLI stdout") {
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("non-JSON line {line:?}: {e}"));
        let done = value["type"] == "result";
        lines.push(value);
        if done {
            drop(stdin);
            return lines;
        }
    }
    panic!("CLI stdout ended without a result line: {lines:#?}");
}

fn result_line(lines: &[Value]) -> &Value {
    lines
        .last()
        .filter(|l| l["type"] == "result")
        .expect("last line is the result")
}

/// Texts of every user message the model saw in one request.
fn user_texts(body: &Value) -> Vec<String> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn real_cli_runs_scripted_tools_and_resumes() {
    let cli = find_cli();
    let mock = MockModel::start("127.0.0.1:0").await.expect("start mock");
    let scratch = Scratch::new("cli");

    let first = run_turn(
        &cli,
        &mock,
        &scratch,
        "!write hello.txt Hello from the mock\n!bash echo hi > b.txt",
        None,
    )
    .await;
    let result = result_line(&first);
    assert_eq!(result["is_error"], false, "first turn failed: {result}");
    assert_eq!(result["result"], "Done.");
    let written = std::fs::read_to_string(scratch.work().join("hello.txt"))
        .expect("Write tool wrote hello.txt");
    assert_eq!(written, "Hello from the mock");
    let ran = std::fs::read_to_string(scratch.work().join("b.txt")).expect("Bash tool wrote b.txt");
    assert_eq!(ran.trim(), "hi");

    let requests = mock.requests();
    let first_call = requests
        .iter()
        .find(|r| r.path.starts_with("/v1/messages"))
        .expect("a model call");
    assert_eq!(first_call.header("x-api-key"), Some("placeholder"));
    assert_eq!(first_call.header("anthropic-version"), Some("2023-06-01"));

    let session = result["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    let second = run_turn(
        &cli,
        &mock,
        &scratch,
        "!bash echo again >> b.txt\n!text second turn",
        Some(&session),
    )
    .await;
    let result = result_line(&second);
    assert_eq!(result["is_error"], false, "resumed turn failed: {result}");
    assert_eq!(result["result"], "second turn");
    let ran = std::fs::read_to_string(scratch.work().join("b.txt")).expect("b.txt");
    assert_eq!(ran, "hi\nagain\n");

    let last = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with("/v1/messages"))
        .expect("model call");
    let texts = user_texts(&last.body);
    assert!(
        texts.iter().any(|t| t.contains("!write hello.txt")),
        "resumed request lacks the first turn: {texts:#?}"
    );
}
