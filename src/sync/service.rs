//! The sync service: what the execute service calls. [`SyncService::prepare`]
//! restores a conversation's workspace before the agent runs; the returned
//! [`RunSync`] watches the run's events, schedules a debounced checkpoint
//! after each file-changing tool result, and syncs at the end.
//!
//! **Invariants:**
//! - Nothing is pushed for a conversation until its restore succeeded in
//!   the current generation (the in-memory `restored` flag gates pushes).
//! - One restore or push per conversation at a time (the state mutex).
//! - A push commits only while its generation is the one in the state
//!   file and no newer manifest is stored.

use super::fsx::{Owner, Root};
use super::limits::Refused;
use super::manifest::Manifest;
use super::paths::RelPath;
use super::push::{self, latest_manifest, ConvPrefix, PushError, PushJob, PushReport, Transfer};
use super::restore::{self, RestoreError};
use super::scheduler::{backoff, Attempt, Schedule};
use super::stats::{SyncSnapshot, SyncStats};
use super::store::{ObjectBackend, ObjectStoreBackend, StoreError};
use super::track::{Changes, Tracker};
use super::walk::StatCache;
use crate::audit::{AuditEvent, Subject, SyncFigures};
use crate::codes::ErrorCode;
use crate::config::{StorageConfig, SyncConfig};
use crate::ids::ConversationKey;
use crate::state::{ConversationRecord, StateError, Store};
use agent_protocol::{AgentEvent, SkippedFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tools whose result may have changed files in the workspace.
pub const FILE_TOOLS: &[&str] = &["Write", "Edit", "MultiEdit", "NotebookEdit", "Bash"];

/// Restore attempts before a run gives up (the store may blink).
const RESTORE_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("workspace restore failed: {0}")]
    Restore(#[from] RestoreError),
    #[error("workspace sync failed: {0}")]
    Push(#[from] PushError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl SyncError {
    /// Stable code for the SSE `error` event.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Restore(_) => ErrorCode::WorkspaceRestoreFailed,
            Self::Push(_) => ErrorCode::WorkspaceSyncFailed,
            Self::State(_) => ErrorCode::StateError,
        }
    }
}

#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn ObjectBackend>,
    store: Store,
    owner: Owner,
    transfer: Transfer,
    debounce: Duration,
    final_timeout: Duration,
    /// `[sync]`; read at the start of each push.
    limits: Mutex<SyncConfig>,
    convs: Mutex<HashMap<String, Arc<Conv>>>,
    stats: SyncStats,
}

struct Conv {
    tenant_id: String,
    conversation_id: String,
    prefix: ConvPrefix,
    state: tokio::sync::Mutex<ConvState>,
    schedule: Schedule,
    /// What changed in the workspace since the last push; `None` when it
    /// cannot be tracked (every push walks it). Outside `state` so that
    /// [`SyncService::forget`] frees the fanotify group even while a push
    /// holds the state.
    tracker: Mutex<Option<Arc<Tracker>>>,
}

#[derive(Default)]
struct ConvState {
    dir: PathBuf,
    container: String,
    generation: u64,
    /// The workspace is complete for `generation`: pushes may run.
    restored: bool,
    /// The last manifest committed (or restored) by this process.
    base: Option<Manifest>,
    cache: StatCache,
    /// Files the last push refused (path -> size), so a file left out
    /// push after push is audited once, not at every checkpoint.
    refused: HashMap<RelPath, u64>,
}

/// Files a `file_sync_refused` audit event or a `sync_skipped` SSE event
/// names at most; both carry the full count. A workspace of many refused
/// files must not make either unbounded.
const LISTED_REFUSALS: usize = 20;

/// Where a run's workspace is and who runs it.
pub struct Placement<'a> {
    pub container: &'a str,
    pub workspace_dir: &'a Path,
    /// The container was just given to this conversation: its workspace
    /// holds nothing of the conversation's (a pool container's directory,
    /// perhaps with files the pre-started CLI wrote), so it is restored,
    /// never kept.
    pub fresh: bool,
}

