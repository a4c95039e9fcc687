//! Live runs: the events of each run in progress, kept in memory for the
//! stream that started the run and for clients that reconnect with
//! `Last-Event-ID`, and recorded in the state file in small batches so a
//! finished run can be replayed until its retention ends.
//!
//! **Invariant:** a run does not depend on any client: it is recorded
//! whether or not anybody is listening.
//!
//! **Invariant:** a run's record is bounded (`agent.max_stored_bytes_per_run`)
//! in memory and in the state file alike; past the bound it ends with an
//! `events_truncated` marker and the run's ending, never silently.

use crate::codes::ErrorCode;
use crate::ids::ConversationKey;
use crate::state::{RunOutcome, Store, StoredEvent};
use agent_protocol::AgentEvent;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// How often pending events are committed to the state file.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The record's marker event once the bound is reached.
pub(crate) const TRUNCATED_EVENT: &str = "events_truncated";
/// Endings (`result`, `error`, `container_recovered`) held back once the
/// record is truncated: the last ones are what a replay must show.
const KEPT_ENDINGS: usize = 2;
/// Most bytes of events copied out of the record at a time, by a
/// subscriber or for one commit: a slow client or disk then holds a small
/// batch, not a second copy of the whole record.
const BATCH_BYTES: u64 = 1024 * 1024;

#[derive(Default)]
struct Log {
    events: Vec<StoredEvent>,
    /// Bytes recorded so far ([`StoredEvent::size`]).
    bytes: u64,
    /// The marker is recorded: only the run's last endings follow it.
    truncated: bool,
    /// The agent took the run. Not an event of the contract: a fresh
    /// stream shows it as a comment, and it takes no sequence number.
    started: bool,
    /// The agent's CLI was already running when the run started.
    prestarted: bool,
    done: bool,
}

impl Log {
    fn batch(&self, from: usize) -> &[StoredEvent] {
        let rest = self.events.get(from..).unwrap_or_default();
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|e| {
                let fits = bytes < BATCH_BYTES;
                bytes += e.size();
                fits
            })
            .count();
        &rest[..n]
    }
}

/// One run in progress.
pub(crate) struct LiveRun {
    pub run: u64,
    log: Mutex<Log>,
    /// Bumped on every change; subscribers wait on it.
    changed: watch::Sender<u64>,
    /// Requests to stop the run's turn; the executor forwards them to the
    /// agent. A request made before anybody waits is kept, not lost.
    interrupt: Notify,
}

impl LiveRun {
    fn new(run: u64) -> Arc<Self> {
        Arc::new(Self {
            run,
            log: Mutex::new(Log::default()),
            changed: watch::channel(0).0,
            interrupt: Notify::new(),
        })
    }

    /// Asks the run to stop its turn (`POST .../interrupt`).
    pub(crate) fn request_interrupt(&self) {
        self.interrupt.notify_one();
    }

    /// Resolves on the next interrupt request.
    pub(crate) async fn interrupt_requested(&self) {
        self.interrupt.notified().await;
    }

