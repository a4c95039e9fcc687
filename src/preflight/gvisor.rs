//! The gVisor tier: `runsc` installed, registered with the engine under
//! `container.gvisor_runtime` with the arguments the agent needs, and on
//! which platform. [`check`] is pure; [`installed`] reads the host.

use super::Check;
use crate::runtime::EngineRuntime;
use std::path::{Path, PathBuf};

const NAME: &str = "gvisor";

const INSTALL: &str = "apt-get install runsc, then register it: \
    appliance/install.sh does, or add \"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \
    \"runtimeArgs\": [\"--network=none\", \"--host-uds=all\"]}} \
    to /etc/docker/daemon.json and send dockerd SIGHUP (see docs/isolation.md)";

/// Where `runsc` is on this host: the registered path when it exists, else
/// the first `runsc` on `PATH`.
pub(crate) fn installed(registered: Option<&EngineRuntime>) -> Option<PathBuf> {
    if let Some(p) = registered.map(|r| Path::new(&r.path)) {
        if p.is_absolute() && p.is_file() {
            return Some(p.to_owned());
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("runsc"))
        .find(|p| p.is_file())
}

/// Judges the tier's runtime. `in_use` says whether a tier setting or a
/// tenant asks for gVisor: only then is its absence a failure.
pub(crate) fn check(
    in_use: bool,
    name: &str,
    registered: Option<&EngineRuntime>,
    installed: Option<&Path>,
) -> Check {
    let used = if in_use {
        "the gVisor tier is in use"
    } else {
        "no tenant uses the gVisor tier"
    };
    let Some(rt) = registered else {
        let found = match installed {
            Some(p) => format!("runsc installed at {} but not registered", p.display()),
            None => "runsc not installed".to_owned(),
        };
        let detail = format!("{found} as runtime {name:?}; {used}");
        return match (in_use, installed) {
            (true, _) => Check::fail(NAME, detail, INSTALL),
            (false, Some(_)) => Check::warn(NAME, detail, INSTALL),
            (false, None) => Check::pass(NAME, detail),
        };
    };
    let detail = format!(
        "runtime {name:?} registered ({}, platform {}, args {}); {used}",
        rt.path,
        rt.gvisor_platform(),
        rt.args.join(" ")
    );
    let fix_args = "add the missing arguments to the runtime's runtimeArgs in /etc/docker/daemon.json and send dockerd SIGHUP";
    if installed.is_none() {
        // The engine's host may not be this one (a mounted socket), so an
        // unused tier only warns.
        let detail = format!("{detail}; but {} does not exist on this host", rt.path);
        return match in_use {
            true => Check::fail(NAME, detail, INSTALL),
            false => Check::warn(NAME, detail, INSTALL),
        };
    }
    if !rt.gvisor_host_uds() {
        let detail =
            format!("{detail}; without --host-uds=all the agent cannot serve or reach its sockets");
        return match in_use {
            true => Check::fail(NAME, detail, fix_args),
            false => Check::warn(NAME, detail, fix_args),
        };
    }
    // Informational: with --oci-seccomp the CLI aborts inside runsc
    // 20221219, so the profile stays off in the sandbox (docs/isolation.md).
    let seccomp = match rt.flag("oci-seccomp") {
        true => "our seccomp profile also applies inside the sandbox",
        false => "gVisor's own seccomp filter shields the host kernel",
    };
    Check::pass(NAME, format!("{detail}; {seccomp}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    fn rt(args: &[&str]) -> EngineRuntime {
        EngineRuntime {
            path: "/usr/bin/runsc".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn levels_follow_use_and_registration() {
        let bin = Some(Path::new("/usr/bin/runsc"));
        let full = rt(&["--network=none", "--host-uds=all"]);
        let c = check(true, "runsc", Some(&full), bin);
        assert_eq!(c.level, Level::Pass, "{c:?}");
        assert!(c.detail.contains("platform ptrace"), "{c:?}");
        assert_eq!(check(true, "runsc", None, bin).level, Level::Fail);
        assert_eq!(check(true, "runsc", None, None).level, Level::Fail);
        assert_eq!(check(false, "runsc", None, bin).level, Level::Warn);
        assert_eq!(check(false, "runsc", None, None).level, Level::Pass);
        assert_eq!(check(true, "runsc", Some(&full), None).level, Level::Fail);
        assert_eq!(check(false, "runsc", Some(&full), None).level, Level::Warn);
        let c = check(true, "runsc", Some(&rt(&["--network=none"])), bin);
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("--host-uds=all"), "{c:?}");
        let c = check(
            true,
            "runsc",
            Some(&rt(&["--host-uds=all", "--oci-seccomp"])),
            bin,
        );
        assert!(c.detail.contains("inside the sandbox"), "{c:?}");
        assert!(!check(true, "runsc", None, None).fix.is_empty());
    }
}
