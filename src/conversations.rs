//! The conversation service: every operation the tenant API performs on a
//! conversation (send a message, show it, follow its events, read its
//! stored files, delete it). API handlers parse, call one operation here
//! and map its result; only this layer reaches the orchestrator, the state
//! file and the sync service on their behalf.

use crate::agent_client::SessionLines;
use crate::execute::{ConversationKey, ExecuteError, Executor};
use crate::orchestrator::OrchestratorError;
use crate::runs::LiveRun;
use crate::state::{
    ContainerRecord, ConversationRecord, RunOutcome, RunRecord, StateError, StoredEvent,
};
use crate::sync::files::{FileInfo, FilesError, StoredFile};
use agent_protocol::{ExecuteRequest, SessionOptions};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::sync::Arc;

/// How many recent runs [`Conversations::show`] lists.
const RECENT_RUNS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConversationError {
    #[error("not found")]
    NotFound,
    /// Deleting while a run holds the conversation's lock.
    #[error("a run is in progress; delete it when it ends")]
    Busy,
    #[error("tenant {tenant} already has {max} runs in progress")]
    TooManyRuns { tenant: String, max: usize },
    #[error("Last-Event-ID must look like {{run}}-{{seq}}")]
    BadCursor,
    /// Interrupting a conversation with no run going on.
    #[error("no run is in progress")]
    NoRun,
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Removing the conversation's container failed.
    #[error(transparent)]
    Release(#[from] OrchestratorError),
    /// Reading the stored workspace failed.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Deleting the stored workspace failed.
    #[error(transparent)]
    Purge(FilesError),
}

/// Where a client resumes a conversation's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// From the start of the latest run.
    Latest,
    /// After event `seq` of run `run`.
    After { run: u64, seq: u64 },
    /// The client sent a position that does not parse; refused only once
    /// the conversation is known, so an unknown one stays not found.
    Malformed,
}

/// A conversation as `GET` shows it.
#[derive(Debug)]
pub(crate) struct ConversationView {
    pub conversation: ConversationRecord,
    pub container: Option<ContainerRecord>,
    /// Newest first, at most [`RECENT_RUNS`].
    pub runs: Vec<RunRecord>,
    /// A run is going on now.
    pub running: bool,
}

#[derive(Clone)]
pub(crate) struct Conversations {
    executor: Arc<Executor>,
}

impl Conversations {
    pub(crate) fn new(executor: Arc<Executor>) -> Self {
        Self { executor }
    }

    /// Whether a new run would start now (`GET /readyz`).
    pub(crate) async fn ready(&self) -> Result<(), ConversationError> {
        Ok(self.executor.ready().await?)
    }

    /// [`Self::send_narrowed`] with all of the tenant's egress rules.
    #[cfg(test)]
    pub(crate) async fn send(
        &self,
        key: ConversationKey,
        exec: ExecuteRequest,
        max_concurrent_runs: Option<usize>,
    ) -> Result<Arc<LiveRun>, ConversationError> {
        self.send_narrowed(key, exec, max_concurrent_runs, None)
            .await
    }

    /// The name in `names` that is none of the tenant's egress rules, if any.
    pub(crate) fn unknown_egress_rule(&self, tenant_id: &str, names: &[String]) -> Option<String> {
        self.executor
            .gateway()
            .unknown_egress_rule(tenant_id, names)
    }

    /// Starts a run unless the tenant already has `max_concurrent_runs`
    /// going: a soft limit, checked when the request arrives, enough to
    /// keep one tenant from taking every container. The run keeps only the
    /// named egress rules of its tenant (checked first with
    /// [`Self::unknown_egress_rule`]); `None` keeps them all.
    pub(crate) async fn send_narrowed(
        &self,
        key: ConversationKey,
        exec: ExecuteRequest,
        max_concurrent_runs: Option<usize>,
        egress_rules: Option<Vec<String>>,
    ) -> Result<Arc<LiveRun>, ConversationError> {
        if let Some(max) = max_concurrent_runs {
            if self.executor.hub().running_for(&key.tenant_id) >= max {
                return Err(ConversationError::TooManyRuns {
                    tenant: key.tenant_id,
                    max,
                });
            }
        }
        tracing::info!(message = "Run requested.", tenant_id = %key.tenant_id, conversation_id = %key.conversation_id);
        Ok(self
            .executor
            .start_run_narrowed(key, exec, egress_rules)
            .await?)
    }

