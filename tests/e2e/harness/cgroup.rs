//! A container's cgroup files, read from the host in either layout (v1:
//! one hierarchy per controller, as on this build machine; v2: one
//! unified tree, as on a stock Debian 12 host), so resource tests measure
//! what the kernel enforced rather than what a process inside reports.
//! The layout logic takes its root and `/proc/PID/cgroup` text as
//! arguments, so the fixture tests below cover both layouts on any host.

use super::engine::inspect;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directory under `root` that holds `controller`'s files for
/// the process whose `/proc/PID/cgroup` is `proc_cgroup`: the unified
/// directory (`0::/path`) when no v1 hierarchy names the controller.
pub fn dir_in(root: &Path, proc_cgroup: &str, controller: &str) -> Option<PathBuf> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(rel));
        } else if controllers.split(',').any(|c| c == controller) {
            return Some(root.join(controllers).join(rel));
        }
    }
    // A hybrid host lists an empty v2 tree too: use it only when it holds
    // the controller's files (a real v2 host lists nothing else).
    unified.filter(|d| {
        std::fs::read_to_string(d.join("cgroup.controllers"))
            .map(|t| t.split_whitespace().any(|c| c == controller))
            .unwrap_or(false)
    })
}

/// The value of `key` in a flat-keyed cgroup file (`cpu.stat`, ...).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One process's cgroup files, wherever the layout puts them.
pub struct Cgroups {
    root: PathBuf,
    proc_cgroup: String,
}

impl Cgroups {
    pub fn new(root: &Path, proc_cgroup: &str) -> Self {
        Self {
            root: root.to_owned(),
            proc_cgroup: proc_cgroup.to_owned(),
        }
    }

    /// The cgroups of `container`'s init process on this host.
    pub fn of(container: &str) -> Self {
        let pid = inspect(container)["State"]["Pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{container} has no pid"));
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_else(|e| panic!("cgroup of {container}: {e}"));
        Self::new(Path::new(ROOT), &text)
    }

    pub fn dir(&self, controller: &str) -> PathBuf {
        dir_in(&self.root, &self.proc_cgroup, controller).unwrap_or_else(|| {
            panic!(
                "no {controller} cgroup under {}: {}",
                self.root.display(),
                self.proc_cgroup
            )
        })
    }

    /// Whether the memory controller lives in the unified (v2) tree.
    pub fn is_v2(&self) -> bool {
        self.dir("memory").join("memory.max").exists()
    }

    pub fn read(&self, controller: &str, file: &str) -> String {
        let path = self.dir(controller).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// OOM kills in the memory cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        keyed(&self.read("memory", file), "oom_kill").unwrap_or(0)
    }

    /// CPU time used so far, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        if self.is_v2() {
            keyed(&self.read("cpu", "cpu.stat"), "usage_usec").unwrap_or(0) * 1000
        } else {
            self.read("cpuacct", "cpuacct.usage").parse().unwrap_or(0)
        }
    }

    /// The CFS quota as `(quota_us, period_us)`; `None` when unlimited.
    pub fn cpu_quota(&self) -> Option<(u64, u64)> {
        let (quota, period) = if self.is_v2() {
            let max = self.read("cpu", "cpu.max");
            let mut f = max.split_whitespace();
            (f.next()?.to_owned(), f.next()?.to_owned())
        } else {
            (
                self.read("cpu", "cpu.cfs_quota_us"),
                self.read("cpu", "cpu.cfs_period_us"),
            )
        };
        Some((quota.parse().ok()?, period.parse().ok()?))
    }

    /// The CPU weight as the kernel has it, with its file: v1's
    /// `cpu.shares` (the engine's unit) or v2's `cpu.weight` (the engine's
    /// conversion of it, which differs between runc versions).
    pub fn cpu_weight(&self) -> (&'static str, i64) {
        let file = if self.is_v2() {
            "cpu.weight"
        } else {
            "cpu.shares"
        };
        (file, self.read("cpu", file).parse().unwrap_or(-1))
    }

    /// Periods in which the CPU quota throttled the group.
    pub fn throttled_periods(&self) -> u64 {
        keyed(&self.read("cpu", "cpu.stat"), "nr_throttled").unwrap_or(0)
    }

    /// The pids controller's (current, max, refused forks).
    pub fn pids(&self) -> (u64, u64, u64) {
        let current = self.read("pids", "pids.current").parse().unwrap_or(0);
        let max = self.read("pids", "pids.max").parse().unwrap_or(u64::MAX);
        let refused = keyed(&self.read("pids", "pids.events"), "max").unwrap_or(0);
        (current, max, refused)
    }
}

