//! The workspace seccomp profile: the embedded default
//! (`seccomp/workspace.json`) or an operator's file, checked and compacted
//! into the form Docker takes inline (`security_opt: ["seccomp=<json>"]`).

use super::IsolationError;
use std::path::Path;

/// Our profile, stricter than Docker's default; see `seccomp/README.md`.
pub const EMBEDDED_PROFILE: &str = include_str!("../../seccomp/workspace.json");

/// Loads the profile: `path` when the operator set
/// `container.seccomp_profile`, the embedded one otherwise.
pub fn load(path: Option<&Path>) -> Result<String, IsolationError> {
    match path {
        None => compact(EMBEDDED_PROFILE, "embedded profile"),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|source| IsolationError::SeccompRead {
                    path: p.to_owned(),
                    source,
                })?;
            compact(&text, &p.display().to_string())
        }
    }
}

/// Parses and re-serialises without whitespace: the profile travels in
/// every create request and sits in every `docker inspect`.
fn compact(text: &str, origin: &str) -> Result<String, IsolationError> {
    let invalid = |message: String| IsolationError::SeccompInvalid {
        origin: origin.to_owned(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    // A profile that allows by default is no profile; refuse it rather
    // than run containers believing they are filtered.
    match value.get("defaultAction").and_then(|a| a.as_str()) {
        Some(a) if a.starts_with("SCMP_ACT_ERRNO") || a.starts_with("SCMP_ACT_KILL") => {}
        other => {
            return Err(invalid(format!(
                "defaultAction must deny (SCMP_ACT_ERRNO or SCMP_ACT_KILL*), found {other:?}"
            )))
        }
    }
    if !value.get("syscalls").is_some_and(|s| s.is_array()) {
        return Err(invalid("syscalls must be an array".to_owned()));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashSet;

    fn embedded() -> Value {
        serde_json::from_str(EMBEDDED_PROFILE).unwrap()
    }

    /// Names allowed without any argument filter.
    fn unconditionally_allowed(p: &Value) -> HashSet<String> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn default_action_is_eperm() {
        let p = embedded();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
    }

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        let p = embedded();
        let allowed = unconditionally_allowed(&p);
        for name in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "bpf",
            "perf_event_open",
            "mount",
            "umount",
            "umount2",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "pivot_root",
            "chroot",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "name_to_handle_at",
            "personality",
            "socket",
        ] {
            assert!(!allowed.contains(name), "{name} is allowed unconditionally");
        }
        // Nothing is gated on capabilities: every container drops them all.
        for rule in p["syscalls"].as_array().unwrap() {
            for key in ["includes", "excludes"] {
                assert!(rule[key].get("caps").is_none(), "capability rule: {rule}");
            }
        }
    }

    #[test]
    fn landlock_and_basics_are_allowed() {
        let allowed = unconditionally_allowed(&embedded());
        for name in [
            "landlock_create_ruleset",
            "landlock_add_rule",
            "landlock_restrict_self",
            "read",
            "execve",
            "fork",
        ] {
            assert!(allowed.contains(name), "{name} is missing");
        }
    }

    #[test]
    fn clone_filter_masks_every_namespace_flag() {
        let p = embedded();
        let rule = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(rule["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        // NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
        assert_eq!(rule["args"][0]["value"], 0x7E02_0000u64);
    }

    #[test]
    fn socket_families_are_unix_and_inet_only() {
        let p = embedded();
        let families: HashSet<u64> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"] == serde_json::json!(["socket"]))
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(families, HashSet::from([1, 2, 10]));
    }

    #[test]
    fn load_compacts_and_refuses_allow_by_default() {
        let text = load(None).unwrap();
        assert!(!text.contains('\n'));
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("p.json");
        std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#).unwrap();
        let err = load(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("defaultAction"), "{err}");
        let err = load(Some(&dir.path().join("missing.json")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }
}
