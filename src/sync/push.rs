//! One push: workspace -> object store. Walks the workspace, leaves out
//! files over the size limits, hashes what the stat cache cannot vouch
//! for, uploads blobs the store lacks, checks the fence, commits the
//! manifest with one PUT, then drops what the new manifest no longer needs.

use super::fsx::{Found, Kind, Root};
use super::limits::{screen, ReadBudget, Refused};
use super::manifest::{
    blob_key, chunk_key, generation_of_key, manifest_key, ChunkRef, Entry, Manifest, Parsed,
    MANIFESTS_DIR,
};
use super::paths::{check_link_target, RelPath};
use super::store::{ObjectBackend, StoreError};
use super::walk::{hash_file, now_ns, Hash, StatCache};
use crate::config::SyncConfig;
use futures_util::{stream, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("workspace {path}: {source}")]
    Workspace {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("generation {mine} is stale: {reason}")]
    Stale { mine: u64, reason: String },
    #[error("stored manifest: {0}")]
    Manifest(#[from] super::manifest::ManifestError),
    #[error("the workspace was never restored for this generation; nothing is pushed")]
    NotRestored,
    #[error("fence check failed: {0}")]
    Fence(String),
}

/// How transfers run.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub concurrency: usize,
    /// Files at or above this size are streamed (multipart) rather than
    /// read into memory.
    pub multipart_threshold: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Files whose content was uploaded.
    pub files: u64,
    pub bytes: u64,
    /// Paths gone since the previous manifest.
    pub deleted: u64,
    /// Nothing changed: no manifest was written.
    pub unchanged: bool,
    /// Files left out for their size, by path; a file stored before
    /// and refused now is gone from the new manifest.
    pub refused: Vec<Refused>,
    /// The whole workspace was walked (tracking could not vouch).
    pub walked: bool,
}

/// Where one conversation lives in the store: `{tenant}/{conversation}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvPrefix(pub String);

impl ConvPrefix {
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.0)
    }
}

/// Generations of the manifests under `prefix`, highest last.
pub async fn stored_generations(
    backend: &dyn ObjectBackend,
    prefix: &ConvPrefix,
) -> Result<Vec<u64>, StoreError> {
    let mut gens: Vec<u64> = backend
        .list(&prefix.key(MANIFESTS_DIR))
        .await?
        .iter()
        .filter_map(|k| generation_of_key(k))
        .collect();
    gens.sort_unstable();
    Ok(gens)
}

/// The newest manifest under `prefix`, if any.
pub async fn latest_manifest(
    backend: &dyn ObjectBackend,
    prefix: &ConvPrefix,
) -> Result<Option<Manifest>, PushError> {
    let Some(&g) = stored_generations(backend, prefix).await?.last() else {
        return Ok(None);
    };
    Ok(Some(load_manifest(backend, prefix, g).await?))
}

/// Chunks of one manifest fetched at once.
const CHUNK_FETCHES: usize = 16;

/// The manifest of generation `g`, in either stored format (format 2's
/// chunks fetched side by side).
pub async fn load_manifest(
    backend: &dyn ObjectBackend,
    prefix: &ConvPrefix,
    g: u64,
) -> Result<Manifest, PushError> {
    let bytes = backend.get(&prefix.key(&manifest_key(g))).await?;
    match Manifest::parse(&bytes, g)? {
        Parsed::Inline(m) => Ok(m),
        Parsed::Chunked(root) => {
            let keys: Vec<String> = root
                .chunks
                .iter()
                .map(|c| prefix.key(&chunk_key(&c.sha256)))
                .collect();
            let chunks: Vec<bytes::Bytes> = stream::iter(keys)
                .map(|key| async move { backend.get(&key).await })
                .buffered(CHUNK_FETCHES)
                .try_collect()
                .await?;
            Ok(Manifest::assemble(root, chunks)?)
        }
    }
}

