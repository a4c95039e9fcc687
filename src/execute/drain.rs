//! The executor's side of a drain (SIGTERM): new runs are refused from the
//! moment it begins, and the runs still going when the grace period ends
//! are cut: each stops its agent, syncs its workspace one last time and
//! ends with `error` code `shutting_down`.

use tokio::sync::{watch, RwLock, RwLockReadGuard};

pub(crate) struct Drain {
    /// True once the drain began. A run is admitted under the read lock and
    /// registered before it lets go, so once [`Drain::begin`] returns every
    /// run is either refused or visible to the daemon's wait.
    draining: RwLock<bool>,
    cut: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: RwLock::new(false),
            cut: watch::channel(false).0,
        }
    }
}

impl Drain {
    /// A pass for one new run, or `None` once the drain began; hold it
    /// until the run is registered.
    pub(crate) async fn admit(&self) -> Option<RwLockReadGuard<'_, bool>> {
        let gate = self.draining.read().await;
        (!*gate).then_some(gate)
    }

    /// Refuses every run from now on; returns once no admission is in
    /// flight.
    pub(crate) async fn begin(&self) {
        *self.draining.write().await = true;
    }

    /// Tells every run still going to stop.
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub(crate) fn watch_cut(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }
}

/// Resolves when the runs are cut; never, if nobody can cut them any more.
pub(crate) async fn cut_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|cut| *cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_refuses_new_runs_and_cuts_the_rest() {
        let drain = Drain::default();
        assert!(drain.admit().await.is_some());
        let mut cut = drain.watch_cut();
        drain.begin().await;
        assert!(drain.admit().await.is_none());
        assert!(!*cut.borrow());
        drain.cut();
        tokio::time::timeout(std::time::Duration::from_secs(1), cut_requested(&mut cut))
            .await
            .unwrap();
    }
}
