//! Scanning a workspace: the walk's findings, content hashes, and the stat
//! cache that lets an unchanged file skip hashing (size, mtime, ctime and
//! inode all equal, the way git's index and rsync's quick check work).

use super::fsx::{Found, Root};
use super::paths::RelPath;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;

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

/// Hashes one file, reading it through [`Root`] (never through a link).
/// Files below `keep_below` bytes come back with their content, so a
/// changed small file is read once for hashing and upload together.
pub fn hash_file(root: &Root, path: &RelPath, keep_below: u64) -> std::io::Result<Hashed> {
    let mut f = root.open_file(path)?;
    let len = f.metadata()?.len();
    let mut hasher = Sha256::new();
    if len < keep_below {
        let mut buf = Vec::with_capacity(len as usize);
        // One byte more than expected shows a file that grew meanwhile.
        f.by_ref().take(keep_below).read_to_end(&mut buf)?;
        if buf.len() as u64 >= keep_below {
            return hash_stream(f, hasher, buf);
        }
        hasher.update(&buf);
        return Ok(Hashed {
            sha256: hex::encode(hasher.finalize()),
            size: buf.len() as u64,
            data: Some(Bytes::from(buf)),
        });
    }
    hash_stream(f, hasher, Vec::new())
}

fn hash_stream(mut f: std::fs::File, mut hasher: Sha256, head: Vec<u8>) -> std::io::Result<Hashed> {
    hasher.update(&head);
    let mut size = head.len() as u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Hashed {
        sha256: hex::encode(hasher.finalize()),
        size,
        data: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_small_and_large_alike() {
        let ws = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(ws.path().join("f"), &data).unwrap();
        let root = Root::open(ws.path()).unwrap();
        let p = RelPath::parse("f").unwrap();
        let small = hash_file(&root, &p, 1 << 20).unwrap();
        let large = hash_file(&root, &p, 100).unwrap();
        let exact = hash_file(&root, &p, 3000).unwrap();
        assert_eq!(small.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(small.sha256, large.sha256);
        assert_eq!(small.sha256, exact.sha256);
        assert_eq!(small.data.as_deref(), Some(&data[..]));
        assert!(large.data.is_none() && exact.data.is_none());
        assert_eq!(large.size, 3000);
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
