//! Runs the Claude Code CLI for one [`ExecuteRequest`] and reports its
//! progress as [`AgentEvent`]s.
//!
//! The CLI is started the way the Agent SDK starts it: stream-json on both
//! stdin and stdout. The prompt goes in as one NDJSON user message (never as
//! an argument, so it is not visible in `/proc/*/cmdline` and has no argv
//! size limit). Stdin stays open after a turn's `result`, so the same
//! process can take the session's next turn.

use crate::translate::Translator;
use agent_protocol::{AgentEvent, AgentOptions, ExecuteRequest, PermissionMode};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// How much of the CLI's stderr is kept for an error message.
const STDERR_TAIL_LINES: usize = 20;
/// How long the CLI has to end a turn after an interrupt; it takes a few
/// milliseconds, even with a tool running.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// Where and how the CLI runs.
#[derive(Clone, Debug)]
pub struct CliConfig {
    pub program: PathBuf,
    pub workdir: PathBuf,
    /// The CLI's HOME; its sessions live under `.claude/projects/`.
    pub home: PathBuf,
}

/// Whether the CLI has the session's transcript. A workspace restored from
/// an older checkpoint may lack it, and `--resume` of a missing session
/// fails the whole run, so the run then starts a new session instead.
pub fn session_exists(home: &std::path::Path, id: &str) -> bool {
    let file = format!("{id}.jsonl");
    std::fs::read_dir(home.join(".claude/projects"))
        .map(|dirs| dirs.flatten().any(|d| d.path().join(&file).is_file()))
        .unwrap_or(false)
}

/// The command-line arguments for one run.
pub fn build_args(req: &ExecuteRequest) -> Vec<String> {
    let o = &req.options;
    let mut args: Vec<String> = [
        "--output-format",
        "stream-json",
        "--verbose",
        "--input-format",
        "stream-json",
        "--include-partial-messages",
        "--settings",
        r#"{"skipWebFetchPreflight":true}"#,
    ]
    .map(str::to_owned)
    .to_vec();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_owned());
        args.push(value);
    };
    // The container is the sandbox, so tools run without asking unless the
    // caller chose a stricter mode.
    let mode = o
        .permission_mode
        .unwrap_or(PermissionMode::BypassPermissions);
    push("--permission-mode", mode.as_cli_arg().to_owned());
    if let Some(m) = &o.model {
        push("--model", m.clone());
    }
    if let Some(s) = &o.system_prompt {
        push("--system-prompt", s.clone());
    }
    if let Some(s) = &o.append_system_prompt {
        push("--append-system-prompt", s.clone());
    }
    if let Some(t) = &o.allowed_tools {
        push("--allowedTools", t.join(","));
    }
    if let Some(t) = &o.disallowed_tools {
        push("--disallowedTools", t.join(","));
    }
    if let Some(n) = o.max_turns {
        push("--max-turns", n.to_string());
    }
    if let Some(b) = o.max_budget_usd {
        push("--max-budget-usd", b.to_string());
    }
    if let Some(servers) = &o.mcp_servers {
        push("--mcp-config", json!({ "mcpServers": servers }).to_string());
        // Only the servers the request names: none from files in the workspace.
        args.push("--strict-mcp-config".to_owned());
    }
    if let Some(id) = &req.resume_session_id {
        args.push(format!("--resume={id}"));
    }
    args
}

/// The NDJSON line that hands the prompt to the CLI.
pub fn user_message_line(prompt: &str) -> String {
    let msg = json!({
        "type": "user",
        "session_id": "",
        "message": {"role": "user", "content": prompt},
        "parent_tool_use_id": null,
    });
    format!("{msg}\n")
}

/// A running CLI in stream-json input mode. Between turns it waits on
/// stdin, so the next turn of the same session starts without the CLI's
/// start-up (about half a second), the way the Agent SDK's client keeps it.
pub struct CliProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr_tail: JoinHandle<String>,
    /// The options it was started with; a request must ask for the same.
    options: AgentOptions,
    /// The session it holds once a turn has run; `None` while pre-started.
    session_id: Option<String>,
}

