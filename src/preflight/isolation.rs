//! Which isolation layers protect the workspace containers on this host:
//! seccomp, AppArmor (or its fallback, Landlock) and userns-remap.
//!
//! Docker drops `--security-opt apparmor=...` silently on hosts without
//! AppArmor, so the only honest answer comes from asking the kernel and the
//! engine. Until the isolation work exposes its own report, this module
//! detects the layers itself; [`assess`] is pure so the two can be swapped.

use super::Check;
use crate::runtime::EngineInfo;
use serde::Serialize;

/// The AppArmor profile every workspace container runs under.
pub(crate) const APPARMOR_PROFILE: &str = "workspace-container";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LayerState {
    /// Applied to the containers.
    Active,
    /// The host supports it but it is not (yet) applied.
    Available,
    Absent,
    /// The engine could not be asked.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Layer {
    pub state: LayerState,
    pub detail: String,
}

fn layer(state: LayerState, detail: impl Into<String>) -> Layer {
    Layer {
        state,
        detail: detail.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct IsolationLayers {
    pub seccomp: Layer,
    pub apparmor: Layer,
    pub landlock: Layer,
    pub userns_remap: Layer,
}

/// What the kernel says, read once by [`HostFacts::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostFacts {
    /// `Seccomp:` appears in `/proc/self/status`.
    pub seccomp: bool,
    /// `/sys/module/apparmor/parameters/enabled` is `Y`.
    pub apparmor_enabled: bool,
    /// The loaded profiles (`/sys/kernel/security/apparmor/profiles`).
    pub apparmor_profiles: String,
    /// The Landlock ABI version, or the errno the kernel answered.
    pub landlock: Result<u32, i32>,
}

impl Default for HostFacts {
    /// Nothing known: every layer absent.
    fn default() -> Self {
        Self {
            seccomp: false,
            apparmor_enabled: false,
            apparmor_profiles: String::new(),
            landlock: Err(libc::ENOSYS),
        }
    }
}

impl HostFacts {
    pub(crate) fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let apparmor_enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        Self {
            seccomp: status.lines().any(|l| l.starts_with("Seccomp:")),
            apparmor_enabled,
            apparmor_profiles: std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
                .unwrap_or_default(),
            landlock: landlock_abi(),
        }
    }
}

/// Asks the kernel for its Landlock ABI version.
fn landlock_abi() -> Result<u32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the syscall only returns a number; it reads and writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r >= 1 {
        Ok(r as u32)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Combines the engine's security options with the kernel's facts.
pub(crate) fn assess(engine: Option<&EngineInfo>, host: &HostFacts) -> IsolationLayers {
    let opt = |name: &str| -> Option<String> {
        engine?
            .security_options
            .iter()
            .find(|o| o.split(',').any(|kv| kv == format!("name={name}")))
            .cloned()
    };
    let seccomp = match (engine, host.seccomp) {
        (_, false) => layer(LayerState::Absent, "the kernel has no seccomp"),
        (None, true) => layer(LayerState::Unknown, "the engine could not be asked"),
        (Some(_), true) => match opt("seccomp") {
            Some(o) => {
                let profile = o
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("profile="))
                    .unwrap_or("default");
                layer(
                    LayerState::Active,
                    format!("engine applies seccomp (profile {profile})"),
                )
            }
            None => layer(LayerState::Absent, "the engine does not support seccomp"),
        },
    };
    let loaded = host
        .apparmor_profiles
        .lines()
        .any(|l| l.split_whitespace().next() == Some(APPARMOR_PROFILE));
    let apparmor = if !host.apparmor_enabled {
        layer(LayerState::Absent, "the kernel has no AppArmor")
    } else if engine.is_some() && opt("apparmor").is_none() {
        layer(LayerState::Absent, "the engine does not use AppArmor")
    } else if loaded {
        layer(
            LayerState::Active,
            format!("profile {APPARMOR_PROFILE} loaded"),
        )
    } else {
        layer(
            LayerState::Available,
            format!("AppArmor is on but profile {APPARMOR_PROFILE} is not loaded"),
        )
    };
    let landlock = match host.landlock {
        Ok(abi) => layer(LayerState::Available, format!("Landlock ABI {abi}")),
        Err(libc::EOPNOTSUPP) => layer(
            LayerState::Absent,
            "Landlock is built in but disabled at boot (lsm=)",
        ),
        Err(_) => layer(LayerState::Absent, "the kernel has no Landlock"),
    };
    let userns_remap = match engine {
        None => layer(LayerState::Unknown, "the engine could not be asked"),
        Some(_) if opt("userns").is_some() => {
            layer(LayerState::Active, "the engine remaps container users")
        }
        Some(_) => layer(LayerState::Absent, "the engine runs without --userns-remap"),
    };
    IsolationLayers {
        seccomp,
        apparmor,
        landlock,
        userns_remap,
    }
}

