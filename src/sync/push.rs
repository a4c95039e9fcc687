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
use super::tally::Tally;
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

    // Blobs the store holds as far as the base says: every blob the base
    // refers to (counted once after a walk, then kept up to date).
    if let Base::Whole(b) = &mut base {
        if b.tally.is_none() {
            b.tally = Some(Tally::of(b.entries.values()));
        }
    }
    let known: Option<&Tally> = match &base {
        Base::Whole(b) => b.tally.as_ref(),
        Base::Patched(p) => Some(&p.tally),
        Base::Nothing => None,
    };
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
                let new = !known.is_some_and(|k| k.holds(&h.sha256))
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
    manifest.tally = Some(match &mut base {
        // The base's counts less what was taken out, plus what is there now.
        Base::Patched(p) => {
            let mut t = std::mem::take(&mut p.tally);
            for e in p.removed.values() {
                t.remove(e);
            }
            for path in p.sorted_touched() {
                if let Some(e) = manifest.entries.get(path) {
                    t.add(e);
                }
            }
            t
        }
        _ => Tally::of(manifest.entries.values()),
    });
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
        Base::Patched(p) => manifest.split_around(&base_chunks, &p.sorted_touched()),
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
            d.unreferenced(manifest.tally.as_ref())
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
    /// The base's counts, before what was taken out.
    tally: Tally,
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
    mut base: Manifest,
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
    // Counted once after a walk, then updated by each push's change.
    let tally = match base.tally.take() {
        Some(t) => t,
        None => Tally::of(base.entries.values()),
    };
    let total = tally
        .bytes()
        .saturating_sub(doomed.iter().map(|p| size_of(base.entries.get(p))).sum())
        .saturating_add(found().map(|f| f.size).sum());
    if total > limits.max_workspace_bytes {
        base.tally = Some(tally);
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
        tally,
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

    /// The dropped hashes no entry of the new manifest (counted in
    /// `live`) refers to any more.
    fn unreferenced(self, live: Option<&Tally>) -> Vec<String> {
        self.dropped
            .into_iter()
            .filter(|s| !live.is_some_and(|t| t.holds(s)))
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
        assert_eq!(
            d.unreferenced(Some(&Tally::of(new.entries.values()))),
            vec!["2".repeat(64).as_str()]
        );
        // Many dropped hashes.
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("f{i}"), format!("{:x}", i % 16)))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
        let big = m(&refs);
        let d = Diff::of(&big, &m(&[("x", "0")]));
        assert_eq!(d.deleted, 20);
        let x = m(&[("x", "0")]);
        assert_eq!(
            d.unreferenced(Some(&Tally::of(x.entries.values()))).len(),
            15
        );
    }

    /// A workspace in a temporary directory pushed to an in-memory store,
    /// by walks or with the changes a tracker would report.
    struct Ws {
        dir: tempfile::TempDir,
        backend: Arc<dyn ObjectBackend>,
        prefix: ConvPrefix,
        cache: StatCache,
        base: Option<Manifest>,
        limits: SyncConfig,
    }

    impl Ws {
        fn new() -> Ws {
            Ws {
                dir: tempfile::tempdir().unwrap(),
                backend: Arc::new(super::super::store::ObjectStoreBackend::in_memory()),
                prefix: ConvPrefix("t/c".into()),
                cache: StatCache::default(),
                base: None,
                limits: SyncConfig::default(),
            }
        }

        fn write(&self, path: &str, bytes: usize, fill: u8) {
            let p = self.dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![fill; bytes]).unwrap();
        }

        async fn push(&mut self, changes: Option<&[(&str, bool)]>) -> PushReport {
            let job = PushJob {
                backend: self.backend.clone(),
                prefix: &self.prefix,
                dir: self.dir.path(),
                generation: 1,
                transfer: Transfer {
                    concurrency: 4,
                    multipart_threshold: 1 << 20,
                },
                limits: self.limits,
                changes: changes.map(|c| {
                    c.iter()
                        .map(|(p, appeared)| (RelPath::parse(p).unwrap(), *appeared))
                        .collect()
                }),
            };
            let (m, r) = push(job, self.base.take(), &mut self.cache, async {
                Ok::<(), PushError>(())
            })
            .await
            .unwrap();
            self.base = m;
            r
        }

        /// What is stored equals what a walk finds now, and the kept
        /// bookkeeping equals a recount: the tally, the chunks of a full
        /// split, and no blob the manifest does not name.
        async fn check(&self) {
            let fresh = Ws::new();
            let walked = {
                let job = PushJob {
                    backend: fresh.backend.clone(),
                    prefix: &fresh.prefix,
                    dir: self.dir.path(),
                    generation: 1,
                    transfer: Transfer {
                        concurrency: 4,
                        multipart_threshold: 1 << 20,
                    },
                    limits: self.limits,
                    changes: None,
                };
                let mut cache = StatCache::default();
                push(job, None, &mut cache, async { Ok::<(), PushError>(()) })
                    .await
                    .unwrap()
                    .0
                    .unwrap()
            };
            let kept = self.base.as_ref().unwrap();
            let stored = latest_manifest(self.backend.as_ref(), &self.prefix)
                .await
                .unwrap()
                .unwrap();
            let differ = |a: &Manifest| {
                let mut d: Vec<String> = a
                    .entries
                    .iter()
                    .filter(|(p, e)| walked.entries.get(*p) != Some(*e))
                    .map(|(p, e)| format!("{p}: {e:?} / {:?}", walked.entries.get(p)))
                    .collect();
                d.extend(
                    walked
                        .entries
                        .keys()
                        .filter(|p| !a.entries.contains_key(*p))
                        .map(|p| format!("{p} missing")),
                );
                d.truncate(5);
                d
            };
            assert!(
                stored.same_content(&walked),
                "stored differs from a walk: {:?}",
                differ(&stored)
            );
            assert!(
                kept.same_content(&walked),
                "kept differs from a walk: {:?}",
                differ(kept)
            );
            assert_eq!(kept.tally, Some(Tally::of(walked.entries.values())));
            let mut full = kept.clone();
            full.split(None);
            assert_eq!(kept.chunks, full.chunks, "chunks differ from a full split");
            let mut blobs: Vec<String> = self
                .backend
                .list(&self.prefix.key("blobs"))
                .await
                .unwrap()
                .into_iter()
                .map(|k| k.rsplit('/').next().unwrap().to_owned())
                .collect();
            blobs.sort();
            let mut named: Vec<String> = kept.blobs().into_iter().map(str::to_owned).collect();
            named.sort();
            assert_eq!(blobs, named, "stored blobs are exactly the named ones");
        }
    }

    #[tokio::test]
    async fn tracked_pushes_keep_their_bookkeeping_exact() {
        let mut ws = Ws::new();
        for i in 0..3000 {
            ws.write(&format!("d{}/f{i}", i % 40), 10 + i % 7, (i % 251) as u8);
        }
        let r = ws.push(None).await;
        assert!(r.walked);
        ws.check().await;

        // One file changed: one upload, no walk.
        ws.write("d3/f3", 500, 1);
        let r = ws.push(Some(&[("d3/f3", false)])).await;
        assert!(!r.walked && r.files == 1, "{r:?}");
        ws.check().await;

        // Same content as a file stored already: nothing to upload.
        ws.write("d4/f4", 500, 1);
        let r = ws.push(Some(&[("d4/f4", false)])).await;
        assert!(!r.walked && r.files == 0, "{r:?}");
        ws.check().await;

        // Deleted: its blob goes (nothing else names it)...
        std::fs::remove_file(ws.dir.path().join("d5/f5")).unwrap();
        let r = ws.push(Some(&[("d5/f5", false)])).await;
        assert_eq!(r.deleted, 1);
        ws.check().await;
        // ... but not one another entry still names.
        std::fs::remove_file(ws.dir.path().join("d3/f3")).unwrap();
        ws.push(Some(&[("d3/f3", false)])).await;
        ws.check().await;

        // A directory renamed: everything below moves.
        std::fs::rename(ws.dir.path().join("d7"), ws.dir.path().join("e7")).unwrap();
        let r = ws.push(Some(&[("d7", false), ("e7", true)])).await;
        assert!(!r.walked && r.files == 0, "{r:?}");
        ws.check().await;

        // Paths added and removed around chunk boundaries, so chunks
        // split and merge: the kept chunks still equal a full split.
        for round in 0..30 {
            let mut changes = Vec::new();
            for k in 0..(1 + round % 4) {
                // Not in `d7`, gone: it would appear again.
                let d = match (round * 7 + k) % 40 {
                    7 => 8,
                    d => d,
                };
                let p = format!("d{d}/n{round}_{k}");
                ws.write(&p, 20, round as u8);
                changes.push(p);
            }
            let gone = format!("d{}/f{}", round % 40, round * 40 + round % 40 + 40);
            if std::fs::remove_file(ws.dir.path().join(&gone)).is_ok() {
                changes.push(gone);
            }
            let asks: Vec<(&str, bool)> = changes.iter().map(|p| (p.as_str(), false)).collect();
            let r = ws.push(Some(&asks)).await;
            assert!(!r.walked, "{r:?}");
            ws.check().await;
        }
    }

    #[tokio::test]
    async fn a_file_growing_past_the_workspace_limit_is_judged_by_a_walk() {
        let mut ws = Ws::new();
        ws.limits.max_workspace_bytes = 10_000;
        for i in 0..20 {
            ws.write(&format!("f{i:02}"), 300, i as u8);
        }
        ws.push(None).await;
        assert_eq!(
            ws.base.as_ref().unwrap().tally.as_ref().unwrap().bytes(),
            6_000
        );

        // Within the limit: the delta path keeps the total.
        ws.write("f00", 3_000, 0);
        let r = ws.push(Some(&[("f00", false)])).await;
        assert!(!r.walked && r.refused.is_empty(), "{r:?}");
        assert_eq!(
            ws.base.as_ref().unwrap().tally.as_ref().unwrap().bytes(),
            8_700
        );

        // Past it: the push walks and leaves files out, by the same rule
        // as any walk.
        ws.write("f01", 3_000, 1);
        let r = ws.push(Some(&[("f01", false)])).await;
        assert!(r.walked && !r.refused.is_empty(), "{r:?}");
        let kept = ws.base.as_ref().unwrap();
        let bytes = kept.tally.as_ref().unwrap().bytes();
        assert!(bytes <= 10_000, "{bytes} bytes stored");
        assert_eq!(kept.tally, Some(Tally::of(kept.entries.values())));

        // Back under it once the file shrinks.
        ws.write("f01", 10, 1);
        let r = ws.push(None).await;
        assert!(r.refused.is_empty(), "{r:?}");
        ws.check().await;
    }
}
