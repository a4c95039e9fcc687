//! The CLI's command line for an Agent SDK session: the flags the SDK's
//! own subprocess transport (`claude_agent_sdk` 0.2.184,
//! `SubprocessCLITransport._build_command`) derives from
//! `ClaudeAgentOptions`, from options the daemon has validated
//! ([`SessionOptions::validate`]). Only `--settings` is the agent's own.

use crate::cli::{tail_lines, CliConfig};
use crate::translate::Translator;
use agent_protocol::{AgentEvent, SessionOptions, SessionStart};
use bytes::Bytes;
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Longest line the host may send for the CLI's stdin; the host bounds
/// its client's messages well below this.
pub const MAX_INBOUND_LINE: usize = 8 * 1024 * 1024;

/// Runs one session: starts the CLI for `start`, writes each line from
/// `inbound` to its stdin, and reports each line it prints as
/// [`AgentEvent::Stream`] followed by its events. The end of `inbound`
/// closes the CLI's stdin; the session ends when the CLI exits.
pub async fn run(
    cfg: &CliConfig,
    start: SessionStart,
    mut inbound: mpsc::Receiver<Bytes>,
    tx: &mpsc::Sender<AgentEvent>,
) -> Result<(), String> {
    let o = &start.options;
    let resume = start
        .resume_session_id
        .as_deref()
        .filter(|id| crate::cli::session_exists(&cfg.home, id));
    let workdir = match &o.cwd {
        // Validated by the host to lie inside the workspace.
        Some(dir) => std::path::PathBuf::from(dir),
        None => cfg.workdir.clone(),
    };
    let mut child = Command::new(&cfg.program)
        .args(session_args(o, resume))
        .envs(o.env.iter().filter_map(|(k, v)| Some((k, v.as_str()?))))
        .env("CLAUDE_CODE_ENTRYPOINT", "sdk-py")
        .current_dir(&workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} in {}: {e}",
                cfg.program.display(),
                workdir.display()
            )
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("child stdio was not piped".to_owned());
    };
    let stderr_tail = tokio::spawn(tail_lines(stderr));
    let _ = tx.send(AgentEvent::Started { prestarted: false }).await;
    let feed = async move {
        while let Some(line) = inbound.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                break;
            }
            let _ = stdin.flush().await;
        }
        // Dropping stdin tells the CLI the session is over.
    };
    let translator = Translator::new(o.include_partial_messages);
    let relay = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if tx.send(AgentEvent::Stream { line: value }).await.is_err() {
                return;
            }
            for ev in translator.translate(&line) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::pin!(feed, relay);
    tokio::select! {
        // The host closed the session: the CLI ends its turn and exits.
        () = &mut feed => (&mut relay).await,
        // The CLI exited on its own.
        () = &mut relay => {}
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the CLI: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let tail = stderr_tail.await.unwrap_or_default();
    Err(format!("the CLI exited ({status}): {}", tail.trim()))
}

/// Cuts a request body into lines for the CLI's stdin: the first is the
/// [`SessionStart`], the rest go to `tx`. A line past [`MAX_INBOUND_LINE`]
/// ends the body.
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self { buf: Vec::new() }
    }

    /// The whole lines `data` completes; `Err` when a line is too long.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).take(at).collect();
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(Bytes::from(line));
            }
        }
        if self.buf.len() > MAX_INBOUND_LINE {
            return Err(format!(
                "a session line is longer than {MAX_INBOUND_LINE} bytes"
            ));
        }
        Ok(lines)
    }
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

