//! Reading what a model answer cost: the `usage` the Anthropic Messages
//! API reports, from a streamed (SSE, or Bedrock's AWS event-stream whose
//! `chunk` events carry the same events base64-encoded) or whole (JSON)
//! answer, fed frame by frame as the answer passes through the gateway.
//! Pure: no I/O, no clock.
//!
//! Memory stays bounded whatever the upstream sends: an SSE line is held
//! up to [`MAX_LINE`] (longer ones are skipped, never buffered whole; the
//! events that carry usage are short), an event-stream message up to
//! [`MAX_LINE`] too, a JSON answer up to [`MAX_JSON`].

use base64::Engine;
use serde::Deserialize;

/// Longest SSE line held; `message_start` and `message_delta` are far
/// shorter, text deltas longer than this are of no interest.
pub const MAX_LINE: usize = 64 << 10;
/// Largest whole JSON answer read for its `usage`.
pub const MAX_JSON: usize = 1 << 20;

/// Tokens of one answer, as the API counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Every token the answer was billed for, cache tokens included.
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

/// The same fields, each optional: a `message_delta` carries only those
/// that changed, and each is the running total so far.
#[derive(Debug, Default, Deserialize)]
struct PartialUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl PartialUsage {
    fn apply(&self, u: &mut Usage) {
        let set = |dst: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut u.input_tokens, self.input_tokens);
        set(&mut u.output_tokens, self.output_tokens);
        set(
            &mut u.cache_creation_input_tokens,
            self.cache_creation_input_tokens,
        );
        set(&mut u.cache_read_input_tokens, self.cache_read_input_tokens);
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<PartialUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: Message,
    },
    MessageDelta {
        #[serde(default)]
        usage: Option<PartialUsage>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug)]
enum Mode {
    Sse {
        line: Vec<u8>,
        skipping: bool,
    },
    Json {
        buf: Vec<u8>,
        over: bool,
    },
    /// AWS event-stream: `buf` holds the message being read, `skip` the
    /// bytes left of one too large to hold.
    EventStream {
        buf: Vec<u8>,
        skip: usize,
    },
    /// An error, a redirect or a format we do not read (AWS event-stream).
    Ignore,
}

/// What was read from one answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// The model that answered, as the API names it; `None` when the
    /// answer did not say.
    pub model: Option<String>,
    pub usage: Usage,
}

/// Reads an answer's usage as its bytes pass.
#[derive(Debug)]
pub struct Scanner {
    mode: Mode,
    seen: Metered,
}

