//! The object store behind a narrow trait: put, streamed put, get, list,
//! delete of keys relative to the configured prefix. [`ObjectStoreBackend`]
//! implements it with `object_store` for `file://` and `s3://` URLs.
//!
//! **Invariant:** only this module talks to `object_store`.

use crate::config::StorageConfig;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Backend(String),
    #[error("reading {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("{0} changed while it was uploaded")]
    Changed(String),
    #[error("storage url: {0}")]
    Config(String),
    /// A conditional write found the object changed (or, for a create,
    /// present): somebody else wrote it first.
    #[error("{0} was written by somebody else first")]
    Precondition(String),
    /// The store cannot write conditionally (a local directory cannot
    /// compare e-tags); the caller falls back to a plain write.
    #[error("the object store cannot write {0} conditionally")]
    Unsupported(String),
}

/// The version an object was read at, for a later conditional write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// How a conditional write checks the object first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object is there.
    Absent,
    /// Only if the object is still at this version.
    Unchanged(Version),
}

/// A chunked download.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// What sync needs from an object store; keys are `/`-separated and
/// relative to the configured prefix.
#[async_trait]
pub trait ObjectBackend: Send + Sync + 'static {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Streams the `size` bytes `file` was hashed at to `key` (multipart
    /// above the threshold) and fails with [`StoreError::Changed`] if the
    /// bytes sent do not hash to `sha256` or the file holds more, aborting
    /// the upload so nothing half-right is stored. Reads at most `size + 1`
    /// bytes, however large the file has grown since.
    async fn put_file(
        &self,
        key: &str,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> Result<u64, StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    async fn get_stream(&self, key: &str) -> Result<ByteStream, StoreError>;
    /// Streams bytes `range` of `key` (not empty, inside the object).
    async fn get_range_stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError>;
    /// Every key under `prefix` (a directory-like prefix, no trailing `/`).
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The names directly under `prefix` that hold objects (S3's common
    /// prefixes): at most `max` of them, and whether there were more.
    async fn list_dirs(
        &self,
        prefix: &str,
        _max: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        Err(StoreError::Unsupported(prefix.to_owned()))
    }
    /// A small object and the version it was read at; `None` if absent.
    async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, Version)>, StoreError> {
        match self.get(key).await {
            Ok(b) => Ok(Some((b, Version::default()))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Writes `key` only if `cond` holds, atomically in the store; fails
    /// with [`StoreError::Precondition`] if it does not and with
    /// [`StoreError::Unsupported`] where the store cannot check it.
    async fn put_if(
        &self,
        key: &str,
        _data: Bytes,
        _cond: Condition,
    ) -> Result<Version, StoreError> {
        Err(StoreError::Unsupported(key.to_owned()))
    }
}

pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    prefix: Vec<String>,
    multipart_threshold: u64,
    part_size: usize,
}

/// Part size of multipart uploads: above S3's 5 MiB minimum, small enough
/// that a few parts in flight stay cheap in memory.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

fn backend_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
        object_store::Error::AlreadyExists { path, .. }
        | object_store::Error::Precondition { path, .. } => StoreError::Precondition(path),
        object_store::Error::NotImplemented { operation, .. } => StoreError::Unsupported(operation),
        other => StoreError::Backend(other.to_string()),
    }
}

impl ObjectStoreBackend {
    /// Builds the backend `cfg.url` names. Does no I/O but creating the
    /// local directory of a `file://` URL.
    pub fn open(cfg: &StorageConfig) -> Result<Self, StoreError> {
        let (inner, prefix): (Arc<dyn ObjectStore>, &str) =
            if let Some(dir) = cfg.url.strip_prefix("file://") {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Config(format!("cannot create {dir}: {e}")))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                (Arc::new(fs), "")
            } else if let Some(rest) = cfg.url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                (Arc::new(s3(cfg, bucket)?), prefix)
            } else {
                return Err(StoreError::Config(format!("unsupported url {}", cfg.url)));
            };
        Ok(Self {
            inner,
            prefix: prefix
                .split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            multipart_threshold: cfg.multipart_threshold_mb * 1024 * 1024,
            part_size: PART_SIZE,
        })
    }

    /// object_store's in-memory backend, for unit tests.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::new(object_store::memory::InMemory::new()),
            prefix: Vec::new(),
            multipart_threshold: 64 * 1024 * 1024,
            part_size: PART_SIZE,
        }
    }

    fn path(&self, key: &str) -> Result<ObjPath, StoreError> {
        let parts = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(key.split('/').filter(|c| !c.is_empty()));
        let joined: Vec<&str> = parts.collect();
        ObjPath::parse(joined.join("/")).map_err(|e| StoreError::Backend(e.to_string()))
    }

    fn strip(&self, path: &ObjPath) -> String {
        let parts: Vec<_> = path.parts().collect();
        parts
            .iter()
            .skip(self.prefix.len())
            .map(|p| p.as_ref())
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn s3(cfg: &StorageConfig, bucket: &str) -> Result<impl ObjectStore, StoreError> {
    // object_store's reqwest is built without a default TLS provider (to
    // keep aws-lc-rs out of the build); ring is the one rustls already uses
    // here. Installing twice is harmless, so the result is ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_allow_http(cfg.allow_http)
        // The sync layer retries whole syncs with its own backoff; a request
        // must fail fast when the store is down so the backlog shows it.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(cfg.allow_http)
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120)),
        );
    if !cfg.endpoint.is_empty() {
        b = b.with_endpoint(&cfg.endpoint);
    }
    if !cfg.region.is_empty() {
        b = b.with_region(&cfg.region);
    }
    b.build().map_err(|e| StoreError::Config(e.to_string()))
}

