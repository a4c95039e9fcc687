//! The object store (`storage.url`) and the state file (`state.path`).

use super::Check;
use std::path::Path;

/// Whether workspaces can be synced: for `file://` the directory exists
/// and is writable.
pub(crate) fn object_store(url: &str) -> Check {
    const NAME: &str = "object-store";
    if let Some(dir) = url.strip_prefix("file://") {
        return local_dir(NAME, Path::new(dir));
    }
    // The S3 probe (a signed HEAD of the bucket) belongs to the sync
    // subsystem, which owns the client; until then say it is unchecked.
    Check::warn(
        NAME,
        format!("{url}: reachability of s3 stores is not checked yet"),
        "check the bucket with your S3 tooling (aws s3 ls) until doctor does",
    )
}

fn local_dir(name: &str, dir: &Path) -> Check {
    let shown = dir.display();
    if !dir.is_dir() {
        return match nearest_existing(dir) {
            Some(parent) if writable(parent) => Check::warn(
                name,
                format!("{shown} does not exist yet"),
                format!("mkdir -p {shown} (or let the first sync create it)"),
            ),
            _ => Check::fail(
                name,
                format!("{shown} does not exist and cannot be created"),
                format!("mkdir -p {shown} as root and give it to the daemon's user"),
            ),
        };
    }
    let probe = dir.join(format!(".agentbox-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Check::pass(name, format!("{shown} exists and is writable"))
        }
        Err(e) => Check::fail(
            name,
            format!("{shown} is not writable: {e}"),
            format!("chown the directory to the daemon's user: chown -R USER {shown}"),
        ),
    }
}

fn nearest_existing(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.is_dir())
}

fn writable(dir: &Path) -> bool {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes());
    // SAFETY: access(2) reads the NUL-terminated path and nothing else.
    c.is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
}

/// Whether the daemon can use its state file. `daemon` names a running
/// daemon's admin address when one answered.
pub(crate) fn state_file(path: &Path, daemon: Option<&str>) -> Check {
    const NAME: &str = "state-file";
    let shown = path.display();
    if !path.exists() {
        return match path.parent().and_then(nearest_existing) {
            Some(dir) if writable(dir) => Check::pass(
                NAME,
                format!("{shown} does not exist yet; the daemon creates it"),
            ),
            _ => Check::fail(
                NAME,
                format!("{shown} cannot be created"),
                "create its directory and give it to the daemon's user",
            ),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        return Check::fail(
            NAME,
            format!("{shown} is not writable: {e}"),
            format!("chown it to the daemon's user: chown USER {shown}"),
        );
    }
    match redb::ReadOnlyDatabase::open(path) {
        Ok(_) => Check::pass(NAME, format!("{shown} is writable (no daemon holds it)")),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Check::pass(
            NAME,
            match daemon {
                Some(addr) => {
                    format!("{shown} is held by the running daemon (admin listener {addr} answers)")
                }
                None => format!("{shown} is held by a running daemon"),
            },
        ),
        Err(redb::DatabaseError::RepairAborted) => Check::warn(
            NAME,
            format!("{shown} was not closed cleanly"),
            "start the daemon: it repairs the file and reconciles with the engine",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{shown} is not a usable state file: {e}"),
            "move it aside; the daemon starts with an empty state and removes orphan containers",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    #[test]
    fn local_object_store_levels() {
        let dir = tempfile::tempdir().unwrap();
        let url = |p: &Path| format!("file://{}", p.display());
        assert_eq!(object_store(&url(dir.path())).level, Level::Pass);
        assert_eq!(
            object_store(&url(&dir.path().join("a/b"))).level,
            Level::Warn
        );
        assert_eq!(object_store("s3://bucket/x").level, Level::Warn);
        // No leftovers from the write probe.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn state_file_absent_then_free_then_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        assert_eq!(state_file(&path, None).level, Level::Pass);
        let store = crate::state::Store::open(&path).unwrap();
        let held = state_file(&path, Some("127.0.0.1:1"));
        assert_eq!(held.level, Level::Pass);
        assert!(
            held.detail.contains("held by the running daemon"),
            "{held:?}"
        );
        drop(store);
        let free = state_file(&path, None);
        assert!(free.detail.contains("no daemon holds it"), "{free:?}");
    }
}
