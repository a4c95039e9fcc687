//! Scanning a workspace: the walk's findings, content hashes, and the stat
//! cache that lets an unchanged file skip hashing (size, mtime, ctime and
//! inode all equal, the way git's index and rsync's quick check work).

use super::fsx::{Found, Root};
use super::limits::{ReadBudget, Reason};
use super::paths::RelPath;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl StatKey {
    fn of(f: &Found) -> Self {
        Self {
            size: f.size,
            mtime_ns: f.mtime_ns,
            ctime_ns: f.ctime_ns,
            ino: f.ino,
        }
    }
}

/// Files changed this close to a scan may change again within the same
/// timestamp tick unseen; they are hashed again next time.
const RACY_NS: i64 = 2_000_000_000;

/// path -> (stat when hashed, sha256). Kept in memory per conversation.
#[derive(Default, Debug)]
pub struct StatCache {
    map: HashMap<RelPath, (StatKey, String)>,
}

impl StatCache {
    /// The known hash of `f`, when nothing about it changed since.
    pub fn lookup(&self, f: &Found) -> Option<&str> {
        match self.map.get(&f.path) {
            Some((k, sha)) if *k == StatKey::of(f) => Some(sha),
            _ => None,
        }
    }

    /// Remembers `sha256` for `f` unless `f` changed too recently to trust
    /// its timestamps (`scan_ns`: when the scan started).
    pub fn remember(&mut self, f: &Found, sha256: &str, scan_ns: i64) {
        if f.mtime_ns > scan_ns - RACY_NS || f.ctime_ns > scan_ns - RACY_NS {
            self.map.remove(&f.path);
            return;
        }
        self.map
            .insert(f.path.clone(), (StatKey::of(f), sha256.to_owned()));
    }

