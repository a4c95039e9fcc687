//! How the model upstream failed a conversation's calls, as the gateway
//! saw it: 429, 529/503, 401/403, 400 "prompt is too long", another 5xx,
//! an SSE `error` event mid-answer, or an answer cut short. The executor
//! reads the last failure of a run whose CLI gave up, so the client gets
//! one stable code (`rate_limited`, `overloaded`, ...) that the daemon
//! saw itself, not one read from the container's output.

use crate::codes::ErrorCode;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Most of an error answer read to classify it (the API's are < 1 KiB).
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest SSE line held while watching an answer for an `error` event.
const MAX_LINE: usize = 16 * 1024;

/// One kind of upstream failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    RateLimited,
    Overloaded,
    Unavailable,
    AuthFailed,
    PromptTooLong,
}

impl UpstreamFailure {
    /// The code of the run's SSE `error` event.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::RateLimited => ErrorCode::RateLimited,
            Self::Overloaded => ErrorCode::Overloaded,
            Self::Unavailable => ErrorCode::UpstreamUnavailable,
            Self::AuthFailed => ErrorCode::UpstreamAuthFailed,
            Self::PromptTooLong => ErrorCode::PromptTooLong,
        }
    }

    /// What the client is told; never the upstream's text (it could echo
    /// a credential), only what the daemon knows.
    pub fn message(self) -> &'static str {
        match self {
            Self::RateLimited => "the model API rate-limited the run (429) after the CLI's retries",
            Self::Overloaded => "the model API was overloaded (529) after the CLI's retries",
            Self::Unavailable => {
                "the model API failed (5xx, a broken stream or no connection) after the CLI's retries"
            }
            Self::AuthFailed => {
                "the model API refused the daemon's credential (401/403); an operator must fix it"
            }
            Self::PromptTooLong => "the conversation is longer than the model's context window",
        }
    }

    /// The failure an answer's status announces; `body` is read only for a
    /// 400, whose kind is in its message.
    pub(super) fn from_status(status: u16, body: &[u8]) -> Option<Self> {
        match status {
            429 => Some(Self::RateLimited),
            503 | 529 => Some(Self::Overloaded),
            401 | 403 => Some(Self::AuthFailed),
            400 => contains(body, b"prompt is too long").then_some(Self::PromptTooLong),
            500..=599 => Some(Self::Unavailable),
            _ => None,
        }
    }

    /// The failure of an SSE `error` event with this `error.type`.
    fn from_error_type(kind: &str) -> Self {
        match kind {
            "rate_limit_error" => Self::RateLimited,
            "overloaded_error" => Self::Overloaded,
            "authentication_error" | "permission_error" => Self::AuthFailed,
            _ => Self::Unavailable,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let lower = haystack.to_ascii_lowercase();
    lower.windows(needle.len()).any(|w| w == needle)
}

/// The last upstream failure of each conversation's current run.
#[derive(Default)]
pub struct UpstreamOutcomes {
    last: Mutex<HashMap<(String, String), UpstreamFailure>>,
}

impl UpstreamOutcomes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), UpstreamFailure>> {
        // A panic while holding it leaves a valid map.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn record(&self, tenant: &str, conversation: &str, failure: UpstreamFailure) {
        tracing::info!(message = "Model upstream failed a call.", code = %failure.code(),
            tenant_id = tenant, conversation_id = conversation);
        self.map()
            .insert((tenant.to_owned(), conversation.to_owned()), failure);
    }

    /// A call answered in full: earlier failures were retried past.
    pub(super) fn succeeded(&self, tenant: &str, conversation: &str) {
        self.map()
            .remove(&(tenant.to_owned(), conversation.to_owned()));
    }

    /// The conversation's last failure since its run began, forgotten.
    pub fn take(&self, tenant: &str, conversation: &str) -> Option<UpstreamFailure> {
        self.map()
            .remove(&(tenant.to_owned(), conversation.to_owned()))
    }
}

/// Who a watched answer belongs to.
pub(super) struct Watcher {
    pub outcomes: Arc<UpstreamOutcomes>,
    pub tenant: String,
    pub conversation: String,
}

