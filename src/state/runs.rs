//! Runs and their events in the state file, so a client that lost its
//! stream can come back with `Last-Event-ID` and a finished run can be
//! replayed until its retention ends.

use super::{
    conversation_key, get_json, now_ms, put_json, RunOutcome, RunRecord, StateError, Store,
    StoredEvent,
};
use super::{ConversationRecord, CONVERSATIONS};
use crate::codes::ErrorCode;
use crate::ids::ConversationKey;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Key: `"{tenant}/{conversation}/{run:012}"`; value: JSON [`RunRecord`].
pub(super) const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// Key: `"{tenant}/{conversation}/{run:012}/{seq:012}"`; value: JSON [`StoredEvent`].
pub(super) const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");

fn run_key(tenant: &str, conversation: &str, run: u64) -> String {
    format!("{}/{run:012}", conversation_key(tenant, conversation))
}

impl Store {
    /// Starts the conversation's next run: bumps its run counter and
    /// records the run, in one transaction.
    pub async fn begin_run(&self, key: &ConversationKey) -> Result<u64, StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let (tenant, conversation) = (tenant.to_owned(), conversation.to_owned());
        self.write(move |txn| {
            let key = conversation_key(&tenant, &conversation);
            let mut conv = get_json(txn, CONVERSATIONS, &key)?
                .unwrap_or_else(|| ConversationRecord::new(&tenant, &conversation));
            conv.runs += 1;
            conv.last_activity_ms = now_ms();
            put_json(txn, CONVERSATIONS, &key, &conv)?;
            let run = RunRecord {
                run: conv.runs,
                started_ms: now_ms(),
                ended_ms: None,
                outcome: RunOutcome::Running,
                events: 0,
            };
            put_json(txn, RUNS, &run_key(&tenant, &conversation, run.run), &run)?;
            Ok(conv.runs)
        })
        .await
    }

    /// Appends events of a run (in order) in one transaction.
    pub async fn append_events(
        &self,
        key: &ConversationKey,
        run: u64,
        events: Vec<StoredEvent>,
    ) -> Result<(), StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        if events.is_empty() {
            return Ok(());
        }
        let prefix = run_key(tenant, conversation, run);
        self.write(move |txn| {
            let mut last = 0;
            for ev in &events {
                put_json(txn, EVENTS, &format!("{prefix}/{:012}", ev.seq), ev)?;
                last = ev.seq;
            }
            if let Some(mut r) = get_json::<RunRecord>(txn, RUNS, &prefix)? {
                r.events = r.events.max(last);
                put_json(txn, RUNS, &prefix, &r)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn end_run(
        &self,
        key: &ConversationKey,
        run: u64,
        outcome: RunOutcome,
    ) -> Result<(), StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let key = run_key(tenant, conversation, run);
        self.write(move |txn| {
            if let Some(mut r) = get_json::<RunRecord>(txn, RUNS, &key)? {
                r.outcome = outcome;
                r.ended_ms = Some(now_ms());
                put_json(txn, RUNS, &key, &r)?;
            }
            Ok(())
        })
        .await
    }

    /// The conversation's runs, newest first, at most `limit`.
    pub async fn runs(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let start = format!("{}/", conversation_key(tenant, conversation));
        let end = format!("{}0", conversation_key(tenant, conversation));
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let t = txn.open_table(RUNS)?;
            let mut out = Vec::new();
            for row in t.range(start.as_str()..end.as_str())?.rev() {
                let (_, v) = row?;
                out.push(serde_json::from_slice::<RunRecord>(v.value())?);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await?
    }

    /// One run's record.
    pub async fn run_record(
        &self,
        key: &ConversationKey,
        run: u64,
    ) -> Result<Option<RunRecord>, StateError> {
        let key = run_key(&key.tenant_id, &key.conversation_id, run);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let t = txn.open_table(RUNS)?;
            let raw = t.get(key.as_str())?;
            raw.map(|v| serde_json::from_slice(v.value()).map_err(StateError::from))
                .transpose()
        })
        .await?
    }

    /// Events of one run with a sequence number above `after`.
    pub async fn events_after(
        &self,
        key: &ConversationKey,
        run: u64,
        after: u64,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let prefix = run_key(tenant, conversation, run);
        let start = format!("{prefix}/{:012}", after.saturating_add(1));
        let end = format!("{prefix}0");
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let t = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            for row in t.range(start.as_str()..end.as_str())? {
                let (_, v) = row?;
                out.push(serde_json::from_slice::<StoredEvent>(v.value())?);
            }
            Ok(out)
        })
        .await?
    }

    /// Closes the runs a crash left `Running` (at start-up). A run whose
    /// record already ends with its `result` only missed its end and gets
    /// the result's outcome; any other becomes `Interrupted` and its record
    /// ends with `error` code `interrupted`, so a client that replays it
    /// learns what happened. Returns how many were interrupted.
    pub async fn interrupt_running_runs(&self) -> Result<usize, StateError> {
        self.write(|txn| {
            let mut stale = Vec::new();
            {
                let t = txn.open_table(RUNS)?;
                for row in t.iter()? {
                    let (k, v) = row?;
                    let r: RunRecord = serde_json::from_slice(v.value())?;
                    if r.outcome == RunOutcome::Running {
                        stale.push((k.value().to_owned(), r));
                    }
                }
            }
            let mut interrupted = 0;
            for (k, mut r) in stale {
                let last_key = format!("{k}/{:012}", r.events);
                let last = match r.events {
                    0 => None,
                    _ => get_json::<StoredEvent>(txn, EVENTS, &last_key)?,
                };
                r.ended_ms = Some(now_ms());
                match last.filter(|e| e.event == "result") {
                    Some(result) => {
                        let failed = serde_json::from_str::<serde_json::Value>(result.data.get())
                            .is_ok_and(|d| d["is_error"] == true);
                        r.outcome = if failed {
                            RunOutcome::Failed
                        } else {
                            RunOutcome::Completed
                        };
                    }
                    None => {
                        r.outcome = RunOutcome::Interrupted;
                        r.events += 1;
                        let note = StoredEvent::new(
                            r.events,
                            "error",
                            &serde_json::json!({
                                "code": ErrorCode::Interrupted.as_str(),
                                "message": "the daemon stopped before the run ended; \
                                    files synced before that are kept",
                            }),
                        );
                        put_json(txn, EVENTS, &format!("{k}/{:012}", r.events), &note)?;
                        interrupted += 1;
                    }
                }
                put_json(txn, RUNS, &k, &r)?;
            }
            Ok(interrupted)
        })
        .await
    }

    /// Forgets a conversation with all its runs and events.
    pub async fn delete_conversation(&self, key: &ConversationKey) -> Result<(), StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let key = conversation_key(tenant, conversation);
        self.write(move |txn| {
            txn.open_table(CONVERSATIONS)?.remove(key.as_str())?;
            let (start, end) = (format!("{key}/"), format!("{key}0"));
            txn.open_table(RUNS)?
                .retain_in(start.as_str()..end.as_str(), |_, _| false)?;
            txn.open_table(EVENTS)?
                .retain_in(start.as_str()..end.as_str(), |_, _| false)?;
            Ok(())
        })
        .await
    }

    /// Deletes runs (and their events) that ended before `cutoff_ms`.
    pub async fn prune_runs(&self, cutoff_ms: u64) -> Result<usize, StateError> {
        self.write(move |txn| {
            let mut old = Vec::new();
            {
                let t = txn.open_table(RUNS)?;
                for row in t.iter()? {
                    let (k, v) = row?;
                    let r: RunRecord = serde_json::from_slice(v.value())?;
                    if r.ended_ms.is_some_and(|e| e < cutoff_ms) {
                        old.push(k.value().to_owned());
                    }
                }
            }
            let mut runs = txn.open_table(RUNS)?;
            let mut events = txn.open_table(EVENTS)?;
            for k in &old {
                runs.remove(k.as_str())?;
                let (start, end) = (format!("{k}/"), format!("{k}0"));
                events.retain_in(start.as_str()..end.as_str(), |_, _| false)?;
            }
            Ok(old.len())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64) -> StoredEvent {
        StoredEvent::new(seq, "text_delta", &json!({"text": seq.to_string()}))
    }

    #[tokio::test]
    async fn runs_and_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(
            s.begin_run(&ConversationKey::new("t", "c")).await.unwrap(),
            1
        );
        s.append_events(
            &ConversationKey::new("t", "c"),
            1,
            vec![ev(1), ev(2), ev(3)],
        )
        .await
        .unwrap();
        assert_eq!(
            s.events_after(&ConversationKey::new("t", "c"), 1, 1)
                .await
                .unwrap(),
            vec![ev(2), ev(3)]
        );
        assert_eq!(
            s.begin_run(&ConversationKey::new("t", "c")).await.unwrap(),
            2
        );
        // Another conversation sharing a prefix is never mixed in.
        s.begin_run(&ConversationKey::new("t", "c2")).await.unwrap();
        s.append_events(&ConversationKey::new("t", "c2"), 1, vec![ev(1)])
            .await
            .unwrap();
        s.end_run(&ConversationKey::new("t", "c"), 1, RunOutcome::Completed)
            .await
            .unwrap();
        let runs = s.runs(&ConversationKey::new("t", "c"), 10).await.unwrap();
        assert_eq!(runs.iter().map(|r| r.run).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(runs[1].events, 3);
        assert_eq!(s.interrupt_running_runs().await.unwrap(), 2);
        assert_eq!(s.prune_runs(now_ms() + 1).await.unwrap(), 3);
        assert!(s
            .events_after(&ConversationKey::new("t", "c"), 1, 0)
            .await
            .unwrap()
            .is_empty());
        assert!(s
            .runs(&ConversationKey::new("t", "c"), 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_crash_interrupts_runs_unless_their_result_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let (cut, done) = (
            ConversationKey::new("t", "cut"),
            ConversationKey::new("t", "done"),
        );
        s.begin_run(&cut).await.unwrap();
        s.append_events(&cut, 1, vec![ev(1)]).await.unwrap();
        s.begin_run(&done).await.unwrap();
        let result = StoredEvent::new(2, "result", &json!({"is_error": false}));
        s.append_events(&done, 1, vec![ev(1), result])
            .await
            .unwrap();

        assert_eq!(s.interrupt_running_runs().await.unwrap(), 1);
        let cut_run = &s.runs(&cut, 1).await.unwrap()[0];
        assert_eq!(
            (cut_run.outcome, cut_run.events),
            (RunOutcome::Interrupted, 2)
        );
        let replay = s.events_after(&cut, 1, 0).await.unwrap();
        assert_eq!(replay[1].event, "error");
        assert!(replay[1].data.get().contains("\"code\":\"interrupted\""));
        let done_run = &s.runs(&done, 1).await.unwrap()[0];
        assert_eq!(
            (done_run.outcome, done_run.events),
            (RunOutcome::Completed, 2)
        );
        assert_eq!(s.events_after(&done, 1, 0).await.unwrap().len(), 2);
        // Once closed, a run is left alone by the next start.
        assert_eq!(s.interrupt_running_runs().await.unwrap(), 0);
    }
}