    /// Remembers a file restore just wrote with a known old mtime. Its
    /// ctime is necessarily recent, so only the mtime is checked for
    /// raciness; the container is idle while a restore runs.
    pub fn remember_restored(&mut self, f: &Found, sha256: &str) {
        if f.mtime_ns > now_ns() - RACY_NS {
            self.map.remove(&f.path);
            return;
        }
        self.map
            .insert(f.path.clone(), (StatKey::of(f), sha256.to_owned()));
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A hashed file: its hash, the bytes hashed, and the bytes themselves
/// when the file is small enough to keep for the upload.
pub struct Hashed {
    pub sha256: String,
    pub size: u64,
    pub data: Option<Bytes>,
}

/// What hashing a file came to.
pub enum Hash {
    Done(Hashed),
    /// Over a limit once opened: it grew since the walk judged it.
    Refused {
        size: u64,
        allocated: u64,
        reason: Reason,
    },
}

/// Bytes read at a time from a file too large to keep in memory.
const CHUNK: usize = 1024 * 1024;

/// Hashes one file, reading it through [`Root`] (never through a link)
/// in bounded chunks. Files below `keep_below` bytes come back with their
/// content, so a changed small file is read once for hashing and upload
/// together. Reading stops at `max_bytes` (the file is then refused as too
/// large) and when `budget` runs out (refused as over the workspace's
/// budget): a file grown after the walk costs no more than the limits.
pub fn hash_file(
    root: &Root,
    path: &RelPath,
    keep_below: u64,
    max_bytes: u64,
    budget: &ReadBudget,
) -> std::io::Result<Hash> {
    let mut f = root.open_file(path)?;
    let meta = f.metadata()?;
    let allocated = meta.blocks().saturating_mul(512);
    let refused = |size: u64, reason| {
        Ok(Hash::Refused {
            size: size.max(meta.len()),
            allocated,
            reason,
        })
    };
    if meta.len() > max_bytes {
        return refused(meta.len(), Reason::FileTooLarge);
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut head = Vec::new();
    if meta.len() < keep_below {
        // Bounded by `keep_below` and `max_bytes` whatever the file claims;
        // one byte more than expected shows a file that grew meanwhile.
        head.reserve(meta.len() as usize);
        f.by_ref()
            .take(keep_below.min(max_bytes.saturating_add(1)))
            .read_to_end(&mut head)?;
        size = head.len() as u64;
        if size > max_bytes {
            return refused(size, Reason::FileTooLarge);
        }
        if !budget.spend(size) {
            return refused(size, Reason::WorkspaceTooLarge);
        }
        hasher.update(&head);
        if size < keep_below {
            return Ok(Hash::Done(Hashed {
                sha256: hex::encode(hasher.finalize()),
                size,
                data: Some(Bytes::from(head)),
            }));
        }
    }
    drop(head);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max_bytes {
            return refused(size, Reason::FileTooLarge);
        }
        if !budget.spend(n as u64) {
            return refused(size, Reason::WorkspaceTooLarge);
        }
        hasher.update(&buf[..n]);
    }
    Ok(Hash::Done(Hashed {
        sha256: hex::encode(hasher.finalize()),
        size,
        data: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(h: std::io::Result<Hash>) -> Hashed {
        match h.unwrap() {
            Hash::Done(h) => h,
            Hash::Refused { size, reason, .. } => panic!("refused: {size} {reason:?}"),
        }
    }

    fn unlimited() -> ReadBudget {
        ReadBudget::new(u64::MAX)
    }

    #[test]
    fn hashes_small_and_large_alike() {
        let ws = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(ws.path().join("f"), &data).unwrap();
        let root = Root::open(ws.path()).unwrap();
        let p = RelPath::parse("f").unwrap();
        let b = unlimited();
        let small = done(hash_file(&root, &p, 1 << 20, u64::MAX, &b));
        let large = done(hash_file(&root, &p, 100, u64::MAX, &b));
        let exact = done(hash_file(&root, &p, 3000, u64::MAX, &b));
        let at_limit = done(hash_file(&root, &p, 1 << 20, 3000, &b));
        assert_eq!(small.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(small.sha256, large.sha256);
        assert_eq!(small.sha256, exact.sha256);
        assert_eq!(small.sha256, at_limit.sha256);
        assert_eq!(small.data.as_deref(), Some(&data[..]));
        assert!(large.data.is_none() && exact.data.is_none());
        assert_eq!(large.size, 3000);
    }

    #[test]
    fn a_file_over_a_limit_is_refused_without_reading_its_holes() {
        let ws = tempfile::tempdir().unwrap();
        // 16 TiB of holes (ext4's largest file is one block short of it):
        // reading it would take hours, so the test finishing at all shows
        // nothing was read.
        let len = (16 << 40) - 4096;
        let f = std::fs::File::create(ws.path().join("sparse")).unwrap();
        f.set_len(len).unwrap();
        std::fs::write(ws.path().join("small"), vec![7u8; 3000]).unwrap();
        let root = Root::open(ws.path()).unwrap();
        let sparse = RelPath::parse("sparse").unwrap();
        let small = RelPath::parse("small").unwrap();
        let b = unlimited();
        for keep_below in [1 << 20, 100] {
            match hash_file(&root, &sparse, keep_below, 1 << 30, &b).unwrap() {
                Hash::Refused {
                    size,
                    allocated,
                    reason,
                } => {
                    assert_eq!((size, reason), (len, Reason::FileTooLarge));
                    assert!(allocated < 1 << 20, "{allocated}");
                }
                Hash::Done(_) => panic!("a 16 TiB file was hashed"),
            }
        }
        // Just over the limit, small or streamed.
        for keep_below in [1 << 20, 100] {
            let h = hash_file(&root, &small, keep_below, 2999, &b).unwrap();
            assert!(matches!(
                h,
                Hash::Refused {
                    size: 3000,
                    reason: Reason::FileTooLarge,
                    ..
                }
            ));
        }
        // The push's budget runs out part-way: refused, not failed.
        let tight = ReadBudget::new(2000);
        for keep_below in [1 << 20, 100] {
            let h = hash_file(&root, &small, keep_below, u64::MAX, &tight).unwrap();
            assert!(
                matches!(
                    h,
                    Hash::Refused {
                        reason: Reason::WorkspaceTooLarge,
                        ..
                    }
                ),
                "keep_below {keep_below}"
            );
        }
    }

    #[test]
    fn cache_distrusts_fresh_files() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("f"), "x").unwrap();
        let root = Root::open(ws.path()).unwrap();
        let found = root.walk().unwrap().pop().unwrap();
        let mut c = StatCache::default();
        c.remember(&found, "h", now_ns());
        assert!(c.lookup(&found).is_none(), "a just-written file is racy");
        c.remember(&found, "h", now_ns() + 10 * RACY_NS);
        assert_eq!(c.lookup(&found), Some("h"));
    }
}
