//! The state file's one writer (group commit): a thread that takes the
//! queued mutations, applies as many as are waiting in one write
//! transaction, commits once and then answers every waiter.
//!
//! redb runs one write transaction at a time and each durable commit is
//! an fsync; 50 claims at once used to queue 50 fsyncs or more behind each
//! other. Here a burst pays about one fsync per batch instead: mutations
//! that arrive while a commit is being flushed go into the next batch.
//!
//! A mutation is answered only after the transaction holding it has
//! committed (flushed to disk unless every mutation of the batch is lazy),
//! so a caller never acts on a write a crash could still take back.
//! Mutations apply in the order they were queued, each seeing the ones
//! before it. One that fails (or panics) fails alone: the transaction is
//! aborted and the batch is applied again without it, so the others
//! commit as if it had never been queued; which is why a mutation must be
//! a function of the transaction only, safe to run more than once. Only a
//! failure of the transaction as a whole (begin or commit: the disk) fails
//! every mutation of the batch, since none of them is durable then.

use super::StateError;
use redb::{Database, WriteTransaction};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most mutations in one transaction, so one batch's commit (and the
/// waiters behind it) stays short even when thousands are queued.
const MAX_BATCH: usize = 256;

/// One queued mutation with its waiter.
trait Pending: Send {
    /// Applies the mutation; may run more than once (see the module doc).
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StateError>;
    /// Whether the caller needs the write on disk before the answer.
    fn durable(&self) -> bool;
    /// Answers the waiter: the mutation's output once committed, or why not.
    fn answer(self: Box<Self>, outcome: Result<(), StateError>);
}

struct Typed<T, F> {
    f: F,
    out: Option<T>,
    durable: bool,
    reply: oneshot::Sender<Result<T, StateError>>,
}

impl<T, F> Pending for Typed<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, StateError> + Send,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StateError> {
        self.out = Some((self.f)(txn)?);
        Ok(())
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn answer(self: Box<Self>, outcome: Result<(), StateError>) {
        let Self { out, reply, .. } = *self;
        let answer = outcome.and_then(|()| out.ok_or(StateError::WriterStopped));
        // A waiter that went away (its request was dropped) needs no answer;
        // its write stands, as it would have without the batch.
        let _ = reply.send(answer);
    }
}

/// Counts the writer keeps, read by tests and the benchmark's notes.
#[derive(Default)]
pub(super) struct WriterStats {
    /// Transactions committed.
    commits: AtomicU64,
    /// Mutations committed.
    mutations: AtomicU64,
    /// Mutations queued and not yet taken into a batch.
    queued: AtomicU64,
}

/// The handle to the writer thread; dropping the last one stops the
/// thread after it has committed what was queued.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Box<dyn Pending>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

impl Writer {
    pub(super) fn start(db: Arc<Database>) -> Result<Self, StateError> {
        let (tx, rx) = mpsc::channel::<Box<dyn Pending>>();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || run(&db, &rx, &thread_stats))
            .map_err(StateError::Directory)?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues `f` and waits until the transaction holding it committed.
    /// The queue has no bound of its own: every entry has a caller waiting
    /// on it, so it holds at most one mutation per waiting task.
    pub(super) async fn submit<T, F>(&self, durable: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Typed {
            f,
            out: None,
            durable,
            reply,
        });
        let tx = self.tx.as_ref().ok_or(StateError::WriterStopped)?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(job).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StateError::WriterStopped);
        }
        answer.await.map_err(|_| StateError::WriterStopped)?
    }

    /// Transactions the writer has committed, and the mutations in them.
    #[cfg(test)]
    pub(super) fn committed(&self) -> (u64, u64) {
        (
            self.stats.commits.load(Ordering::Relaxed),
            self.stats.mutations.load(Ordering::Relaxed),
        )
    }

    /// Mutations queued that no batch has taken yet.
    #[cfg(test)]
    pub(super) fn queued(&self) -> u64 {
        self.stats.queued.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it; the
        // join makes the file free to open again when the store is gone.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Box<dyn Pending>>, stats: &WriterStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats
            .queued
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        commit_batch(db, batch, stats);
    }
}

