//! A container's CPU weight written straight into its cgroup.
//!
//! The engine changes a weight with `runc update`, a process start per
//! container: about 10 ms alone and much more when fifty claims ask at
//! once, while the claimed run waits on the low weight. Writing the
//! cgroup's `cpu.shares` is one small write. Only cgroup v1 is handled:
//! there `cpu.shares` is the engine's own unit, so the file ends as the
//! engine would leave it; on v2 the engine converts shares to
//! `cpu.weight` by a formula that changed between runc versions, so the
//! engine does it.
//!
//! The two kernel files read here (`/proc/<pid>/cgroup`, three
//! colon-separated fields a line, and `/proc/self/mountinfo`) are parsed
//! by hand: a crate for them would bring a dependency tree for a few
//! lines of splitting.

use std::io;
use std::path::{Path, PathBuf};

/// Where one container's CPU weight lives on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CpuWeightFile(PathBuf);

impl CpuWeightFile {
    /// The `cpu.shares` file of the v1 cgroup of container `id` (the
    /// engine's full id), whose init is host process `pid`. The cgroup's
    /// path must name the id (the engine's `docker/<id>` or
    /// `docker-<id>.scope`): a pid the kernel reused after the container
    /// died names another cgroup, which is never written.
    pub(crate) fn of_container(id: &str, pid: i64) -> io::Result<Self> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let dir = cpu_dir(&cgroups, &mountinfo).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no cgroup v1 cpu controller")
        })?;
        let leaf = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        if id.is_empty() || !leaf.is_some_and(|n| n.contains(id)) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not the container's cgroup", dir.display()),
            ));
        }
        let file = dir.join("cpu.shares");
        // Present means the layout is what this reads it as.
        std::fs::metadata(&file)?;
        Ok(Self(file))
    }

    pub(crate) fn write(&self, shares: i64) -> io::Result<()> {
        std::fs::write(&self.0, shares.to_string())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// The host directory of the v1 `cpu` cgroup named in `cgroups` (a
/// `/proc/<pid>/cgroup`), under its mount in `mountinfo`.
fn cpu_dir(cgroups: &str, mountinfo: &str) -> Option<PathBuf> {
    let path = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    // mountinfo: id parent major:minor root mountpoint options... - fstype source super-options
    let (root, mountpoint) = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == "cpu") {
            return None;
        }
        let left: Vec<&str> = left.split(' ').collect();
        Some((*left.get(3)?, *left.get(4)?))
    })?;
    // A cgroup outside the mounted part of the hierarchy is not reachable.
    let relative = Path::new(path).strip_prefix(root).ok()?;
    if relative
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return None;
    }
    Some(Path::new(mountpoint).join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
25 30 0:23 / /sys ro,nosuid shared:7 - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
37 31 0:33 / /sys/fs/cgroup/cpuset rw,nosuid shared:16 - cgroup cgroup rw,cpuset
";

    #[test]
    fn a_v1_container_cgroup_is_found_under_the_cpu_mount() {
        let cgroups = "12:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(
            cpu_dir(cgroups, MOUNTINFO_V1),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc"))
        );
        // cpu mounted on its own.
        let alone = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                     33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n";
        assert_eq!(
            cpu_dir("5:cpuacct:/docker/abc\n4:cpu:/docker/abc\n", alone),
            Some(PathBuf::from("/sys/fs/cgroup/cpu/docker/abc"))
        );
    }

    #[test]
    fn cpuset_is_not_cpu_and_v2_has_no_cpu_shares() {
        // Only cpuset and the unified hierarchy: nothing to write.
        let cgroups = "12:cpuset:/docker/abc\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(cpu_dir(cgroups, MOUNTINFO_V1), None);
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cpu_dir("0::/system.slice/docker-abc.scope\n", v2), None);
    }

    #[test]
    fn a_cgroup_that_does_not_name_the_container_is_refused() {
        // This test's own process: whatever its cgroup, not the container's.
        let me = i64::from(std::process::id());
        assert!(CpuWeightFile::of_container("0123abcd", me).is_err());
        assert!(CpuWeightFile::of_container("", me).is_err());
    }

    #[test]
    fn a_mount_of_part_of_the_hierarchy_is_joined_below_its_root() {
        let mountinfo = "36 31 0:32 /docker /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cpu_dir("4:cpu:/docker/abc\n", mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/cpu/abc"))
        );
        // Outside the mounted part, or climbing out of it: not reachable.
        assert_eq!(cpu_dir("4:cpu:/other/abc\n", mountinfo), None);
        assert_eq!(cpu_dir("4:cpu:/docker/../etc\n", mountinfo), None);
    }
}
