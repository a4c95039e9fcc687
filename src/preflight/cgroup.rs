//! The host's cgroup layout: version 1 (one hierarchy per controller,
//! what this build machine has) or version 2 (one unified tree, what a
//! stock Debian 12 host has), and whether the controllers behind the
//! container limits (cpu, memory, pids) are there. Read from a root
//! directory so tests run against fixture trees of each layout.

use super::Check;
use crate::runtime::EngineInfo;
use std::fmt;
use std::path::Path;

/// The controllers the container spec sets limits through.
pub(crate) const REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// What [`read_layout`] found under the cgroup root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub version: CgroupVersion,
    /// Of [`REQUIRED`], the controllers the host lacks.
    pub missing: Vec<&'static str>,
}

/// Reads the layout under `root` (`/sys/fs/cgroup` on a host). A unified
/// root has `cgroup.controllers`; a v1 root has one directory per
/// controller (or per group of them, `cpu,cpuacct`). A hybrid host (v1
/// controllers with an empty v2 tree at `unified/`) counts as v1, since
/// that is where Docker puts the limits.
pub(crate) fn read_layout(root: &Path) -> Option<Layout> {
    if let Ok(text) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let have: Vec<&str> = text.split_whitespace().collect();
        return Some(Layout {
            version: CgroupVersion::V2,
            missing: REQUIRED.into_iter().filter(|c| !have.contains(c)).collect(),
        });
    }
    let dirs: Vec<String> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let has = |c: &str| dirs.iter().any(|d| d.split(',').any(|part| part == c));
    if !REQUIRED.iter().any(|c| has(c)) {
        return None;
    }
    Some(Layout {
        version: CgroupVersion::V1,
        missing: REQUIRED.into_iter().filter(|c| !has(c)).collect(),
    })
}

/// The doctor's `cgroup` check: the version found on the host, the one
/// Docker reports, and whether the limits can be enforced. Both versions
/// are supported (Docker 20.10, the oldest engine we accept, has v2).
pub(crate) fn check(layout: Option<&Layout>, engine: Option<&EngineInfo>) -> Check {
    const NAME: &str = "cgroup";
    let Some(layout) = layout else {
        return Check::fail(
            NAME,
            "no cgroup hierarchy under /sys/fs/cgroup",
            "mount the cgroup filesystem (systemd does this at boot)",
        );
    };
    let engine_says = engine
        .filter(|e| !e.cgroup_version.is_empty())
        .map(|e| {
            format!(
                "; Docker uses cgroup v{} with the {} driver",
                e.cgroup_version,
                if e.cgroup_driver.is_empty() {
                    "default"
                } else {
                    &e.cgroup_driver
                }
            )
        })
        .unwrap_or_default();
    let detail = format!("cgroup {} on the host{engine_says}", layout.version);
    if !layout.missing.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{detail}; missing controllers: {} (the container limits need them)",
                layout.missing.join(", ")
            ),
            "enable them (cgroup v2: systemd's Delegate=, or the kernel's cgroup_enable=)",
        );
    }
    let docker_version = engine.and_then(|e| match e.cgroup_version.as_str() {
        "1" => Some(CgroupVersion::V1),
        "2" => Some(CgroupVersion::V2),
        _ => None,
    });
    match docker_version {
        Some(v) if v != layout.version => Check::warn(
            NAME,
            format!("{detail}: the two disagree"),
            "restart dockerd so that it sees the host's cgroup layout",
        ),
        _ => Check::pass(
            NAME,
            format!("{detail}; cpu, memory and pids controllers present (supported)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    fn tree(dirs: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for (f, text) in files {
            std::fs::write(t.path().join(f), text).unwrap();
        }
        t
    }

    fn engine(version: &str) -> EngineInfo {
        EngineInfo {
            cgroup_version: version.into(),
            cgroup_driver: "cgroupfs".into(),
            ..Default::default()
        }
    }

    #[test]
    fn v1_with_combined_cpu_directory() {
        let t = tree(&["cpu,cpuacct", "memory", "pids", "blkio", "unified"], &[]);
        let l = read_layout(t.path()).unwrap();
        assert_eq!(l.version, CgroupVersion::V1);
        assert!(l.missing.is_empty());
        let c = check(Some(&l), Some(&engine("1")));
        assert_eq!(c.level, Level::Pass, "{c:?}");
        assert!(c.detail.contains("cgroup v1 on the host"), "{}", c.detail);
        assert!(c.detail.contains("Docker uses cgroup v1"), "{}", c.detail);
    }

    #[test]
    fn v2_unified_tree() {
        let t = tree(
            &["system.slice"],
            &[(
                "cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma\n",
            )],
        );
        let l = read_layout(t.path()).unwrap();
        assert_eq!(l.version, CgroupVersion::V2);
        assert_eq!(check(Some(&l), Some(&engine("2"))).level, Level::Pass);
    }

    #[test]
    fn missing_controller_fails_and_names_it() {
        let t = tree(&[], &[("cgroup.controllers", "cpu memory\n")]);
        let l = read_layout(t.path()).unwrap();
        assert_eq!(l.missing, ["pids"]);
        let c = check(Some(&l), None);
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("pids"), "{}", c.detail);
        let v1 = tree(&["memory", "cpu"], &[]);
        assert_eq!(read_layout(v1.path()).unwrap().missing, ["pids"]);
    }

    #[test]
    fn disagreement_with_docker_warns_and_nothing_fails() {
        let t = tree(&[], &[("cgroup.controllers", "cpu memory pids")]);
        let l = read_layout(t.path()).unwrap();
        assert_eq!(check(Some(&l), Some(&engine("1"))).level, Level::Warn);
        let empty = tree(&[], &[]);
        assert_eq!(read_layout(empty.path()), None);
        assert_eq!(check(None, None).level, Level::Fail);
    }
}