impl Scanner {
    /// A scanner for an answer with this status and `content-type`: only
    /// a 200 is billed; SSE and JSON are read, anything else is ignored.
    pub fn new(status: u16, content_type: &str) -> Self {
        let ct = content_type.trim().to_ascii_lowercase();
        let mode = if status != 200 {
            Mode::Ignore
        } else if ct.starts_with("text/event-stream") {
            Mode::Sse {
                line: Vec::new(),
                skipping: false,
            }
        } else if ct.starts_with("application/vnd.amazon.eventstream") {
            Mode::EventStream {
                buf: Vec::new(),
                skip: 0,
            }
        } else if ct.starts_with("application/json") {
            Mode::Json {
                buf: Vec::new(),
                over: false,
            }
        } else {
            Mode::Ignore
        };
        Self {
            mode,
            seen: Metered::default(),
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        match &mut self.mode {
            Mode::Ignore => {}
            Mode::EventStream { buf, skip } => {
                if !event_stream(buf, skip, bytes, &mut self.seen) {
                    // Framing we cannot follow: keep what was read so far.
                    self.mode = Mode::Ignore;
                }
            }
            Mode::Json { buf, over } => {
                if *over || buf.len() + bytes.len() > MAX_JSON {
                    *over = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(bytes);
                }
            }
            Mode::Sse { line, skipping } => {
                while !bytes.is_empty() {
                    let (chunk, end) = match bytes.iter().position(|b| *b == b'\n') {
                        Some(i) => (&bytes[..i], Some(i + 1)),
                        None => (bytes, None),
                    };
                    if !*skipping {
                        if line.len() + chunk.len() > MAX_LINE {
                            *skipping = true;
                            line.clear();
                        } else {
                            line.extend_from_slice(chunk);
                        }
                    }
                    match end {
                        Some(i) => {
                            if !*skipping {
                                sse_line(line, &mut self.seen);
                            }
                            line.clear();
                            *skipping = false;
                            bytes = &bytes[i..];
                        }
                        None => break,
                    }
                }
            }
        }
    }

    /// What the answer reported, once its body has ended (or was cut).
    pub fn finish(mut self) -> Metered {
        match &mut self.mode {
            Mode::Sse { line, skipping } if !*skipping && !line.is_empty() => {
                sse_line(line, &mut self.seen);
            }
            Mode::Json { buf, over: false } => {
                if let Ok(m) = serde_json::from_slice::<Message>(buf) {
                    self.seen.model = m.model;
                    if let Some(u) = m.usage {
                        u.apply(&mut self.seen.usage);
                    }
                }
            }
            _ => {}
        }
        self.seen
    }
}

/// Reads AWS event-stream messages
/// (`total_len:u32 | headers_len:u32 | prelude_crc:u32 | headers | payload
/// | crc:u32`, big-endian) from `bytes`, holding at most one message of up
/// to [`MAX_LINE`] in `buf`; larger ones are skipped. CRCs are not checked:
/// the answer comes from the upstream over TLS, not from the container.
/// False when the framing makes no sense.
fn event_stream(buf: &mut Vec<u8>, skip: &mut usize, mut bytes: &[u8], seen: &mut Metered) -> bool {
    const PRELUDE: usize = 12;
    while !bytes.is_empty() {
        if *skip > 0 {
            let n = (*skip).min(bytes.len());
            *skip -= n;
            bytes = &bytes[n..];
            continue;
        }
        let want = if buf.len() < PRELUDE {
            PRELUDE
        } else {
            let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let (total, headers) = (be(&buf[0..4]), be(&buf[4..8]));
            if total < PRELUDE + 4 + headers {
                return false;
            }
            if total > MAX_LINE {
                *skip = total - buf.len();
                buf.clear();
                continue;
            }
            total
        };
        let n = (want - buf.len()).min(bytes.len());
        buf.extend_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        if buf.len() == want && want > PRELUDE {
            let headers = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            event_stream_payload(&buf[PRELUDE + headers..want - 4], seen);
            buf.clear();
        }
    }
    true
}

/// A `chunk` payload: `{"bytes": base64 of one Anthropic stream event}`.
fn event_stream_payload(payload: &[u8], seen: &mut Metered) {
    #[derive(Deserialize)]
    struct Chunk {
        bytes: String,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
        return;
    };
    if let Ok(event) = base64::engine::general_purpose::STANDARD.decode(chunk.bytes) {
        stream_event(&event, seen);
    }
}

/// One complete SSE line: only `data:` lines of the two usage events count.
fn sse_line(line: &[u8], seen: &mut Metered) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    stream_event(data.strip_prefix(b" ").unwrap_or(data), seen);
}

