//! Runs and their events in the state file, so a client that lost its
//! stream can come back with `Last-Event-ID` and a finished run can be
//! replayed until its retention ends.

use super::{
    conversation_key, get_json, now_ms, put_json, RunOutcome, RunRecord, StateError, Store,
    StoredEvent,
};
use super::{ConversationRecord, CONVERSATIONS};
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

    /// Marks runs left `Running` by a crash as interrupted (at start-up).
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
            for (k, mut r) in stale.iter().cloned() {
                r.outcome = RunOutcome::Interrupted;
                r.ended_ms = Some(now_ms());
                put_json(txn, RUNS, &k, &r)?;
            }
            Ok(stale.len())
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
}
