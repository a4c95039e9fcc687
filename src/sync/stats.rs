//! Sync counters and the backlog gauge, for `/metrics` and the status
//! page: plain atomics, read as a [`SyncSnapshot`].

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default, Debug)]
pub struct SyncStats {
    backlog: AtomicI64,
    pushes: AtomicU64,
    push_failures: AtomicU64,
    stale_refusals: AtomicU64,
    restores: AtomicU64,
    restore_failures: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_downloaded: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// One reading of [`SyncStats`]; names follow
/// `agentbox_sync_<noun>[_<unit>][_total]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncSnapshot {
    /// Conversations with changes not yet in the store.
    pub backlog: i64,
    pub pushes_total: u64,
    pub push_failures_total: u64,
    pub stale_refusals_total: u64,
    pub restores_total: u64,
    pub restore_failures_total: u64,
    pub uploaded_bytes_total: u64,
    pub downloaded_bytes_total: u64,
    pub last_error: Option<String>,
}

impl SyncStats {
    pub(crate) fn backlog_add(&self, n: i64) {
        let now = self.backlog.fetch_add(n, Relaxed) + n;
        crate::metrics::set_sync_backlog(now);
    }

    pub(crate) fn pushed(&self, bytes: u64) {
        self.pushes.fetch_add(1, Relaxed);
        self.bytes_uploaded.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn push_failed(&self, error: &str) {
        self.push_failures.fetch_add(1, Relaxed);
        self.set_error(error);
    }

    pub(crate) fn stale(&self) {
        self.stale_refusals.fetch_add(1, Relaxed);
    }

    pub(crate) fn restored(&self, bytes: u64) {
        self.restores.fetch_add(1, Relaxed);
        self.bytes_downloaded.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn restore_failed(&self, error: &str) {
        self.restore_failures.fetch_add(1, Relaxed);
        self.set_error(error);
    }

    fn set_error(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }

    pub fn snapshot(&self) -> SyncSnapshot {
        SyncSnapshot {
            backlog: self.backlog.load(Relaxed),
            pushes_total: self.pushes.load(Relaxed),
            push_failures_total: self.push_failures.load(Relaxed),
            stale_refusals_total: self.stale_refusals.load(Relaxed),
            restores_total: self.restores.load(Relaxed),
            restore_failures_total: self.restore_failures.load(Relaxed),
            uploaded_bytes_total: self.bytes_uploaded.load(Relaxed),
            downloaded_bytes_total: self.bytes_downloaded.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
