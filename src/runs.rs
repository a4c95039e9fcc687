//! Live runs: the events of each run in progress, kept in memory for the
//! stream that started the run and for clients that reconnect with
//! `Last-Event-ID`, and recorded in the state file in small batches so a
//! finished run can be replayed until its retention ends.
//!
//! **Invariant:** a run does not depend on any client: it is recorded
//! whether or not anybody is listening.

use crate::state::{RunOutcome, Store, StoredEvent};
use futures_util::Stream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use workspace_agent::protocol::AgentEvent;

/// How often pending events are committed to the state file.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Log {
    events: Vec<StoredEvent>,
    /// The agent took the run. Not an event of the contract: a fresh
    /// stream shows it as a comment, and it takes no sequence number.
    started: bool,
    /// The agent's CLI was already running when the run started.
    prestarted: bool,
    done: bool,
}

/// One run in progress.
pub struct LiveRun {
    pub run: u64,
    log: Mutex<Log>,
    /// Bumped on every change; subscribers wait on it.
    changed: watch::Sender<u64>,
}

impl LiveRun {
    fn new(run: u64) -> Arc<Self> {
        Arc::new(Self {
            run,
            log: Mutex::new(Log::default()),
            changed: watch::channel(0).0,
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, event: &AgentEvent) -> StoredEvent {
        let stored = {
            let mut log = self.log();
            let stored = StoredEvent {
                seq: log.events.len() as u64 + 1,
                event: event.name().to_owned(),
                data: event.data(),
            };
            log.events.push(stored.clone());
            stored
        };
        self.changed.send_modify(|v| *v += 1);
        stored
    }

    fn mark_started(&self, prestarted: bool) {
        {
            let mut log = self.log();
            log.started = true;
            log.prestarted = prestarted;
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn finish(&self) {
        self.log().done = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Events with a sequence number above `after`, then the live rest;
    /// ends with the run.
    pub fn subscribe(
        self: &Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = StoredEvent> + Send + 'static {
        let rx = self.changed.subscribe();
        // Only a stream from the start shows the `started` marker.
        let show_started = after == 0;
        futures_util::stream::unfold(
            (
                self.clone(),
                after,
                rx,
                std::collections::VecDeque::new(),
                show_started,
            ),
            |(live, mut cursor, mut rx, mut buf, mut show_started)| async move {
                loop {
                    if let Some(ev) = buf.pop_front() {
                        return Some((ev, (live, cursor, rx, buf, show_started)));
                    }
                    let done = {
                        let log = live.log();
                        if show_started && log.started {
                            show_started = false;
                            buf.push_back(StoredEvent {
                                seq: 0,
                                event: "started".to_owned(),
                                data: serde_json::json!({ "prestarted": log.prestarted }),
                            });
                        }
                        buf.extend(log.events.iter().skip(cursor as usize).cloned());
                        cursor = cursor.max(log.events.len() as u64);
                        log.done
                    };
                    if buf.is_empty() && (done || rx.changed().await.is_err()) {
                        return None;
                    }
                }
            },
        )
    }
}

/// The live runs, one per conversation at most.
#[derive(Default)]
pub struct RunHub {
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
}

impl RunHub {
    pub fn get(&self, tenant: &str, conversation: &str) -> Option<Arc<LiveRun>> {
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&crate::state::conversation_key(tenant, conversation))
            .cloned()
    }

    /// Runs in progress for a tenant (all its conversations).
    pub fn running_for(&self, tenant: &str) -> usize {
        let prefix = format!("{tenant}/");
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().filter(|k| k.starts_with(&prefix)).count()
    }

    fn insert(&self, key: String, live: Arc<LiveRun>) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, live);
    }

    fn remove(&self, key: &str, run: u64) {
        let mut map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|l| l.run == run) {
            map.remove(key);
        }
    }

    /// Registers run `run` and spawns its recorder, which publishes what
    /// arrives on `events` and commits it to `store`.
    pub fn record(
        self: &Arc<Self>,
        store: Store,
        tenant: &str,
        conversation: &str,
        run: u64,
        mut events: mpsc::Receiver<AgentEvent>,
    ) -> Arc<LiveRun> {
        let live = LiveRun::new(run);
        let key = crate::state::conversation_key(tenant, conversation);
        self.insert(key.clone(), live.clone());
        let (hub, rec) = (self.clone(), live.clone());
        let (tenant, conversation) = (tenant.to_owned(), conversation.to_owned());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut outcome = RunOutcome::Failed;
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(AgentEvent::Session { .. }) => {}
                        Some(AgentEvent::Started { prestarted }) => rec.mark_started(prestarted),
                        Some(ev) => {
                            if let AgentEvent::Result { is_error, .. } = &ev {
                                outcome = if *is_error { RunOutcome::Failed } else { RunOutcome::Completed };
                            }
                            pending.push(rec.publish(&ev));
                        }
                        None => break,
                    },
                    _ = tick.tick() => flush(&store, &tenant, &conversation, run, &mut pending).await,
                }
            }
            flush(&store, &tenant, &conversation, run, &mut pending).await;
            if let Err(error) = store.end_run(&tenant, &conversation, run, outcome).await {
                tracing::warn!(message = "Recording the run's end failed.", %error);
            }
            rec.finish();
            hub.remove(&key, run);
        });
        live
    }
}

async fn flush(
    store: &Store,
    tenant: &str,
    conversation: &str,
    run: u64,
    pending: &mut Vec<StoredEvent>,
) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    if let Err(error) = store.append_events(tenant, conversation, run, batch).await {
        // The live stream still has them; only a later replay would miss them.
        tracing::warn!(message = "Recording events failed.", %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn subscribers_get_history_then_live_events_then_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let run = store.begin_run("t", "c").await.unwrap();
        let hub = Arc::new(RunHub::default());
        let (tx, rx) = mpsc::channel(8);
        let live = hub.record(store.clone(), "t", "c", run, rx);
        tx.send(AgentEvent::TextDelta { text: "a".into() })
            .await
            .unwrap();
        tx.send(AgentEvent::Session {
            session_id: "s".into(),
        })
        .await
        .unwrap();
        tx.send(AgentEvent::TextDelta { text: "b".into() })
            .await
            .unwrap();
        let late = live.subscribe(1);
        tx.send(AgentEvent::error("x", "y")).await.unwrap();
        drop(tx);
        let got: Vec<_> = late.collect().await;
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(got[1].event, "error");
        // Recorded for replay once the run is over.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(hub.get("t", "c").is_none());
        let stored = store.events_after("t", "c", run, 0).await.unwrap();
        assert_eq!(stored.len(), 3, "session events are not relayed");
        assert_eq!(
            store.runs("t", "c", 1).await.unwrap()[0].outcome,
            RunOutcome::Failed
        );
    }
}