/// Shorthands on a container name, for the cases that read one value.
pub fn is_v2(container: &str) -> bool {
    Cgroups::of(container).is_v2()
}
pub fn read(container: &str, controller: &str, file: &str) -> String {
    Cgroups::of(container).read(controller, file)
}
pub fn oom_kills(container: &str) -> u64 {
    Cgroups::of(container).oom_kills()
}
pub fn cpu_ns(container: &str) -> u64 {
    Cgroups::of(container).cpu_ns()
}
pub fn cpu_quota(container: &str) -> Option<(u64, u64)> {
    Cgroups::of(container).cpu_quota()
}
pub fn throttled_periods(container: &str) -> u64 {
    Cgroups::of(container).throttled_periods()
}
pub fn pids(container: &str) -> (u64, u64, u64) {
    Cgroups::of(container).pids()
}

#[cfg(test)]
mod layouts {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Docker on cgroup v1 with the cgroupfs driver: one hierarchy per
    /// controller, cpu and cpuacct mounted together; plus systemd's empty
    /// unified tree of a hybrid host.
    #[test]
    fn v1_files_are_read_from_each_controllers_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let proc = "12:pids:/docker/abc\n7:cpu,cpuacct:/docker/abc\n\
                    4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n";
        write(root, "pids/docker/abc/pids.current", "7\n");
        write(root, "pids/docker/abc/pids.max", "128\n");
        write(root, "pids/docker/abc/pids.events", "max 3\n");
        write(root, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n");
        write(root, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
        write(root, "cpu,cpuacct/docker/abc/cpuacct.usage", "123456789\n");
        write(
            root,
            "cpu,cpuacct/docker/abc/cpu.stat",
            "nr_periods 9\nnr_throttled 4\n",
        );
        write(
            root,
            "memory/docker/abc/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(root, "unified/docker/abc/cgroup.procs", "");
        let g = Cgroups::new(root, proc);
        assert!(!g.is_v2());
        assert_eq!(g.dir("cpuacct"), root.join("cpu,cpuacct/docker/abc"));
        assert_eq!(g.pids(), (7, 128, 3));
        assert_eq!(g.cpu_quota(), Some((50_000, 100_000)));
        assert_eq!(g.cpu_ns(), 123_456_789);
        assert_eq!(g.throttled_periods(), 4);
        assert_eq!(g.oom_kills(), 2);
    }

    /// Docker on cgroup v2 with the systemd driver: one unified directory.
    #[test]
    fn v2_files_are_read_from_the_unified_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dir = "system.slice/docker-abc.scope";
        let proc = format!("0::/{dir}\n");
        write(
            root,
            &format!("{dir}/cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        write(root, &format!("{dir}/memory.max"), "268435456\n");
        write(
            root,
            &format!("{dir}/memory.events"),
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        );
        write(root, &format!("{dir}/cpu.max"), "50000 100000\n");
        write(
            root,
            &format!("{dir}/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nnr_periods 10\nnr_throttled 6\n",
        );
        write(root, &format!("{dir}/pids.current"), "3\n");
        write(root, &format!("{dir}/pids.max"), "max\n");
        write(root, &format!("{dir}/pids.events"), "max 0\n");
        let g = Cgroups::new(root, &proc);
        assert!(g.is_v2());
        assert_eq!(g.dir("pids"), root.join(dir));
        assert_eq!(g.oom_kills(), 1);
        assert_eq!(g.cpu_ns(), 2_500_000);
        assert_eq!(g.cpu_quota(), Some((50_000, 100_000)));
        assert_eq!(g.throttled_periods(), 6);
        assert_eq!(g.pids(), (3, u64::MAX, 0));
    }

    #[test]
    fn an_unlimited_v2_quota_and_a_missing_controller() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "a/cgroup.controllers", "cpu memory\n");
        write(root, "a/memory.max", "max\n");
        write(root, "a/cpu.max", "max 100000\n");
        assert_eq!(dir_in(root, "0::/a\n", "pids"), None);
        assert_eq!(dir_in(root, "0::/a\n", "memory"), Some(root.join("a")));
        assert_eq!(Cgroups::new(root, "0::/a\n").cpu_quota(), None);
    }
}
