//! What the tests read and clean up on the host itself: files, a
//! process's resident memory, the quota mounts a test leaves behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts the workspace quota filesystems under `dir` (deepest first),
/// so a test's temporary directory leaves no loop mount behind.
pub fn release_mounts_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = agentbox::isolation::quota::parse_mountinfo(&info)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount").arg(&p).status();
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS`), while it lives.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
