//! Waiting on markers instead of sleeping: a run's SSE stream read as it
//! arrives (wait for an event), the daemon's JSON log (wait for a line),
//! its signals and its exit.

use super::daemon::Daemon;
use super::http::client;
use super::sse::{parse_sse, SseEvent};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A run started in the background whose events the test reads as they come.
pub struct LiveStream {
    rx: mpsc::UnboundedReceiver<SseEvent>,
    /// Every event received so far.
    pub seen: Vec<SseEvent>,
    /// The HTTP status of the answer.
    pub status: u16,
}

impl LiveStream {
    /// Posts `prompt` to `conversation` and follows its stream.
    pub async fn start(d: &Daemon, token: &str, conversation: &str, prompt: &str) -> LiveStream {
        let resp = client()
            .post(d.url(&format!("/v1/conversations/{conversation}/messages")))
            .bearer_auth(token)
            .json(&serde_json::json!({ "prompt": prompt }))
            .send()
            .await
            .expect("send");
        Self::follow(resp)
    }

    /// Follows an answer already under way.
    pub fn follow(mut resp: reqwest::Response) -> LiveStream {
        let status = resp.status().as_u16();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    for ev in parse_sse(&block) {
                        let _ = tx.send(ev);
                    }
                }
            }
            for ev in parse_sse(&buf) {
                let _ = tx.send(ev);
            }
        });
        LiveStream {
            rx,
            seen: Vec::new(),
            status,
        }
    }

    /// Waits (at most `secs`) for an event that `pred` accepts.
    pub async fn wait_for(
        &mut self,
        secs: u64,
        what: &str,
        pred: impl Fn(&SseEvent) -> bool,
    ) -> SseEvent {
        if let Some(ev) = self.seen.iter().find(|e| pred(e)) {
            return ev.clone();
        }
        let got = tokio::time::timeout(Duration::from_secs(secs), async {
            while let Some(ev) = self.rx.recv().await {
                self.seen.push(ev.clone());
                if pred(&ev) {
                    return Some(ev);
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("the stream ended before {what}: {:#?}", self.seen),
            Err(_) => panic!("timed out waiting for {what}: {:#?}", self.seen),
        }
    }

    /// Reads the stream to its end (at most `secs`) and returns every event.
    pub async fn end(mut self, secs: u64) -> Vec<SseEvent> {
        tokio::time::timeout(Duration::from_secs(secs), async {
            while let Some(ev) = self.rx.recv().await {
                self.seen.push(ev);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the stream did not end: {:#?}", self.seen));
        self.seen
    }
}

/// Polls `check` every 50 ms until it gives a value, or panics after
/// `secs` with what `what` says then: for markers outside the daemon (a
/// file a process in a container writes, the audit log).
pub fn wait_until<T>(
    secs: u64,
    what: impl FnOnce() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `code` of the last `error` event, if the events end with one.
pub fn final_error(events: &[SseEvent]) -> Option<String> {
    let last = events.iter().rev().find(|e| e.event != "sync_skipped")?;
    (last.event == "error").then(|| last.data["code"].as_str().unwrap_or("").to_owned())
}

impl Daemon {
    /// Waits (at most `secs`) for a log line whose message is `message`
    /// and whose fields include `fields`; returns it.
    pub fn wait_log(&self, secs: u64, message: &str, fields: &[(&str, &str)]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let hit = self.logs().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                let f = &v["fields"];
                (f["message"] == message && fields.iter().all(|(k, want)| f[*k] == *want))
                    .then_some(v)
            });
            if let Some(v) = hit {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the log line {message:?} {fields:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most `secs`) for the daemon to exit.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
