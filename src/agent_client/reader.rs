//! Splits the agent's NDJSON stream into lines within the `[agent]`
//! bounds. The stream is hostile input: a line that never ends, or a run
//! that never stops sending, must end the run instead of the daemon's
//! memory or state disk.

use bytes::{Bytes, BytesMut};
use std::time::Duration;

/// A bound on the agent's output that a stream broke. Each ends its run
/// with `agent_protocol_violation` and costs the container.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("an event line longer than {limit} bytes (agent.max_line_bytes)")]
    LineTooLong { limit: u64 },
    #[error("more than {limit} events in one run (agent.max_events_per_run)")]
    TooManyEvents { limit: u64 },
    #[error("no data from the agent for {0:?} (agent.idle_timeout_secs)")]
    Idle(Duration),
    #[error("no answer from the agent within {0:?}")]
    NoAnswer(Duration),
    #[error("a {what} answer longer than {limit} bytes")]
    BodyTooLarge { what: &'static str, limit: usize },
}

impl Violation {
    /// The bound that was broken, as the audit event names it.
    pub fn limit(&self) -> &'static str {
        match self {
            Self::LineTooLong { .. } => "max_line_bytes",
            Self::TooManyEvents { .. } => "max_events_per_run",
            Self::Idle(_) => "idle_timeout",
            Self::NoAnswer(_) => "answer_timeout",
            Self::BodyTooLarge { .. } => "max_body_bytes",
        }
    }
}

/// Cuts a byte stream into lines, never holding more than one line of at
/// most `max_line` bytes (plus the frame being cut), and counting lines
/// against `max_lines`.
pub struct LineReader {
    buf: BytesMut,
    /// How far `buf` is known to hold no newline, so that a long line
    /// arriving in many frames is scanned once, not once per frame.
    scanned: usize,
    max_line: usize,
    max_lines: u64,
    lines: u64,
}

impl LineReader {
    pub fn new(max_line: u64, max_lines: u64) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_line: usize::try_from(max_line).unwrap_or(usize::MAX),
            max_lines,
            lines: 0,
        }
    }

    /// Lines counted so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Takes one frame and returns the lines it completes, newline
    /// stripped. Blank lines are counted and not returned.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Bytes>, Violation> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(pos) = memchr(b'\n', &self.buf[self.scanned..]) {
            let end = self.scanned + pos;
            if end > self.max_line {
                return Err(self.too_long());
            }
            let mut line = self.buf.split_to(end + 1);
            line.truncate(end);
            self.scanned = 0;
            self.lines += 1;
            if self.lines > self.max_lines {
                return Err(Violation::TooManyEvents {
                    limit: self.max_lines,
                });
            }
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                out.push(line.freeze());
            }
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.max_line {
            return Err(self.too_long());
        }
        // A long line's buffer grew by doubling; give back what a run of
        // short lines no longer needs.
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = BytesMut::new();
        }
        Ok(out)
    }

    /// What the stream left unterminated when it ended (the agent always
    /// ends its lines, so this is dropped by the caller).
    pub fn remainder(&self) -> usize {
        self.buf.len()
    }

    fn too_long(&mut self) -> Violation {
        self.buf = BytesMut::new();
        self.scanned = 0;
        Violation::LineTooLong {
            limit: self.max_line as u64,
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(lines: Vec<Bytes>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn lines_split_across_frames_come_out_whole() {
        let mut r = LineReader::new(1024, 100);
        assert!(r.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(strs(r.push(b"1}\n{\"b\"").unwrap()), ["{\"a\":1}"]);
        assert_eq!(strs(r.push(b":2}\n\n{}\n").unwrap()), ["{\"b\":2}", "{}"]);
        assert_eq!(r.lines(), 4, "a blank line counts");
        assert_eq!(r.remainder(), 0);
        r.push(b"tail").unwrap();
        assert_eq!(r.remainder(), 4);
    }

    #[test]
    fn an_unterminated_line_fails_as_soon_as_it_passes_the_bound() {
        let mut r = LineReader::new(64 * 1024, 100);
        let frame = vec![b'x'; 16 * 1024];
        for _ in 0..4 {
            r.push(&frame).unwrap();
        }
        // 64 KiB exactly is still allowed; one byte more is not.
        assert_eq!(
            r.push(b"y").unwrap_err(),
            Violation::LineTooLong { limit: 64 * 1024 }
        );
        assert_eq!(r.remainder(), 0, "the buffer is released");
    }

    #[test]
    fn memory_stays_bounded_whatever_the_line_length() {
        // 64 MiB of one line in 64 KiB frames: the reader never holds more
        // than the bound plus one frame, and fails at the bound.
        let mut r = LineReader::new(1024 * 1024, 100);
        let frame = vec![b'x'; 64 * 1024];
        let mut fed = 0usize;
        let err = loop {
            match r.push(&frame) {
                Ok(lines) => assert!(lines.is_empty()),
                Err(e) => break e,
            }
            fed += frame.len();
            assert!(r.buf.capacity() <= 2 * 1024 * 1024 + frame.len());
            assert!(fed < 64 * 1024 * 1024, "never failed");
        };
        assert!(matches!(err, Violation::LineTooLong { .. }));
        assert!(fed <= 1024 * 1024);
    }

    #[test]
    fn a_complete_line_over_the_bound_fails_too() {
        let mut r = LineReader::new(65536, 100);
        let mut frame = vec![b'x'; 65537];
        frame.push(b'\n');
        assert!(matches!(r.push(&frame), Err(Violation::LineTooLong { .. })));
        let mut r = LineReader::new(65536, 100);
        let mut frame = vec![b'x'; 65536];
        frame.push(b'\n');
        assert_eq!(r.push(&frame).unwrap().len(), 1);
    }

    #[test]
    fn lines_past_the_run_cap_fail() {
        let mut r = LineReader::new(1024, 100);
        let hundred = "{}\n".repeat(100);
        assert_eq!(r.push(hundred.as_bytes()).unwrap().len(), 100);
        assert_eq!(
            r.push(b"{}\n").unwrap_err(),
            Violation::TooManyEvents { limit: 100 }
        );
        // Blank lines are no way around the cap.
        let mut r = LineReader::new(1024, 100);
        assert!(r.push("\n".repeat(101).as_bytes()).is_err());
    }

    #[test]
    fn a_long_line_is_scanned_once() {
        // Frames of one byte: without the scan cursor this is quadratic.
        let mut r = LineReader::new(4 * 1024 * 1024, 10);
        let started = std::time::Instant::now();
        for _ in 0..200_000 {
            r.push(b"x").unwrap();
        }
        assert_eq!(r.push(b"\n").unwrap()[0].len(), 200_000);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn violations_name_their_config_key() {
        assert!(Violation::LineTooLong { limit: 1 }
            .to_string()
            .contains("agent.max_line_bytes"));
        assert_eq!(
            Violation::TooManyEvents { limit: 1 }.limit(),
            "max_events_per_run"
        );
    }
}