/// One Anthropic stream event as JSON.
fn stream_event(data: &[u8], seen: &mut Metered) {
    match serde_json::from_slice::<Event>(data) {
        Ok(Event::MessageStart { message }) => {
            if message.model.is_some() {
                seen.model = message.model;
            }
            if let Some(u) = message.usage {
                u.apply(&mut seen.usage);
            }
        }
        Ok(Event::MessageDelta { usage: Some(u) }) => u.apply(&mut seen.usage),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\r\n\r\n";
    const DELTA: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":%N%}}\n\n";

    fn sse(frames: &[&[u8]]) -> Metered {
        let mut s = Scanner::new(200, "text/event-stream; charset=utf-8");
        for f in frames {
            s.feed(f);
        }
        s.finish()
    }

    #[test]
    fn message_start_and_the_last_delta_make_the_usage() {
        let body = format!(
            "{START}{}event: content_block_delta\ndata: {{\"type\":\"content_block_delta\"}}\n\n{}",
            DELTA.replace("%N%", "7"),
            DELTA.replace("%N%", "42")
        );
        let expect = Metered {
            model: Some("claude-sonnet-4-5".into()),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 42,
                cache_creation_input_tokens: 20,
                cache_read_input_tokens: 30,
            },
        };
        assert_eq!(sse(&[body.as_bytes()]), expect);
        // Split anywhere, one byte at a time even, it reads the same.
        let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        assert_eq!(sse(&bytes), expect);
        let (a, b) = body.as_bytes().split_at(37);
        assert_eq!(sse(&[a, b]), expect);
        assert_eq!(expect.usage.total(), 192);
    }

    #[test]
    fn long_lines_are_skipped_not_buffered() {
        let huge = format!(
            "data: {{\"type\":\"content_block_delta\",\"text\":\"{}\"}}\n",
            "x".repeat(3 * MAX_LINE)
        );
        let mut s = Scanner::new(200, "text/event-stream");
        s.feed(START.as_bytes());
        for c in huge.as_bytes().chunks(4096) {
            s.feed(c);
            match &s.mode {
                Mode::Sse { line, .. } => assert!(line.len() <= MAX_LINE),
                _ => unreachable!(),
            }
        }
        s.feed(DELTA.replace("%N%", "9").as_bytes());
        let m = s.finish();
        assert_eq!(m.usage.output_tokens, 9);
        assert_eq!(m.usage.input_tokens, 100);
    }

    #[test]
    fn a_cut_stream_keeps_what_it_saw() {
        let body = START.as_bytes();
        let m = sse(&[&body[..body.len() - 4]]);
        assert_eq!(m.usage.input_tokens, 100);
        assert_eq!(m.usage.output_tokens, 1);
    }

    /// One event-stream message (CRCs left zero: they are not checked).
    fn es_frame(payload: &[u8]) -> Vec<u8> {
        let headers = b"\x0b:event-type\x07\x00\x05chunk";
        let total = 12 + headers.len() + payload.len() + 4;
        let mut out = Vec::new();
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0; 4]);
        out
    }

    fn es_chunk(event: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event);
        es_frame(format!("{{\"bytes\":\"{b64}\"}}").as_bytes())
    }

    #[test]
    fn bedrock_event_streams_are_read_frame_by_frame() {
        let start = START
            .lines()
            .nth(1)
            .unwrap()
            .trim_start_matches("data: ")
            .trim_end();
        let mut body = es_chunk(start);
        // A message too large to hold is skipped whole.
        body.extend(es_frame(&vec![b'x'; 2 * MAX_LINE]));
        body.extend(es_chunk(
            r#"{"type":"message_delta","usage":{"output_tokens":77}}"#,
        ));
        for size in [1, 7, 4096, body.len()] {
            let mut s = Scanner::new(200, "application/vnd.amazon.eventstream");
            for c in body.chunks(size) {
                s.feed(c);
                if let Mode::EventStream { buf, .. } = &s.mode {
                    assert!(buf.len() <= MAX_LINE);
                }
            }
            let m = s.finish();
            assert_eq!(m.model.as_deref(), Some("claude-sonnet-4-5"), "{size}");
            assert_eq!(m.usage.input_tokens, 100);
            assert_eq!(m.usage.output_tokens, 77);
        }
        // Nonsense framing stops the reading, never panics.
        let mut s = Scanner::new(200, "application/vnd.amazon.eventstream");
        s.feed(&[0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(s.finish(), Metered::default());
    }

    #[test]
    fn whole_json_answers_are_read_and_errors_ignored() {
        let body = br#"{"id":"m","type":"message","model":"claude-opus-4-1","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":5,"output_tokens":6}}"#;
        let mut s = Scanner::new(200, "application/json");
        let (a, b) = body.split_at(40);
        s.feed(a);
        s.feed(b);
        let m = s.finish();
        assert_eq!(m.model.as_deref(), Some("claude-opus-4-1"));
        assert_eq!(m.usage.input_tokens + m.usage.output_tokens, 11);

        let mut s = Scanner::new(429, "application/json");
        s.feed(body);
        assert_eq!(s.finish(), Metered::default());

        let mut s = Scanner::new(200, "application/json");
        s.feed(&vec![b' '; MAX_JSON]);
        s.feed(body);
        assert_eq!(s.finish(), Metered::default());
    }
}