pub struct PushJob<'a> {
    pub backend: Arc<dyn ObjectBackend>,
    pub prefix: &'a ConvPrefix,
    pub dir: &'a Path,
    pub generation: u64,
    pub transfer: Transfer,
    pub limits: SyncConfig,
    /// The paths changed since `base` was committed, when tracking vouches
    /// for them (see [`super::track`]); `None` walks the workspace.
    pub changes: Option<HashMap<RelPath, bool>>,
}

/// What the push looks at: the workspace as found, less what the limits
/// refused, split into entries known without reading and files to hash.
struct Scan {
    root: Arc<Root>,
    entries: BTreeMap<RelPath, Entry>,
    to_hash: Vec<Found>,
    /// Bytes of the files in `entries`.
    cached_bytes: u64,
    refused: Vec<Refused>,
    /// How the workspace was looked at, for the report.
    walked: bool,
}

/// Pushes the workspace. `base` is the last manifest this process knows
/// committed (replaced by the stored one when that is newer); `fence` runs
/// right before the commit and fails the push when this generation is no
/// longer the conversation's current one. Returns the manifest now
/// stored: the committed one, or the base when nothing changed. `base` is
/// taken, not borrowed: a tracked push patches it in place rather than copy
/// a manifest of many files; after an error it is gone (the next push
/// reads the stored one).
pub async fn push<F>(
    mut job: PushJob<'_>,
    base: Option<Manifest>,
    cache: &mut StatCache,
    fence: F,
) -> Result<(Option<Manifest>, PushReport), PushError>
where
    F: Future<Output = Result<(), PushError>>,
{
    let backend = job.backend.clone();
    let has_base = base.is_some();
    // The store's side (list, maybe fetch the base) and the workspace walk
    // run side by side: both are latency an incremental push waits for.
    let remote = async {
        let stored = stored_generations(backend.as_ref(), job.prefix).await?;
        refuse_newer(&stored, job.generation)?;
        let (base, current) = match (base, stored.last()) {
            (Some(b), Some(&g)) if b.generation == g => (Some(b), true),
            (_, Some(&g)) => (
                Some(load_manifest(backend.as_ref(), job.prefix, g).await?),
                false,
            ),
            (_, None) => (None, false),
        };
        Ok::<_, PushError>((stored, base, current))
    };
    let dir = job.dir.to_owned();
    let scan_ns = now_ns();
    let tracked = job.changes.take();
    let (stored, mut base, scan) = match tracked {
        // Tracking vouches for the changes since `base`: unless the store
        // holds another generation, only they are looked at.
        Some(changes) if has_base => {
            let (stored, base, current) = remote.await?;
            match base {
                Some(b) if current => {
                    match tracked_scan(&dir, b, changes, cache, &job.limits).await? {
                        Tracked::Done(scan, patch) => (stored, Base::Patched(patch), scan),
                        Tracked::Fallback(b) => {
                            let scan = full_scan(walk(&dir).await?, cache, &job.limits);
                            (stored, Base::Whole(b), scan)
                        }
                    }
                }
                other => {
                    let scan = full_scan(walk(&dir).await?, cache, &job.limits);
                    (stored, Base::from(other), scan)
                }
            }
        }
        _ => {
            let (remote, local) = tokio::join!(remote, walk(&dir));
            let (stored, base, _) = remote?;
            (
                stored,
                Base::from(base),
                full_scan(local?, cache, &job.limits),
            )
        }
    };
    let Scan {
        root,
        mut entries,
        to_hash,
        cached_bytes,
        mut refused,
        walked,
    } = scan;

    // Blobs the store holds as far as the base says (a tracked push's
    // entries are the base less what changed: enough to skip most uploads).
    let known = Known::new(
        match &base {
            Base::Whole(b) => Some(&b.entries),
            Base::Patched(_) => Some(&entries),
            Base::Nothing => None,
        },
        to_hash.len(),
    );
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let threshold = job.transfer.multipart_threshold;
    let max_file = job.limits.max_file_bytes;
    // What the screen let through, less what needs no reading: hashing
    // stops there even if files grow under it.
    let budget = Arc::new(ReadBudget::new(
        job.limits.max_workspace_bytes.saturating_sub(cached_bytes),
    ));
    let hashed: Vec<Hashing> = stream::iter(to_hash)
        .map(|f| {
            let root = root.clone();
            let backend = backend.clone();
            let known = &known;
            let sent = sent.clone();
            let budget = budget.clone();
            let prefix = job.prefix;
            async move {
                let path = f.path.clone();
                let h = tokio::task::spawn_blocking(move || {
                    hash_file(&root, &path, threshold, max_file, &budget).map(|h| (h, root))
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()));
                let (h, root) = match h.and_then(|r| r) {
                    Ok((Hash::Done(h), root)) => (h, root),
                    Ok((
                        Hash::Refused {
                            size,
                            allocated,
                            reason,
                        },
                        _,
                    )) => {
                        return Ok(Some(Hashing::Refused(Refused {
                            path: f.path,
                            size,
                            allocated,
                            reason,
                        })))
                    }
                    // Gone or replaced since the walk: the agent is still
                    // working; the next push picks up what is there then.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(PushError::Workspace {
                            path: f.path.to_string(),
                            source: e,
                        })
                    }
                };
                let new = !known.contains(&h.sha256)
                    && sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(h.sha256.clone());
                let mut uploaded = None;
                if new {
                    let key = prefix.key(&blob_key(&h.sha256));
                    uploaded = Some(match h.data {
                        Some(data) => {
                            let n = data.len() as u64;
                            backend.put(&key, data).await?;
                            n
                        }
                        None => {
                            let path = f.path.clone();
                            let file = tokio::task::spawn_blocking(move || root.open_file(&path))
                                .await
                                .map_err(|e| StoreError::Backend(e.to_string()))?
                                .map_err(|source| PushError::Workspace {
                                    path: f.path.to_string(),
                                    source,
                                })?;
                            backend.put_file(&key, file, h.size, &h.sha256).await?
                        }
                    });
                }
                Ok::<_, PushError>(Some(Hashing::Stored {
                    found: f,
                    sha256: h.sha256,
                    size: h.size,
                    uploaded,
                }))
            }
        })
        .buffer_unordered(job.transfer.concurrency)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;

    let mut report = PushReport {
        walked,
        ..Default::default()
    };
    for h in hashed {
        let (f, sha, size, uploaded) = match h {
            Hashing::Stored {
                found,
                sha256,
                size,
                uploaded,
            } => (found, sha256, size, uploaded),
            Hashing::Refused(r) => {
                refused.push(r);
                continue;
            }
        };
        if let Some(n) = uploaded {
            report.files += 1;
            report.bytes += n;
        }
        cache.remember(&f, &sha, scan_ns);
        if let Base::Patched(p) = &mut base {
            p.touched.push(f.path.clone());
        }
        entries.insert(
            f.path,
            Entry::File {
                mode: f.mode,
                size,
                mtime_ns: f.mtime_ns,
                sha256: sha,
            },
        );
    }
    refused.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    report.refused = refused;
    let mut manifest = Manifest::new(job.generation);
    manifest.entries = entries;
    let (diff, base_gen, base_chunks) = match &mut base {
        Base::Whole(b) => (
            Some(Diff::of(b, &manifest)),
            Some(b.generation),
            std::mem::take(&mut b.chunks),
        ),
        Base::Patched(p) => (
            Some(p.diff(&manifest)),
            Some(p.generation),
            std::mem::take(&mut p.chunks),
        ),
        Base::Nothing => (None, None, Vec::new()),
    };
    if let (Some(g), Some(d)) = (base_gen, &diff) {
        report.deleted = d.deleted;
        if g == job.generation && d.same {
            report.unchanged = true;
            // Nothing changed: the base, patched or not, is what is stored.
            manifest.generation = g;
            manifest.created_ms = match &base {
                Base::Whole(b) => b.created_ms,
                Base::Patched(p) => p.created_ms,
                Base::Nothing => manifest.created_ms,
            };
            manifest.chunks = base_chunks;
            return Ok((Some(manifest), report));
        }
    }

    // Chunks first, the root last: the root's PUT is the commit, and
    // every chunk it names is stored by then.
    let (root_bytes, new_chunks) = match &base {
        Base::Whole(b) => manifest.split_with(&base_chunks, |run| {
            b.entries
                .range(run[0].0.clone()..)
                .take(run.len())
                .eq(run.iter().copied())
        }),
        Base::Patched(p) => {
            let touched = p.sorted_touched();
            manifest.split_with(&base_chunks, |run| {
                let (first, last) = (run[0].0, run[run.len() - 1].0);
                // The first touched path at or after `first`, if any, lies
                // past `last`.
                let i = touched.partition_point(|t| *t < first);
                touched.get(i).is_none_or(|t| *t > last)
            })
        }
        Base::Nothing => manifest.split(None),
    };
    stream::iter(new_chunks)
        .map(|(sha, bytes)| {
            let backend = backend.clone();
            let key = job.prefix.key(&chunk_key(&sha));
            async move { backend.put(&key, bytes.into()).await }
        })
        .buffer_unordered(job.transfer.concurrency)
        .try_collect::<()>()
        .await?;
    fence.await?;
    refuse_newer(
        &stored_generations(backend.as_ref(), job.prefix).await?,
        job.generation,
    )?;
    backend
        .put(
            &job.prefix.key(&manifest_key(job.generation)),
            root_bytes.into(),
        )
        .await?;

    // Garbage: older generations' manifests and blobs no longer referenced.
    // Failures only leak objects; the next push tries again.
    let mut garbage: Vec<String> = stored
        .iter()
        .filter(|g| **g < job.generation)
        .map(|g| job.prefix.key(&manifest_key(*g)))
        .collect();
    let live = manifest.chunk_names();
    garbage.extend(
        base_chunks
            .iter()
            .map(|c| c.sha256.as_str())
            .filter(|c| !live.contains(c))
            .map(|c| job.prefix.key(&chunk_key(c))),
    );
    if let Some(d) = diff {
        garbage.extend(
            d.unreferenced(&manifest)
                .into_iter()
                .map(|s| job.prefix.key(&blob_key(&s))),
        );
    }
    let failed = stream::iter(garbage)
        .map(|k| {
            let backend = backend.clone();
            async move { backend.delete(&k).await.err() }
        })
        .buffer_unordered(job.transfer.concurrency)
        .filter_map(|e| async move { e })
        .count()
        .await;
    if failed > 0 {
        tracing::warn!(
            message = "Some unreferenced objects were not deleted.",
            failed
        );
    }
    Ok((Some(manifest), report))
}

