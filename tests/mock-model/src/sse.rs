//! Renders a [`Plan`] as the Anthropic streaming event sequence (SSE text),
//! and mints realistic-looking message and tool-use ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::script::{Block, Plan};

/// Deltas per block: several small pieces, like the real API, so consumers
/// of partial messages see more than one delta.
const PIECES: usize = 3;

/// Mints unique ids shaped like the API's (`msg_01` + 22 base62 chars).
/// Seeded from the clock so two mock processes never reuse tool ids.
pub struct Ids {
    seed: u64,
    counter: AtomicU64,
}

impl Ids {
    pub fn new() -> Ids {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ids {
            seed: nanos,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut state = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut id = format!("{prefix}_01");
        for _ in 0..22 {
            state = splitmix64(state);
            id.push(BASE62[(state % 62) as usize] as char);
        }
        id
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new()
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The full SSE body for one answer.
pub fn render(plan: &Plan, model: &str, input_tokens: u64, ids: &Ids) -> String {
    render_events(plan, model, input_tokens, ids).concat()
}

/// The answer's SSE events, one string each, for a paced stream.
pub fn render_events(plan: &Plan, model: &str, input_tokens: u64, ids: &Ids) -> Vec<String> {
    let mut out = Vec::new();
    push(
        &mut out,
        "message_start",
        &message_start(&ids.next("msg"), model, input_tokens),
    );
    let mut output_chars = 0;
    for (index, block) in plan.blocks.iter().enumerate() {
        output_chars += render_block(&mut out, index, block, ids);
    }
    let output_tokens = (output_chars / 4 + 1) as u64;
    push(
        &mut out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}
        }),
    );
    push(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

fn message_start(id: &str, model: &str, input_tokens: u64) -> Value {
    json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1
            }
        }
    })
}

/// Writes start, deltas and stop of one block; returns its payload length.
fn render_block(out: &mut Vec<String>, index: usize, block: &Block, ids: &Ids) -> usize {
    let (start, payload, delta_kind, field) = match block {
        Block::Text(text) => (
            json!({"type": "text", "text": ""}),
            text.clone(),
            "text_delta",
            "text",
        ),
        Block::ToolUse { name, input } => (
            json!({"type": "tool_use", "id": ids.next("toolu"), "name": name, "input": {}}),
            input.to_string(),
            "input_json_delta",
            "partial_json",
        ),
    };
    push(
        out,
        "content_block_start",
        &json!({"type": "content_block_start", "index": index, "content_block": start}),
    );
    // The real API pings once, right after the first block starts.
    if index == 0 {
        push(out, "ping", &json!({"type": "ping"}));
    }
    for piece in split_pieces(&payload, PIECES) {
        push(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": delta_kind, field: piece}}),
        );
    }
    push(
        out,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    );
    payload.len()
}

fn push(out: &mut Vec<String>, name: &str, data: &Value) {
    out.push(event(name, data));
}

/// One SSE event as text.
pub fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Splits `s` into at most `n` non-empty pieces on char boundaries.
fn split_pieces(s: &str, n: usize) -> Vec<&str> {
    let size = s.len().div_ceil(n.max(1)).max(1);
    let mut pieces = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rejoin_and_respect_char_boundaries() {
        let s = "héllo wörld ✓";
        let pieces = split_pieces(s, 3);
        assert!(pieces.len() <= 3);
        assert_eq!(pieces.concat(), s);
        assert!(split_pieces("", 3).is_empty());
    }

    #[test]
    fn ids_look_real_and_differ() {
        let ids = Ids::new();
        let a = ids.next("toolu");
        assert!(a.starts_with("toolu_01"));
        assert_eq!(a.len(), "toolu_01".len() + 22);
        assert_ne!(a, ids.next("toolu"));
    }
}
