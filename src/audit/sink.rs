//! The audit file: one JSON line per event, appended, rotated by size
//! (`audit.log` -> `audit.log.1` -> ... -> `audit.log.{max_files}`, the
//! oldest dropped). The daemon installs one at start-up; before that, and
//! in unit tests, events go to the tracing output only.
//!
//! Each line is one `write(2)` on an `O_APPEND` descriptor under a mutex,
//! so lines never interleave; a crash loses at most what the kernel had not
//! yet written back, never half a line in the middle of the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an audit file is already installed")]
    AlreadyInstalled,
}

pub(crate) struct AuditFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    current: Mutex<Current>,
}

struct Current {
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    // Audit lines name tenants and conversations: not world-readable.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl AuditFile {
    /// Opens (creating it and its directory) the audit file at `path`,
    /// rotated once it would pass `max_bytes`, keeping `max_files` rotated
    /// files besides it.
    pub(crate) fn open(path: &Path, max_bytes: u64, max_files: u32) -> Result<Self, AuditError> {
        let err = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(err)?;
        }
        let file = open_append(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            max_files,
            current: Mutex::new(Current { file, size }),
        })
    }

    /// Appends `line` and a newline, rotating first when the file would
    /// grow past its limit. A line longer than the limit still goes in
    /// whole: an audit record is never split or dropped for size.
    pub(crate) fn append(&self, line: &str) -> Result<(), AuditError> {
        let err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.size > 0 && cur.size + buf.len() as u64 > self.max_bytes {
            // A failed rotation must not lose the event: it goes into the
            // current file, which rotation retries on the next line.
            if let Err(error) = self.rotate(&mut cur) {
                tracing::warn!(message = "Audit file rotation failed.", path = %self.path.display(), %error);
            }
        }
        cur.file.write_all(&buf).map_err(err)?;
        cur.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&self, cur: &mut Current) -> std::io::Result<()> {
        for n in (1..self.max_files).rev() {
            match std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        cur.file = open_append(&self.path)?;
        cur.size = 0;
        Ok(())
    }
}

static INSTALLED: OnceLock<AuditFile> = OnceLock::new();

/// Makes `file` the process's audit file; once per process.
pub(crate) fn install(file: AuditFile) -> Result<(), AuditError> {
    INSTALLED
        .set(file)
        .map_err(|_| AuditError::AlreadyInstalled)
}

/// Appends to the installed audit file, if any; false when the write
/// failed. A failure is logged (and counted by the subscribers: see
/// `agentbox_audit_write_failures_total`); the event still reaches the
/// tracing output.
pub(super) fn append(line: &str) -> bool {
    let Some(file) = INSTALLED.get() else {
        return true;
    };
    match file.append(line) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(message = "Audit event not written to the audit file.", %error);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn appends_and_reopens_without_truncating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        AuditFile::open(&path, 1 << 20, 3)
            .unwrap()
            .append("{\"a\":1}")
            .unwrap();
        AuditFile::open(&path, 1 << 20, 3)
            .unwrap()
            .append("{\"a\":2}")
            .unwrap();
        assert_eq!(lines(&path), ["{\"a\":1}", "{\"a\":2}"]);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Each line is 10 bytes with its newline; two fit in 25 bytes.
        let f = AuditFile::open(&path, 25, 2).unwrap();
        for n in 0..9 {
            f.append(&format!("line-{n:04}")).unwrap();
        }
        assert_eq!(lines(&path), ["line-0008"]);
        assert_eq!(lines(&numbered(&path, 1)), ["line-0006", "line-0007"]);
        assert_eq!(lines(&numbered(&path, 2)), ["line-0004", "line-0005"]);
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn a_line_longer_than_the_limit_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let f = AuditFile::open(&path, 8, 1).unwrap();
        let long = "x".repeat(40);
        f.append(&long).unwrap();
        f.append("y").unwrap();
        assert_eq!(lines(&numbered(&path, 1)), [long]);
        assert_eq!(lines(&path), ["y"]);
    }
}
