//! Reading a conversation's stored workspace for the API: the file list
//! of its latest manifest, one file streamed from the store (whole or a
//! byte range; never buffered whole in memory), and purging it all.

use super::manifest::{blob_key, Entry};
use super::paths::RelPath;
use super::push::{latest_manifest, ConvPrefix, PushError};
use super::service::SyncService;
use super::store::{ByteStream, ObjectBackend, StoreError};
use crate::ids::ConversationKey;
use serde::Serialize;
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("no such file")]
    NotFound,
    #[error("bad path: {0}")]
    BadPath(String),
    #[error("object store: {0}")]
    Store(String),
}

impl From<PushError> for FilesError {
    fn from(e: PushError) -> Self {
        FilesError::Store(e.to_string())
    }
}

impl From<StoreError> for FilesError {
    fn from(e: StoreError) -> Self {
        FilesError::Store(e.to_string())
    }
}

/// One entry of the stored workspace.
#[derive(Clone, Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A regular file of the stored workspace.
pub struct StoredFile {
    /// Its length, as the manifest records it (its blob is exactly this
    /// long: blobs are named by the hash of what was uploaded).
    pub size: u64,
    pub sha256: String,
    key: String,
    backend: Arc<dyn ObjectBackend>,
}

impl StoredFile {
    /// Its bytes, or those of `range` (not empty, inside the file), as the
    /// store sends them: chunk by chunk, however large the file.
    pub async fn stream(&self, range: Option<Range<u64>>) -> Result<ByteStream, FilesError> {
        let s = match range {
            Some(r) => self.backend.get_range_stream(&self.key, r).await?,
            None => self.backend.get_stream(&self.key).await?,
        };
        Ok(s)
    }
}

fn prefix(tenant: &str, conversation: &str) -> ConvPrefix {
    // Both ids are validated path components (crate::ids).
    ConvPrefix(format!("{tenant}/{conversation}"))
}

impl SyncService {
    /// The files of the latest stored manifest (empty if nothing is stored).
    pub async fn list_files(&self, key: &ConversationKey) -> Result<Vec<FileInfo>, FilesError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let Some(m) =
            latest_manifest(self.backend().as_ref(), &prefix(tenant, conversation)).await?
        else {
            return Ok(Vec::new());
        };
        Ok(m.entries
            .iter()
            .map(|(path, e)| match e {
                Entry::File { mode, size, .. } => FileInfo {
                    path: path.as_str().to_owned(),
                    kind: "file",
                    size: Some(*size),
                    mode: Some(*mode),
                    target: None,
                },
                Entry::Dir { mode } => FileInfo {
                    path: path.as_str().to_owned(),
                    kind: "dir",
                    size: None,
                    mode: Some(*mode),
                    target: None,
                },
                Entry::Symlink { target } => FileInfo {
                    path: path.as_str().to_owned(),
                    kind: "symlink",
                    size: None,
                    mode: None,
                    target: Some(target.clone()),
                },
            })
            .collect())
    }

    /// One stored file, to be streamed. The path is normalised and
    /// confined; only regular files are served (a link is never followed).
    pub async fn stored_file(
        &self,
        key: &ConversationKey,
        path: &str,
    ) -> Result<StoredFile, FilesError> {
        let (tenant, conversation) = (key.tenant_id.as_str(), key.conversation_id.as_str());
        let rel = RelPath::parse(path.trim_start_matches('/'))
            .map_err(|e| FilesError::BadPath(e.to_string()))?;
        let p = prefix(tenant, conversation);
        let Some(m) = latest_manifest(self.backend().as_ref(), &p).await? else {
            return Err(FilesError::NotFound);
        };
        match m.entries.get(&rel) {
            Some(Entry::File { sha256, size, .. }) => Ok(StoredFile {
                size: *size,
                key: p.key(&blob_key(sha256)),
                sha256: sha256.clone(),
                backend: self.backend().clone(),
            }),
            _ => Err(FilesError::NotFound),
        }
    }

    /// Deletes everything stored for the conversation; returns how many
    /// objects went.
    pub async fn purge(&self, key: &ConversationKey) -> Result<usize, FilesError> {
        let p = prefix(&key.tenant_id, &key.conversation_id);
        let keys = self.backend().list(&p.0).await?;
        for k in &keys {
            self.backend().delete(k).await?;
        }
        self.forget(key);
        Ok(keys.len())
    }
}
