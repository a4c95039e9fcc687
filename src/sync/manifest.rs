//! The manifest: one conversation's workspace as the object store holds it,
//! and the object keys it lives under.
//!
//! Layout under `{prefix}/{tenant}/{conversation}/`:
//! - `blobs/{sha256}`: file contents, addressed by their hash, so a file
//!   that did not change never travels again.
//! - `manifests/{generation:020}.json`: one generation's root. Committing a
//!   push is one PUT of this object, so a restore sees either the old or the
//!   new workspace, never half of each. A writer of an older generation
//!   writes a key that restore never picks (the highest wins).
//! - `chunks/{sha256}`: the path -> entry map, split into runs of sorted
//!   paths (format 2). A chunk is named by the hash of its bytes, so a
//!   checkpoint writes only the chunks holding what changed, and the root
//!   lists every chunk in path order. Format 1 roots (the whole map inline,
//!   what earlier builds wrote) are still read.

use super::paths::{check_link_target, PathError, RelPath};
use super::tally::Tally;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

/// The format this build writes: a root listing chunks.
pub const FORMAT: u32 = 2;
/// The whole map inline in the root; read, never written.
pub const FORMAT_INLINE: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest format {0} is unknown to this build")]
    Format(u32),
    #[error("manifest {key} claims generation {found}")]
    Generation { key: String, found: u64 },
    #[error("manifest entry: {0}")]
    Path(#[from] PathError),
    #[error("manifest entry {0}: bad sha256")]
    Hash(String),
    #[error("manifest chunk {0}: {1}")]
    Chunk(String, &'static str),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    File {
        /// Permission bits (`0o777` at most).
        mode: u32,
        size: u64,
        /// Nanoseconds since the epoch; restored so tools relying on
        /// mtimes (make, the CLI's own checks) see the same times.
        mtime_ns: i64,
        sha256: String,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

/// One conversation's workspace as stored: the whole map in memory,
/// whichever format it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The conversation generation that wrote it; a manifest from an older
    /// generation never replaces a newer one.
    pub generation: u64,
    pub created_ms: u64,
    /// Sorted, so a directory always comes before what it contains.
    pub entries: BTreeMap<RelPath, Entry>,
    /// The stored chunks `entries` is split into; empty for a manifest read
    /// in format 1 or not committed yet. A writer reuses every chunk whose
    /// entries did not change.
    #[serde(skip)]
    pub chunks: Vec<ChunkRef>,
    /// Bytes and blob references of `entries`, when a push counted them:
    /// the next tracked push updates them by what changed.
    #[serde(skip)]
    pub tally: Option<Tally>,
}

/// One stored chunk, as the root lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub sha256: String,
    /// Its first path; the chunk holds `count` paths from there on.
    pub first: RelPath,
    pub count: u64,
}

/// A format 2 root: the generation's chunks, in path order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootV2 {
    pub format: u32,
    pub generation: u64,
    pub created_ms: u64,
    pub chunks: Vec<ChunkRef>,
}

/// A format 2 chunk: a run of sorted paths.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub entries: BTreeMap<RelPath, Entry>,
}

/// What a stored root turned out to be.
pub enum Parsed {
    /// Format 1: complete.
    Inline(Manifest),
    /// Format 2: its chunks are still to be fetched ([`Manifest::assemble`]).
    Chunked(RootV2),
}