#[async_trait]
impl ObjectBackend for ObjectStoreBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.inner
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(backend_err)?;
        Ok(())
    }

    async fn put_file(
        &self,
        key: &str,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        let io = |source| StoreError::Io {
            key: key.to_owned(),
            source,
        };
        let file = Arc::new(std::sync::Mutex::new(file));
        let read_chunk = |size: usize| {
            let file = file.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; size];
                    let mut filled = 0;
                    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                    while filled < size {
                        match f.read(&mut buf[filled..])? {
                            0 => break,
                            n => filled += n,
                        }
                    }
                    buf.truncate(filled);
                    Ok::<_, std::io::Error>(Bytes::from(buf))
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
            }
        };
        let changed = || StoreError::Changed(key.to_owned());
        let mut hasher = Sha256::new();
        if size < self.multipart_threshold {
            // One byte more than hashed shows a file that grew meanwhile.
            let data = read_chunk(size as usize + 1).await.map_err(io)?;
            hasher.update(&data);
            if data.len() as u64 != size || hex::encode(hasher.finalize()) != sha256 {
                return Err(changed());
            }
            self.inner
                .put(&path, PutPayload::from_bytes(data))
                .await
                .map_err(backend_err)?;
            return Ok(size);
        }
        let upload = self.inner.put_multipart(&path).await.map_err(backend_err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut sent = 0u64;
        let outcome = async {
            // Up to one byte past `size`: enough to see growth, never more.
            while sent <= size {
                let want = (size + 1 - sent).min(self.part_size as u64) as usize;
                let chunk = read_chunk(want).await.map_err(io)?;
                if chunk.is_empty() {
                    break;
                }
                sent += chunk.len() as u64;
                if sent > size {
                    return Err(changed());
                }
                hasher.update(&chunk);
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(backend_err)?;
                w.put(chunk);
            }
            Ok::<_, StoreError>(())
        }
        .await;
        let verified = outcome.and_then(|()| {
            if sent == size && hex::encode(hasher.finalize()) == sha256 {
                Ok(())
            } else {
                Err(changed())
            }
        });
        match verified {
            Ok(()) => {
                w.finish().await.map_err(backend_err)?;
                Ok(sent)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let r = self.inner.get(&path).await.map_err(backend_err)?;
        r.bytes().await.map_err(backend_err)
    }

    async fn get_stream(&self, key: &str) -> Result<ByteStream, StoreError> {
        let path = self.path(key)?;
        let r = self.inner.get(&path).await.map_err(backend_err)?;
        Ok(r.into_stream().map_err(backend_err).boxed())
    }

    async fn get_range_stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        let path = self.path(key)?;
        let opts = GetOptions::default().with_range(Some(range));
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(backend_err)?;
        Ok(r.into_stream().map_err(backend_err).boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path(prefix)?;
        let metas: Vec<_> = self
            .inner
            .list(Some(&path))
            .try_collect()
            .await
            .map_err(backend_err)?;
        Ok(metas.iter().map(|m| self.strip(&m.location)).collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend_err(e)),
        }
    }

    async fn list_dirs(&self, prefix: &str, max: usize) -> Result<(Vec<String>, bool), StoreError> {
        let path = self.path(prefix)?;
        let listed = self
            .inner
            .list_with_delimiter(Some(&path))
            .await
            .map_err(backend_err)?;
        let more = listed.common_prefixes.len() > max;
        let names = listed
            .common_prefixes
            .iter()
            .take(max)
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        Ok((names, more))
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, Version)>, StoreError> {
        let path = self.path(key)?;
        let r = match self.inner.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend_err(e)),
        };
        let version = Version {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        };
        Ok(Some((r.bytes().await.map_err(backend_err)?, version)))
    }

    async fn put_if(&self, key: &str, data: Bytes, cond: Condition) -> Result<Version, StoreError> {
        let path = self.path(key)?;
        let mode = match cond {
            Condition::Absent => PutMode::Create,
            Condition::Unchanged(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let r = self
            .inner
            .put_opts(&path, PutPayload::from_bytes(data), PutOptions::from(mode))
            .await
            .map_err(backend_err)?;
        Ok(Version {
            e_tag: r.e_tag,
            version: r.version,
        })
    }
}