/// How one attempt at a batch ended, when it did not commit.
enum Failure {
    /// The mutation at this index failed; the others may still commit.
    One(usize, StateError),
    /// The transaction failed as a whole.
    All(StateError),
}

fn commit_batch(db: &Database, mut batch: Vec<Box<dyn Pending>>, stats: &WriterStats) {
    while !batch.is_empty() {
        let started = std::time::Instant::now();
        match attempt(db, &mut batch) {
            Ok(()) => {
                crate::metrics::state_transaction(crate::metrics::TxKind::Write, started.elapsed());
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .mutations
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for job in batch.drain(..) {
                    job.answer(Ok(()));
                }
            }
            Err(Failure::One(i, error)) => {
                batch.remove(i).answer(Err(error));
            }
            Err(Failure::All(error)) => {
                tracing::warn!(message = "State write transaction failed.", mutations = batch.len(), %error);
                let error = Arc::new(error);
                for job in batch.drain(..) {
                    job.answer(Err(StateError::Batch(error.clone())));
                }
            }
        }
    }
}

fn attempt(db: &Database, batch: &mut [Box<dyn Pending>]) -> Result<(), Failure> {
    let all = |e: StateError| Failure::All(e);
    let mut txn = db.begin_write().map_err(|e| all(e.into()))?;
    let durability = if batch.iter().any(|j| j.durable()) {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    };
    txn.set_durability(durability).map_err(|e| all(e.into()))?;
    for (i, job) in batch.iter_mut().enumerate() {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job.apply(&txn)))
            .unwrap_or(Err(StateError::Panicked));
        if let Err(error) = outcome {
            // Whatever it wrote goes with the transaction.
            let _ = txn.abort();
            return Err(Failure::One(i, error));
        }
    }
    txn.commit().map_err(|e| all(e.into()))
}

