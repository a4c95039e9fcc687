//! The CLI session a conversation's workspace carries. The CLI keeps its
//! sessions under `HOME` (`/workspace/.agentbox/home`), so they travel
//! with the workspace through the object store; the session id to resume
//! is kept in this host's state file. A conversation that arrives here
//! without one (it moved from another host, or the state file was
//! replaced) resumes the newest session its restored workspace holds, so
//! the model still sees the earlier turns.
//!
//! The workspace is written by the container: only regular files named
//! `<uuid>.jsonl` count, no link is followed, and the scan is bounded.

use std::path::Path;
use std::time::SystemTime;

/// Where the CLI keeps its sessions, relative to the workspace.
const PROJECTS: &str = ".agentbox/home/.claude/projects";
/// Most project directories and files per directory looked at.
const MAX_DIRS: usize = 64;
const MAX_FILES: usize = 4096;

/// The id of the newest session file in `workspace`, if any.
pub(crate) fn newest(workspace: &Path) -> Option<String> {
    let mut best: Option<(SystemTime, String)> = None;
    let projects = std::fs::read_dir(workspace.join(PROJECTS)).ok()?;
    for dir in projects.flatten().take(MAX_DIRS) {
        if !dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten().take(MAX_FILES) {
            let name = file.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
                continue;
            };
            if uuid::Uuid::parse_str(id).is_err() {
                continue;
            }
            // DirEntry::metadata does not follow a link.
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                best = Some((modified, id.to_owned()));
            }
        }
    }
    best.map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0b5e6a36-1f0c-4a57-9a84-1d0f8a6f0a01";
    const B: &str = "9c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

    #[test]
    fn picks_the_newest_session_file_and_nothing_else() {
        let ws = tempfile::tempdir().unwrap();
        let dir = ws.path().join(PROJECTS).join("-workspace");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(newest(ws.path()), None);
        std::fs::write(dir.join(format!("{A}.jsonl")), "{}").unwrap();
        std::fs::write(dir.join("notes.jsonl"), "{}").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join(format!("{A}.jsonl")))
            .unwrap();
        f.set_modified(old).unwrap();
        std::fs::write(dir.join(format!("{B}.jsonl")), "{}").unwrap();
        assert_eq!(newest(ws.path()).as_deref(), Some(B));
    }

    #[test]
    fn a_link_is_not_a_session() {
        let ws = tempfile::tempdir().unwrap();
        let dir = ws.path().join(PROJECTS).join("-workspace");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(format!("{A}.jsonl"))).unwrap();
        assert_eq!(newest(ws.path()), None);
    }
}