fn ws_err(dir: &Path) -> impl FnOnce(std::io::Error) -> PushError + '_ {
    move |source| PushError::Workspace {
        path: dir.display().to_string(),
        source,
    }
}

/// Every entry of the workspace (one `lstat` each).
async fn walk(dir: &Path) -> Result<(Arc<Root>, Vec<Found>), PushError> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let root = Root::open(&d)?;
        let found = root.walk()?;
        Ok::<_, std::io::Error>((Arc::new(root), found))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(ws_err(dir))
}

/// A walk judged by the limits and sorted into known entries and files
/// to hash.
fn full_scan(
    (root, found): (Arc<Root>, Vec<Found>),
    cache: &StatCache,
    limits: &SyncConfig,
) -> Scan {
    let (found, refused) = screen(found, limits);
    let mut scan = Scan {
        root,
        entries: BTreeMap::new(),
        to_hash: Vec::new(),
        cached_bytes: 0,
        refused,
        walked: true,
    };
    // Built from a sorted vector in one go: this runs over every entry.
    let mut entries = Vec::with_capacity(found.len());
    for f in found {
        if let Some(e) = sort_found(f, cache, &mut scan) {
            entries.push(e);
        }
    }
    scan.entries = entries.into_iter().collect();
    scan
}

/// Where one found entry goes: an entry known without reading (returned),
/// a file to hash, or nowhere (links leaving the workspace, FIFOs...).
fn sort_found(f: Found, cache: &StatCache, scan: &mut Scan) -> Option<(RelPath, Entry)> {
    match f.kind {
        Kind::Dir => Some((f.path, Entry::Dir { mode: f.mode })),
        Kind::Symlink(target) => match check_link_target(&f.path, &target) {
            Ok(()) => Some((f.path, Entry::Symlink { target })),
            Err(error) => {
                tracing::warn!(message = "Symlink not synced.", %error);
                None
            }
        },
        Kind::File => match cache.lookup(&f).map(str::to_owned) {
            Some(sha256) => {
                scan.cached_bytes += f.size;
                Some((
                    f.path,
                    Entry::File {
                        mode: f.mode,
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                        sha256,
                    },
                ))
            }
            None => {
                scan.to_hash.push(f);
                None
            }
        },
        Kind::Other => None,
    }
}

