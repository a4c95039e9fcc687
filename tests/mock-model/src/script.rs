//! The script: parses `!directive` lines out of the prompt and decides, from
//! a Messages API request body, what the mock model answers on this turn.
//!
//! Everything here is a pure function of the request so the mock stays
//! deterministic and needs no per-conversation state.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

/// Answer for requests that are not part of a scripted conversation (title
/// generation, quota probes, small-model side calls).
pub const GENERIC_ANSWER: &str = "OK.";

/// The CLI's tool that makes a deferred tool (an MCP server's) callable.
const TOOL_SEARCH: &str = "ToolSearch";

/// The CLI's text after a ToolSearch made a tool callable.
const TOOL_LOADED: &str = "Tool loaded.";
/// How the CLI's note on an interrupted turn begins.
const INTERRUPTED_NOTE: &str = "[Request interrupted by user";

/// One `!directive` line of the prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Directive {
    /// `!write <path> <content...>`: a `Write` tool call.
    Write { path: String, content: String },
    /// `!bash <command...>`: a `Bash` tool call.
    Bash { command: String },
    /// `!text <words...>`: a line of the final answer.
    Text(String),
    /// `!sleep <ms>`: delay before answering the step it belongs to.
    Sleep(Duration),
    /// `!tool <name> <json object>`: a call of any tool the request offers,
    /// such as an MCP server's `mcp__<server>__<tool>`, with that input.
    Tool { name: String, input: Value },
    /// `!recall`: the final answer ends with `recall: <the previous turn's
    /// answer>`, which the model knows only if the session remembers it.
    Recall,
}

/// One content block of the answer, before ids are assigned.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Text(String),
    ToolUse { name: String, input: Value },
}

/// What to answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Wait this long before sending anything.
    pub delay: Duration,
    pub blocks: Vec<Block>,
    /// `tool_use` or `end_turn`.
    pub stop_reason: &'static str,
}

impl Plan {
    fn text(text: impl Into<String>, delay: Duration) -> Plan {
        Plan {
            delay,
            blocks: vec![Block::Text(text.into())],
            stop_reason: "end_turn",
        }
    }
}

/// Parses every directive line in `text`; lines that are not well-formed
/// directives are ordinary prompt text and are ignored.
pub fn parse_directives(text: &str) -> Vec<Directive> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Directive> {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    match word {
        "!write" => {
            let (path, content) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if path.is_empty() {
                return None;
            }
            Some(Directive::Write {
                path: path.to_string(),
                content: content.replace("\\n", "\n"),
            })
        }
        "!bash" if !rest.is_empty() => Some(Directive::Bash {
            command: rest.to_string(),
        }),
        "!text" if !rest.is_empty() => Some(Directive::Text(rest.to_string())),
        "!tool" => {
            let (name, input) = rest.split_once(char::is_whitespace).unwrap_or((rest, "{}"));
            let input: Value = serde_json::from_str(input.trim()).ok()?;
            (!name.is_empty() && input.is_object()).then(|| Directive::Tool {
                name: name.to_string(),
                input,
            })
        }
        "!recall" if rest.is_empty() => Some(Directive::Recall),
        "!sleep" => rest
            .parse()
            .ok()
            .map(Duration::from_millis)
            .map(Directive::Sleep),
        _ => None,
    }
}

/// Why a request cannot be answered at all (turned into a 400).
#[derive(Debug, PartialEq)]
pub struct BadRequest(pub String);

/// Decides the answer to a `/v1/messages` request body.
pub fn plan(body: &Value) -> Result<Plan, BadRequest> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| BadRequest("`messages` must be an array".into()))?;
    let tools = offered_tools(body);
    // Side calls (titles, quota probes) offer no tools; they may quote the
    // prompt, so they must never run its script.
    if tools.is_empty() {
        return Ok(Plan::text(GENERIC_ANSWER, Duration::ZERO));
    }
    let Some(prompt_at) = prompt_index(messages) else {
        return Ok(Plan::text(GENERIC_ANSWER, Duration::ZERO));
    };
    let prompt = prompt_text(&messages[prompt_at]);
    let done = count_tool_results(&messages[prompt_at + 1..]);
    let cwd = working_directory(body);
    let mut plan = plan_turn(&prompt, done, &tools, cwd.as_deref());
    if plan.stop_reason == "end_turn" && parse_directives(&prompt).contains(&Directive::Recall) {
        let recall = format!("recall: {}", last_answer(&messages[..prompt_at]));
        match plan.blocks.first_mut() {
            Some(Block::Text(t)) if t == "Done." => *t = recall,
            Some(Block::Text(t)) => *t = format!("{t}\n{recall}"),
            _ => plan.blocks.push(Block::Text(recall)),
        }
    }
    Ok(plan)
}

