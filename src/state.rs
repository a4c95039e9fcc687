//! Durable daemon state in one redb file: which container serves which
//! conversation, and the Claude session to resume.
//!
//! Every change is one write transaction, so a crash leaves either the old
//! or the new record, never half of one. redb calls block on fsync, so the
//! async wrappers run them on the blocking pool.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

const SCHEMA_VERSION: u64 = 1;
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key: `"{tenant}/{conversation}"`; value: JSON [`ConversationRecord`].
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(String),
    #[error("state record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("state file has schema version {found}, this build knows {SCHEMA_VERSION}")]
    Schema { found: u64 },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for StateError {
        fn from(e: $t) -> Self { StateError::Db(e.to_string()) }
    })*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    tokio::task::JoinError
);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub tenant_id: String,
    pub conversation_id: String,
    pub container_id: Option<String>,
    pub session_id: Option<String>,
    /// Bumped each time the conversation gets a new container; fences
    /// writers that belong to an older container.
    #[serde(default)]
    pub generation: u64,
    /// The generation whose workspace on the host is known complete
    /// (restored, or kept from an earlier generation); 0 while a restore
    /// is pending or was cut short. Workspace sync pushes nothing until it
    /// equals `generation`.
    #[serde(default)]
    pub restored_generation: u64,
    /// Unix milliseconds of the last agent activity.
    pub last_activity_ms: u64,
}

impl ConversationRecord {
    pub fn new(tenant_id: &str, conversation_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            container_id: None,
            session_id: None,
            generation: 0,
            restored_generation: 0,
            last_activity_ms: now_ms(),
        }
    }

    fn key(&self) -> String {
        key(&self.tenant_id, &self.conversation_id)
    }
}

fn key(tenant: &str, conversation: &str) -> String {
    format!("{tenant}/{conversation}")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens or creates the state file and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Db(e.to_string()))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StateError::Schema { found }),
            }
            txn.open_table(CONVERSATIONS)?;
        }
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    pub async fn conversation(
        &self,
        tenant: &str,
        conversation: &str,
    ) -> Result<Option<ConversationRecord>, StateError> {
        let db = self.db.clone();
        let k = key(tenant, conversation);
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
        let db = self.db.clone();
        let k = rec.key();
        let v = serde_json::to_vec(rec)?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(CONVERSATIONS)?
                .insert(k.as_str(), v.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(store.conversation("t1", "c1").await.unwrap(), Some(rec));
        assert_eq!(store.conversation("t2", "c1").await.unwrap(), None);
    }
}
