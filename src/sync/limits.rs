//! What a push may store: each file judged by its apparent size against
//! `sync.max_file_bytes`, all of them together against
//! `sync.max_workspace_bytes`. See docs/sync.md, "Size limits".
//!
//! Why the apparent size (`st_size`) and not what a file occupies
//! (`st_blocks * 512`): every byte of the apparent size is read, hashed,
//! uploaded and stored, and written back by a restore; object stores have
//! no holes. A sparse file costs the workspace quota nothing and the sync
//! all of its length, so it is judged by its length. What it occupies is
//! kept alongside, for the audit trail and the run's `sync_skipped` event.

use super::fsx::{Found, Kind};
use super::paths::RelPath;
use crate::config::SyncConfig;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Above `sync.max_file_bytes`.
    FileTooLarge,
    /// Would take the push past `sync.max_workspace_bytes`.
    WorkspaceTooLarge,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FileTooLarge => "file_too_large",
            Self::WorkspaceTooLarge => "workspace_too_large",
        }
    }
}

/// A file a push left out of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub path: RelPath,
    /// Apparent size when it was judged.
    pub size: u64,
    /// Bytes it occupied on disk.
    pub allocated: u64,
    pub reason: Reason,
}

/// Splits a walk into what a push may store and the files it refuses.
/// Files are taken smallest first (then by path, so the outcome depends on
/// the workspace alone): when the workspace is over its budget the largest
/// files are left out, never the many small ones (sources, the CLI's
/// session). Entries that are not regular files always pass.
pub fn screen(found: Vec<Found>, limits: &SyncConfig) -> (Vec<Found>, Vec<Refused>) {
    let (mut files, mut kept): (Vec<Found>, Vec<Found>) =
        found.into_iter().partition(|f| f.kind == Kind::File);
    files.sort_unstable_by(|a, b| a.size.cmp(&b.size).then_with(|| a.path.cmp(&b.path)));
    let mut total = 0u64;
    let mut refused = Vec::new();
    for f in files {
        let reason = if f.size > limits.max_file_bytes {
            Some(Reason::FileTooLarge)
        } else if total.saturating_add(f.size) > limits.max_workspace_bytes {
            Some(Reason::WorkspaceTooLarge)
        } else {
            total += f.size;
            None
        };
        match reason {
            Some(reason) => refused.push(Refused {
                path: f.path,
                size: f.size,
                allocated: f.allocated,
                reason,
            }),
            None => kept.push(f),
        }
    }
    refused.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    (kept, refused)
}

/// Bytes a push may still read while hashing. The screen judged sizes at
/// the walk; a file the agent grows afterwards (sparse growth is free)
/// must not make the push read more than the workspace budget allowed.
#[derive(Debug)]
pub struct ReadBudget(AtomicU64);

impl ReadBudget {
    pub fn new(bytes: u64) -> Self {
        Self(AtomicU64::new(bytes))
    }

    /// Takes `n` bytes from the budget; false (and nothing taken) when
    /// fewer are left.
    pub fn spend(&self, n: u64) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SyncConfig = SyncConfig {
        max_file_bytes: 100,
        max_workspace_bytes: 250,
    };

    fn file(path: &str, size: u64, allocated: u64) -> Found {
        Found {
            path: RelPath::parse(path).unwrap(),
            kind: Kind::File,
            mode: 0o644,
            size,
            allocated,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
        }
    }

    fn names(v: &[Found]) -> Vec<&str> {
        let mut n: Vec<&str> = v.iter().map(|f| f.path.as_str()).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn a_sparse_file_is_judged_by_its_apparent_size() {
        // 16 TiB apparent, nothing allocated: `truncate -s 16T`.
        let sparse = file("sparse", 16 << 40, 0);
        // Preallocated beyond its end: only `size` bytes would travel.
        let prealloc = file("prealloc", 10, 1 << 20);
        let at_limit = file("at-limit", 100, 4096);
        let over = file("over", 101, 4096);
        let (kept, refused) = screen(vec![sparse, prealloc, at_limit, over], &LIMITS);
        assert_eq!(names(&kept), ["at-limit", "prealloc"]);
        assert_eq!(
            refused,
            [
                Refused {
                    path: RelPath::parse("over").unwrap(),
                    size: 101,
                    allocated: 4096,
                    reason: Reason::FileTooLarge,
                },
                Refused {
                    path: RelPath::parse("sparse").unwrap(),
                    size: 16 << 40,
                    allocated: 0,
                    reason: Reason::FileTooLarge,
                },
            ]
        );
    }

    #[test]
    fn the_workspace_budget_leaves_out_the_largest_files() {
        // 60 + 80 + 90 = 230 fit; the second 90 would make 320.
        let found = vec![
            file("z-small", 60, 0),
            file("a-big", 90, 0),
            file("b-big", 90, 0),
            file("m", 80, 0),
            Found {
                kind: Kind::Dir,
                ..file("dir", 4096, 4096)
            },
        ];
        let (kept, refused) = screen(found.clone(), &LIMITS);
        assert_eq!(names(&kept), ["a-big", "dir", "m", "z-small"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].path.as_str(), "b-big");
        assert_eq!(refused[0].reason, Reason::WorkspaceTooLarge);
        // The outcome does not depend on the walk's order.
        let mut reversed = found;
        reversed.reverse();
        assert_eq!(screen(reversed, &LIMITS).1, refused);
        // Many small files past the budget: each is judged, none overflows.
        let many: Vec<Found> = (0..100).map(|i| file(&format!("f{i:03}"), 10, 0)).collect();
        let (kept, refused) = screen(many, &LIMITS);
        assert_eq!((kept.len(), refused.len()), (25, 75));
    }

    #[test]
    fn the_read_budget_never_goes_below_zero() {
        let b = ReadBudget::new(10);
        assert!(b.spend(4));
        assert!(!b.spend(7), "only 6 left");
        assert!(b.spend(6));
        assert!(!b.spend(1));
        assert!(b.spend(0));
    }
}