/// The arguments after the program name; `resume` is the conversation's
/// session, when its transcript is in the workspace.
pub fn session_args(o: &SessionOptions, resume: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["--output-format", "stream-json", "--verbose"]
        .map(str::to_owned)
        .to_vec();
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_owned());
        args.push(value);
    };
    match &o.system_prompt {
        // The SDK asks for an empty system prompt when none is given.
        None => push("--system-prompt", String::new()),
        Some(Value::String(s)) => push("--system-prompt", s.clone()),
        Some(preset) => {
            if let Some(append) = preset.get("append").and_then(Value::as_str) {
                push("--append-system-prompt", append.to_owned());
            }
        }
    }
    match &o.tools {
        Some(Value::Array(names)) => push(
            "--tools",
            names
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(_) => push("--tools", "default".to_owned()),
        None => {}
    }
    if !o.allowed_tools.is_empty() {
        push("--allowedTools", o.allowed_tools.join(","));
    }
    if let Some(n) = o.max_turns {
        push("--max-turns", n.to_string());
    }
    if let Some(b) = o.max_budget_usd {
        push("--max-budget-usd", b.to_string());
    }
    if !o.disallowed_tools.is_empty() {
        push("--disallowedTools", o.disallowed_tools.join(","));
    }
    if let Some(m) = &o.model {
        push("--model", m.clone());
    }
    if let Some(m) = &o.fallback_model {
        push("--fallback-model", m.clone());
    }
    if !o.betas.is_empty() {
        push("--betas", o.betas.join(","));
    }
    if let Some(t) = &o.permission_prompt_tool_name {
        push("--permission-prompt-tool", t.clone());
    }
    if let Some(m) = o.permission_mode {
        push("--permission-mode", m.as_cli_arg().to_owned());
    }
    push("--settings", r#"{"skipWebFetchPreflight":true}"#.to_owned());
    for dir in &o.add_dirs {
        push("--add-dir", dir.clone());
    }
    if !o.mcp_servers.is_empty() {
        push(
            "--mcp-config",
            json!({ "mcpServers": o.mcp_servers }).to_string(),
        );
    }
    if o.include_partial_messages {
        args.push("--include-partial-messages".to_owned());
    }
    if o.include_hook_events {
        args.push("--include-hook-events".to_owned());
    }
    if o.strict_mcp_config {
        args.push("--strict-mcp-config".to_owned());
    }
    if let Some(id) = resume {
        args.push(format!("--resume={id}"));
    }
    if let Some(sources) = &o.setting_sources {
        args.push(format!("--setting-sources={}", sources.join(",")));
    }
    for flag in o.extra_args.keys() {
        args.push(format!("--{flag}"));
    }
    if let Some(t) = &o.thinking {
        match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
                args.extend(["--max-thinking-tokens".to_owned(), budget.to_string()]);
            }
            Some(kind) => args.extend(["--thinking".to_owned(), kind.to_owned()]),
            None => {}
        }
        if let Some(display) = t.get("display").and_then(Value::as_str) {
            args.extend(["--thinking-display".to_owned(), display.to_owned()]);
        }
    } else if let Some(n) = o.max_thinking_tokens {
        args.extend(["--max-thinking-tokens".to_owned(), n.to_string()]);
    }
    if let Some(e) = &o.effort {
        args.extend(["--effort".to_owned(), e.clone()]);
    }
    if let Some(schema) = o.output_format.as_ref().and_then(|f| f.get("schema")) {
        args.extend(["--json-schema".to_owned(), schema.to_string()]);
    }
    args.extend(["--input-format".to_owned(), "stream-json".to_owned()]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: &str, resume: Option<&str>) -> Vec<String> {
        let o: SessionOptions = serde_json::from_str(json).unwrap();
        o.validate().unwrap();
        session_args(&o, resume)
    }

    fn has(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn lines_are_cut_at_newlines() {
        let mut s = LineSplitter::new();
        assert!(s.push(b"{\"a\":1}\n{\"b\"").unwrap().len() == 1);
        assert_eq!(
            s.push(b":2}\n\n").unwrap(),
            vec![Bytes::from_static(b"{\"b\":2}")]
        );
        assert!(s.push(&vec![b'x'; MAX_INBOUND_LINE + 1]).is_err());
    }

    #[test]
    fn defaults_match_the_sdk() {
        let a = args("{}", None);
        assert_eq!(&a[..3], ["--output-format", "stream-json", "--verbose"]);
        assert!(has(&a, "--system-prompt", ""));
        assert_eq!(&a[a.len() - 2..], ["--input-format", "stream-json"]);
        assert!(!a.iter().any(|x| x == "--permission-mode"));
    }

    #[test]
    fn callbacks_and_sdk_servers_map_to_flags() {
        let a = args(
            r#"{"permission_prompt_tool_name":"stdio","permission_mode":"acceptEdits",
                "mcp_servers":{"calc":{"type":"sdk","name":"calc"}},"allowed_tools":["mcp__calc__add","Write"],
                "system_prompt":{"type":"preset","preset":"claude_code","append":"x"},
                "include_partial_messages":true,"thinking":{"type":"adaptive"}}"#,
            Some("sess-1"),
        );
        assert!(has(&a, "--permission-prompt-tool", "stdio"));
        assert!(has(&a, "--permission-mode", "acceptEdits"));
        assert!(has(&a, "--allowedTools", "mcp__calc__add,Write"));
        assert!(has(&a, "--append-system-prompt", "x"));
        assert!(has(&a, "--thinking", "adaptive"));
        assert!(a.contains(&"--include-partial-messages".to_owned()));
        assert!(a.contains(&"--resume=sess-1".to_owned()));
        let at = a.iter().position(|x| x == "--mcp-config").unwrap();
        let cfg: Value = serde_json::from_str(&a[at + 1]).unwrap();
        assert_eq!(
            cfg["mcpServers"]["calc"],
            json!({"type": "sdk", "name": "calc"})
        );
    }
}
