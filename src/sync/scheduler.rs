//! Per-conversation sync scheduling: a dirty mark per file-changing tool
//! result, one background worker per conversation that waits out the
//! debounce window, pushes, and on failure retries with exponential
//! backoff until the push lands or the generation is superseded.
//!
//! The worker never runs on the SSE path: marking is a mutex flip and a
//! notify.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff after the n-th consecutive failure: 0.5 s doubling to 30 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(30_000))
}

#[derive(Debug)]
struct Marks {
    /// Changes since the last push started.
    dirty: bool,
    /// Changes not yet in the store (counted in the backlog gauge).
    pending: bool,
    last_mark: Instant,
    retry_at: Option<Instant>,
    failures: u32,
    worker: bool,
}

/// The scheduling state of one conversation.
#[derive(Debug)]
pub struct Schedule {
    marks: Mutex<Marks>,
    wake: Notify,
}

/// What a mark changed, for the caller's bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub struct Marked {
    /// The conversation just joined the backlog.
    pub newly_pending: bool,
    /// No worker ran: the caller must spawn one ([`Schedule::run_worker`]).
    pub spawn_worker: bool,
}

/// How a push attempt ended, as the scheduler needs to know it.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Done,
    /// Retrying cannot help (stale generation, never restored).
    GiveUp,
    Failed,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            marks: Mutex::new(Marks {
                dirty: false,
                pending: false,
                last_mark: Instant::now(),
                retry_at: None,
                failures: 0,
                worker: false,
            }),
            wake: Notify::new(),
        }
    }
}

impl Schedule {
    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change; `want_worker` asks for a background worker.
    pub fn mark(&self, want_worker: bool) -> Marked {
        let mut m = self.lock();
        m.dirty = true;
        m.last_mark = Instant::now();
        let newly_pending = !m.pending;
        m.pending = true;
        let spawn_worker = want_worker && !m.worker;
        if spawn_worker {
            m.worker = true;
        }
        drop(m);
        self.wake.notify_one();
        Marked {
            newly_pending,
            spawn_worker,
        }
    }

    /// Called when a push starts: later marks need another push.
    pub fn push_started(&self) {
        self.lock().dirty = false;
    }

    /// Records how a push ended; returns true when the conversation left
    /// the backlog.
    pub fn push_ended(&self, attempt: &Attempt) -> bool {
        let mut m = self.lock();
        match attempt {
            Attempt::Done | Attempt::GiveUp => {
                m.failures = 0;
                m.retry_at = None;
                if *attempt == Attempt::GiveUp {
                    m.dirty = false;
                }
                if !m.dirty && m.pending {
                    m.pending = false;
                    return true;
                }
                false
            }
            Attempt::Failed => {
                m.dirty = true;
                m.failures += 1;
                m.retry_at = Some(Instant::now() + backoff(m.failures));
                false
            }
        }
    }

    pub fn is_pending(&self) -> bool {
        self.lock().pending
    }

    /// The worker loop: waits for the debounce window (and any retry
    /// backoff), runs `push`, repeats while changes remain; exits when
    /// clean. `push` reports how the attempt went and does its own
    /// [`Schedule::push_started`]/[`Schedule::push_ended`] bookkeeping.
    pub async fn run_worker<F, Fut>(&self, debounce: Duration, mut push: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Attempt>,
    {
        loop {
            loop {
                let deadline = {
                    let mut m = self.lock();
                    if !m.dirty {
                        m.worker = false;
                        return;
                    }
                    let quiet = m.last_mark + debounce;
                    m.retry_at.map_or(quiet, |r| r.max(quiet))
                };
                if Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = self.wake.notified() => {}
                }
            }
            push().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn debounces_a_burst_into_one_push_and_retries_failures() {
        let s = Arc::new(Schedule::default());
        let calls = Arc::new(AtomicU32::new(0));
        assert!(s.mark(true).spawn_worker);
        assert!(!s.mark(true).spawn_worker, "one worker per conversation");
        let (s2, c2) = (s.clone(), calls.clone());
        let worker = tokio::spawn(async move {
            s2.run_worker(Duration::from_millis(100), || {
                let (s, c) = (s2.clone(), c2.clone());
                async move {
                    s.push_started();
                    // The first attempt fails, the second lands.
                    let a = if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        Attempt::Failed
                    } else {
                        Attempt::Done
                    };
                    s.push_ended(&a);
                    a
                }
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.mark(true);
        worker.await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "burst -> 1 push, + 1 retry"
        );
        assert!(!s.is_pending());
    }
}
