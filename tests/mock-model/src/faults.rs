//! Upstream failures on request: a `!fault <kind> [key=value...]` line in
//! the prompt makes the mock answer that prompt's scripted requests the
//! way the real API fails under load or on bad input.
//!
//! Kinds: `429` (rate limited, `retry-after` header), `529` (overloaded),
//! `500` (api error), `401` (bad key), `too_long` (400 "prompt is too
//! long"), `midstream` (200, some text, then an SSE `error` event),
//! `reset` (200, some text, then the connection is cut), `stall` (no byte
//! for `ms` milliseconds, then the normal answer). `times=N` fails only
//! the first N requests of the prompt (the CLI's retries then succeed);
//! without it every request fails. `retry_after=S` sets the header (429,
//! 529; default 1).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

/// What kind of failure to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RateLimited,
    Overloaded,
    ServerError,
    Unauthorized,
    PromptTooLong,
    MidStream,
    Reset,
    Stall,
}

/// One `!fault` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: Kind,
    /// Fail only this many requests of the prompt; `None` fails them all.
    pub times: Option<u32>,
    pub retry_after_secs: u32,
    /// `stall`: how long nothing is sent.
    pub stall: Duration,
}

/// Parses the last well-formed `!fault` line of `prompt`: a CLI resuming
/// after a failed turn sends the failed prompt and the new one as one
/// message, and the new one comes last.
pub fn parse(prompt: &str) -> Option<Fault> {
    prompt.lines().rev().find_map(parse_line)
}

fn parse_line(line: &str) -> Option<Fault> {
    let mut words = line.split_whitespace();
    if words.next()? != "!fault" {
        return None;
    }
    let kind = match words.next()? {
        "429" => Kind::RateLimited,
        "529" => Kind::Overloaded,
        "500" => Kind::ServerError,
        "401" => Kind::Unauthorized,
        "too_long" => Kind::PromptTooLong,
        "midstream" => Kind::MidStream,
        "reset" => Kind::Reset,
        "stall" => Kind::Stall,
        _ => return None,
    };
    let mut fault = Fault {
        kind,
        times: None,
        retry_after_secs: 1,
        stall: Duration::from_secs(60),
    };
    for word in words {
        let (key, value) = word.split_once('=')?;
        let n: u64 = value.parse().ok()?;
        match key {
            "times" => fault.times = Some(u32::try_from(n).ok()?),
            "retry_after" => fault.retry_after_secs = u32::try_from(n).ok()?,
            "ms" => fault.stall = Duration::from_millis(n),
            _ => return None,
        }
    }
    Some(fault)
}

/// How many requests of each faulty prompt were failed so far, so that
/// `times=N` lets request N+1 through.
#[derive(Default)]
pub struct Counts(Mutex<HashMap<String, u32>>);

impl Counts {
    /// True when this request of `prompt` is to fail, counting it.
    pub fn strike(&self, prompt: &str, fault: &Fault) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(prompt.to_owned()).or_default();
        if fault.times.is_some_and(|max| *n >= max) {
            return false;
        }
        *n += 1;
        true
    }
}

/// An error answer instead of a stream: status, extra headers, body.
pub struct ErrorAnswer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// The error answer of a fault that fails before streaming, if it is one.
pub fn error_answer(fault: &Fault) -> Option<ErrorAnswer> {
    let (status, kind, message) = match fault.kind {
        Kind::RateLimited => (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        Kind::Overloaded => (529, "overloaded_error", "Overloaded"),
        Kind::ServerError => (500, "api_error", "Internal server error"),
        Kind::Unauthorized => (401, "authentication_error", "invalid x-api-key"),
        Kind::PromptTooLong => (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
        ),
        Kind::MidStream | Kind::Reset | Kind::Stall => return None,
    };
    let mut headers = Vec::new();
    if matches!(fault.kind, Kind::RateLimited | Kind::Overloaded) {
        headers.push(("retry-after", fault.retry_after_secs.to_string()));
    }
    Some(ErrorAnswer {
        status,
        headers,
        body: error_body(kind, message),
    })
}

/// The API's error object, as in error answers and SSE `error` events.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_and_options() {
        let f = parse("do it\n!fault 429 times=2 retry_after=3\n!text x").unwrap();
        assert_eq!(f.kind, Kind::RateLimited);
        assert_eq!(f.times, Some(2));
        assert_eq!(f.retry_after_secs, 3);
        assert_eq!(parse("!fault stall ms=50").unwrap().stall.as_millis(), 50);
        assert_eq!(parse("!fault reset").unwrap().times, None);
        assert!(parse("!fault 418").is_none());
        assert!(parse("!fault 429 bogus=1").is_none());
        assert!(parse("no faults here").is_none());
        assert_eq!(
            parse("!fault 429\n!text a\n!fault 529").unwrap().kind,
            Kind::Overloaded
        );
    }

    #[test]
    fn times_lets_later_requests_through() {
        let counts = Counts::default();
        let f = parse("!fault 529 times=2").unwrap();
        let hits: Vec<bool> = (0..4).map(|_| counts.strike("p", &f)).collect();
        assert_eq!(hits, [true, true, false, false]);
        let always = parse("!fault 500").unwrap();
        assert!((0..5).all(|_| counts.strike("q", &always)));
    }

    #[test]
    fn error_answers_have_the_api_shape() {
        let a = error_answer(&parse("!fault 529").unwrap()).unwrap();
        assert_eq!(a.status, 529);
        assert_eq!(a.body["error"]["type"], "overloaded_error");
        assert_eq!(a.headers, [("retry-after", "1".to_string())]);
        let long = error_answer(&parse("!fault too_long").unwrap()).unwrap();
        assert!(long.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt is too long"));
        assert!(error_answer(&parse("!fault midstream").unwrap()).is_none());
    }
}
