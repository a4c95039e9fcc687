//! Landlock self-restriction: the fallback path confinement for hosts
//! without AppArmor. runc cannot apply Landlock, so the agent, the
//! container's first process after tini, restricts itself before it serves
//! or spawns anything; every process it starts inherits the domain.
//!
//! Read and execute everywhere; read-write only on the workspace, `/tmp`,
//! `HOME` and a few device files. Everything else, world-writable or not
//! (`/dev/shm`, `/proc/self/*`, the socket directory), stays read-only.

use agent_protocol::{Confinement, Enforcement, PathLayer};
use landlock::{
    Access, AccessFs, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};
use std::path::{Path, PathBuf};

/// The ABI whose rights we ask for: v5 adds device ioctls, v6 scopes
/// signals and abstract sockets to the domain. Newer kernels enforce all of
/// it; older ones get what they support (best effort), and the report says
/// "partially".
const TARGET_ABI: ABI = ABI::V6;

/// Device files a shell and the CLI need to write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Where the agent may write, besides [`DEVICES`].
#[derive(Clone, Debug)]
pub struct Policy {
    pub read_write: Vec<PathBuf>,
}

impl Policy {
    /// The workspace, `/tmp` and `home` (normally inside the workspace).
    pub fn new(workspace: &Path, home: Option<&Path>) -> Self {
        let mut read_write = vec![workspace.to_owned(), PathBuf::from("/tmp")];
        if let Some(h) = home {
            if !read_write.iter().any(|p| h.starts_with(p)) {
                read_write.push(h.to_owned());
            }
        }
        Self { read_write }
    }
}

/// Applies the policy to this process unless `layer` says AppArmor already
/// confines it. Must run while the process has one thread: Landlock
/// restricts the calling thread and the threads it creates afterwards.
///
/// On the gVisor tier Landlock is still tried: only a kernel that answers
/// it has none (gVisor's) lets the agent rely on gVisor instead, so a runc
/// container told `gvisor` by mistake is confined all the same.
pub fn apply(layer: PathLayer, policy: &Policy) -> Confinement {
    if layer == PathLayer::Apparmor {
        return Confinement {
            layer,
            landlock: Enforcement::Skipped,
            landlock_abi: None,
            detail: Some("AppArmor profile confines this container".to_owned()),
        };
    }
    let c = apply_landlock(policy);
    if layer == PathLayer::Gvisor && c.landlock == Enforcement::NotEnforced {
        let why = c.detail.unwrap_or_default();
        return Confinement {
            layer,
            landlock: Enforcement::Skipped,
            landlock_abi: None,
            detail: Some(format!(
                "gVisor's kernel confines this container; it implements no Landlock ({why})"
            )),
        };
    }
    c
}

fn apply_landlock(policy: &Policy) -> Confinement {
    let layer = PathLayer::Landlock;
    match restrict(policy) {
        Ok((ruleset, status)) => {
            let abi = match status {
                LandlockStatus::Available {
                    effective_abi,
                    kernel_abi,
                } => Some(kernel_abi.unwrap_or(effective_abi as i32)),
                LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => None,
            };
            let (landlock, detail) = match ruleset {
                RulesetStatus::FullyEnforced => (Enforcement::FullyEnforced, None),
                RulesetStatus::PartiallyEnforced => (
                    Enforcement::PartiallyEnforced,
                    Some(format!(
                        "the kernel lacks some rights of Landlock ABI {}",
                        TARGET_ABI as i32
                    )),
                ),
                RulesetStatus::NotEnforced => (
                    Enforcement::NotEnforced,
                    Some(format!("kernel Landlock status: {status:?}")),
                ),
            };
            Confinement {
                layer,
                landlock,
                landlock_abi: abi,
                detail,
            }
        }
        Err(e) => Confinement {
            layer,
            landlock: Enforcement::NotEnforced,
            landlock_abi: None,
            detail: Some(e.to_string()),
        },
    }
}

