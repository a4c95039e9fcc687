//! Server-Sent Events as the daemon streams them, parsed into events.

use serde_json::Value;

/// One parsed SSE event.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Parses an SSE body into events (comments and keep-alives dropped).
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut ev = SseEvent {
                id: None,
                event: "message".to_owned(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if let Some(v) = line.strip_prefix("id:") {
                    ev.id = Some(v.trim().to_owned());
                }
            }
            if data.is_empty() {
                return None;
            }
            ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            Some(ev)
        })
        .collect()
}

pub fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}