#[cfg(test)]
mod tests {
    use super::super::{
        conversation_key, put_json, ContainerRecord, ContainerState, ConversationRecord, Store,
        CONVERSATIONS,
    };
    use super::StateError;
    use crate::config::IsolationTier;
    use crate::ids::ConversationKey;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        (dir, s)
    }

    /// Holds the writer inside a mutation until the returned sender is
    /// used, so the writes queued meanwhile form one batch.
    async fn hold_writer(s: &Store) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, inside) = std::sync::mpsc::channel::<()>();
        let s2 = s.clone();
        let gate = tokio::spawn(async move {
            s2.write(move |_| {
                let _ = entered.send(());
                let _ = held.recv_timeout(Duration::from_secs(10));
                Ok(())
            })
            .await
            .unwrap();
        });
        tokio::task::spawn_blocking(move || inside.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        (release, gate)
    }

    /// Waits (bounded) until `n` writes are queued behind the held writer.
    async fn until_queued(s: &Store, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.writer.queued() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }

    async fn ready(s: &Store, name: &str) {
        s.insert_container(&ContainerRecord::warming(name, "i", false))
            .await
            .unwrap();
        s.transition(name, ContainerState::Ready).await.unwrap();
    }

    #[tokio::test]
    async fn writes_queued_together_commit_together() {
        let (_d, s) = store();
        for i in 0..20 {
            ready(&s, &format!("c{i}")).await;
        }
        let (release, gate) = hold_writer(&s).await;
        let before = s.writer.committed();
        let claims: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let key = ConversationKey::new("t", format!("conv{i}"));
                    s.claim(None, "i", IsolationTier::Runc, &key).await
                })
            })
            .collect();
        until_queued(&s, 20).await;
        release.send(()).unwrap();
        gate.await.unwrap();
        let mut names = Vec::new();
        for c in claims {
            names.push(c.await.unwrap().unwrap().unwrap().container.name);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 20, "each claim got its own container");
        let after = s.writer.committed();
        // The held write's commit, then one for all twenty claims.
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 21));
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone() {
        let (_d, s) = store();
        ready(&s, "a").await;
        ready(&s, "b").await;
        let (release, gate) = hold_writer(&s).await;
        let key = |c: &str| ConversationKey::new("t", c);
        let spawn_claim = |name: &'static str, conv: &'static str| {
            let s = s.clone();
            tokio::spawn(async move {
                s.claim(Some(name), "i", IsolationTier::Runc, &key(conv))
                    .await
            })
        };
        let first = spawn_claim("a", "one");
        until_queued(&s, 1).await;
        let s2 = s.clone();
        // Writes a record, then fails: the record must not stay.
        let partial = tokio::spawn(async move {
            s2.write(|txn| {
                put_json(
                    txn,
                    CONVERSATIONS,
                    &conversation_key("t", "partial"),
                    &ConversationRecord::new("t", "partial"),
                )?;
                Err::<(), _>(StateError::UnknownContainer("x".into()))
            })
            .await
        });
        until_queued(&s, 2).await;
        let s3 = s.clone();
        let panics = tokio::spawn(async move {
            s3.write(|_| -> Result<(), StateError> { panic!("a bug in one mutation") })
                .await
        });
        until_queued(&s, 3).await;
        let second = spawn_claim("b", "two");
        until_queued(&s, 4).await;
        release.send(()).unwrap();
        gate.await.unwrap();

        assert!(matches!(
            partial.await.unwrap(),
            Err(StateError::UnknownContainer(_))
        ));
        assert!(matches!(panics.await.unwrap(), Err(StateError::Panicked)));
        assert_eq!(first.await.unwrap().unwrap().unwrap().container.name, "a");
        assert_eq!(second.await.unwrap().unwrap().unwrap().container.name, "b");
        assert!(s.conversation(&key("partial")).await.unwrap().is_none());
        for conv in ["one", "two"] {
            let rec = s.conversation(&key(conv)).await.unwrap().unwrap();
            assert_eq!(rec.generation, 1, "{conv} was claimed once");
        }
    }

    #[tokio::test]
    async fn writes_apply_in_queue_order() {
        let (_d, s) = store();
        let (release, gate) = hold_writer(&s).await;
        let key = ConversationKey::new("t", "c");
        let mut writes = Vec::new();
        for (n, letter) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let (s2, key) = (s.clone(), key.clone());
            writes.push(tokio::spawn(async move {
                s2.update_conversation(&key, move |rec| {
                    let mut id = rec.session_id.take().unwrap_or_default();
                    id.push_str(letter);
                    rec.session_id = Some(id);
                })
                .await
            }));
            // Queued one after the other, so the queue's order is known.
            until_queued(&s, n as u64 + 1).await;
        }
        release.send(()).unwrap();
        gate.await.unwrap();
        let seen: Vec<String> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|w| w.unwrap().unwrap().session_id.unwrap())
            .collect();
        // Each write saw the ones queued before it, in one transaction.
        assert_eq!(seen, ["a", "ab", "abc", "abcd"]);
    }

    #[tokio::test]
    async fn lazy_writes_ride_on_a_durable_batch() {
        let (_d, s) = store();
        ready(&s, "a").await;
        let (release, gate) = hold_writer(&s).await;
        let before = s.writer.committed();
        let s2 = s.clone();
        let touch = tokio::spawn(async move { s2.touch_container("a").await });
        until_queued(&s, 1).await;
        let s3 = s.clone();
        let claim = tokio::spawn(async move {
            s3.claim(
                Some("a"),
                "i",
                IsolationTier::Runc,
                &ConversationKey::new("t", "c"),
            )
            .await
        });
        until_queued(&s, 2).await;
        release.send(()).unwrap();
        gate.await.unwrap();
        touch.await.unwrap().unwrap();
        claim.await.unwrap().unwrap().unwrap();
        let after = s.writer.committed();
        // The held write, then the stamp and the claim in one flushed commit.
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 3));
        let rec = s.container("a").await.unwrap().unwrap();
        assert_eq!(rec.state, ContainerState::Claimed);
    }
}
