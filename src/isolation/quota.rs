//! Hard disk quota on a workspace: a sparse ext4 image per workspace,
//! loop-mounted `nosuid,nodev` at the workspace directory before the
//! container starts. A full workspace fails with ENOSPC inside the
//! container; the host filesystem never sees more than the image's size.
//!
//! Docker's `--storage-opt size` needs overlay2 on XFS with project quota;
//! this works on any host with loop devices and e2fsprogs.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Mount options of every workspace filesystem.
const MOUNT_OPTIONS: &str = "loop,nosuid,nodev,noatime";

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("disk quota needs {what}; install it or set container.disk_quota_mb = 0")]
    Missing { what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    #[error("{0} is not under container.workspace_root")]
    OutsideRoot(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuotaError + '_ {
    move |source| QuotaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where workspace images live and how large they are.
#[derive(Clone, Debug)]
pub struct Quota {
    workspace_root: PathBuf,
    image_root: PathBuf,
    size_mb: u64,
}

impl Quota {
    pub fn new(workspace_root: &Path, image_root: &Path, size_mb: u64) -> Self {
        Self {
            workspace_root: workspace_root.to_owned(),
            image_root: image_root.to_owned(),
            size_mb,
        }
    }

    pub fn size_mb(&self) -> u64 {
        self.size_mb
    }

    /// `{image_root}/{rel}.ext4` for `{workspace_root}/{rel}` (one
    /// container's workspace, `{workspace_root}/{container}`).
    pub fn image_path(&self, workspace_dir: &Path) -> Result<PathBuf, QuotaError> {
        let rel = workspace_dir
            .strip_prefix(&self.workspace_root)
            .map_err(|_| QuotaError::OutsideRoot(workspace_dir.to_owned()))?;
        let mut name = rel.as_os_str().to_owned();
        name.push(".ext4");
        Ok(self.image_root.join(name))
    }

    /// Makes `workspace_dir` the root of its own quota filesystem, owned by
    /// `uid:gid`. Idempotent: a workspace already mounted (this daemon's
    /// earlier run, or before a restart) is reused; an existing image is
    /// mounted again; files already in a plain directory move into the new
    /// filesystem.
    pub async fn ensure(&self, workspace_dir: &Path, uid: u32, gid: u32) -> Result<(), QuotaError> {
        std::fs::create_dir_all(workspace_dir).map_err(io(workspace_dir))?;
        if mount_at(workspace_dir)?.is_some() {
            return own(workspace_dir, uid, gid);
        }
        let image = self.image_path(workspace_dir)?;
        let fresh = !image.exists();
        if fresh {
            make_image(&image, self.size_mb, uid, gid).await?;
        }
        let leftover = has_entries(workspace_dir)?;
        let staging = staging_dir(workspace_dir);
        if leftover {
            // Mounting over files would hide them: move them aside and copy
            // them into the filesystem once it is mounted.
            std::fs::rename(workspace_dir, &staging).map_err(io(workspace_dir))?;
            std::fs::create_dir(workspace_dir).map_err(io(workspace_dir))?;
        }
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", MOUNT_OPTIONS])
            .arg(&image)
            .arg(workspace_dir))
        .await?;
        if fresh {
            // mkfs leaves a root-only lost+found the agent could not read
            // and sync would carry around; e2fsck recreates it when needed.
            let _ = std::fs::remove_dir(workspace_dir.join("lost+found"));
        }
        if leftover {
            let mut src = staging.clone().into_os_string();
            src.push("/.");
            run(Command::new("cp").arg("-a").arg(&src).arg(workspace_dir)).await?;
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        own(workspace_dir, uid, gid)
    }
}

/// Checks, without changing anything, that this host can mount quota
/// images: the daemon fails at start-up rather than on the first request.
pub fn preflight() -> Result<(), QuotaError> {
    for tool in ["mkfs.ext4", "mount", "umount", "cp"] {
        if which(tool).is_none() {
            return Err(QuotaError::Missing {
                what: format!("`{tool}` on PATH (Debian: e2fsprogs, mount, coreutils)"),
            });
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(QuotaError::Missing {
            what: "loop devices (/dev/loop-control; modprobe loop)".to_owned(),
        });
    }
    Ok(())
}

/// Unmounts a workspace's quota filesystem and deletes its image; for when
/// its container is destroyed. The container using it must
/// be gone first (a busy mount is an error). The empty mount point is
/// removed too. Not mounted is not an error: nothing is left to release.
/// Blocking, but quick: one `umount` and one unlink.
pub fn release(workspace_dir: &Path) -> Result<(), QuotaError> {
    let Some(entry) = mount_at(workspace_dir)? else {
        return Ok(());
    };
    let backing = backing_file(&entry.source);
    let mut umount = std::process::Command::new("umount");
    umount.arg(workspace_dir);
    let out = umount.output().map_err(|e| QuotaError::Command {
        command: "umount".to_owned(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(QuotaError::Command {
            command: format!("umount {}", workspace_dir.display()),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    if let Some(image) = backing {
        match std::fs::remove_file(&image) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&image)(e)),
            _ => {}
        }
    }
    match std::fs::remove_dir(workspace_dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io(workspace_dir)(e)),
        _ => Ok(()),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The filesystem mounted exactly at `dir`, if any (the topmost one).
pub fn mount_at(dir: &Path) -> Result<Option<MountEntry>, QuotaError> {
    let info_path = Path::new("/proc/self/mountinfo");
    let info = std::fs::read_to_string(info_path).map_err(io(info_path))?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    Ok(parse_mountinfo(&info)
        .into_iter()
        .rfind(|m| m.mount_point == dir))
}

/// Parses mountinfo lines: the mount point is field 5, and after the `-`
/// separator come the filesystem type and the source.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: (*fields.get(sep + 1)?).to_owned(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8;
                u8::try_from(v + u32::from(d[2] - b'0')).ok()
            });
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The image behind a loop device such as `/dev/loop3`.
fn backing_file(source: &str) -> Option<PathBuf> {
    let dev = source.strip_prefix("/dev/")?;
    let text = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).ok()?;
    let path = text.trim_end_matches('\n');
    // A deleted image reads back as "path (deleted)"; nothing to remove then.
    (!path.ends_with(" (deleted)")).then(|| PathBuf::from(path))
}

/// Creates a sparse image holding an empty ext4 filesystem whose root
/// belongs to `uid:gid`. Built under a temporary name, so a crash never
/// leaves a half-made image that a later start would mount.
async fn make_image(image: &Path, size_mb: u64, uid: u32, gid: u32) -> Result<(), QuotaError> {
    let parent = image.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(io(parent))?;
    let tmp = image.with_extension("ext4.tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.set_len(size_mb * 1024 * 1024).map_err(io(&tmp))?;
    drop(file);
    // -m 0: no blocks reserved for root, the container user gets the whole
    // quota. Lazy init keeps mkfs fast and the sparse file small.
    let made = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!(
            "root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1"
        ))
        .arg(&tmp))
    .await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, image).map_err(io(image))
}

/// `{parent}/.premount-{name}`: ids never start with a dot, so this can
/// never be another conversation's workspace.
fn staging_dir(workspace_dir: &Path) -> PathBuf {
    let name = workspace_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    workspace_dir.with_file_name(format!(".premount-{name}"))
}

fn own(dir: &Path, uid: u32, gid: u32) -> Result<(), QuotaError> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

fn has_entries(dir: &Path) -> Result<bool, QuotaError> {
    Ok(std::fs::read_dir(dir).map_err(io(dir))?.next().is_some())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

async fn run(cmd: &mut Command) -> Result<(), QuotaError> {
    let name = format!("{:?}", cmd.as_std());
    let out = cmd.output().await.map_err(|e| QuotaError::Command {
        command: name.clone(),
        message: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(QuotaError::Command {
        command: name,
        message: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_path_mirrors_the_workspace_layout() {
        let q = Quota::new(
            Path::new("/var/lib/ab/workspaces"),
            Path::new("/var/lib/ab/quota-images"),
            64,
        );
        assert_eq!(
            q.image_path(Path::new("/var/lib/ab/workspaces/acme/conv-1"))
                .unwrap(),
            PathBuf::from("/var/lib/ab/quota-images/acme/conv-1.ext4")
        );
        assert!(q.image_path(Path::new("/elsewhere/acme/c")).is_err());
    }

    #[test]
    fn staging_never_collides_with_an_id() {
        assert_eq!(
            staging_dir(Path::new("/w/acme/conv.1")),
            PathBuf::from("/w/acme/.premount-conv.1")
        );
    }

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext4 /dev/loop3 rw\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].source, "/dev/loop3");
    }
}