impl CliProcess {
    /// Starts the CLI for `options`, resuming `resume` when its transcript
    /// is in the workspace.
    pub fn spawn(
        cfg: &CliConfig,
        options: &AgentOptions,
        resume: Option<&str>,
    ) -> Result<Self, String> {
        let resume = resume.filter(|id| {
            let present = session_exists(&cfg.home, id);
            if !present {
                eprintln!(
                    "workspace-agent: session {id} is not in this workspace; starting a new one"
                );
            }
            present
        });
        let req = ExecuteRequest {
            prompt: String::new(),
            options: options.clone(),
            resume_session_id: resume.map(str::to_owned),
        };
        let mut child = Command::new(&cfg.program)
            .args(build_args(&req))
            .current_dir(&cfg.workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cfg.program.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("child stdio was not piped".to_owned());
        };
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            stderr_tail: tokio::spawn(tail_lines(stderr)),
            options: options.clone(),
            session_id: resume.map(str::to_owned),
        })
    }

    /// Whether this process can take `req` as its next turn.
    pub fn fits(&mut self, req: &ExecuteRequest) -> bool {
        let alive = matches!(self.child.try_wait(), Ok(None));
        alive && self.options == req.options && self.session_id == req.resume_session_id
    }

    /// Whether it was started ahead of any request and has run no turn.
    pub fn is_fresh(&self) -> bool {
        self.session_id.is_none()
    }

    /// Runs one turn, sending events to `tx`. `Ok(true)` when the turn
    /// ended with `result` and the process can take another.
    ///
    /// A notification on `interrupt` sends the CLI the stream-json control
    /// protocol's `interrupt` request (what the Agent SDK's `interrupt()`
    /// sends); the CLI then ends the turn with its own `result`, which is
    /// reported with `interrupted` set. A CLI that has not ended the turn
    /// [`INTERRUPT_GRACE`] later is killed and the turn ends all the same.
    pub async fn turn(
        &mut self,
        prompt: &str,
        tx: &mpsc::Sender<AgentEvent>,
        interrupt: &Notify,
    ) -> Result<bool, String> {
        self.send_line(&user_message_line(prompt))
            .await
            .map_err(|e| format!("cannot send the prompt to the CLI: {e}"))?;
        let translator = Translator::new(true);
        let mut interrupted = false;
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        loop {
            let line = tokio::select! {
                line = self.lines.next_line() => line,
                () = interrupt.notified(), if !interrupted => {
                    interrupted = true;
                    self.send_line(&interrupt_request_line())
                        .await
                        .map_err(|e| format!("cannot send the interrupt to the CLI: {e}"))?;
                    grace.as_mut().reset(tokio::time::Instant::now() + INTERRUPT_GRACE);
                    continue;
                }
                () = &mut grace, if interrupted => {
                    let _ = self.child.start_kill();
                    let _ = tx.send(self.killed_after_interrupt()).await;
                    return Ok(false);
                }
            };
            let Ok(Some(line)) = line else { break };
            for mut ev in translator.translate(&line) {
                let done = match &mut ev {
                    AgentEvent::Result {
                        session_id,
                        subtype,
                        interrupted: stopped,
                        ..
                    } => {
                        if !session_id.is_empty() {
                            self.session_id = Some(session_id.clone());
                        }
                        // An interrupt that came after the turn was done
                        // stopped nothing.
                        *stopped = interrupted && subtype != "success";
                        true
                    }
                    _ => false,
                };
                if tx.send(ev).await.is_err() {
                    // The host went away mid-turn: this process is spent.
                    return Ok(false);
                }
                if done {
                    return Ok(true);
                }
            }
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| format!("waiting for the CLI: {e}"))?;
        let tail = (&mut self.stderr_tail).await.unwrap_or_default();
        Err(format!(
            "the CLI exited ({status}) without a result: {}",
            tail.trim()
        ))
    }

    async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await
    }

    /// The `result` of a turn whose CLI ignored the interrupt.
    fn killed_after_interrupt(&self) -> AgentEvent {
        AgentEvent::Result {
            session_id: self.session_id.clone().unwrap_or_default(),
            is_error: true,
            subtype: "error_during_execution".to_owned(),
            num_turns: 0,
            duration_ms: 0,
            total_cost_usd: 0.0,
            usage: Value::Null,
            result: Some(format!(
                "interrupted: the CLI did not stop within {}s and was killed",
                INTERRUPT_GRACE.as_secs()
            )),
            interrupted: true,
        }
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// The control request that stops the CLI's current turn.
pub fn interrupt_request_line() -> String {
    let msg = json!({
        "type": "control_request",
        "request_id": format!("agentbox-interrupt-{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)),
        "request": {"subtype": "interrupt"},
    });
    format!("{msg}\n")
}

pub async fn tail_lines(stream: impl AsyncRead + Unpin) -> String {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::AgentOptions;

    #[test]
    fn args_carry_options_and_resume() {
        let req = ExecuteRequest {
            prompt: "hi".into(),
            options: AgentOptions {
                model: Some("claude-x".into()),
                allowed_tools: Some(vec!["Write".into(), "Bash".into()]),
                max_turns: Some(3),
                permission_mode: Some(PermissionMode::Plan),
                ..Default::default()
            },
            resume_session_id: Some("abc".into()),
        };
        let args = build_args(&req).join(" ");
        assert!(args.contains("--model claude-x"), "{args}");
        assert!(args.contains("--allowedTools Write,Bash"), "{args}");
        assert!(args.contains("--max-turns 3"), "{args}");
        assert!(args.contains("--permission-mode plan"), "{args}");
        assert!(args.ends_with("--resume=abc"), "{args}");
        assert!(
            !args.contains("hi"),
            "the prompt never goes on the command line"
        );
    }

    #[test]
    fn default_mode_is_bypass_because_the_container_is_the_sandbox() {
        let req = ExecuteRequest {
            prompt: "p".into(),
            options: AgentOptions::default(),
            resume_session_id: None,
        };
        assert!(build_args(&req)
            .join(" ")
            .contains("--permission-mode bypassPermissions"));
    }

    #[test]
    fn sessions_are_found_in_any_project_dir() {
        let home = std::env::temp_dir().join(format!("agent-home-{}", std::process::id()));
        let project = home.join(".claude/projects/-workspace");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("abc.jsonl"), "{}").unwrap();
        assert!(session_exists(&home, "abc"));
        assert!(!session_exists(&home, "def"));
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn prompt_is_one_json_line() {
        let line = user_message_line("a\nb \"q\"");
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["message"]["content"], "a\nb \"q\"");
    }

    #[test]
    fn interrupt_is_a_control_request_line() {
        let line = interrupt_request_line();
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["type"], "control_request");
        assert_eq!(v["request"]["subtype"], "interrupt");
        assert!(v["request_id"].is_string());
    }

    #[tokio::test]
    async fn missing_program_is_a_clear_error() {
        let cfg = CliConfig {
            program: "/nonexistent/claude".into(),
            workdir: "/".into(),
            home: "/nonexistent".into(),
        };
        match CliProcess::spawn(&cfg, &AgentOptions::default(), None) {
            Err(e) => assert!(e.contains("cannot start /nonexistent/claude"), "{e}"),
            Ok(_) => panic!("a missing program started"),
        }
    }
}