    /// The run has ended (its ending is recorded).
    pub(crate) fn is_done(&self) -> bool {
        self.log().done
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one event and wakes the subscribers.
    fn push(&self, event: &str, data: Box<RawValue>) {
        {
            let mut log = self.log();
            let stored = StoredEvent {
                seq: log.events.len() as u64 + 1,
                event: event.to_owned(),
                data,
            };
            log.bytes += stored.size();
            log.events.push(stored);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Records `event` unless the record is full. Returns false when it
    /// was not recorded; the first such event records the marker instead.
    ///
    /// The live stream is served from this same record, so past the bound
    /// a live client sees what a replay shows: the marker, then the run's
    /// ending. Passing the rest through live would need a second path that
    /// is either unbounded (a slow client) or lossy without a trace, and
    /// `Last-Event-ID` could not resume inside it. The run itself goes on
    /// (its files, its session, its result); only its narration is cut.
    fn publish(&self, event: &AgentEvent, limit: u64) -> bool {
        // Checked before the payload is serialised: past the bound a flood
        // of large events costs no copies.
        if self.log().truncated {
            return false;
        }
        let data = data_json(event);
        let size = (event.name().len() + data.get().len()) as u64;
        let marker = {
            let mut log = self.log();
            if log.truncated {
                return false;
            }
            if log.bytes + size <= limit {
                None
            } else {
                log.truncated = true;
                Some(log.bytes)
            }
        };
        match marker {
            None => {
                self.push(event.name(), data);
                true
            }
            Some(stored) => {
                tracing::warn!(
                    message = "Run record truncated.",
                    stored_bytes = stored,
                    limit_bytes = limit
                );
                let note = serde_json::json!({
                    "limit_bytes": limit,
                    "stored_bytes": stored,
                    "message": "the run's events passed agent.max_stored_bytes_per_run; \
                        later events are not recorded, the run's ending is",
                });
                self.push(TRUNCATED_EVENT, to_raw(&note));
                false
            }
        }
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

    /// Recorded events from index `from` on, at most about [`BATCH_BYTES`]
    /// of them (at least one).
    fn since(&self, from: usize) -> Vec<StoredEvent> {
        self.log().batch(from).to_vec()
    }

    /// Events with a sequence number above `after`, then the live rest;
    /// ends with the run.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        after: u64,
    ) -> impl Stream<Item = StoredEvent> + Send + 'static {
        let rx = self.changed.subscribe();
        // Only a stream from the start shows the `started` marker.
        let show_started = after == 0;
        futures_util::stream::unfold(
            (self.clone(), after, rx, VecDeque::new(), show_started),
            |(live, mut cursor, mut rx, mut buf, mut show_started)| async move {
                loop {
                    if let Some(ev) = buf.pop_front() {
                        return Some((ev, (live, cursor, rx, buf, show_started)));
                    }
                    let done = {
                        let log = live.log();
                        if show_started && log.started {
                            show_started = false;
                            buf.push_back(StoredEvent::new(
                                0,
                                "started",
                                &serde_json::json!({ "prestarted": log.prestarted }),
                            ));
                        }
                        let batch = log.batch(cursor as usize);
                        cursor += batch.len() as u64;
                        buf.extend(batch.iter().cloned());
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

/// The payload of `event` as JSON text, without an intermediate value
/// (which would double the memory of a large event).
fn data_json(event: &AgentEvent) -> Box<RawValue> {
    #[derive(Deserialize)]
    struct Tagged<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    serde_json::to_string(event)
        .ok()
        .and_then(|line| {
            serde_json::from_str::<Tagged>(&line)
                .ok()
                .map(|t| t.data.to_owned())
        })
        .unwrap_or_else(|| RawValue::NULL.to_owned())
}

fn to_raw(v: &serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The live runs, one per conversation at most.
pub(crate) struct RunHub {
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// How many runs are live; the drain waits for zero.
    count: watch::Sender<usize>,
}

impl Default for RunHub {
    fn default() -> Self {
        Self {
            live: Mutex::default(),
            count: watch::channel(0).0,
        }
    }
}

impl RunHub {
    pub(crate) fn get(&self, key: &ConversationKey) -> Option<Arc<LiveRun>> {
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&crate::state::conversation_key(
            &key.tenant_id,
            &key.conversation_id,
        ))
        .cloned()
    }

    /// Runs in progress for a tenant (all its conversations).
    pub(crate) fn running_for(&self, tenant: &str) -> usize {
        let prefix = format!("{tenant}/");
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().filter(|k| k.starts_with(&prefix)).count()
    }

    /// Runs in progress, all tenants.
    pub(crate) fn running(&self) -> usize {
        *self.count.borrow()
    }

    /// Returns once no run is live (recorded to its end), or after
    /// `patience`; true when none is left.
    pub(crate) async fn wait_idle(&self, patience: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(patience, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn insert(&self, key: String, live: Arc<LiveRun>) {
        let mut map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(key, live);
        self.count.send_replace(map.len());
    }

    fn remove(&self, key: &str, run: u64) {
        let mut map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|l| l.run == run) {
            map.remove(key);
        }
        self.count.send_replace(map.len());
    }

    /// Registers run `run` and spawns its recorder, which publishes what
    /// arrives on `events` (at most `max_stored_bytes` of it, see
    /// [`LiveRun::publish`]) and commits it to `store`.
    pub(crate) fn record(
        self: &Arc<Self>,
        store: Store,
        key: &ConversationKey,
        run: u64,
        max_stored_bytes: u64,
        mut events: mpsc::Receiver<AgentEvent>,
    ) -> Arc<LiveRun> {
        let live = LiveRun::new(run);
        let target = Target {
            store,
            key: key.clone(),
            run,
        };
        let key = crate::state::conversation_key(&key.tenant_id, &key.conversation_id);
        self.insert(key.clone(), live.clone());
        let (hub, rec) = (self.clone(), live.clone());
        tokio::spawn(async move {
            let mut outcome = RunOutcome::Failed;
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            // Events up to here are handed to the state file.
            let mut flushed = 0;
            // The disk is written beside the loop, never in it: a recorder
            // that waited on a commit would let events pile up in the
            // channel, unbounded in bytes.
            let mut writing: Option<tokio::task::JoinHandle<()>> = None;
            let mut endings = VecDeque::new();
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(AgentEvent::Session { .. }) => {}
                        Some(AgentEvent::Started { prestarted }) => rec.mark_started(prestarted),
                        Some(ev) => {
                            match &ev {
                                AgentEvent::Result { is_error, .. } => {
                                    outcome = if *is_error { RunOutcome::Failed } else { RunOutcome::Completed };
                                }
                                // Cut by the drain: the run did not fail, it was stopped.
                                AgentEvent::Error { code, .. } if code == ErrorCode::ShuttingDown.as_str() => {
                                    outcome = RunOutcome::Interrupted;
                                }
                                _ => {}
                            }
                            let ending = matches!(ev, AgentEvent::Result { .. }
                                | AgentEvent::Error { .. } | AgentEvent::ContainerRecovered { .. });
                            if !rec.publish(&ev, max_stored_bytes) && ending {
                                // Past the bound only the last endings are
                                // kept, to be recorded when the run ends.
                                if endings.len() == KEPT_ENDINGS {
                                    endings.pop_front();
                                }
                                endings.push_back(ev);
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        if writing.as_ref().is_none_or(|w| w.is_finished()) {
                            let batch = rec.since(flushed);
                            flushed += batch.len();
                            if !batch.is_empty() {
                                writing = Some(tokio::spawn(target.clone().append(batch)));
                            }
                        }
                    }
                }
            }
            for ev in endings {
                rec.push(ev.name(), data_json(&ev));
            }
            if let Some(w) = writing {
                let _ = w.await;
            }
            loop {
                let batch = rec.since(flushed);
                if batch.is_empty() {
                    break;
                }
                flushed += batch.len();
                target.clone().append(batch).await;
            }
            crate::faults::reach(crate::faults::Phase::AfterResult).await;
            if let Err(error) = target.store.end_run(&target.key, run, outcome).await {
                tracing::warn!(message = "Recording the run's end failed.", %error);
            }
            rec.finish();
            hub.remove(&key, run);
        });
        live
    }
}

/// Where a run's events are committed.
#[derive(Clone)]
struct Target {
    store: Store,
    key: ConversationKey,
    run: u64,
}

impl Target {
    async fn append(self, batch: Vec<StoredEvent>) {
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.store.append_events(&self.key, self.run, batch).await {
            // The live stream still has them; only a later replay would miss them.
            tracing::warn!(message = "Recording events failed.", %error);
        }
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
        let run = store
            .begin_run(&ConversationKey::new("t", "c"))
            .await
            .unwrap();
        let hub = Arc::new(RunHub::default());
        let (tx, rx) = mpsc::channel(8);
        let live = hub.record(
            store.clone(),
            &ConversationKey::new("t", "c"),
            run,
            1 << 20,
            rx,
        );
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
        assert!(hub.get(&ConversationKey::new("t", "c")).is_none());
        let stored = store
            .events_after(&ConversationKey::new("t", "c"), run, 0)
            .await
            .unwrap();
        assert_eq!(stored.len(), 3, "session events are not relayed");
        assert_eq!(
            store
                .runs(&ConversationKey::new("t", "c"), 1)
                .await
                .unwrap()[0]
                .outcome,
            RunOutcome::Failed
        );
    }

    #[tokio::test]
    async fn past_the_byte_bound_the_record_ends_with_a_marker_and_the_endings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let run = store
            .begin_run(&ConversationKey::new("t", "c"))
            .await
            .unwrap();
        let hub = Arc::new(RunHub::default());
        let (tx, rx) = mpsc::channel(8);
        let live = hub.record(store.clone(), &ConversationKey::new("t", "c"), run, 300, rx);
        let watcher = live.subscribe(0);
        for i in 0..50 {
            let text = format!("chunk {i:02}");
            tx.send(AgentEvent::TextDelta { text }).await.unwrap();
        }
        // Endings past the bound: only the last two are kept.
        for code in ["first", "second", "third"] {
            tx.send(AgentEvent::error(code, "m")).await.unwrap();
        }
        tx.send(AgentEvent::container_recovered()).await.unwrap();
        drop(tx);
        let got: Vec<StoredEvent> = watcher.collect().await;
        let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
        let deltas = names.iter().filter(|n| **n == "text_delta").count();
        assert!((5..50).contains(&deltas), "{names:?}");
        assert_eq!(
            &names[deltas..],
            [TRUNCATED_EVENT, "error", "container_recovered"],
            "the marker, then the last endings"
        );
        let recorded: u64 = got[..=deltas].iter().map(StoredEvent::size).sum();
        assert!(recorded <= 300 + 200, "{recorded} bytes before the endings");
        assert!(got[deltas].data.get().contains("\"limit_bytes\":300"));
        assert!(got[deltas + 1].data.get().contains("third"));
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "no gaps");
        // Replay shows exactly what the live stream showed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stored = store
            .events_after(&ConversationKey::new("t", "c"), run, 0)
            .await
            .unwrap();
        assert_eq!(stored, got);
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_every_event_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let run = store
            .begin_run(&ConversationKey::new("t", "c"))
            .await
            .unwrap();
        let hub = Arc::new(RunHub::default());
        let (tx, rx) = mpsc::channel(8);
        let live = hub.record(store, &ConversationKey::new("t", "c"), run, 1 << 20, rx);
        for i in 0..1000 {
            let text = i.to_string();
            tx.send(AgentEvent::TextDelta { text }).await.unwrap();
        }
        let late = live.subscribe(10);
        tx.send(AgentEvent::error("x", "y")).await.unwrap();
        drop(tx);
        let seqs: Vec<u64> = late.map(|e| e.seq).collect().await;
        assert_eq!(seqs, (11..=1001).collect::<Vec<_>>());
    }

    #[test]
    fn payloads_are_kept_as_their_json_text() {
        let ev = AgentEvent::ToolUse {
            id: "t1".into(),
            name: "Write".into(),
            input: serde_json::json!({"file_path": "/workspace/a", "n": [1, 2]}),
        };
        let data = data_json(&ev);
        let back: serde_json::Value = serde_json::from_str(data.get()).unwrap();
        assert_eq!(back, ev.data());
    }
}
