//! The answer's body as a paced stream: one SSE event at a time, `pace`
//! apart (the real API streams tokens over seconds), ending normally, with
//! an SSE `error` event, or with the connection cut.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};

/// How a streamed answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every event, through `message_stop`.
    Complete,
    /// The first events, then an `error` event (overloaded), then the end.
    ErrorEvent,
    /// The first events, then the connection is cut without a proper end.
    Cut,
}

/// How many events go out before a broken stream breaks: `message_start`,
/// the first block's start and `ping`, and one delta, so the client has
/// seen part of an answer.
const EVENTS_BEFORE_BREAK: usize = 4;

/// `!pace <ms>` in the prompt: the delay between streamed events.
pub fn parse_pace(prompt: &str) -> Option<Duration> {
    prompt.lines().rev().find_map(|line| {
        let ms = line.trim().strip_prefix("!pace ")?.trim().parse().ok()?;
        Some(Duration::from_millis(ms))
    })
}

#[derive(Debug, thiserror::Error)]
#[error("mock-model cut the stream")]
struct Cut;

/// Unix microseconds now.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The body for `events`, sent `pace` apart; each event's hand-over time
/// is pushed to `sent`.
pub fn body(
    mut events: Vec<String>,
    pace: Duration,
    ending: Ending,
    sent: Arc<Mutex<Vec<u64>>>,
) -> Body {
    let mark = move || {
        sent.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(now_us())
    };
    // Unpaced and whole: one body with a length, as simple clients expect.
    if ending == Ending::Complete && pace.is_zero() {
        mark();
        return Body::from(events.concat());
    }
    if ending != Ending::Complete {
        events.truncate(EVENTS_BEFORE_BREAK);
    }
    if ending == Ending::ErrorEvent {
        let error = crate::faults::error_body("overloaded_error", "Overloaded");
        events.push(crate::sse::event("error", &error));
    }
    let cut = ending == Ending::Cut;
    let state = (events.into_iter(), true);
    let stream = futures_util::stream::unfold(state, move |(mut rest, first)| {
        let mark = mark.clone();
        async move {
            let next = match rest.next() {
                Some(event) => Ok(Bytes::from(event)),
                None if cut => {
                    // Pending once, so the server flushes what was sent before
                    // the cut: the client sees part of an answer, then the end.
                    tokio::task::yield_now().await;
                    Err(Cut)
                }
                None => return None,
            };
            // The first event goes at once; the pace is between events.
            if !first && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            mark();
            Some((next, (rest, false)))
        }
    });
    Body::from_stream(stream)
}