/// The text of the last assistant message in `messages` (`none` if there is
/// none): what the model answered on the previous turn.
fn last_answer(messages: &[Value]) -> String {
    let Some(message) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
    else {
        return "none".into();
    };
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        return text.to_string();
    }
    content_blocks(message)
        .filter(|b| block_type(b) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The prompt of a scripted request (one that offers tools), for the
/// request-wide directives other modules read (`!fault`, `!pace`).
pub fn scripted_prompt(body: &Value) -> Option<String> {
    let messages = body.get("messages").and_then(Value::as_array)?;
    if offered_tools(body).is_empty() {
        return None;
    }
    prompt_index(messages).map(|at| prompt_text(&messages[at]))
}

/// Plans the next turn of a scripted prompt after `done` tool turns.
pub fn plan_turn(prompt: &str, done: usize, tools: &HashSet<String>, cwd: Option<&str>) -> Plan {
    let directives = parse_directives(prompt);
    if directives.is_empty() {
        return Plan::text(echo(prompt), Duration::ZERO);
    }
    let steps = split_steps(&directives, tools, cwd);
    if let Some(step) = steps.get(done) {
        return Plan {
            delay: step.delay,
            blocks: vec![
                Block::Text(format!("Step {} of {}.", done + 1, steps.len())),
                step.tool.clone(),
            ],
            stop_reason: "tool_use",
        };
    }
    final_answer(&directives, steps.iter().map(|s| s.delay).sum(), tools)
}

/// A tool turn: the tool call plus the sleeps that precede it.
struct Step {
    delay: Duration,
    tool: Block,
}

/// Groups directives into tool steps; a `!sleep` delays the next tool step.
/// Tools the request does not offer are left out (reported in the final text).
fn split_steps(directives: &[Directive], tools: &HashSet<String>, cwd: Option<&str>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut delay = Duration::ZERO;
    for directive in directives {
        match directive {
            Directive::Sleep(ms) => delay += *ms,
            Directive::Text(_) => {}
            // The CLI defers MCP tools behind its ToolSearch tool: a model
            // first selects the tool by name, then calls it. Both steps are
            // planned whether or not the tool is offered yet, so every
            // request of the turn counts the same steps.
            Directive::Tool { name, .. }
                if name.starts_with("mcp__") && tools.contains(TOOL_SEARCH) =>
            {
                steps.push(Step {
                    delay,
                    tool: Block::ToolUse {
                        name: TOOL_SEARCH.into(),
                        input: json!({ "query": format!("select:{name}"), "max_results": 1 }),
                    },
                });
                delay = Duration::ZERO;
                if let Some(tool) = tool_call(directive, cwd) {
                    steps.push(Step {
                        delay: Duration::ZERO,
                        tool,
                    });
                }
            }
            _ => {
                let Some(tool) = tool_call(directive, cwd) else {
                    continue;
                };
                if offers(tools, &tool) {
                    steps.push(Step { delay, tool });
                    delay = Duration::ZERO;
                }
            }
        }
    }
    steps
}

/// The answer after every tool step ran: the `!text` lines (or "Done."),
/// delayed by the sleeps that follow the last tool step.
fn final_answer(directives: &[Directive], used_delay: Duration, tools: &HashSet<String>) -> Plan {
    let total: Duration = directives
        .iter()
        .filter_map(|d| match d {
            Directive::Sleep(ms) => Some(*ms),
            _ => None,
        })
        .sum();
    let mut lines: Vec<String> = directives
        .iter()
        .filter_map(|d| match d {
            Directive::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    for name in ["Write", "Bash"] {
        if needs(directives, name) && !tools.contains(name) {
            lines.push(format!("(tool {name} is not offered; skipped)"));
        }
    }
    for d in directives {
        if let Directive::Tool { name, .. } = d {
            let deferred = name.starts_with("mcp__") && tools.contains(TOOL_SEARCH);
            if !tools.contains(name) && !deferred {
                lines.push(format!("(tool {name} is not offered; skipped)"));
            }
        }
    }
    if lines.is_empty() {
        lines.push("Done.".into());
    }
    Plan::text(lines.join("\n"), total.saturating_sub(used_delay))
}

fn needs(directives: &[Directive], name: &str) -> bool {
    directives.iter().any(|d| {
        matches!(
            (d, name),
            (Directive::Write { .. }, "Write") | (Directive::Bash { .. }, "Bash")
        )
    })
}

fn offers(tools: &HashSet<String>, tool: &Block) -> bool {
    matches!(tool, Block::ToolUse { name, .. } if tools.contains(name))
}

fn tool_call(directive: &Directive, cwd: Option<&str>) -> Option<Block> {
    match directive {
        Directive::Write { path, content } => Some(Block::ToolUse {
            name: "Write".into(),
            input: json!({ "file_path": absolute(path, cwd), "content": content }),
        }),
        Directive::Bash { command } => Some(Block::ToolUse {
            name: "Bash".into(),
            input: json!({ "command": command, "description": "run command" }),
        }),
        Directive::Tool { name, input } => Some(Block::ToolUse {
            name: name.clone(),
            input: input.clone(),
        }),
        _ => None,
    }
}

/// The CLI's Write tool wants absolute paths, so relative ones are joined
/// onto the working directory the CLI announces (2.1.332 accepts relative
/// paths too, but older versions insisted on absolute ones).
fn absolute(path: &str, cwd: Option<&str>) -> String {
    match cwd {
        Some(dir) if !path.starts_with('/') => format!("{}/{}", dir.trim_end_matches('/'), path),
        _ => path.to_string(),
    }
}

fn echo(prompt: &str) -> String {
    let words: Vec<&str> = prompt.split_whitespace().take(8).collect();
    if words.is_empty() {
        return "Mock reply.".into();
    }
    format!("Mock reply to: {}", words.join(" "))
}

fn offered_tools(body: &Value) -> HashSet<String> {
    body.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Index of the message holding the current human prompt: the last user
/// message with real text. Taking the last (not the first) lets a resumed
/// conversation script each turn separately; within a single turn it is the
/// same message. A message with tool results holds a prompt only when its
/// text has a directive: a session resumed after a cut turn carries the
/// cut turn's tool result and the new prompt in one user message.
fn prompt_index(messages: &[Value]) -> Option<usize> {
    messages.iter().rposition(|m| {
        let text = prompt_text(m);
        m.get("role").and_then(Value::as_str) == Some("user")
            && !text.trim().is_empty()
            && (!has_tool_result(m)
                || prompt_follows_interrupt(m)
                || !parse_directives(&text).is_empty())
    })
}

/// After an interrupt the CLI sends the stopped tool's result, its
/// interruption note and the next prompt as one user message; the prompt
/// is then text after the note. (Other text beside a tool result, such as
/// [`TOOL_LOADED`], is the CLI's, not a prompt.)
fn prompt_follows_interrupt(message: &Value) -> bool {
    let mut noted = false;
    content_blocks(message)
        .filter(|b| block_type(b) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .any(|t| {
            if t.trim_start().starts_with(INTERRUPTED_NOTE) {
                noted = true;
                return false;
            }
            noted && is_prompt_text(t)
        })
}

/// Text the user wrote: not the CLI's `<system-reminder>` blocks, its
/// "[Request interrupted by user...]" notes, nor the "Tool loaded." it
/// sends after a ToolSearch.
fn is_prompt_text(text: &str) -> bool {
    let text = text.trim_start();
    !text.starts_with("<system-reminder>")
        && !text.starts_with(INTERRUPTED_NOTE)
        && text.trim_end() != TOOL_LOADED
}

fn has_tool_result(message: &Value) -> bool {
    content_blocks(message).any(|b| block_type(b) == Some("tool_result"))
}

/// The user-written text of a message, without the CLI's injected
/// `<system-reminder>` blocks.
fn prompt_text(message: &Value) -> String {
    if let Some(text) = message.get("content").and_then(Value::as_str) {
        return if is_prompt_text(text) {
            text.to_string()
        } else {
            String::new()
        };
    }
    content_blocks(message)
        .filter(|b| block_type(b) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .filter(|t| is_prompt_text(t))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count_tool_results(messages: &[Value]) -> usize {
    messages
        .iter()
        .flat_map(content_blocks)
        .filter(|b| block_type(b) == Some("tool_result"))
        .count()
}

fn content_blocks(message: &Value) -> impl Iterator<Item = &Value> {
    message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

/// The working directory the CLI announces, from a line like
/// ` - Primary working directory: /x` (CLI 2.1.x, in a `role: "system"`
/// message) or `Working directory: /x` (older CLIs, in `system`).
fn working_directory(body: &Value) -> Option<String> {
    let in_system = body.get("system").into_iter();
    let in_messages = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .filter_map(|m| m.get("content"));
    in_system
        .chain(in_messages)
        .flat_map(texts)
        .flat_map(str::lines)
        .find_map(directory_line)
}

/// The texts of a string or an array of text blocks.
fn texts(content: &Value) -> Vec<&str> {
    match content {
        Value::String(s) => vec![s.as_str()],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text")?.as_str())
            .collect(),
        _ => Vec::new(),
    }
}

fn directory_line(line: &str) -> Option<String> {
    let line = line.trim().trim_start_matches("- ");
    let line = line.strip_prefix("Primary ").unwrap_or(line);
    let dir = line
        .strip_prefix("working directory:")
        .or_else(|| line.strip_prefix("Working directory:"))?
        .trim();
    dir.starts_with('/').then(|| dir.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prompt_merged_with_a_cut_turns_tool_result_is_the_prompt() {
        let body = json!({
            "tools": [{"name": "Bash"}, {"name": "Write"}],
            "messages": [
                {"role": "user", "content": "!write a.txt x\n!text done"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                    {"type": "text", "text": "!bash cat a.txt"}
                ]}
            ]
        });
        let plan = plan(&body).unwrap();
        assert_eq!(plan.stop_reason, "tool_use", "{plan:?}");
    }

    use super::*;

    fn tools() -> HashSet<String> {
        ["Write", "Bash", "Read"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn parses_directives_and_ignores_prose() {
        let d = parse_directives(
            "hi\n!write a.txt x\\ny\n  !bash ls -la\n!text all good\n!sleep 5\n!sleep x\n!bash",
        );
        assert_eq!(
            d,
            vec![
                Directive::Write {
                    path: "a.txt".into(),
                    content: "x\ny".into()
                },
                Directive::Bash {
                    command: "ls -la".into()
                },
                Directive::Text("all good".into()),
                Directive::Sleep(Duration::from_millis(5)),
            ]
        );
    }

    #[test]
    fn runs_steps_in_order_then_answers() {
        let prompt = "!write a.txt hi\n!sleep 20\n!bash echo hi\n!text finished";
        let first = plan_turn(prompt, 0, &tools(), Some("/w"));
        assert_eq!(first.stop_reason, "tool_use");
        assert_eq!(
            first.blocks[1],
            Block::ToolUse {
                name: "Write".into(),
                input: json!({"file_path": "/w/a.txt", "content": "hi"})
            }
        );
        let second = plan_turn(prompt, 1, &tools(), Some("/w"));
        assert_eq!(second.delay, Duration::from_millis(20));
        assert!(matches!(&second.blocks[1], Block::ToolUse { name, .. } if name == "Bash"));
        let last = plan_turn(prompt, 2, &tools(), Some("/w"));
        assert_eq!(last, Plan::text("finished", Duration::ZERO));
    }

    #[test]
    fn side_calls_without_tools_get_generic_text() {
        let body = json!({"messages": [{"role": "user", "content": "!bash rm -rf /"}]});
        assert_eq!(
            plan(&body).unwrap().blocks,
            vec![Block::Text(GENERIC_ANSWER.into())]
        );
    }

    #[test]
    fn skips_tools_not_offered() {
        let only_write: HashSet<String> = ["Write".to_string()].into();
        let p = plan_turn("!bash ls", 0, &only_write, None);
        assert_eq!(p.stop_reason, "end_turn");
        assert!(matches!(&p.blocks[0], Block::Text(t) if t.contains("Bash is not offered")));
    }

    #[test]
    fn counts_tool_results_after_the_latest_prompt() {
        let body = json!({
            "tools": [{"name": "Bash"}],
            "system": [{"type": "text", "text": "x\nWorking directory: /old\n"}],
            "messages": [
                {"role": "user", "content": "!bash one"},
                {"role": "assistant", "content": [{"type": "tool_use"}]},
                {"role": "user", "content": [{"type": "tool_result"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>!bash no</system-reminder>"},
                    {"type": "text", "text": "!bash two"}
                ]}
            ]
        });
        let p = plan(&body).unwrap();
        assert_eq!(
            p.blocks[1],
            Block::ToolUse {
                name: "Bash".into(),
                input: json!({"command": "two", "description": "run command"})
            }
        );
    }

    #[test]
    fn tool_directive_calls_any_offered_tool_with_its_input() {
        let prompt = "!tool mcp__calc__add {\"a\": 2, \"b\": 3}\n!tool Missing {}\n!tool bad {x";
        assert_eq!(parse_directives(prompt).len(), 2, "bad JSON is prompt text");
        let tools: HashSet<String> = ["mcp__calc__add".to_string()].into();
        let p = plan_turn(prompt, 0, &tools, None);
        assert_eq!(
            p.blocks[1],
            Block::ToolUse {
                name: "mcp__calc__add".into(),
                input: json!({"a": 2, "b": 3})
            }
        );
        let last = plan_turn(prompt, 1, &tools, None);
        assert_eq!(
            last.blocks,
            vec![Block::Text("(tool Missing is not offered; skipped)".into())]
        );
    }

    #[test]
    fn a_prompt_after_an_interrupted_tool_is_the_new_prompt() {
        let body = json!({
            "tools": [{"name": "Bash"}],
            "messages": [
                {"role": "user", "content": "!bash sleep 60\n!text old"},
                {"role": "assistant", "content": [{"type": "tool_use"}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "is_error": true},
                    {"type": "text", "text": "[Request interrupted by user for tool use]"},
                    {"type": "text", "text": "!text new"}
                ]}
            ]
        });
        let p = plan(&body).unwrap();
        assert_eq!(p.blocks, vec![Block::Text("new".into())]);
        // A tool result with only the note is still the old prompt's turn.
        let mut body = body;
        body["messages"][2]["content"].as_array_mut().unwrap().pop();
        assert_eq!(plan(&body).unwrap().blocks, vec![Block::Text("old".into())]);
    }

    #[test]
    fn mcp_tools_are_selected_through_tool_search_first() {
        let prompt = "!tool mcp__calc__add {\"a\": 1}\n!text done";
        let tools: HashSet<String> = ["ToolSearch".to_string()].into();
        let first = plan_turn(prompt, 0, &tools, None);
        assert!(matches!(&first.blocks[1],
            Block::ToolUse { name, input } if name == "ToolSearch" && input["query"] == "select:mcp__calc__add"));
        let second = plan_turn(prompt, 1, &tools, None);
        assert!(
            matches!(&second.blocks[1], Block::ToolUse { name, .. } if name == "mcp__calc__add")
        );
        assert_eq!(
            plan_turn(prompt, 2, &tools, None).blocks,
            vec![Block::Text("done".into())]
        );
        // The CLI's "Tool loaded." after the search's result is no prompt.
        let body = json!({
            "tools": [{"name": "ToolSearch"}],
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": [{"type": "tool_use"}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "content": [{"type": "tool_reference"}]}
                ]},
                {"role": "user", "content": "Tool loaded."}
            ]
        });
        assert!(
            matches!(&plan(&body).unwrap().blocks[1], Block::ToolUse { name, .. } if name == "mcp__calc__add")
        );
    }

    #[test]
    fn finds_working_directory_in_system_message() {
        let body = json!({
            "tools": [{"name": "Write"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "!write a/b.txt x"}]},
                {"role": "system", "content": "# Environment\n - Primary working directory: /tmp/w\n - Platform: linux"}
            ]
        });
        let p = plan(&body).unwrap();
        assert!(
            matches!(&p.blocks[1], Block::ToolUse { input, .. } if input["file_path"] == "/tmp/w/a/b.txt")
        );
    }

    #[test]
    fn rejects_missing_messages() {
        assert!(plan(&json!({"model": "m"})).is_err());
    }

    #[test]
    fn recall_quotes_the_previous_answer() {
        let body = json!({
            "tools": [{"name": "Write"}],
            "messages": [
                {"role": "user", "content": "!text one"},
                {"role": "assistant", "content": [{"type": "text", "text": "one"}]},
                {"role": "user", "content": "!text two\n!recall"}
            ]
        });
        assert_eq!(
            plan(&body).unwrap().blocks,
            vec![Block::Text("two\nrecall: one".into())]
        );
        let first = json!({"tools": [{"name": "Write"}], "messages": [{"role": "user", "content": "!recall"}]});
        assert_eq!(
            plan(&first).unwrap().blocks,
            vec![Block::Text("recall: none".into())]
        );
    }
}