/// A streamed 200 answer passed through unchanged while watched for an
/// SSE `error` event or a cut; its end reports the call's outcome.
pub(super) struct WatchedBody<B> {
    inner: B,
    line: Vec<u8>,
    skipping: bool,
    after_error_event: bool,
    failure: Option<UpstreamFailure>,
    watcher: Option<Watcher>,
}

impl<B> WatchedBody<B> {
    pub(super) fn new(inner: B, watcher: Watcher) -> Self {
        Self {
            inner,
            line: Vec::new(),
            skipping: false,
            after_error_event: false,
            failure: None,
            watcher: Some(watcher),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (chunk, end) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            if !self.skipping {
                if self.line.len() + chunk.len() > MAX_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let Some(i) = end else { break };
            if !self.skipping {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            }
            self.line.clear();
            self.skipping = false;
            bytes = &bytes[i..];
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(name) = line.strip_prefix(b"event:") {
            self.after_error_event = name.trim_ascii() == b"error";
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let kind = serde_json::from_slice::<serde_json::Value>(data.trim_ascii())
                .ok()
                .filter(|v| self.after_error_event || v["type"] == "error")
                .map(|v| v["error"]["type"].as_str().unwrap_or_default().to_owned());
            if let Some(kind) = kind {
                self.failure = Some(UpstreamFailure::from_error_type(&kind));
            }
        }
    }

    /// Reports the call once: failed (an error event, a cut) or answered.
    fn settle(&mut self, cut: bool) {
        let Some(w) = self.watcher.take() else { return };
        match self.failure.or(cut.then_some(UpstreamFailure::Unavailable)) {
            Some(f) => w.outcomes.record(&w.tenant, &w.conversation, f),
            None => w.outcomes.succeeded(&w.tenant, &w.conversation),
        }
    }
}

impl<B> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the container hung up, not the upstream.
        self.watcher = None;
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    this.feed(&data);
                }
                // A body that knows its end is not polled past it.
                if this.inner.is_end_stream() {
                    this.settle(false);
                }
            }
            Poll::Ready(Some(Err(_))) => this.settle(true),
            Poll::Ready(None) => this.settle(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads at most [`MAX_ERROR_BODY`] of an error answer within `within`;
/// `None` when it is larger, slower or broken (then only its status counts).
pub(super) async fn read_error_body<B>(body: B, within: std::time::Duration) -> Option<Bytes>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
    let collected = tokio::time::timeout(within, limited.collect()).await.ok()?;
    collected.ok().map(|c| c.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn watcher(outcomes: &Arc<UpstreamOutcomes>) -> Watcher {
        Watcher {
            outcomes: outcomes.clone(),
            tenant: "t".into(),
            conversation: "c".into(),
        }
    }

    #[test]
    fn statuses_map_to_one_failure_each() {
        use UpstreamFailure::*;
        assert_eq!(UpstreamFailure::from_status(429, b""), Some(RateLimited));
        assert_eq!(UpstreamFailure::from_status(529, b""), Some(Overloaded));
        assert_eq!(UpstreamFailure::from_status(503, b""), Some(Overloaded));
        assert_eq!(UpstreamFailure::from_status(500, b""), Some(Unavailable));
        assert_eq!(UpstreamFailure::from_status(401, b""), Some(AuthFailed));
        let long = br#"{"error":{"message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(UpstreamFailure::from_status(400, long), Some(PromptTooLong));
        assert_eq!(UpstreamFailure::from_status(400, b"bad json"), None);
        assert_eq!(UpstreamFailure::from_status(200, b""), None);
    }

    #[tokio::test]
    async fn an_error_event_mid_stream_is_recorded_and_a_clean_end_clears() {
        let outcomes = Arc::new(UpstreamOutcomes::default());
        let text = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
                    event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        // Split mid-line: lines are joined across frames.
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let watched = WatchedBody::new(body, watcher(&outcomes));
        watched.collect().await.unwrap();
        assert_eq!(outcomes.take("t", "c"), Some(UpstreamFailure::Overloaded));

        outcomes.record("t", "c", UpstreamFailure::RateLimited);
        let ok = WatchedBody::new(
            Full::new(Bytes::from("event: message_stop\n\n")),
            watcher(&outcomes),
        );
        ok.collect().await.unwrap();
        assert_eq!(outcomes.take("t", "c"), None);
    }
}