    /// Asks the conversation's run to stop its turn; the run then ends
    /// with a `result` whose `interrupted` is set (or normally, when it
    /// finished first). Returns the run's number.
    pub(crate) async fn interrupt(&self, key: &ConversationKey) -> Result<u64, ConversationError> {
        self.find(key).await?;
        let live = self
            .executor
            .hub()
            .get(key)
            .filter(|l| !l.is_done())
            .ok_or(ConversationError::NoRun)?;
        live.request_interrupt();
        tracing::info!(message = "Run interrupt requested.", tenant_id = %key.tenant_id, conversation_id = %key.conversation_id, run = live.run);
        Ok(live.run)
    }

    /// Opens an Agent SDK session on the conversation: a run like
    /// [`Conversations::send`]'s (same run limit, one at a time) whose
    /// traffic is `lines`.
    pub(crate) async fn open_session(
        &self,
        key: ConversationKey,
        options: SessionOptions,
        lines: SessionLines,
        max_concurrent_runs: Option<usize>,
        egress_rules: Option<Vec<String>>,
    ) -> Result<Arc<LiveRun>, ConversationError> {
        if let Some(max) = max_concurrent_runs {
            if self.executor.hub().running_for(&key.tenant_id) >= max {
                return Err(ConversationError::TooManyRuns {
                    tenant: key.tenant_id,
                    max,
                });
            }
        }
        tracing::info!(message = "Session requested.", tenant_id = %key.tenant_id, conversation_id = %key.conversation_id);
        Ok(self
            .executor
            .start_session(key, options, lines, egress_rules)
            .await?)
    }

    pub(crate) async fn show(
        &self,
        key: &ConversationKey,
    ) -> Result<ConversationView, ConversationError> {
        let store = self.executor.orchestrator().store();
        let conversation = self.find(key).await?;
        let container = match &conversation.container_id {
            Some(name) => store.container(name).await?,
            None => None,
        };
        let runs = store.runs(key, RECENT_RUNS).await?;
        let running = self.executor.hub().get(key).is_some();
        Ok(ConversationView {
            conversation,
            container,
            runs,
            running,
        })
    }

    /// The run a cursor points into and its events from there: live until
    /// the run ends, or replayed from the record once it has.
    pub(crate) async fn events(
        &self,
        key: &ConversationKey,
        cursor: Cursor,
    ) -> Result<(u64, BoxStream<'static, StoredEvent>), ConversationError> {
        if let Cursor::After { run, seq } = cursor {
            if let Some(lost) = self.lost_elsewhere(key, run, seq).await? {
                return Ok((run, futures_util::stream::iter([lost]).boxed()));
            }
        }
        let conv = self.find(key).await?;
        let (run, after) = match cursor {
            Cursor::Latest => (conv.runs, 0),
            Cursor::After { run, seq } => (run, seq),
            Cursor::Malformed => return Err(ConversationError::BadCursor),
        };
        if run == 0 || run > conv.runs {
            return Err(ConversationError::NotFound);
        }
        if let Some(live) = self.executor.hub().get(key).filter(|l| l.run == run) {
            return Ok((run, live.subscribe(after).boxed()));
        }
        // The run is over (or the daemon restarted): replay what was recorded.
        let store = self.executor.orchestrator().store();
        let mut stored = store.events_after(key, run, after).await?;
        if stored.is_empty() && after > 0 {
            // A crash can cut the record's last events (at most one commit
            // interval) after a live client saw them, and the `interrupted`
            // ending added at the next start may take the number of one of
            // them. A cursor at or past the record's end of an interrupted
            // run gets that ending (again, if the client had it) rather
            // than nothing.
            if let Some(rec) = store.run_record(key, run).await? {
                if rec.events > 0 && after >= rec.events && rec.outcome == RunOutcome::Interrupted {
                    stored = store.events_after(key, run, rec.events - 1).await?;
                }
            }
        }
        Ok((run, futures_util::stream::iter(stored).boxed()))
    }