/// What is at one changed path now, and below it when it is a directory
/// that appeared (or was not one in the base).
struct Probe {
    path: RelPath,
    now: Option<Found>,
    below: Option<Vec<Found>>,
}

/// The base a push compares with.
enum Base {
    Nothing,
    Whole(Manifest),
    /// Moved into the scan's entries and patched there (a tracked push).
    Patched(Patch),
}

impl From<Option<Manifest>> for Base {
    fn from(m: Option<Manifest>) -> Self {
        m.map_or(Base::Nothing, Base::Whole)
    }
}

/// What a tracked push changed in the base it patched.
struct Patch {
    generation: u64,
    created_ms: u64,
    chunks: Vec<ChunkRef>,
    /// The base's entries at and below the changed paths, taken out.
    removed: BTreeMap<RelPath, Entry>,
    /// Paths the push gave an entry.
    touched: Vec<RelPath>,
}

impl Patch {
    /// Every path whose entry may differ from the base's, sorted.
    fn sorted_touched(&self) -> Vec<&RelPath> {
        let mut all: Vec<&RelPath> = self.removed.keys().chain(&self.touched).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The [`Diff`] of the base and `new`, from the touched paths alone.
    fn diff(&self, new: &Manifest) -> Diff {
        let mut d = Diff {
            deleted: 0,
            same: self.touched.len() == self.removed.len(),
            dropped: HashSet::new(),
        };
        for (path, old) in &self.removed {
            let now = new.entries.get(path);
            if now != Some(old) {
                d.same = false;
                if now.is_none() {
                    d.deleted += 1;
                }
                if let Some(sha) = file_sha(old) {
                    d.dropped.insert(sha.to_owned());
                }
            }
        }
        d
    }
}

/// A tracked scan, or the base back when only a walk can judge.
enum Tracked {
    Done(Scan, Patch),
    Fallback(Manifest),
}

/// `base` patched in place with what is at each changed path now: one
/// `lstat` per changed path, a walk only below directories that appeared.
/// Falls back when the limits may refuse something (a changed file over
/// `max_file_bytes`, the workspace over its budget): the full scan judges
/// those, as it alone sees every file.
async fn tracked_scan(
    dir: &Path,
    base: Manifest,
    changes: HashMap<RelPath, bool>,
    cache: &StatCache,
    limits: &SyncConfig,
) -> Result<Tracked, PushError> {
    let asks: Vec<(RelPath, bool)> = changes
        .into_iter()
        .map(|(p, appeared)| {
            let was_dir = matches!(base.entries.get(&p), Some(Entry::Dir { .. }));
            (p, appeared || !was_dir)
        })
        .collect();
    let d = dir.to_owned();
    let (root, probes) = tokio::task::spawn_blocking(move || {
        let root = Root::open(&d)?;
        let mut probes = Vec::with_capacity(asks.len());
        for (path, walk_below) in asks {
            let now = root.stat(&path)?;
            let below = match &now {
                Some(f) if f.kind == Kind::Dir && walk_below => Some(root.walk_under(&path)?),
                _ => None,
            };
            probes.push(Probe { path, now, below });
        }
        Ok::<_, std::io::Error>((Arc::new(root), probes))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(ws_err(dir))?;

    // What goes from the base: each changed path, and everything below one
    // that is no longer the same directory.
    let mut doomed: Vec<RelPath> = Vec::new();
    for p in &probes {
        let still_dir = matches!(&p.now, Some(f) if f.kind == Kind::Dir);
        if !still_dir || p.below.is_some() {
            doomed.extend(below(&base.entries, &p.path).cloned());
        }
        if base.entries.contains_key(&p.path) {
            doomed.push(p.path.clone());
        }
    }
    doomed.sort_unstable();
    doomed.dedup();
    let size_of = |e: Option<&Entry>| match e {
        Some(Entry::File { size, .. }) => *size,
        _ => 0,
    };
    let found = || {
        probes
            .iter()
            .flat_map(|p| p.now.iter().chain(p.below.iter().flatten()))
            .filter(|f| f.kind == Kind::File)
    };
    if found().any(|f| f.size > limits.max_file_bytes) {
        return Ok(Tracked::Fallback(base));
    }
    let total = base
        .entries
        .values()
        .map(|e| size_of(Some(e)))
        .fold(0u64, u64::saturating_add)
        .saturating_sub(doomed.iter().map(|p| size_of(base.entries.get(p))).sum())
        .saturating_add(found().map(|f| f.size).sum());
    if total > limits.max_workspace_bytes {
        return Ok(Tracked::Fallback(base));
    }

    let Manifest {
        generation,
        created_ms,
        mut entries,
        chunks,
        ..
    } = base;
    let removed: BTreeMap<RelPath, Entry> = doomed
        .into_iter()
        .filter_map(|p| entries.remove(&p).map(|e| (p, e)))
        .collect();
    let mut scan = Scan {
        root,
        entries: BTreeMap::new(),
        to_hash: Vec::new(),
        cached_bytes: 0,
        refused: Vec::new(),
        walked: false,
    };
    let mut touched = Vec::new();
    for p in probes {
        for f in p.now.into_iter().chain(p.below.into_iter().flatten()) {
            if let Some((path, e)) = sort_found(f, cache, &mut scan) {
                touched.push(path.clone());
                entries.insert(path, e);
            }
        }
    }
    scan.entries = entries;
    // What needs no reading: every file but those to hash.
    scan.cached_bytes = total.saturating_sub(scan.to_hash.iter().map(|f| f.size).sum());
    let patch = Patch {
        generation,
        created_ms,
        chunks,
        removed,
        touched,
    };
    Ok(Tracked::Done(scan, patch))
}

/// The paths below `dir` (`dir/...`), not `dir` itself.
fn below<'a>(
    entries: &'a BTreeMap<RelPath, Entry>,
    dir: &'a RelPath,
) -> impl Iterator<Item = &'a RelPath> + 'a {
    entries
        .range(dir.clone()..)
        .map(|(p, _)| p)
        .take_while(move |p| p.as_str().starts_with(dir.as_str()))
        .filter(move |p| {
            p.as_str()
                .strip_prefix(dir.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// How one file of the push ended.
enum Hashing {
    Stored {
        found: Found,
        sha256: String,
        size: u64,
        /// Bytes uploaded, when the store lacked the blob.
        uploaded: Option<u64>,
    },
    /// Over a limit once read (it grew after the walk).
    Refused(Refused),
}

/// Blobs the store holds, as far as the base manifest says. A push that
/// hashed a few files scans the manifest for them; many build a set.
enum Known<'a> {
    Nothing,
    Scan(&'a BTreeMap<RelPath, Entry>),
    Set(HashSet<&'a str>),
}

impl<'a> Known<'a> {
    fn new(base: Option<&'a BTreeMap<RelPath, Entry>>, lookups: usize) -> Self {
        match base {
            None => Known::Nothing,
            Some(b) if lookups <= 8 => Known::Scan(b),
            Some(b) => Known::Set(b.values().filter_map(file_sha).collect()),
        }
    }

    fn contains(&self, sha256: &str) -> bool {
        match self {
            Known::Nothing => false,
            Known::Scan(m) => m.values().any(|e| file_sha(e) == Some(sha256)),
            Known::Set(s) => s.contains(sha256),
        }
    }
}

fn file_sha(e: &Entry) -> Option<&str> {
    match e {
        Entry::File { sha256, .. } => Some(sha256),
        _ => None,
    }
}

/// How a new manifest differs from its base, found in one merge pass over
/// both (their maps are sorted by path).
struct Diff {
    /// Paths gone.
    deleted: u64,
    /// Every entry equal.
    same: bool,
    /// Hashes of base files that are gone or changed: maybe unreferenced.
    dropped: HashSet<String>,
}

impl Diff {
    fn of(base: &Manifest, new: &Manifest) -> Self {
        let mut d = Diff {
            deleted: 0,
            same: base.entries.len() == new.entries.len(),
            dropped: HashSet::new(),
        };
        let mut theirs = new.entries.iter().peekable();
        for (path, old) in &base.entries {
            while theirs.next_if(|(p, _)| *p < path).is_some() {
                d.same = false;
            }
            let now = theirs.next_if(|(p, _)| *p == path).map(|(_, e)| e);
            if now != Some(old) {
                d.same = false;
                if now.is_none() {
                    d.deleted += 1;
                }
                if let Some(sha) = file_sha(old) {
                    d.dropped.insert(sha.to_owned());
                }
            }
        }
        if theirs.next().is_some() {
            d.same = false;
        }
        d
    }

    /// The dropped hashes no entry of `new` refers to any more.
    fn unreferenced(self, new: &Manifest) -> Vec<String> {
        let live = Known::new(Some(&new.entries), self.dropped.len());
        self.dropped
            .into_iter()
            .filter(|s| !live.contains(s))
            .collect()
    }
}

fn refuse_newer(stored: &[u64], mine: u64) -> Result<(), PushError> {
    match stored.last() {
        Some(&g) if g > mine => Err(PushError::Stale {
            mine,
            reason: format!("the store holds generation {g}"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(files: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::new(1);
        for (p, sha) in files {
            m.entries.insert(
                RelPath::parse(p).unwrap(),
                Entry::File {
                    mode: 0o644,
                    size: 1,
                    mtime_ns: 0,
                    sha256: sha.repeat(64),
                },
            );
        }
        m
    }

    #[test]
    fn diff_finds_deletions_and_only_truly_unreferenced_blobs() {
        let base = m(&[("a", "1"), ("b", "1"), ("c", "2")]);
        let same = Diff::of(&base, &base.clone());
        assert!(same.same && same.deleted == 0);
        // `a` is gone but its content lives on in `b`; `c` changed.
        let new = m(&[("b", "1"), ("c", "3"), ("d", "4")]);
        let d = Diff::of(&base, &new);
        assert!(!d.same);
        assert_eq!(d.deleted, 1);
        assert_eq!(d.unreferenced(&new), vec!["2".repeat(64).as_str()]);
        // Many dropped hashes take the set path; same answer.
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("f{i}"), format!("{:x}", i % 16)))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
        let big = m(&refs);
        let d = Diff::of(&big, &m(&[("x", "0")]));
        assert_eq!(d.deleted, 20);
        assert_eq!(d.unreferenced(&m(&[("x", "0")])).len(), 15);
    }
}
