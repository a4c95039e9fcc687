//! AppArmor detection: whether the engine applies AppArmor at all and
//! whether our profile is loaded into the host kernel.
//!
//! Docker drops `--security-opt apparmor=...` silently on hosts without
//! AppArmor, so we only ask for the profile where both checks pass, and
//! fall back to Landlock on purpose everywhere else.

use std::path::Path;

/// The profile in `apparmor/workspace-container`.
pub const PROFILE_NAME: &str = "workspace-container";

/// Where the kernel lists loaded profiles, one `name (mode)` per line.
pub const PROFILES_FILE: &str = "/sys/kernel/security/apparmor/profiles";

/// True when `docker info`'s security options list AppArmor.
pub fn engine_supports(security_options: &[String]) -> bool {
    security_options
        .iter()
        .any(|o| o.split(',').any(|kv| kv == "name=apparmor"))
}

/// True when `listing` (the content of [`PROFILES_FILE`]) has `name` in
/// enforce mode; a complain-mode profile confines nothing.
pub fn profile_loaded(listing: &str, name: &str) -> bool {
    listing.lines().any(|line| {
        line.rsplit_once(' ')
            .is_some_and(|(n, mode)| n == name && mode == "(enforce)")
    })
}

/// Reads the host's loaded profiles; an absent file means no AppArmor.
pub fn host_profile_loaded(file: &Path, name: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|listing| profile_loaded(&listing, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_support_is_read_from_security_options() {
        let opts = vec!["name=seccomp,profile=default".to_owned()];
        assert!(!engine_supports(&opts));
        let opts = vec![
            "name=apparmor".to_owned(),
            "name=seccomp,profile=default".to_owned(),
        ];
        assert!(engine_supports(&opts));
    }

    #[test]
    fn only_an_enforcing_profile_counts() {
        let listing = "docker-default (enforce)\nworkspace-container (complain)\n";
        assert!(!profile_loaded(listing, PROFILE_NAME));
        let listing = "docker-default (enforce)\nworkspace-container (enforce)\n";
        assert!(profile_loaded(listing, PROFILE_NAME));
        assert!(!profile_loaded(
            "workspace-container-x (enforce)",
            PROFILE_NAME
        ));
        assert!(!host_profile_loaded(
            Path::new("/nonexistent/profiles"),
            PROFILE_NAME
        ));
    }
}