    /// A client reconnecting after `run` of another host (the balancer sent
    /// it here because that host is gone) gets the run's end: `error`
    /// `host_lost`, from the conversation's lease in the bucket, once that
    /// host's lease ran out unreleased (docs/scale-out.md). A holder that
    /// still renews it refuses (409 naming it). Without leases, or when the
    /// store cannot be read, the cursor is served as usual.
    async fn lost_elsewhere(
        &self,
        key: &ConversationKey,
        run: u64,
        seq: u64,
    ) -> Result<Option<StoredEvent>, ConversationError> {
        use crate::sync::lease::LeaseError;
        let Some(leases) = self.executor.leases() else {
            return Ok(None);
        };
        match leases
            .lost_run(&key.tenant_id, &key.conversation_id, run)
            .await
        {
            Ok(None) => Ok(None),
            Ok(Some(holder)) => {
                let message = format!(
                    "host {holder} stopped during this run, which was lost with it; send the \
                     next message: this host carries on from the last synced files and session"
                );
                let data = serde_json::json!({
                    "code": crate::codes::ErrorCode::HostLost.as_str(),
                    "message": message,
                });
                Ok(Some(StoredEvent::new(seq + 1, "error", &data)))
            }
            Err(LeaseError::HeldElsewhere {
                holder,
                expires_in_ms,
            }) => Err(ExecuteError::HeldElsewhere {
                holder,
                expires_in_ms,
            }
            .into()),
            Err(LeaseError::Store(error)) => {
                tracing::warn!(message = "Cannot read the conversation's lease; serving the cursor here.",
                    %error, conversation_id = %key.conversation_id);
                Ok(None)
            }
        }
    }

    /// Ends a conversation: its container goes (after a final push), its
    /// runs are forgotten and, with `purge`, its stored files deleted.
    /// Refused while a run is going on. Returns how many stored objects
    /// were purged.
    pub(crate) async fn delete(
        &self,
        key: &ConversationKey,
        purge: bool,
    ) -> Result<Option<usize>, ConversationError> {
        let (tenant, id) = (&key.tenant_id, &key.conversation_id);
        let orchestrator = self.executor.orchestrator();
        self.find(key).await?;
        // Held to the end, so no run starts on a container being removed.
        let _guard = orchestrator
            .locks()
            .try_lock(key)
            .ok_or(ConversationError::Busy)?;
        orchestrator.release_conversation(key).await?;
        orchestrator.store().delete_conversation(key).await?;
        // Its container is gone: no request can come under its narrowing.
        orchestrator.gateway().narrow_conversation(tenant, id, None);
        let purged = if purge {
            let objects = self
                .executor
                .sync()
                .purge(key)
                .await
                .map_err(ConversationError::Purge)?;
            tracing::info!(message = "Stored files purged.", tenant_id = %tenant, conversation_id = %id, objects);
            Some(objects)
        } else {
            None
        };
        tracing::info!(message = "Conversation deleted.", tenant_id = %tenant, conversation_id = %id, purge);
        Ok(purged)
    }

    /// The files of the conversation's stored workspace.
    pub(crate) async fn files(
        &self,
        key: &ConversationKey,
    ) -> Result<Vec<FileInfo>, ConversationError> {
        self.find(key).await?;
        let sync = self.executor.sync();
        Ok(sync.list_files(key).await?)
    }

    /// How often a quiet SSE stream gets a heartbeat comment.
    pub(crate) fn sse_heartbeat(&self) -> std::time::Duration {
        let secs = self.executor.orchestrator().cfg().server.sse_heartbeat_secs;
        std::time::Duration::from_secs(secs)
    }

    /// One stored file, ready to stream.
    pub(crate) async fn file(
        &self,
        key: &ConversationKey,
        path: &str,
    ) -> Result<StoredFile, ConversationError> {
        self.find(key).await?;
        let sync = self.executor.sync();
        Ok(sync.stored_file(key, path).await?)
    }