impl SyncService {
    /// Builds the backend `cfg.storage` names.
    pub fn open(
        storage: &StorageConfig,
        owner: Owner,
        store: Store,
    ) -> Result<SyncService, StoreError> {
        let backend = Arc::new(ObjectStoreBackend::open(storage)?);
        Ok(Self::new(storage, owner, store, backend))
    }

    pub fn new(
        storage: &StorageConfig,
        owner: Owner,
        store: Store,
        backend: Arc<dyn ObjectBackend>,
    ) -> SyncService {
        SyncService {
            inner: Arc::new(Inner {
                backend,
                store,
                owner,
                transfer: Transfer {
                    concurrency: storage.transfer_concurrency,
                    multipart_threshold: storage.multipart_threshold_mb * 1024 * 1024,
                },
                debounce: Duration::from_millis(storage.debounce_ms),
                final_timeout: Duration::from_secs(storage.final_sync_timeout_secs),
                limits: Mutex::new(SyncConfig::default()),
                convs: Mutex::new(HashMap::new()),
                stats: SyncStats::default(),
            }),
        }
    }

    /// Sets what a push may store (`[sync]`); later pushes use it.
    pub fn set_limits(&self, limits: SyncConfig) {
        *self.inner.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// The run's `sync_skipped` event for a push that left files out.
    pub fn skipped_event(&self, report: &PushReport) -> Option<AgentEvent> {
        if report.refused.is_empty() {
            return None;
        }
        let limits = self.inner.limits();
        Some(AgentEvent::SyncSkipped {
            count: report.refused.len() as u64,
            files: skipped_files(&report.refused),
            max_file_bytes: limits.max_file_bytes,
            max_workspace_bytes: limits.max_workspace_bytes,
        })
    }

    pub(super) fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.inner.backend
    }

    /// This host's leases on the conversations it runs, in the same
    /// bucket as their files (see `lease.rs`).
    pub fn leases(&self, instance: &str, ttl: Duration) -> Arc<super::lease::Leases> {
        super::lease::Leases::new(self.inner.backend.clone(), instance, ttl)
    }

    /// The newest generation stored for a conversation, if any: above the
    /// state file's, another host wrote it since this one did.
    pub async fn stored_generation(&self, key: &ConversationKey) -> Result<Option<u64>, SyncError> {
        let prefix = ConvPrefix(format!("{}/{}", key.tenant_id, key.conversation_id));
        let gens = super::push::stored_generations(self.inner.backend.as_ref(), &prefix)
            .await
            .map_err(|e| SyncError::Restore(RestoreError::Store(e)))?;
        Ok(gens.last().copied())
    }

    pub fn stats(&self) -> SyncSnapshot {
        self.inner.stats.snapshot()
    }