/// Paths per chunk, on average: a chunk ends after a path whose hash is 0
/// modulo this. Cut by content, not by position, so adding or removing a
/// path moves no boundary but its own, and one changed file rewrites one
/// chunk (about 50 KiB), not the manifest.
const CHUNK_AVG: u64 = 512;
/// Paths per chunk at most, whatever the hashes say.
const CHUNK_MAX: usize = 4096;
/// Chunks a root may list: 64 Mi paths, far above any workspace quota.
const MAX_CHUNKS: usize = 16 * 1024;

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Manifest {
    pub fn new(generation: u64) -> Self {
        Self {
            format: FORMAT,
            generation,
            created_ms: crate::state::now_ms(),
            entries: BTreeMap::new(),
            chunks: Vec::new(),
            tally: None,
        }
    }

    /// Parses and checks a stored root: the generation the one its key
    /// names; in format 1 also its entries (see [`check_entries`]), in
    /// format 2 its chunk list (hashes well-formed, paths ascending).
    pub fn parse(bytes: &[u8], key_generation: u64) -> Result<Parsed, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let generation_err = |found| ManifestError::Generation {
            key: manifest_key(key_generation),
            found,
        };
        match serde_json::from_slice::<Probe>(bytes)?.format {
            FORMAT_INLINE => {
                let m: Manifest = serde_json::from_slice(bytes)?;
                if m.generation != key_generation {
                    return Err(generation_err(m.generation));
                }
                check_entries(&m.entries)?;
                Ok(Parsed::Inline(m))
            }
            FORMAT => {
                let r: RootV2 = serde_json::from_slice(bytes)?;
                if r.generation != key_generation {
                    return Err(generation_err(r.generation));
                }
                if r.chunks.len() > MAX_CHUNKS {
                    return Err(ManifestError::Chunk(
                        format!("{} of them", r.chunks.len()),
                        "too many chunks",
                    ));
                }
                for (i, c) in r.chunks.iter().enumerate() {
                    if !is_sha256_hex(&c.sha256) {
                        return Err(ManifestError::Chunk(c.sha256.clone(), "bad sha256"));
                    }
                    if c.count == 0 || c.count > CHUNK_MAX as u64 {
                        return Err(ManifestError::Chunk(c.sha256.clone(), "bad count"));
                    }
                    if i > 0 && r.chunks[i - 1].first >= c.first {
                        return Err(ManifestError::Chunk(c.sha256.clone(), "out of order"));
                    }
                }
                Ok(Parsed::Chunked(r))
            }
            other => Err(ManifestError::Format(other)),
        }
    }

    /// Builds the manifest of a format 2 root from its chunks' bytes, in
    /// the root's order; each must hash to its name, hold `count` paths
    /// from `first` on, and end before the next chunk's first path.
    pub fn assemble<B: AsRef<[u8]>>(
        root: RootV2,
        chunks: Vec<B>,
    ) -> Result<Manifest, ManifestError> {
        let mut all: Vec<(RelPath, Entry)> = Vec::new();
        for (i, (r, bytes)) in root.chunks.iter().zip(&chunks).enumerate() {
            let bytes = bytes.as_ref();
            let bad = |why| ManifestError::Chunk(r.sha256.clone(), why);
            if hex::encode(Sha256::digest(bytes)) != r.sha256 {
                return Err(bad("does not match its hash"));
            }
            let c: Chunk = serde_json::from_slice(bytes)?;
            if c.entries.len() as u64 != r.count
                || c.entries.keys().next() != Some(&r.first)
                || root
                    .chunks
                    .get(i + 1)
                    .is_some_and(|next| c.entries.keys().next_back() >= Some(&next.first))
            {
                return Err(bad("does not hold the paths the root names"));
            }
            check_entries(&c.entries)?;
            all.extend(c.entries);
        }
        if chunks.len() != root.chunks.len() {
            return Err(ManifestError::Chunk(
                format!("{} of {}", chunks.len(), root.chunks.len()),
                "missing",
            ));
        }
        Ok(Manifest {
            format: FORMAT,
            generation: root.generation,
            created_ms: root.created_ms,
            // Already sorted: chunks are disjoint and in order.
            entries: all.into_iter().collect(),
            chunks: root.chunks,
            tally: None,
        })
    }

    /// Splits the entries into chunks, reusing `base`'s chunks whose
    /// entries are unchanged: the root's bytes and those of the chunks to
    /// store (name, bytes). Sets `self.chunks`.
    pub fn split(&mut self, base: Option<&Manifest>) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let old = base.map(|b| b.chunks.as_slice()).unwrap_or_default();
        self.split_with(old, |run| {
            base.is_some_and(|b| {
                b.entries
                    .range(run[0].0.clone()..)
                    .take(run.len())
                    .eq(run.iter().copied())
            })
        })
    }

    /// [`Manifest::split`] where `unchanged(run)` says whether a run of
    /// entries starting where an old chunk of the same length starts is
    /// that chunk's (so its stored bytes are reused).
    pub fn split_with(
        &mut self,
        old: &[ChunkRef],
        unchanged: impl Fn(&[(&RelPath, &Entry)]) -> bool,
    ) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let old: HashMap<&RelPath, &ChunkRef> = old.iter().map(|c| (&c.first, c)).collect();
        let mut refs = Vec::new();
        let mut new = Vec::new();
        let mut run: Vec<(&RelPath, &Entry)> = Vec::new();
        let mut flush = |run: &mut Vec<(&RelPath, &Entry)>| {
            let Some(&(first, _)) = run.first() else {
                return;
            };
            let count = run.len() as u64;
            let reused = old
                .get(first)
                .filter(|c| c.count == count && unchanged(run));
            match reused {
                Some(c) => refs.push((*c).clone()),
                None => {
                    let (r, bytes) = seal(run);
                    new.push((r.sha256.clone(), bytes));
                    refs.push(r);
                }
            }
            run.clear();
        };
        for (path, entry) in &self.entries {
            run.push((path, entry));
            if ends_chunk(path, run.len()) {
                flush(&mut run);
            }
        }
        flush(&mut run);
        self.chunks = refs;
        (self.root_bytes(), new)
    }

    /// [`Manifest::split`] for a manifest that differs from the one `old`
    /// describes only at `touched` (sorted and deduplicated: every path
    /// added, removed or changed). Cuts again only from the chunk holding
    /// a touched path up to the first cut that falls where an old chunk
    /// starts: from there both cut alike until the next touched path, so
    /// the old chunks are kept. The cost follows the change (a few
    /// hundred paths around each), not the workspace, and the chunks are
    /// the ones a full split would give.
    pub fn split_around(
        &mut self,
        old: &[ChunkRef],
        touched: &[&RelPath],
    ) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        if old.is_empty() {
            return self.split_with(&[], |_| false);
        }
        let mut refs: Vec<ChunkRef> = Vec::with_capacity(old.len() + 1);
        let mut new = Vec::new();
        // Old chunks before `kept` are dealt with; touched paths before
        // `next` are inside chunks cut again.
        let (mut kept, mut next) = (0, 0);
        'regions: while let Some(t) = touched.get(next) {
            let at = old
                .partition_point(|c| c.first <= **t)
                .saturating_sub(1)
                .max(kept);
            refs.extend_from_slice(&old[kept..at]);
            // Paths before the first old chunk belong to the first cut.
            let from = match at {
                0 => Bound::Unbounded,
                _ => Bound::Included(&old[at].first),
            };
            let mut run: Vec<(&RelPath, &Entry)> = Vec::new();
            let mut rest = self
                .entries
                .range::<RelPath, _>((from, Bound::Unbounded))
                .peekable();
            while let Some((path, entry)) = rest.next() {
                run.push((path, entry));
                if !ends_chunk(path, run.len()) {
                    continue;
                }
                let (r, bytes) = seal(&run);
                run.clear();
                new.push((r.sha256.clone(), bytes));
                refs.push(r);
                let Some(&(k, _)) = rest.peek() else {
                    break;
                };
                while touched.get(next).is_some_and(|t| *t < k) {
                    next += 1;
                }
                let s = old.partition_point(|c| c.first < *k);
                if old.get(s).is_some_and(|c| c.first == *k) {
                    kept = s;
                    continue 'regions;
                }
            }
            if !run.is_empty() {
                let (r, bytes) = seal(&run);
                new.push((r.sha256.clone(), bytes));
                refs.push(r);
            }
            // Cut to the end: no old chunk is left to keep.
            kept = old.len();
            break;
        }
        refs.extend_from_slice(&old[kept..]);
        self.chunks = refs;
        (self.root_bytes(), new)
    }

    /// The format 2 root listing `self.chunks`.
    fn root_bytes(&self) -> Vec<u8> {
        let root = RootV2 {
            format: FORMAT,
            generation: self.generation,
            created_ms: self.created_ms,
            chunks: self.chunks.clone(),
        };
        // Serialising plain data into memory cannot fail.
        serde_json::to_vec(&root).unwrap_or_default()
    }

    /// The manifest in format 1, as earlier builds stored it (tests of
    /// reading old workspaces).
    pub fn to_inline_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.format = FORMAT_INLINE;
        // Serialising plain data into memory cannot fail.
        serde_json::to_vec(&m).unwrap_or_default()
    }

    /// The chunk names this manifest refers to.
    pub fn chunk_names(&self) -> HashSet<&str> {
        self.chunks.iter().map(|c| c.sha256.as_str()).collect()
    }

    /// Every blob the manifest refers to.
    pub fn blobs(&self) -> HashSet<&str> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::File { sha256, .. } => Some(sha256.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Same workspace (ignores generation and creation time).
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.entries == other.entries
    }
}

