//! Background workers: every long-running loop (pool refill, sweeper,
//! reload, watchdog) is a named [`Worker`] whose task and stop signal the
//! daemon owns in a [`WorkerSet`], stopped in order on drain; what each
//! did last and its last error are on a [`WorkerBoard`] for the status page.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a worker's last pass did, shown as the status page's text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum WorkerState {
    #[default]
    Idle,
    /// The last pass failed; the next waits longer.
    BackingOff,
    Failed,
    /// A sweep; `on_request` when an operator asked for it.
    Swept {
        removed: usize,
        on_request: bool,
    },
    Reconciled {
        adopted: usize,
        lost: usize,
        orphans: usize,
        removed: usize,
    },
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("idle"),
            Self::BackingOff => f.write_str("backing off"),
            Self::Failed => f.write_str("failed"),
            Self::Swept {
                removed,
                on_request,
            } => {
                write!(f, "removed {removed}")?;
                if *on_request {
                    f.write_str(" (on request)")?;
                }
                Ok(())
            }
            Self::Reconciled {
                adopted,
                lost,
                orphans,
                removed,
            } => write!(
                f,
                "adopted {adopted} lost {lost} orphans {orphans} removed {removed}"
            ),
        }
    }
}

// The status page and `agentbox status` show the text.
impl Serialize for WorkerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct WorkerStatus {
    pub status: WorkerState,
    pub last_run_ms: u64,
    pub runs: u64,
    pub last_error: Option<String>,
}

/// Each worker's latest status, by name.
#[derive(Default)]
pub(crate) struct WorkerBoard {
    map: Mutex<BTreeMap<&'static str, WorkerStatus>>,
}

impl WorkerBoard {
    pub(crate) fn report(&self, name: &'static str, status: WorkerState, error: Option<String>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let w = map.entry(name).or_default();
        w.status = status;
        w.last_run_ms = crate::state::now_ms();
        w.runs += 1;
        if error.is_some() {
            w.last_error = error;
        }
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, WorkerStatus> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A worker's side of its stop signal.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the worker is asked to stop, or its owner is gone.
    pub(crate) async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A background loop the daemon owns: its name, its task and its stop
/// signal.
pub(crate) struct Worker {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Spawns `body`, which returns soon after its [`Shutdown`] resolves.
    pub(crate) fn spawn<F, Fut>(name: &'static str, body: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(body(Shutdown(rx)));
        Self { name, stop, task }
    }

    #[cfg(test)]
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Asks the loop to stop and waits for it at most `patience`, then
    /// aborts it: a pass cut short is what a crash would leave, and every
    /// worker's work is made to survive one (reconcile at the next start).
    pub(crate) async fn stop(mut self, patience: Duration) {
        let _ = self.stop.send(true);
        let started = Instant::now();
        let how = match tokio::time::timeout(patience, &mut self.task).await {
            Ok(Ok(())) => "stopped",
            Ok(Err(e)) if e.is_panic() => "panicked",
            Ok(Err(_)) => "cancelled",
            Err(_) => {
                self.task.abort();
                "aborted"
            }
        };
        tracing::info!(
            message = "Worker stopped.",
            worker = self.name,
            how,
            elapsed_ms = started.elapsed().as_millis() as u64
        );
    }
}

/// Every background loop of the daemon, in the order they started.
#[derive(Default)]
pub(crate) struct WorkerSet {
    workers: Vec<Worker>,
}

impl WorkerSet {
    pub(crate) fn spawn<F, Fut>(&mut self, name: &'static str, body: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.workers.push(Worker::spawn(name, body));
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.workers.iter().map(Worker::name).collect()
    }

    /// Stops the workers one at a time, the last started first, so none
    /// outlives one it was started after.
    pub(crate) async fn stop_all(self, patience: Duration) {
        for worker in self.workers.into_iter().rev() {
            worker.stop(patience).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    #[test]
    fn states_read_as_before() {
        let cases = [
            (WorkerState::Idle, "idle"),
            (WorkerState::BackingOff, "backing off"),
            (WorkerState::Failed, "failed"),
            (
                WorkerState::Swept {
                    removed: 2,
                    on_request: false,
                },
                "removed 2",
            ),
            (
                WorkerState::Swept {
                    removed: 0,
                    on_request: true,
                },
                "removed 0 (on request)",
            ),
            (
                WorkerState::Reconciled {
                    adopted: 1,
                    lost: 2,
                    orphans: 3,
                    removed: 4,
                },
                "adopted 1 lost 2 orphans 3 removed 4",
            ),
        ];
        for (state, text) in cases {
            assert_eq!(serde_json::to_value(&state).unwrap(), text);
        }
    }

    #[test]
    fn board_keeps_the_last_error() {
        let board = WorkerBoard::default();
        board.report("w", WorkerState::Failed, Some("boom".into()));
        board.report("w", WorkerState::Idle, None);
        let w = &board.snapshot()["w"];
        assert_eq!((w.runs, w.last_error.as_deref()), (2, Some("boom")));
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(json["status"], "idle");
        for field in ["last_run_ms", "runs", "last_error"] {
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_in_reverse_order_and_aborts_the_late() {
        let stopped = Arc::new(StdMutex::new(Vec::new()));
        let mut set = WorkerSet::default();
        for name in ["first", "second"] {
            let stopped = stopped.clone();
            set.spawn(name, move |mut shutdown| async move {
                shutdown.requested().await;
                stopped.lock().unwrap().push(name);
            });
        }
        // Ignores its signal: aborted once its patience is spent.
        set.spawn("stubborn", |_shutdown| async {
            std::future::pending::<()>().await;
        });
        assert_eq!(set.names(), ["first", "second", "stubborn"]);
        set.stop_all(Duration::from_secs(1)).await;
        assert_eq!(*stopped.lock().unwrap(), ["second", "first"]);
    }
}
