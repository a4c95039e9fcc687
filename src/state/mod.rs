//! Durable daemon state in one redb file: containers and their lifecycle,
//! conversations and the container and Claude session serving each.
//!
//! Every transition is applied whole in one write transaction, so a crash
//! leaves either the old or the new record, never half of one; a claim
//! binds container and conversation in the same transaction. Writes go
//! through one writer thread that commits the mutations waiting at once
//! together (`writer.rs`, group commit); reads run on the blocking pool.

mod records;
mod runs;
mod writer;

pub use records::{
    conversation_key, Binding, ContainerRecord, ContainerState, ConversationRecord, RunOutcome,
    RunRecord, StoredEvent,
};

use crate::config::IsolationTier;
use crate::ids::ConversationKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::path::Path;
use std::sync::Arc;

const SCHEMA_VERSION: u64 = 2;
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key: `"{tenant}/{conversation}"`; value: JSON [`ConversationRecord`].
pub(super) const CONVERSATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("conversations");
/// Key: container name; value: JSON [`ContainerRecord`].
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    // Each of redb's errors keeps its type as the source; the message
    // reads the same whichever step failed.
    #[error("state database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("state database: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("state database: {0}")]
    Table(#[from] redb::TableError),
    #[error("state database: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("state database: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("state database: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A blocking database task panicked or was cancelled.
    #[error("state database: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A mutation panicked in the writer; it alone was dropped.
    #[error("state database: a write panicked")]
    Panicked,
    /// The writer thread is gone (the store is being dropped).
    #[error("state database: the writer stopped")]
    WriterStopped,
    /// The transaction holding this write failed as a whole (its begin or
    /// its commit); no write of its batch was kept.
    #[error("{0}")]
    Batch(Arc<StateError>),
    #[error("state database: {0}")]
    Directory(#[source] std::io::Error),
    #[error("state record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("state file has schema version {found}, this build knows {SCHEMA_VERSION}")]
    Schema { found: u64 },
    #[error("container {name} cannot go from {from:?} to {to:?}")]
    Transition {
        name: String,
        from: ContainerState,
        to: ContainerState,
    },
    #[error("no container record named {0}")]
    UnknownContainer(String),
}

/// Bytes an unprivileged writer may still use on the filesystem that
/// holds the state file `path`.
pub(crate) async fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let st = nix::sys::statvfs::statvfs(&dir).map_err(std::io::Error::from)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    })
    .await
    .map_err(std::io::Error::other)?
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A claim's outcome: the container and the conversation now bound to it.
#[derive(Clone, Debug)]
pub struct Claim {
    pub container: ContainerRecord,
    pub conversation: ConversationRecord,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: Arc<writer::Writer>,
}

pub(super) fn get_json<T: serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StateError> {
    let t = txn.open_table(table)?;
    let raw = t.get(key)?;
    raw.map(|v| serde_json::from_slice(v.value()).map_err(StateError::from))
        .transpose()
}

pub(super) fn put_json<T: serde::Serialize>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(value)?;
    txn.open_table(table)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// redb's page cache. Its default (1 GiB) would let the daemon's memory
