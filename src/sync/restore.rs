//! One restore: object store -> workspace. Makes the workspace equal to a
//! manifest: directories, files (downloaded, verified against their hash,
//! written to a temp file and renamed into place, owned by the container
//! user) and symlinks; files and links the manifest lacks are removed.
//! Files already matching (size and mtime) are kept, so a restore that was
//! cut short resumes cheaply.

use super::fsx::{Found, Kind, Owner, Root};
use super::manifest::{blob_key, Entry, Manifest};
use super::paths::RelPath;
use super::push::{ConvPrefix, Transfer};
use super::store::{ObjectBackend, StoreError};
use super::walk::StatCache;
use futures_util::{stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("workspace {path}: {source}")]
    Workspace {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("blob of {0} does not match its hash")]
    Corrupt(String),
    #[error("stored manifest: {0}")]
    Manifest(#[from] super::manifest::ManifestError),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Files downloaded.
    pub files: u64,
    pub bytes: u64,
    /// Files and links removed because the manifest lacks them.
    pub removed: u64,
}

fn ws(path: impl ToString) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.to_string();
    move |source| RestoreError::Workspace { path, source }
}

async fn blocking<T: Send + 'static>(
    what: impl ToString,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(ws(what))
}

pub async fn restore(
    backend: Arc<dyn ObjectBackend>,
    prefix: &ConvPrefix,
    dir: &Path,
    manifest: &Manifest,
    owner: Owner,
    transfer: Transfer,
    cache: &mut StatCache,
) -> Result<RestoreReport, RestoreError> {
    let d = dir.to_owned();
    let (root, local) = blocking(dir.display(), move || {
        let root = Root::open(&d)?;
        let local = root.walk()?;
        Ok((Arc::new(root), local))
    })
    .await?;
    let local: HashMap<RelPath, Found> = local.into_iter().map(|f| (f.path.clone(), f)).collect();
    let mut report = RestoreReport::default();

    // Whatever stands where the manifest wants something of another kind
    // goes first, and so does anything the manifest lacks. Directories are
    // kept (they may hold the orchestrator's skeleton, e.g. HOME).
    let mut doomed: Vec<RelPath> = Vec::new();
    for (path, f) in &local {
        let keep = match (manifest.entries.get(path), &f.kind) {
            (None, Kind::Dir) => true,
            (None, _) => false,
            (Some(Entry::Dir { .. }), k) => *k == Kind::Dir,
            (Some(Entry::File { .. }), k) => *k == Kind::File,
            (Some(Entry::Symlink { .. }), k) => matches!(k, Kind::Symlink(_)),
        };
        if !keep {
            doomed.push(path.clone());
        }
    }
    // Deepest first, so a directory is empty by the time its turn comes.
    doomed.sort_by(|a, b| b.cmp(a));
    report.removed = doomed
        .iter()
        .filter(|p| !matches!(local.get(*p).map(|f| &f.kind), Some(Kind::Dir)))
        .count() as u64;
    let r = root.clone();
    blocking(dir.display(), move || {
        doomed.iter().try_for_each(|p| r.remove(p))
    })
    .await?;

    let dirs: Vec<(RelPath, u32)> = manifest
        .entries
        .iter()
        .filter_map(|(p, e)| match e {
            Entry::Dir { mode } => Some((p.clone(), *mode)),
            _ => None,
        })
        .collect();
    let r = root.clone();
    blocking(dir.display(), move || {
        dirs.iter()
            .try_for_each(|(p, mode)| r.mkdir(p, *mode, owner))
    })
    .await?;

    let wanted: Vec<(RelPath, u32, u64, i64, String)> = manifest
        .entries
        .iter()
        .filter_map(|(p, e)| match e {
            Entry::File {
                mode,
                size,
                mtime_ns,
                sha256,
            } => {
                let same = local.get(p).is_some_and(|f| {
                    f.kind == Kind::File
                        && f.size == *size
                        && f.mtime_ns == *mtime_ns
                        && f.mode == *mode
                });
                (!same).then(|| (p.clone(), *mode, *size, *mtime_ns, sha256.clone()))
            }
            _ => None,
        })
        .collect();
    let bytes: Vec<u64> = stream::iter(wanted)
        .map(|(path, mode, _size, mtime_ns, sha)| {
            let backend = backend.clone();
            let root = root.clone();
            let key = prefix.key(&blob_key(&sha));
            async move {
                let p = path.clone();
                let r = root.clone();
                let (temp, file) = blocking(&path, move || r.create_temp(&p, owner)).await?;
                let mut body = backend.get_stream(&key).await?;
                let mut out = tokio::fs::File::from_std(file);
                let mut hasher = Sha256::new();
                let mut n = 0u64;
                while let Some(chunk) = body.try_next().await? {
                    hasher.update(&chunk);
                    n += chunk.len() as u64;
                    out.write_all(&chunk).await.map_err(ws(&path))?;
                }
                out.flush().await.map_err(ws(&path))?;
                if hex::encode(hasher.finalize()) != sha {
                    return Err(RestoreError::Corrupt(path.to_string()));
                }
                let file = out.into_std().await;
                let p = path.clone();
                blocking(&path, move || {
                    root.commit_file(temp, file, &p, mode, mtime_ns, owner)
                })
                .await?;
                Ok::<_, RestoreError>(n)
            }
        })
        .buffer_unordered(transfer.concurrency)
        .try_collect()
        .await?;
    report.files = bytes.len() as u64;
    report.bytes = bytes.iter().sum();

    let links: Vec<(RelPath, String)> = manifest
        .entries
        .iter()
        .filter_map(|(p, e)| match e {
            Entry::Symlink { target } => Some((p.clone(), target.clone())),
            _ => None,
        })
        .collect();
    let r = root.clone();
    let after = blocking(dir.display(), move || {
        links.iter().try_for_each(|(p, t)| r.symlink(p, t, owner))?;
        r.walk()
    })
    .await?;

    // Restored files are hashed already: the first push after a restore
    // reads none of them again.
    cache.clear();
    for f in after.iter().filter(|f| f.kind == Kind::File) {
        if let Some(Entry::File {
            size,
            mtime_ns,
            sha256,
            ..
        }) = manifest.entries.get(&f.path)
        {
            if f.size == *size && f.mtime_ns == *mtime_ns {
                cache.remember_restored(f, sha256);
            }
        }
    }
    Ok(report)
}