    /// Makes the workspace ready for a run (see docs/sync.md for the rules)
    /// and persists `rec.restored_generation`. On error nothing will be
    /// pushed for this generation and the caller must not run the agent.
    pub async fn prepare(
        &self,
        rec: &mut ConversationRecord,
        at: Placement<'_>,
    ) -> Result<RunSync, SyncError> {
        let conv = self.inner.conv(&rec.tenant_id, &rec.conversation_id);
        let mut st = conv.state.lock().await;
        if st.generation != rec.generation {
            st.restored = false;
        }
        st.generation = rec.generation;
        st.dir = at.workspace_dir.to_owned();
        st.container = at.container.to_owned();

        let dir = st.dir.clone();
        let has_files = tokio::task::spawn_blocking(move || match Root::open(&dir) {
            Ok(root) => root.has_files(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| RestoreError::Workspace {
            path: at.workspace_dir.display().to_string(),
            source,
        })?;

        let trusted = rec.restored_generation == rec.generation && st.restored;
        if trusted && has_files {
            if conv.tracker().is_none() {
                track(&conv, &st.dir).await;
            }
            return Ok(self.run_sync(conv.clone()));
        }
        if has_files && rec.restored_generation == rec.generation && !at.fresh {
            // The host copy of this generation was complete (restored or
            // kept) before the daemon restarted, and only this
            // conversation's container wrote it since: it is the newest
            // state there is. Downloading would throw away whatever the
            // last push missed. A generation whose restore never finished
            // (a crash right after the claim) holds a pool container's
            // files and is downloaded below.
            tracing::info!(message = "Keeping the workspace on the host.",
                tenant_id = %rec.tenant_id, conversation_id = %rec.conversation_id,
                generation = rec.generation);
            self.mark_restored(&mut st, rec).await?;
            track(&conv, &st.dir).await;
            drop(st);
            self.inner.schedule(&conv);
            return Ok(self.run_sync(conv));
        }

        // Download. Until it succeeds the host copy is not trusted, also
        // across a daemon crash.
        if rec.restored_generation != 0 {
            rec.restored_generation = 0;
            self.inner.store.put_conversation(rec).await?;
        }
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.inner.restore_latest(&conv, &mut st, has_files).await {
                Ok(r) => break Ok(r),
                Err(e) if attempt < RESTORE_ATTEMPTS => {
                    tracing::warn!(message = "Restore failed; retrying.", error = %e,
                        conversation_id = %rec.conversation_id, attempt);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => break Err(e),
            }
        };
        let figures = |files, bytes, outcome: &str, error: Option<String>| SyncFigures {
            generation: rec.generation,
            files,
            bytes,
            duration_ms: started.elapsed().as_millis() as u64,
            outcome: outcome.to_owned(),
            error,
        };
        match result {
            Ok(report) => {
                self.inner.stats.restored(report.bytes);
                crate::audit::emit(&AuditEvent::FileSyncToContainer {
                    subject: conv.subject(&st.container),
                    sync: figures(report.files, report.bytes, "ok", None),
                });
                if let Some(g) = st.base.as_ref().map(|m| m.generation) {
                    if g >= rec.generation {
                        // The store is ahead of the state file (it was
                        // reset or replaced, the bucket kept): carry on
                        // above it, or every push would be refused as stale.
                        rec.generation = g + 1;
                        st.generation = rec.generation;
                    }
                }
                self.mark_restored(&mut st, rec).await?;
                // Started after the restore wrote its files: only what
                // runs from now on is tracked.
                track(&conv, &st.dir).await;
                Ok(self.run_sync(conv.clone()))
            }
            Err(e) => {
                self.inner.stats.restore_failed(&e.to_string());
                crate::audit::emit(&AuditEvent::FileSyncToContainer {
                    subject: conv.subject(&st.container),
                    sync: figures(0, 0, "failed", Some(e.to_string())),
                });
                Err(e.into())
            }
        }
    }

    async fn mark_restored(
        &self,
        st: &mut ConvState,
        rec: &mut ConversationRecord,
    ) -> Result<(), SyncError> {
        rec.restored_generation = rec.generation;
        self.inner.store.put_conversation(rec).await?;
        st.restored = true;
        Ok(())
    }

    fn run_sync(&self, conv: Arc<Conv>) -> RunSync {
        RunSync {
            inner: self.inner.clone(),
            conv,
            tools: HashMap::new(),
        }
    }

    /// Pushes a conversation now (tests, benchmarks, admin tools); the
    /// same path as a checkpoint, without the debounce.
    pub async fn push_now(&self, key: &ConversationKey) -> Result<PushReport, SyncError> {
        let conv = self.inner.conv(&key.tenant_id, &key.conversation_id);
        conv.schedule.mark(false);
        self.inner.push_once(&conv, "manual").await
    }

    /// Drops what this process keeps for a conversation (last manifest,
    /// stat cache) unless it still has changes to push, and in any case
    /// its change tracking (the fanotify group, one of the user's 128):
    /// for container removal (the sweeper, a delete) and purges, once the
    /// workspace is going. Returns whether it dropped everything. The next
    /// run restores or keeps the host copy as usual; its first push walks
    /// and hashes the workspace again.
    pub fn forget(&self, key: &ConversationKey) -> bool {
        let mut convs = self.inner.convs.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{}/{}", key.tenant_id, key.conversation_id);
        if let Some(c) = convs.get(&id) {
            // A push after this walks: only speed is lost.
            c.set_tracker(None);
        }
        let idle = convs.get(&id).is_some_and(|c| {
            !c.schedule.is_pending() && Arc::strong_count(c) == 1 && c.state.try_lock().is_ok()
        });
        if idle {
            convs.remove(&id);
        }
        idle
    }

    /// True while a conversation has changes not yet in the store.
    pub fn is_pending(&self, key: &ConversationKey) -> bool {
        self.inner
            .conv(&key.tenant_id, &key.conversation_id)
            .schedule
            .is_pending()
    }
}

impl Conv {
    fn tracker(&self) -> Option<Arc<Tracker>> {
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_tracker(&self, t: Option<Arc<Tracker>>) {
        *self.tracker.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    fn subject(&self, container: &str) -> Subject {
        Subject {
            tenant_id: self.tenant_id.clone(),
            conversation_id: self.conversation_id.clone(),
            container_id: container.to_owned(),
        }
    }
}

/// (Re)starts change tracking on the conversation's workspace. Failing to
/// costs only speed: every push walks.
async fn track(conv: &Conv, dir: &Path) {
    let conversation_id = &conv.conversation_id;
    let dir = dir.to_owned();
    let tracker = match tokio::task::spawn_blocking(move || Tracker::start(&dir)).await {
        Ok(Ok(Some(t))) => Some(Arc::new(t)),
        Ok(Ok(None)) => {
            tracing::debug!(
                message = "Workspace not on its own filesystem; pushes walk it.",
                conversation_id
            );
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(message = "Change tracking unavailable; pushes walk the workspace.",
                %error, conversation_id);
            None
        }
        Err(_) => None,
    };
    conv.set_tracker(tracker);
}

fn skipped_files<'a>(refused: impl IntoIterator<Item = &'a Refused>) -> Vec<SkippedFile> {
    refused
        .into_iter()
        .take(LISTED_REFUSALS)
        .map(|r| SkippedFile {
            path: r.path.to_string(),
            size: r.size,
            allocated: r.allocated,
            reason: r.reason.as_str().to_owned(),
        })
        .collect()
}

impl Inner {
    fn limits(&self) -> SyncConfig {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Audits the files a push refused that the previous one did not
    /// (or refused at another size).
    fn audit_refusals(&self, conv: &Conv, st: &mut ConvState, refused: &[Refused]) {
        let fresh: Vec<&Refused> = refused
            .iter()
            .filter(|r| st.refused.get(&r.path) != Some(&r.size))
            .collect();
        st.refused = refused.iter().map(|r| (r.path.clone(), r.size)).collect();
        if fresh.is_empty() {
            return;
        }
        let limits = self.limits();
        tracing::warn!(message = "Files left out of the sync for their size.",
            refused = refused.len(), new = fresh.len(),
            first = %fresh[0].path, size = fresh[0].size,
            tenant_id = %conv.tenant_id, conversation_id = %conv.conversation_id);
        crate::audit::emit(&AuditEvent::FileSyncRefused {
            subject: conv.subject(&st.container),
            generation: st.generation,
            refused: refused.len() as u64,
            new: fresh.len() as u64,
            files: skipped_files(fresh),
            max_file_bytes: limits.max_file_bytes,
            max_workspace_bytes: limits.max_workspace_bytes,
        });
    }

    fn conv(&self, tenant: &str, conversation: &str) -> Arc<Conv> {
        self.convs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{tenant}/{conversation}"))
            .or_insert_with(|| {
                Arc::new(Conv {
                    tenant_id: tenant.to_owned(),
                    conversation_id: conversation.to_owned(),
                    // Both ids are validated path components (crate::ids).
                    prefix: ConvPrefix(format!("{tenant}/{conversation}")),
                    state: tokio::sync::Mutex::new(ConvState::default()),
                    schedule: Schedule::default(),
                    tracker: Mutex::new(None),
                })
            })
            .clone()
    }

    async fn restore_latest(
        &self,
        conv: &Conv,
        st: &mut ConvState,
        has_files: bool,
    ) -> Result<restore::RestoreReport, RestoreError> {
        let latest = latest_manifest(self.backend.as_ref(), &conv.prefix)
            .await
            .map_err(|e| match e {
                PushError::Store(s) => RestoreError::Store(s),
                PushError::Manifest(m) => RestoreError::Manifest(m),
                other => RestoreError::Store(StoreError::Backend(other.to_string())),
            })?;
        let Some(manifest) = latest else {
            // A new conversation, or one whose files never reached the
            // store: what the host has (if anything) is all there is.
            if has_files {
                tracing::info!(message = "Nothing stored yet; keeping the host workspace.",
                    conversation_id = %conv.conversation_id);
            }
            st.base = None;
            return Ok(restore::RestoreReport::default());
        };
        if !st.dir.exists() {
            std::fs::create_dir_all(&st.dir).map_err(|source| RestoreError::Workspace {
                path: st.dir.display().to_string(),
                source,
            })?;
            std::os::unix::fs::chown(&st.dir, Some(self.owner.uid), Some(self.owner.gid)).map_err(
                |source| RestoreError::Workspace {
                    path: st.dir.display().to_string(),
                    source,
                },
            )?;
        }
        let report = restore::restore(
            self.backend.clone(),
            &conv.prefix,
            &st.dir,
            &manifest,
            self.owner,
            self.transfer,
            &mut st.cache,
        )
        .await?;
        st.base = Some(manifest);
        Ok(report)
    }

    fn schedule(self: &Arc<Self>, conv: &Arc<Conv>) {
        let marked = conv.schedule.mark(true);
        if marked.newly_pending {
            self.stats.backlog_add(1);
        }
        if marked.spawn_worker {
            let this = self.clone();
            let conv = conv.clone();
            tokio::spawn(async move {
                conv.schedule
                    .run_worker(this.debounce, || {
                        let (this, conv) = (this.clone(), conv.clone());
                        async move {
                            match this.push_once(&conv, "checkpoint").await {
                                Ok(_) => Attempt::Done,
                                Err(SyncError::Push(PushError::Stale { .. }))
                                | Err(SyncError::Push(PushError::NotRestored)) => Attempt::GiveUp,
                                Err(_) => Attempt::Failed,
                            }
                        }
                    })
                    .await
            });
        }
    }

    /// One push under the conversation's lock, with the scheduler's and
    /// the audit log's bookkeeping.
    async fn push_once(&self, conv: &Conv, trigger: &str) -> Result<PushReport, SyncError> {
        let mut st = conv.state.lock().await;
        conv.schedule.push_started();
        let started = Instant::now();
        let result = self.push_locked(conv, &mut st).await;
        let attempt = match &result {
            Ok(_) => Attempt::Done,
            Err(PushError::Stale { .. }) | Err(PushError::NotRestored) => Attempt::GiveUp,
            Err(_) => Attempt::Failed,
        };
        if conv.schedule.push_ended(&attempt) {
            self.stats.backlog_add(-1);
        }
        let mut figures = SyncFigures {
            generation: st.generation,
            duration_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        match &result {
            Ok(r) => {
                crate::metrics::sync_scan(r.walked);
                self.audit_refusals(conv, &mut st, &r.refused);
                self.stats.pushed(r.bytes);
                if r.unchanged {
                    return Ok(r.clone());
                }
                figures.files = r.files;
                figures.bytes = r.bytes;
                figures.outcome = "ok".to_owned();
            }
            Err(e) => {
                if attempt == Attempt::GiveUp {
                    self.stats.stale();
                    figures.outcome = "stale".to_owned();
                } else {
                    self.stats.push_failed(&e.to_string());
                    figures.outcome = "failed".to_owned();
                }
                figures.error = Some(e.to_string());
                tracing::warn!(message = "Sync failed.", error = %e, trigger,
                    tenant_id = %conv.tenant_id, conversation_id = %conv.conversation_id);
            }
        }
        crate::audit::emit(&AuditEvent::FileSyncFromContainer {
            subject: conv.subject(&st.container),
            sync: figures,
        });
        result.map_err(SyncError::from)
    }

    async fn push_locked(&self, conv: &Conv, st: &mut ConvState) -> Result<PushReport, PushError> {
        if !st.restored {
            return Err(PushError::NotRestored);
        }
        let generation = st.generation;
        let fence = async {
            let rec = self
                .store
                .conversation(&ConversationKey::new(
                    &conv.tenant_id,
                    &conv.conversation_id,
                ))
                .await
                .map_err(|e| PushError::Fence(e.to_string()))?;
            match rec {
                Some(r) if r.generation == generation => Ok(()),
                Some(r) => Err(PushError::Stale {
                    mine: generation,
                    reason: format!("the state file holds generation {}", r.generation),
                }),
                // Deleted conversations take no more pushes.
                None => Err(PushError::Stale {
                    mine: generation,
                    reason: "the conversation is no longer in the state file".into(),
                }),
            }
        };
        let tracker = conv.tracker();
        let changes = match tracker.clone() {
            Some(t) => tokio::task::spawn_blocking(move || {
                let changes = t.take();
                let alive = !matches!(changes, Changes::Unknown(_)) || t.alive();
                (changes, alive)
            })
            .await
            .unwrap_or((Changes::Unknown("the tracker's task failed"), true)),
            None => (Changes::Unknown("the workspace is not tracked"), true),
        };
        let changes = match changes {
            (changes, true) => changes,
            (changes, false) => {
                // Its filesystem is gone: free the group (one of the
                // user's 128); the next run's prepare tracks anew.
                conv.set_tracker(None);
                changes
            }
        };
        let changes = match changes {
            // A file the last push refused may fit now: only a walk sees
            // it again, as tracking reports only what changed.
            Changes::Known(c) if st.refused.is_empty() => Some(c),
            Changes::Known(_) => None,
            Changes::Unknown(why) => {
                tracing::debug!(message = "Walking the workspace.", why,
                    conversation_id = %conv.conversation_id);
                None
            }
        };
        let job = PushJob {
            backend: self.backend.clone(),
            prefix: &conv.prefix,
            dir: &st.dir,
            generation,
            transfer: self.transfer,
            limits: self.limits(),
            changes,
        };
        // Taken: a tracked push patches it in place; after an error the
        // next push reads the stored one.
        let pushed = push::push(job, st.base.take(), &mut st.cache, fence).await;
        let (stored, report) = match pushed {
            Ok(r) => r,
            Err(e) => {
                // What was taken is not in the store: the next push walks.
                if let Some(t) = &tracker {
                    t.lose("a push failed");
                }
                return Err(e);
            }
        };
        st.base = stored;
        Ok(report)
    }
}

/// The sync side of one run.
pub struct RunSync {
    inner: Arc<Inner>,
    conv: Arc<Conv>,
    /// tool_use id -> tool name, to know what a tool_result belongs to.
    tools: HashMap<String, String>,
}

impl RunSync {
    /// Looks at one relayed event; a file-changing tool's result schedules
    /// a debounced checkpoint. Never blocks.
    pub fn observe(&mut self, ev: &AgentEvent) {
        match ev {
            AgentEvent::ToolUse { id, name, .. } => {
                self.tools.insert(id.clone(), name.clone());
            }
            AgentEvent::ToolResult { tool_use_id, .. } => {
                if let Some(name) = self.tools.remove(tool_use_id) {
                    if FILE_TOOLS.contains(&name.as_str()) {
                        self.inner.schedule(&self.conv);
                    }
                }
            }
            _ => {}
        }
    }

    /// The end-of-run sync: pushes now, retrying with backoff for up to
    /// `storage.final_sync_timeout_secs`. If the store stays down the
    /// changes stay in the backlog and a background worker keeps trying.
    pub async fn finish(self) -> Result<PushReport, SyncError> {
        let marked = self.conv.schedule.mark(false);
        if marked.newly_pending {
            self.inner.stats.backlog_add(1);
        }
        let deadline = Instant::now() + self.inner.final_timeout;
        let mut failures = 0;
        loop {
            match self.inner.push_once(&self.conv, "final").await {
                Ok(r) => return Ok(r),
                Err(e @ SyncError::Push(PushError::Stale { .. }))
                | Err(e @ SyncError::Push(PushError::NotRestored)) => return Err(e),
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    if Instant::now() + wait > deadline {
                        // Leave it to the background worker.
                        self.inner.schedule(&self.conv);
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