    /// The conversation must exist for this tenant (else not found,
    /// whatever is stored).
    async fn find(&self, key: &ConversationKey) -> Result<ConversationRecord, ConversationError> {
        self.executor
            .orchestrator()
            .store()
            .conversation(key)
            .await?
            .ok_or(ConversationError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::tests::{finish, key, prompt};
    use crate::orchestrator::testkit::{core, destroy_reason, Core};
    use crate::runtime::memory::{ok_run, Reply, Step};
    use crate::sync::store::ObjectBackend;
    use std::time::Duration;

    fn service(core: &Core) -> Conversations {
        Conversations::new(Executor::new(core.orchestrator.clone(), core.sync.clone()))
    }

    /// One finished run of `conversation`; returns its container.
    async fn converse(core: &Core, svc: &Conversations, conversation: &str) -> String {
        let live = svc
            .send(key(conversation), prompt("hi"), None)
            .await
            .unwrap();
        finish(core, conversation, live).await;
        let conv = core.store.conversation(&key(conversation)).await.unwrap();
        conv.unwrap().container_id.unwrap()
    }

    #[tokio::test]
    async fn delete_removes_the_container_and_forgets_the_conversation() {
        let core = core(|_| {});
        let svc = service(&core);
        let container = converse(&core, &svc, "c").await;
        assert_eq!(svc.delete(&key("c"), false).await.unwrap(), None);
        assert!(core.runtime.names().is_empty());
        assert!(core.store.container(&container).await.unwrap().is_none());
        assert_eq!(destroy_reason(&container).as_deref(), Some("deleted"));
        assert!(matches!(
            svc.show(&key("c")).await,
            Err(ConversationError::NotFound)
        ));
        assert!(core.store.runs(&key("c"), 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_forgets_the_conversations_egress_narrowing() {
        let core = core(|_| {});
        let svc = service(&core);
        let live = svc
            .send_narrowed(key("c"), prompt("hi"), None, Some(vec![]))
            .await
            .unwrap();
        finish(&core, "c", live).await;
        let gateway = core.orchestrator.gateway();
        let (tenant, conv) = (&key("c").tenant_id, &key("c").conversation_id);
        assert_eq!(gateway.narrowing(tenant, conv), Some(vec![]));
        svc.delete(&key("c"), false).await.unwrap();
        assert_eq!(gateway.narrowing(tenant, conv), None);
    }

    #[tokio::test]
    async fn delete_waits_for_the_run_to_end() {
        let core = core(|_| {});
        let svc = service(&core);
        let container = converse(&core, &svc, "c").await;
        let run = core.orchestrator.locks().try_lock(&key("c")).unwrap();
        assert!(matches!(
            svc.delete(&key("c"), true).await,
            Err(ConversationError::Busy)
        ));
        assert!(core.runtime.running(&container));
        drop(run);
        svc.delete(&key("c"), true).await.unwrap();
    }

    #[tokio::test]
    async fn delete_of_an_unknown_conversation_is_not_found() {
        let core = core(|_| {});
        let svc = service(&core);
        assert!(matches!(
            svc.delete(&key("nobody"), false).await,
            Err(ConversationError::NotFound)
        ));
    }

    #[tokio::test]
    async fn purge_deletes_the_stored_workspace() {
        let core = core(|_| {});
        let svc = service(&core);
        let container = converse(&core, &svc, "c").await;
        let workspace = core.orchestrator.workspace_dir(&container);
        std::fs::write(workspace.join("notes.txt"), b"kept").unwrap();
        core.sync.push_now(&key("c")).await.unwrap();
        let files = svc.files(&key("c")).await.unwrap();
        assert!(files.iter().any(|f| f.path == "notes.txt"), "{files:?}");
        let file = svc.file(&key("c"), "notes.txt").await.unwrap();
        assert_eq!(file.size, 4);

        let purged = svc.delete(&key("c"), true).await.unwrap();
        assert!(purged.is_some_and(|n| n > 0));
        assert!(core.backend.list("").await.unwrap().is_empty());
        assert!(matches!(
            svc.files(&key("c")).await,
            Err(ConversationError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_tenant_at_its_run_limit_is_refused() {
        let core = core(|_| {});
        core.runtime.set_script(|_| {
            let mut steps = vec![Step::Pause(Duration::from_millis(300))];
            steps.extend(ok_run("s"));
            Reply::Stream(steps)
        });
        let svc = service(&core);
        let first = svc.send(key("a"), prompt("hi"), Some(1)).await.unwrap();
        let second = svc.send(key("b"), prompt("hi"), Some(1)).await;
        assert!(matches!(
            second,
            Err(ConversationError::TooManyRuns { max: 1, .. })
        ));
        finish(&core, "a", first).await;
    }

    #[tokio::test]
    async fn interrupt_needs_a_known_conversation_with_a_run() {
        let core = core(|_| {});
        let svc = service(&core);
        assert!(matches!(
            svc.interrupt(&key("nobody")).await,
            Err(ConversationError::NotFound)
        ));
        converse(&core, &svc, "c").await;
        assert!(matches!(
            svc.interrupt(&key("c")).await,
            Err(ConversationError::NoRun)
        ));
    }

    #[tokio::test]
    async fn events_replay_a_finished_run() {
        let core = core(|_| {});
        let svc = service(&core);
        converse(&core, &svc, "c").await;
        let (run, events) = svc.events(&key("c"), Cursor::Latest).await.unwrap();
        assert_eq!(run, 1);
        let events: Vec<_> = events.collect().await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("result"));
        let (_, after) = svc
            .events(&key("c"), Cursor::After { run: 1, seq: 1 })
            .await
            .unwrap();
        let later = events.iter().filter(|e| e.seq > 1).count();
        assert_eq!(after.count().await, later);
        assert!(matches!(
            svc.events(&key("c"), Cursor::After { run: 2, seq: 0 })
                .await,
            Err(ConversationError::NotFound)
        ));
        assert!(matches!(
            svc.events(&key("c"), Cursor::Malformed).await,
            Err(ConversationError::BadCursor)
        ));
    }
}
