//! What every engine test needs first: a Docker engine, the isolation
//! tools and the workspace image under test, installed or built when
//! missing, never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_script(script: &str, args: &[&str]) {
    let path = repo_root().join(script);
    let status = Command::new("bash")
        .arg(&path)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(status.success(), "{} failed: {status}", path.display());
}

/// Docker engine up and the workspace image built, once per suite.
pub fn prerequisites() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        run_script("tests/setup/ensure-docker.sh", &[]);
        run_script("tests/setup/ensure-isolation-tools.sh", &[]);
        // The tag under test, so a branch's image never replaces `:latest`.
        run_script("workspace-base/build-image.sh", &[&test_image()]);
    });
}

/// gVisor's `runsc` installed and registered with the engine, once per
/// suite (`tests/setup/ensure-gvisor.sh`), on top of [`prerequisites`].
pub fn gvisor_prerequisites() {
    static READY: OnceLock<()> = OnceLock::new();
    prerequisites();
    READY.get_or_init(|| run_script("tests/setup/ensure-gvisor.sh", &[]));
}

/// The workspace image under test: `AGENTBOX_TEST_IMAGE`, else the default
/// tag that `workspace-base/build-image.sh` builds.
pub fn test_image() -> String {
    std::env::var("AGENTBOX_TEST_IMAGE")
        .unwrap_or_else(|_| agentbox::config::DEFAULT_IMAGE.to_owned())
}

/// HAProxy installed (`tests/setup/ensure-haproxy.sh`), once per suite.
pub fn haproxy_prerequisites() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| run_script("tests/setup/ensure-haproxy.sh", &[]));
}
