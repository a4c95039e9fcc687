//! Turns Claude Code's `stream-json` output lines into [`AgentEvent`]s.
//!
//! The CLI prints one JSON object per line (see the CLI's headless docs):
//! `system/init`, `stream_event` (with `--include-partial-messages`),
//! `assistant` and `user` messages with one content block each, and a final
//! `result`. Everything else (retries, rate-limit notices, hooks) is dropped.

use agent_protocol::AgentEvent;
use serde_json::Value;

/// Stateless per line; the only memory is whether partial text is streamed,
/// which decides where `text_delta` comes from.
#[derive(Clone, Copy, Debug)]
pub struct Translator {
    partial_messages: bool,
}

impl Translator {
    /// With `partial_messages` the CLI runs with `--include-partial-messages`
    /// and text arrives as stream deltas; complete text blocks in `assistant`
    /// lines are then repeats and are skipped.
    pub fn new(partial_messages: bool) -> Self {
        Self { partial_messages }
    }

    pub fn translate(&self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Vec::new();
        };
        match str_at(&v, "type") {
            "system" if str_at(&v, "subtype") == "init" => session(&v).into_iter().collect(),
            "stream_event" => text_delta(&v["event"]).into_iter().collect(),
            "assistant" => self.assistant(&v),
            "user" => tool_results(&v),
            "result" => vec![result(&v)],
            _ => Vec::new(),
        }
    }

    fn assistant(&self, v: &Value) -> Vec<AgentEvent> {
        blocks(v)
            .filter_map(|b| match str_at(b, "type") {
                "tool_use" => Some(AgentEvent::ToolUse {
                    id: str_at(b, "id").to_owned(),
                    name: str_at(b, "name").to_owned(),
                    input: b["input"].clone(),
                }),
                "text" if !self.partial_messages => Some(AgentEvent::TextDelta {
                    text: str_at(b, "text").to_owned(),
                }),
                _ => None,
            })
            .collect()
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn blocks(v: &Value) -> impl Iterator<Item = &Value> {
    v["message"]["content"]
        .as_array()
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

fn session(v: &Value) -> Option<AgentEvent> {
    let id = str_at(v, "session_id");
    (!id.is_empty()).then(|| AgentEvent::Session {
        session_id: id.to_owned(),
    })
}

fn text_delta(event: &Value) -> Option<AgentEvent> {
    let delta = &event["delta"];
    (str_at(event, "type") == "content_block_delta" && str_at(delta, "type") == "text_delta").then(
        || AgentEvent::TextDelta {
            text: str_at(delta, "text").to_owned(),
        },
    )
}

fn tool_results(v: &Value) -> Vec<AgentEvent> {
    blocks(v)
        .filter(|b| str_at(b, "type") == "tool_result")
        .map(|b| AgentEvent::ToolResult {
            tool_use_id: str_at(b, "tool_use_id").to_owned(),
            content: b["content"].clone(),
            is_error: b["is_error"].as_bool().unwrap_or(false),
        })
        .collect()
}

fn result(v: &Value) -> AgentEvent {
    AgentEvent::Result {
        session_id: str_at(v, "session_id").to_owned(),
        // The CLI reports API failures as subtype "success" with is_error
        // set, so is_error is the only trustworthy verdict.
        is_error: v["is_error"].as_bool().unwrap_or(true),
        subtype: str_at(v, "subtype").to_owned(),
        num_turns: v["num_turns"].as_u64().unwrap_or(0),
        duration_ms: v["duration_ms"].as_u64().unwrap_or(0),
        total_cost_usd: v["total_cost_usd"].as_f64().unwrap_or(0.0),
        usage: v["usage"].clone(),
        result: v["result"].as_str().map(str::to_owned),
        // Only the agent knows it sent an interrupt; it sets this.
        interrupted: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(events: &[AgentEvent]) -> Vec<&'static str> {
        events.iter().map(AgentEvent::name).collect()
    }

    #[test]
    fn init_yields_session() {
        let t = Translator::new(true);
        let ev = t.translate(r#"{"type":"system","subtype":"init","session_id":"s1","tools":[]}"#);
        assert_eq!(
            ev,
            vec![AgentEvent::Session {
                session_id: "s1".into()
            }]
        );
    }

    #[test]
    fn partial_text_comes_from_stream_events_only() {
        let t = Translator::new(true);
        let delta = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}}"#;
        assert_eq!(
            t.translate(delta),
            vec![AgentEvent::TextDelta { text: "Hi".into() }]
        );
        let full =
            r#"{"type":"assistant","message":{"id":"m","content":[{"type":"text","text":"Hi"}]}}"#;
        assert!(t.translate(full).is_empty());
        assert_eq!(
            names(&Translator::new(false).translate(full)),
            ["text_delta"]
        );
    }

    #[test]
    fn tool_use_and_result() {
        let t = Translator::new(true);
        let use_line = r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_1","name":"Write","input":{"file_path":"/w/a","content":"x"}}]}}"#;
        let ev = t.translate(use_line);
        assert_eq!(names(&ev), ["tool_use"]);
        assert_eq!(ev[0].data()["input"]["file_path"], "/w/a");
        let res = r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"ok","is_error":false}]}}"#;
        let ev = t.translate(res);
        assert_eq!(names(&ev), ["tool_result"]);
        assert_eq!(ev[0].data()["tool_use_id"], "toolu_1");
    }

    #[test]
    fn result_trusts_is_error_not_subtype() {
        let t = Translator::new(true);
        let line = r#"{"type":"result","subtype":"success","is_error":true,"num_turns":1,"duration_ms":5,"session_id":"s","total_cost_usd":0.0,"usage":{},"result":"API Error"}"#;
        match &t.translate(line)[0] {
            AgentEvent::Result { is_error, .. } => assert!(is_error),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn noise_and_garbage_are_dropped() {
        let t = Translator::new(true);
        assert!(t.translate("not json").is_empty());
        assert!(t.translate(r#"{"type":"rate_limit_event"}"#).is_empty());
        assert!(t
            .translate(r#"{"type":"system","subtype":"api_retry"}"#)
            .is_empty());
    }
}
