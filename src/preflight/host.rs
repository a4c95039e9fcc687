//! Host facilities the containers rely on: the disk-quota mechanism.

use super::Check;
use std::path::{Path, PathBuf};

/// Finds an executable on `PATH`, then in the sbin directories a non-root
/// `PATH` often lacks.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A hard quota per workspace is a loop-mounted ext4 image, because
/// overlay2 on ext4 has no `--storage-opt size`: it needs loop devices,
/// `losetup` and `mkfs.ext4`.
pub(crate) fn disk_quota() -> Check {
    const NAME: &str = "disk-quota";
    let loop_control = Path::new("/dev/loop-control").exists();
    let missing: Vec<&str> = ["losetup", "mkfs.ext4"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    match (loop_control, missing.is_empty()) {
        (true, true) => Check::pass(
            NAME,
            "loop devices, losetup and mkfs.ext4 available (loop-mounted ext4 per workspace)",
        ),
        (false, _) => Check::fail(
            NAME,
            "no /dev/loop-control: loop devices are unavailable",
            "modprobe loop (or run where /dev/loop-control exists)",
        ),
        (true, false) => Check::fail(
            NAME,
            format!("missing {}", missing.join(", ")),
            "apt-get install e2fsprogs mount",
        ),
    }
}