/// The doctor's lines for the layers.
pub(crate) fn checks(l: &IsolationLayers) -> Vec<Check> {
    use LayerState::*;
    let mut out = Vec::new();
    out.push(match l.seccomp.state {
        Active => Check::pass("seccomp", &l.seccomp.detail),
        _ => Check::fail(
            "seccomp",
            &l.seccomp.detail,
            "run a kernel with CONFIG_SECCOMP and a Docker engine built with seccomp",
        ),
    });
    let landlock_ok = l.landlock.state == Available || l.landlock.state == Active;
    out.push(match (l.apparmor.state, landlock_ok) {
        (Active, _) => Check::pass("apparmor", &l.apparmor.detail),
        (Available, _) => Check::fail(
            "apparmor",
            &l.apparmor.detail,
            format!("apparmor_parser -r -W apparmor/{APPARMOR_PROFILE}"),
        ),
        (_, true) => Check::warn(
            "apparmor",
            format!(
                "AppArmor absent ({}); Landlock is the fallback",
                l.apparmor.detail
            ),
            "nothing to do while Landlock is available; for AppArmor, boot a kernel with it \
             enabled and load apparmor/workspace-container",
        ),
        (_, false) => Check::fail(
            "apparmor",
            format!(
                "AppArmor absent ({}) and no Landlock either",
                l.apparmor.detail
            ),
            "boot a kernel with AppArmor, or Landlock (Linux >= 5.13, lsm=...,landlock)",
        ),
    });
    out.push(if landlock_ok {
        let state = if l.landlock.state == Active {
            "active"
        } else {
            "available"
        };
        Check::pass("landlock", format!("{} {state}", l.landlock.detail))
    } else if l.apparmor.state == Active {
        Check::pass(
            "landlock",
            format!("{}; not needed, AppArmor is active", l.landlock.detail),
        )
    } else {
        Check::warn(
            "landlock",
            &l.landlock.detail,
            "boot Linux >= 5.13 with landlock in the lsm= list",
        )
    });
    out.push(match l.userns_remap.state {
        Active => Check::pass("userns-remap", &l.userns_remap.detail),
        // A warning, not a failure: it is defence in depth against a
        // container escape (the escaped process lands as an unprivileged,
        // unmapped uid), every other layer applies without it, and stock
        // engines run without it. docs/operations.md says what is lost.
        Absent => Check::warn(
            "userns-remap",
            format!(
                "{}; a container's uid is the same uid on the host",
                l.userns_remap.detail
            ),
            "set \"userns-remap\": \"default\" in /etc/docker/daemon.json \
             (appliance/docker-daemon.json) and restart dockerd",
        ),
        _ => Check::fail(
            "userns-remap",
            &l.userns_remap.detail,
            "set \"userns-remap\": \"default\" in /etc/docker/daemon.json and restart dockerd",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    fn engine(opts: &[&str]) -> EngineInfo {
        EngineInfo {
            security_options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn debian_host() -> HostFacts {
        HostFacts {
            seccomp: true,
            apparmor_enabled: false,
            apparmor_profiles: String::new(),
            landlock: Ok(7),
        }
    }

    #[test]
    fn no_apparmor_with_landlock_warns() {
        let l = assess(
            Some(&engine(&["name=seccomp,profile=default"])),
            &debian_host(),
        );
        assert_eq!(l.seccomp.state, LayerState::Active);
        assert_eq!(l.apparmor.state, LayerState::Absent);
        assert_eq!(l.landlock.state, LayerState::Available);
        assert_eq!(l.userns_remap.state, LayerState::Absent);
        let c = checks(&l);
        let level = |n: &str| c.iter().find(|c| c.name == n).unwrap().level;
        assert_eq!(level("seccomp"), Level::Pass);
        assert_eq!(level("apparmor"), Level::Warn);
        assert_eq!(level("landlock"), Level::Pass);
        assert_eq!(level("userns-remap"), Level::Warn);
    }

    #[test]
    fn apparmor_without_profile_fails_and_loaded_passes() {
        let mut host = debian_host();
        host.apparmor_enabled = true;
        let e = engine(&[
            "name=apparmor",
            "name=seccomp,profile=default",
            "name=userns",
        ]);
        let l = assess(Some(&e), &host);
        assert_eq!(l.apparmor.state, LayerState::Available);
        assert_eq!(checks(&l)[1].level, Level::Fail);
        host.apparmor_profiles = "docker-default (enforce)\nworkspace-container (enforce)\n".into();
        let l = assess(Some(&e), &host);
        assert_eq!(l.apparmor.state, LayerState::Active);
        assert_eq!(l.userns_remap.state, LayerState::Active);
        assert!(checks(&l).iter().all(|c| c.level == Level::Pass));
    }

    #[test]
    fn neither_mac_layer_fails() {
        let mut host = debian_host();
        host.landlock = Err(libc::ENOSYS);
        let l = assess(None, &host);
        assert_eq!(l.seccomp.state, LayerState::Unknown);
        let c = checks(&l);
        assert_eq!(c[1].level, Level::Fail);
    }
}