/// grow with the run events written, which come from containers; the
/// state's hot set (conversations, containers, live runs' recent events)
/// is far smaller.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Store {
    /// Opens or creates the state file and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StateError::Directory)?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                // Version 1 had no containers table; opening it adds one.
                Some(1) => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StateError::Schema { found }),
            }
            txn.open_table(CONVERSATIONS)?;
            txn.open_table(CONTAINERS)?;
            txn.open_table(runs::RUNS)?;
            txn.open_table(runs::EVENTS)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let writer = Arc::new(writer::Writer::start(db.clone())?);
        Ok(Self { db, writer })
    }

    /// Applies `f` in a write transaction and returns once that is on
    /// disk. `f` may share its transaction with other writes queued at the
    /// same time and may run more than once (`writer.rs`): it must depend
    /// on the transaction only.
    async fn write<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.writer.submit(true, f).await
    }

    /// A write that skips the disk flush: visible at once, made durable by
    /// the next ordinary [`Store::write`]; a crash before that loses it.
    /// Only for data whose loss is harmless (activity stamps).
    async fn write_lazy<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.writer.submit(false, f).await
    }

    async fn read_all<T>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
    ) -> Result<Vec<T>, StateError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let txn = db.begin_read()?;
            let t = txn.open_table(table)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (_, v) = row?;
                out.push(serde_json::from_slice(v.value())?);
            }
            crate::metrics::state_transaction(crate::metrics::TxKind::Read, started.elapsed());
            Ok(out)
        })
        .await?
    }

    pub async fn conversation(
        &self,
        key: &ConversationKey,
    ) -> Result<Option<ConversationRecord>, StateError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let db = self.db.clone();
        let k = conversation_key(tenant, conversation);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(CONVERSATIONS)?;
            let raw = table.get(k.as_str())?;
            raw.map(|v| serde_json::from_slice(v.value()).map_err(StateError::from))
                .transpose()
        })
        .await?
    }

    pub async fn put_conversation(&self, rec: &ConversationRecord) -> Result<(), StateError> {
        let rec = rec.clone();
        self.write(move |txn| put_json(txn, CONVERSATIONS, &rec.key(), &rec))
            .await
    }

    /// Read-modify-write of one conversation in one transaction (created
    /// when absent); returns the record as written. `f` is cloned for
    /// each time the write is applied (see [`Store::write`]).
    pub async fn update_conversation<F>(
        &self,
        key: &ConversationKey,
        f: F,
    ) -> Result<ConversationRecord, StateError>
    where
        F: FnOnce(&mut ConversationRecord) + Clone + Send + 'static,
    {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let (tenant, conversation) = (tenant.to_owned(), conversation.to_owned());
        self.write(move |txn| {
            let key = conversation_key(&tenant, &conversation);
            let mut rec = get_json(txn, CONVERSATIONS, &key)?
                .unwrap_or_else(|| ConversationRecord::new(&tenant, &conversation));
            (f.clone())(&mut rec);
            put_json(txn, CONVERSATIONS, &key, &rec)?;
            Ok(rec)
        })
        .await
    }

    pub async fn conversations(&self) -> Result<Vec<ConversationRecord>, StateError> {
        self.read_all(CONVERSATIONS).await
    }

    pub async fn containers(&self) -> Result<Vec<ContainerRecord>, StateError> {
        self.read_all(CONTAINERS).await
    }

    pub async fn container(&self, name: &str) -> Result<Option<ContainerRecord>, StateError> {
        let db = self.db.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(CONTAINERS)?;
            let raw = table.get(name.as_str())?;
            raw.map(|v| serde_json::from_slice(v.value()).map_err(StateError::from))
                .transpose()
        })
        .await?
    }

    pub async fn insert_container(&self, rec: &ContainerRecord) -> Result<(), StateError> {
        let rec = rec.clone();
        self.write(move |txn| put_json(txn, CONTAINERS, &rec.name, &rec))
            .await
    }

    /// Moves a container to `to` if its guard allows; returns the new record.
    pub async fn transition(
        &self,
        name: &str,
        to: ContainerState,
    ) -> Result<ContainerRecord, StateError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut rec: ContainerRecord = get_json(txn, CONTAINERS, &name)?
                .ok_or_else(|| StateError::UnknownContainer(name.clone()))?;
            let allowed = match to {
                ContainerState::Ready => rec.state.can_become_ready(),
                ContainerState::Destroying => rec.state.can_destroy(),
                ContainerState::Claimed | ContainerState::Warming => false,
            };
            if !allowed {
                return Err(StateError::Transition {
                    name: name.clone(),
                    from: rec.state,
                    to,
                });
            }
            rec.state = to;
            put_json(txn, CONTAINERS, &rec.name, &rec)?;
            Ok(rec)
        })
        .await
    }

    /// Binds a container to a conversation in one transaction: the container
    /// becomes `Claimed`, the conversation points at it with a new
    /// generation. `name` picks a specific container (a cold start); `None`
    /// takes the oldest `Ready` one running `image` on `tier`: a claim never
    /// crosses tiers. `Ok(None)` when the pool has none.
    pub async fn claim(
        &self,
        name: Option<&str>,
        image: &str,
        tier: IsolationTier,
        key: &ConversationKey,
    ) -> Result<Option<Claim>, StateError> {
        let (name, image, binding) = (name.map(str::to_owned), image.to_owned(), key.clone());
        self.write(move |txn| {
            let mut chosen: Option<ContainerRecord> = match &name {
                Some(n) => get_json(txn, CONTAINERS, n)?,
                None => {
                    let t = txn.open_table(CONTAINERS)?;
                    let mut best: Option<ContainerRecord> = None;
                    for row in t.iter()? {
                        let (_, v) = row?;
                        let c: ContainerRecord = serde_json::from_slice(v.value())?;
                        // A pre-started CLI first (it answers sooner), then
                        // the oldest.
                        let rank = |r: &ContainerRecord| (!r.prestarted, r.created_ms);
                        if c.state == ContainerState::Ready
                            && c.image == image
                            && c.tier == tier
                            && best.as_ref().is_none_or(|b| rank(&c) < rank(b))
                        {
                            best = Some(c);
                        }
                    }
                    best
                }
            };
            let Some(container) = chosen.as_mut() else {
                return Ok(None);
            };
            if !container.state.can_claim() {
                return Err(StateError::Transition {
                    name: container.name.clone(),
                    from: container.state,
                    to: ContainerState::Claimed,
                });
            }
            let now = now_ms();
            container.state = ContainerState::Claimed;
            let key = conversation_key(&binding.tenant_id, &binding.conversation_id);
            let mut conv = get_json(txn, CONVERSATIONS, &key)?.unwrap_or_else(|| {
                ConversationRecord::new(&binding.tenant_id, &binding.conversation_id)
            });
            container.binding = Some(binding.clone());
            container.last_activity_ms = now;
            conv.container_id = Some(container.name.clone());
            conv.generation += 1;
            conv.last_activity_ms = now;
            put_json(txn, CONTAINERS, &container.name, &*container)?;
            put_json(txn, CONVERSATIONS, &key, &conv)?;
            Ok(Some(Claim {
                container: container.clone(),
                conversation: conv,
            }))
        })
        .await
    }

    /// Stamps the container's last activity. Not flushed to disk on its
    /// own (it is on the warm path of every run): a crash may lose the
    /// latest stamps, which only moves the idle sweep of those containers
    /// earlier by the time since the last durable write.
    pub async fn touch_container(&self, name: &str) -> Result<(), StateError> {
        let name = name.to_owned();
        self.write_lazy(move |txn| {
            if let Some(mut rec) = get_json::<ContainerRecord>(txn, CONTAINERS, &name)? {
                rec.last_activity_ms = now_ms();
                put_json(txn, CONTAINERS, &name, &rec)?;
            }
            Ok(())
        })
        .await
    }

    /// Forgets a container; a conversation still pointing at it is
    /// unbound in the same transaction.
    pub async fn remove_container(&self, name: &str) -> Result<(), StateError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let rec: Option<ContainerRecord> = get_json(txn, CONTAINERS, &name)?;
            if let Some(b) = rec.and_then(|r| r.binding) {
                let key = conversation_key(&b.tenant_id, &b.conversation_id);
                if let Some(mut conv) = get_json::<ConversationRecord>(txn, CONVERSATIONS, &key)? {
                    if conv.container_id.as_deref() == Some(name.as_str()) {
                        conv.container_id = None;
                        put_json(txn, CONVERSATIONS, &key, &conv)?;
                    }
                }
            }
            txn.open_table(CONTAINERS)?.remove(name.as_str())?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let mut rec = ConversationRecord::new("t1", "c1");
        rec.container_id = Some("abc".into());
        {
            let store = Store::open(&path).unwrap();
            store.put_conversation(&rec).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store
                .conversation(&ConversationKey::new("t1", "c1"))
                .await
                .unwrap(),
            Some(rec)
        );
        assert_eq!(
            store
                .conversation(&ConversationKey::new("t2", "c1"))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn claim_prefers_a_prestarted_cli_over_age() {
        let (_d, s) = store();
        let mut old = ContainerRecord::warming("old", "img", false).with_prestarted(false);
        old.created_ms -= 60_000;
        let new = ContainerRecord::warming("new", "img", false);
        for r in [old, new] {
            s.insert_container(&r).await.unwrap();
            s.transition(&r.name, ContainerState::Ready).await.unwrap();
        }
        let key = ConversationKey::new("t", "conv");
        let claim = s.claim(None, "img", IsolationTier::Runc, &key).await;
        assert_eq!(claim.unwrap().unwrap().container.name, "new");
    }

    #[tokio::test]
    async fn claim_takes_the_oldest_ready_container_of_the_image() {
        let (_d, s) = store();
        for (name, image) in [("a", "img1"), ("b", "img2"), ("c", "img2")] {
            s.insert_container(&ContainerRecord::warming(name, image, false))
                .await
                .unwrap();
            s.transition(name, ContainerState::Ready).await.unwrap();
        }
        let claim = s
            .claim(
                None,
                "img2",
                IsolationTier::Runc,
                &ConversationKey::new("t", "conv"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.container.name, "b");
        assert_eq!(claim.container.state, ContainerState::Claimed);
        assert_eq!(claim.conversation.container_id.as_deref(), Some("b"));
        assert_eq!(claim.conversation.generation, 1);
        let again = s
            .claim(
                None,
                "img2",
                IsolationTier::Runc,
                &ConversationKey::new("t", "conv"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.container.name, "c");
        assert_eq!(again.conversation.generation, 2);
        assert!(s
            .claim(
                None,
                "img2",
                IsolationTier::Runc,
                &ConversationKey::new("t", "x")
            )
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_claim_never_crosses_tiers() {
        let (_d, s) = store();
        for (name, tier) in [("r", IsolationTier::Runc), ("g", IsolationTier::Gvisor)] {
            s.insert_container(&ContainerRecord::warming(name, "i", false).with_tier(tier))
                .await
                .unwrap();
            s.transition(name, ContainerState::Ready).await.unwrap();
        }
        let key = |c: &str| ConversationKey::new("t", c);
        let g = s
            .claim(None, "i", IsolationTier::Gvisor, &key("1"))
            .await
            .unwrap();
        assert_eq!(g.unwrap().container.name, "g");
        let none = s
            .claim(None, "i", IsolationTier::Gvisor, &key("2"))
            .await
            .unwrap();
        assert!(none.is_none(), "the runc container must stay in the pool");
        let r = s
            .claim(None, "i", IsolationTier::Runc, &key("3"))
            .await
            .unwrap();
        assert_eq!(r.unwrap().container.tier, IsolationTier::Runc);
    }

    #[tokio::test]
    async fn guards_refuse_bad_transitions() {
        let (_d, s) = store();
        s.insert_container(&ContainerRecord::warming("a", "i", false))
            .await
            .unwrap();
        s.transition("a", ContainerState::Ready).await.unwrap();
        assert!(s.transition("a", ContainerState::Ready).await.is_err());
        s.transition("a", ContainerState::Destroying).await.unwrap();
        assert!(s
            .claim(
                Some("a"),
                "i",
                IsolationTier::Runc,
                &ConversationKey::new("t", "c")
            )
            .await
            .is_err());
        assert!(s.transition("a", ContainerState::Destroying).await.is_err());
    }

    #[tokio::test]
    async fn removing_a_container_unbinds_its_conversation() {
        let (_d, s) = store();
        s.insert_container(&ContainerRecord::warming("a", "i", true))
            .await
            .unwrap();
        s.claim(
            Some("a"),
            "i",
            IsolationTier::Runc,
            &ConversationKey::new("t", "c"),
        )
        .await
        .unwrap()
        .unwrap();
        s.remove_container("a").await.unwrap();
        assert!(s.containers().await.unwrap().is_empty());
        let conv = s
            .conversation(&ConversationKey::new("t", "c"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conv.container_id, None);
        assert_eq!(conv.generation, 1, "the generation is never reset");
    }
}