fn restrict(policy: &Policy) -> Result<(RulesetStatus, LandlockStatus), RulesetError> {
    let read = AccessFs::from_read(TARGET_ABI);
    let all = AccessFs::from_all(TARGET_ABI);
    let file = AccessFs::from_file(TARGET_ABI);
    let mut rules: Vec<PathBeneath<PathFd>> = Vec::new();
    // A path that does not exist here (no /dev/tty without a terminal, no
    // HOME yet) simply gets no rule: nothing beneath it is writable then.
    let mut add = |path: &Path, access| {
        if let Ok(fd) = PathFd::new(path) {
            rules.push(PathBeneath::new(fd, access));
        }
    };
    add(Path::new("/"), read);
    for dir in &policy.read_write {
        add(dir, all);
    }
    for dev in DEVICES {
        add(Path::new(dev), file);
    }
    let status = Ruleset::default()
        .handle_access(all)?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?
        .add_rules(rules.into_iter().map(Ok::<_, RulesetError>))?
        .restrict_self()?;
    Ok((status.ruleset, status.landlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_inside_the_workspace_adds_no_rule() {
        let p = Policy::new(
            Path::new("/workspace"),
            Some(Path::new("/workspace/.agentbox/home")),
        );
        assert_eq!(
            p.read_write,
            vec![PathBuf::from("/workspace"), PathBuf::from("/tmp")]
        );
        let p = Policy::new(Path::new("/workspace"), Some(Path::new("/home/agent")));
        assert_eq!(p.read_write.len(), 3);
    }

    #[test]
    fn apparmor_skips_landlock() {
        let c = apply(
            PathLayer::Apparmor,
            &Policy::new(Path::new("/workspace"), None),
        );
        assert_eq!(c.landlock, Enforcement::Skipped);
    }

    /// Restricts one spawned thread (Landlock domains are per thread, so
    /// the test runner itself stays free) and checks that writes outside
    /// the policy fail while writes inside work.
    #[test]
    fn restriction_blocks_writes_outside_the_policy() {
        let rw = scratch_dir("rw");
        let outside = scratch_dir("outside");
        let (rw2, outside2) = (rw.clone(), outside.clone());
        let (c, inside_ok, outside_denied) = std::thread::spawn(move || {
            let c = apply(
                PathLayer::Landlock,
                &Policy {
                    read_write: vec![rw2.clone()],
                },
            );
            let inside_ok = std::fs::write(rw2.join("a"), "x").is_ok();
            let outside_denied = std::fs::write(outside2.join("b"), "x").is_err();
            (c, inside_ok, outside_denied)
        })
        .join()
        .unwrap();
        assert!(inside_ok, "{c:?}");
        match c.landlock {
            Enforcement::FullyEnforced | Enforcement::PartiallyEnforced => {
                assert!(outside_denied, "{c:?}");
                assert!(c.landlock_abi.is_some_and(|v| v >= 1), "{c:?}");
            }
            // A kernel without Landlock: the report must say so.
            other => assert_eq!(other, Enforcement::NotEnforced),
        }
        let _ = std::fs::remove_dir_all(rw);
        let _ = std::fs::remove_dir_all(outside);
    }

    /// On a kernel with Landlock (this host, a runc container) the gVisor
    /// layer changes nothing: Landlock is applied and reported.
    #[test]
    fn gvisor_layer_never_weakens_a_kernel_with_landlock() {
        let rw = scratch_dir("gv");
        let rw2 = rw.clone();
        let c = std::thread::spawn(move || {
            apply(
                PathLayer::Gvisor,
                &Policy {
                    read_write: vec![rw2],
                },
            )
        })
        .join()
        .unwrap();
        match c.landlock {
            Enforcement::FullyEnforced | Enforcement::PartiallyEnforced => {
                assert_eq!(c.layer, PathLayer::Landlock, "{c:?}")
            }
            // Only a kernel without Landlock hands confinement to gVisor.
            other => {
                assert_eq!(other, Enforcement::Skipped, "{c:?}");
                assert_eq!(c.layer, PathLayer::Gvisor, "{c:?}");
            }
        }
        let _ = std::fs::remove_dir_all(rw);
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ll-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