/// A chunk being written, borrowing the manifest's entries.
#[derive(Serialize)]
struct ChunkOut<'a> {
    entries: BTreeMap<&'a RelPath, &'a Entry>,
}

/// Every path confined (done by [`RelPath`]'s deserializer), every link
/// target inside, every hash well-formed.
fn check_entries(entries: &BTreeMap<RelPath, Entry>) -> Result<(), ManifestError> {
    for (path, entry) in entries {
        match entry {
            Entry::Symlink { target } => check_link_target(path, target)?,
            Entry::File { sha256, .. } if !is_sha256_hex(sha256) => {
                return Err(ManifestError::Hash(path.to_string()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a chunk ends after `path`, the `len`th path of its run: by the
/// path's hash, so boundaries stay put when other paths come and go.
fn ends_chunk(path: &RelPath, len: usize) -> bool {
    len >= CHUNK_MAX || fnv1a(path.as_str().as_bytes()) % CHUNK_AVG == 0
}

/// A run of entries (never empty) as a stored chunk: its reference and its
/// bytes.
fn seal(run: &[(&RelPath, &Entry)]) -> (ChunkRef, Vec<u8>) {
    let chunk = ChunkOut {
        entries: run.iter().copied().collect(),
    };
    // Serialising plain data into memory cannot fail.
    let bytes = serde_json::to_vec(&chunk).unwrap_or_default();
    let r = ChunkRef {
        sha256: hex::encode(Sha256::digest(&bytes)),
        first: run[0].0.clone(),
        count: run.len() as u64,
    };
    (r, bytes)
}

/// FNV-1a, 64 bits: a stable, cheap hash of a path for chunk boundaries
/// (the same in every build, unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub const MANIFESTS_DIR: &str = "manifests";

pub fn manifest_key(generation: u64) -> String {
    format!("{MANIFESTS_DIR}/{generation:020}.json")
}

pub fn blob_key(sha256: &str) -> String {
    format!("blobs/{sha256}")
}

pub fn chunk_key(sha256: &str) -> String {
    format!("chunks/{sha256}")
}

/// The generation a key under `manifests/` names, if it is one of ours.
pub fn generation_of_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn file(sha: &str) -> Entry {
        Entry::File {
            mode: 0o644,
            size: 1,
            mtime_ns: 5,
            sha256: sha.repeat(64 / sha.len()),
        }
    }

    fn sample() -> Manifest {
        let mut m = Manifest::new(7);
        m.entries.insert(rp("a"), Entry::Dir { mode: 0o755 });
        m.entries.insert(rp("a/f"), file("ab"));
        m.entries
            .insert(rp("a/l"), Entry::Symlink { target: "f".into() });
        m
    }

    fn inline(bytes: &[u8], g: u64) -> Result<Manifest, ManifestError> {
        match Manifest::parse(bytes, g)? {
            Parsed::Inline(m) => Ok(m),
            Parsed::Chunked(_) => panic!("a format 1 root parsed as format 2"),
        }
    }

    /// Splits, then reads back through the stored bytes only.
    fn through_store(m: &mut Manifest, base: Option<&Manifest>) -> (Manifest, usize) {
        let (root, new) = m.split(base);
        // The base's chunks as the store holds them.
        let mut stored: HashMap<String, Vec<u8>> = base
            .map(|b| b.clone().split(None).1.into_iter().collect())
            .unwrap_or_default();
        let written = new.len();
        stored.extend(new);
        let Parsed::Chunked(r) = Manifest::parse(&root, m.generation).unwrap() else {
            panic!("format 2 root parsed as format 1")
        };
        let bytes: Vec<Vec<u8>> = r.chunks.iter().map(|c| stored[&c.sha256].clone()).collect();
        (Manifest::assemble(r, bytes).unwrap(), written)
    }

    #[test]
    fn old_inline_format_still_parses_and_validates() {
        let m = sample();
        let bytes = m.to_inline_bytes();
        let back = inline(&bytes, 7).unwrap();
        assert_eq!(back.entries, m.entries);
        assert_eq!(back.format, FORMAT_INLINE);
        assert!(matches!(
            Manifest::parse(&bytes, 8),
            Err(ManifestError::Generation { .. })
        ));
        let text = String::from_utf8(bytes).unwrap();
        let evil = text.replace("\"a/f\"", "\"../f\"");
        assert!(Manifest::parse(evil.as_bytes(), 7).is_err());
        let evil = text.replace("\"target\":\"f\"", "\"target\":\"/etc/shadow\"");
        assert!(Manifest::parse(evil.as_bytes(), 7).is_err());
        let evil = text.replace("\"format\":1", "\"format\":9");
        assert!(matches!(
            Manifest::parse(evil.as_bytes(), 7),
            Err(ManifestError::Format(9))
        ));
    }

    #[test]
    fn chunks_round_trip_and_a_change_rewrites_one_chunk() {
        let mut m = Manifest::new(3);
        for i in 0..20_000 {
            m.entries
                .insert(rp(&format!("d{}/f{i}", i % 97)), file("ab"));
        }
        let (back, written) = through_store(&mut m, None);
        assert_eq!(back.entries, m.entries);
        assert_eq!(written, m.chunks.len());
        assert!(
            m.chunks.len() > 10 && m.chunks.iter().all(|c| c.count as usize <= CHUNK_MAX),
            "{} chunks",
            m.chunks.len()
        );

        // One file changed, one added, one removed: three chunks at most.
        let mut next = m.clone();
        next.generation = 4;
        next.entries.insert(rp("d5/f5"), file("cd"));
        next.entries.insert(rp("d7/new"), file("ef"));
        next.entries.remove(&rp("d9/f9"));
        let (back, written) = through_store(&mut next, Some(&m));
        assert_eq!(back.entries, next.entries);
        assert!((1..=3).contains(&written), "{written} chunks written");

        // Nothing changed: nothing written.
        let mut same = next.clone();
        same.generation = 5;
        let (_, written) = through_store(&mut same, Some(&next));
        assert_eq!(written, 0);
    }

    #[test]
    fn tampered_chunks_are_refused() {
        let mut m = sample();
        let (root, chunks) = m.split(None);
        let Parsed::Chunked(r) = Manifest::parse(&root, 7).unwrap() else {
            panic!()
        };
        let bytes: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
        let mut evil = bytes.clone();
        evil[0] = String::from_utf8(evil[0].clone())
            .unwrap()
            .replace("\"a/f\"", "\"../f\"")
            .into_bytes();
        assert!(Manifest::assemble(r, evil).is_err(), "hash mismatch");
        let Parsed::Chunked(r) = Manifest::parse(&root, 7).unwrap() else {
            panic!()
        };
        assert!(
            Manifest::assemble(r, Vec::<Vec<u8>>::new()).is_err(),
            "missing"
        );
        let unordered = String::from_utf8(root)
            .unwrap()
            .replace("\"format\":2", "\"format\":2,\"extra\":1");
        assert!(Manifest::parse(unordered.as_bytes(), 7).is_err());
    }

    #[test]
    fn keys_name_their_generation() {
        assert_eq!(manifest_key(42), "manifests/00000000000000000042.json");
        assert_eq!(generation_of_key(&manifest_key(42)), Some(42));
        assert_eq!(generation_of_key("manifests/x.json"), None);
        assert!(
            manifest_key(9) < manifest_key(10),
            "keys sort by generation"
        );
    }

    /// `n` paths under `dir` whose hash cuts a chunk (`cuts`) or not.
    fn cutting(dir: &str, cuts: bool, n: usize) -> Vec<RelPath> {
        (0..)
            .map(|i| rp(&format!("{dir}/p{i}")))
            .filter(|p| (fnv1a(p.as_str().as_bytes()) % CHUNK_AVG == 0) == cuts)
            .take(n)
            .collect()
    }

    #[test]
    fn cutting_around_the_change_gives_the_chunks_of_a_full_split() {
        let mut m = Manifest::new(1);
        for i in 0..20_000 {
            m.entries
                .insert(rp(&format!("d{}/f{i}", i % 97)), file("ab"));
        }
        // No path here ends a chunk by its hash: cut by count.
        for p in cutting("long", false, CHUNK_MAX * 2 + 100) {
            m.entries.insert(p, file("cd"));
        }
        m.split(None);
        let mut seed = 7u64;
        let mut pick = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for round in 0..60 {
            let mut next = m.clone();
            next.generation += 1;
            let mut touched: Vec<RelPath> = Vec::new();
            let keys: Vec<RelPath> = next.entries.keys().cloned().collect();
            for _ in 0..1 + round % 3 {
                let key = keys[pick(keys.len())].clone();
                let p = match round % 8 {
                    // Changed in place.
                    0 => {
                        next.entries.insert(key.clone(), file("ef"));
                        key
                    }
                    // Gone: where it ended a chunk, two chunks merge.
                    1 => {
                        let k = keys
                            .iter()
                            .skip(pick(keys.len()))
                            .find(|k| ends_chunk(k, 1))
                            .unwrap_or(&key)
                            .clone();
                        next.entries.remove(&k);
                        k
                    }
                    // New, ending a chunk: one splits.
                    2 => {
                        let p = cutting(&format!("d{}/n{round}", pick(97)), true, 1).remove(0);
                        next.entries.insert(p.clone(), file("ef"));
                        p
                    }
                    // Before the first path and after the last.
                    3 => {
                        let p = rp(&format!("0first{round}"));
                        next.entries.insert(p.clone(), file("ef"));
                        p
                    }
                    4 => {
                        let p = rp(&format!("zlast{round}"));
                        next.entries.insert(p.clone(), file("ef"));
                        p
                    }
                    // Inside the run cut by count: every later cut moves.
                    5 => {
                        let p = cutting(&format!("long/m{round}"), false, 1).remove(0);
                        next.entries.insert(p.clone(), file("ef"));
                        p
                    }
                    6 => {
                        let first = next.entries.keys().next().unwrap().clone();
                        next.entries.remove(&first);
                        first
                    }
                    _ => {
                        next.entries.remove(&key);
                        key
                    }
                };
                touched.push(p);
            }
            touched.sort();
            touched.dedup();
            let t: Vec<&RelPath> = touched.iter().collect();
            let (root, new) = next.split_around(&m.chunks, &t);
            let mut full = next.clone();
            let (full_root, _) = full.split(None);
            assert_eq!(next.chunks, full.chunks, "round {round}");
            assert_eq!(root, full_root);
            let written: HashSet<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
            let old = m.chunk_names();
            assert!(
                next.chunks
                    .iter()
                    .all(|c| old.contains(c.sha256.as_str()) || written.contains(c.sha256.as_str())),
                "round {round}: a chunk is neither stored nor written"
            );
            assert!(
                new.len() <= 3 * t.len() + 3,
                "round {round}: {} chunks cut for {} paths",
                new.len(),
                t.len()
            );
            m = next;
        }
        // Nothing touched: every chunk kept, none written.
        let before = m.chunks.clone();
        let (_, new) = m.split_around(&before, &[]);
        assert!(new.is_empty() && m.chunks == before);
    }
}

/// The manifest side of [`Tally`]: counting entries (only files count),
/// kept here so the tally knows nothing of manifests.
impl Tally {
    /// Counts every entry (one pass; what a walk's push pays anyway).
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Tally {
        let mut t = Tally::default();
        for e in entries {
            t.add(e);
        }
        t
    }

    pub fn add(&mut self, e: &Entry) {
        if let Entry::File { size, sha256, .. } = e {
            self.count_file(*size, sha256);
        }
    }

    /// Takes back an entry [`Tally::add`] counted.
    pub fn remove(&mut self, e: &Entry) {
        if let Entry::File { size, sha256, .. } = e {
            self.uncount_file(*size, sha256);
        }
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;
    use crate::sync::tally::Tally;

    fn file(size: u64, sha: char) -> Entry {
        Entry::File {
            mode: 0o644,
            size,
            mtime_ns: 0,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn counts_follow_adds_and_removes() {
        let (a, b) = (file(10, 'a'), file(5, 'b'));
        let mut t = Tally::of([&a, &a, &b, &Entry::Dir { mode: 0o755 }]);
        assert_eq!(t.bytes(), 25);
        assert!(t.holds(&"a".repeat(64)) && t.holds(&"b".repeat(64)));
        t.remove(&a);
        assert!(
            t.holds(&"a".repeat(64)),
            "a second entry still refers to it"
        );
        t.remove(&a);
        assert!(!t.holds(&"a".repeat(64)));
        assert_eq!(t.bytes(), 5);
        assert_eq!(t, Tally::of([&b]));
        assert!(!t.holds("not hex"));
    }
}
