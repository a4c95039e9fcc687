//! File operations confined to a workspace root: every path is resolved
//! component by component with `openat(O_NOFOLLOW)` from the root's file
//! descriptor, so a symlink (or a directory swapped for one by a process
//! in the container while sync runs) is never followed. Blocking calls;
//! callers run them on the blocking pool.
//!
//! **Invariant:** sync reads and writes workspace files only through
//! [`Root`].

use super::paths::RelPath;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, futimens, mkdirat, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// Names of temp files; a restore removes any left by a crash.
pub const TEMP_PREFIX: &str = ".agentbox-restore-";

/// Who restored files belong to: the container's user.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub struct Root {
    fd: OwnedFd,
}

/// What one walk found at a path; `lstat` data, never a link's target.
#[derive(Clone, Debug)]
pub struct Found {
    pub path: RelPath,
    pub kind: Kind,
    pub mode: u32,
    /// Apparent size (`st_size`): what reading the file yields.
    pub size: u64,
    /// What the file occupies on disk (`st_blocks * 512`): far below
    /// `size` for a sparse file, whose holes cost no quota.
    pub allocated: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    /// Sockets, FIFOs, devices: never synced.
    Other,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn found(path: RelPath, st: &FileStat, kind: Kind) -> Found {
    Found {
        path,
        kind,
        mode: st.st_mode & 0o777,
        size: st.st_size as u64,
        allocated: (st.st_blocks as u64).saturating_mul(512),
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        ino: st.st_ino,
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl Root {
    /// Opens the workspace directory itself; it must not be a symlink.
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = openat(nix::fcntl::AT_FDCWD, dir, DIR_FLAGS, Mode::empty()).map_err(errno)?;
        Ok(Root { fd })
    }

    /// The directory holding `components`, opened without following links;
    /// with `create`, missing directories are made and given to `owner`.
    fn open_dir(&self, components: &[&str], create: Option<Owner>) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        for c in components {
            let next = match openat(cur.as_fd(), *c, DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) if create.is_some() => {
                    match mkdirat(cur.as_fd(), *c, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                    let fd = openat(cur.as_fd(), *c, DIR_FLAGS, Mode::empty()).map_err(errno)?;
                    if let Some(o) = create {
                        fchown(
                            fd.as_fd(),
                            Some(Uid::from_raw(o.uid)),
                            Some(Gid::from_raw(o.gid)),
                        )
                        .map_err(errno)?;
                    }
                    fd
                }
                r => r.map_err(errno)?,
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Every entry under the root, in no particular order. Directories are
    /// listed by a few threads sharing a queue: the walk is one `fstatat`
    /// per entry, and it dominates an incremental push. Names that are not
    /// UTF-8 are skipped (and logged): the store keys are UTF-8.
    pub fn walk(&self) -> io::Result<Vec<Found>> {
        self.walk_jobs(vec![DirJob::Root(self.fd.try_clone()?)])
    }

    /// Every entry below the directory `path` (not `path` itself), as
    /// [`Root::walk`] finds them; nothing when it is no longer a directory.
    pub fn walk_under(&self, path: &RelPath) -> io::Result<Vec<Found>> {
        let (parents, name) = path.split_last();
        let parent = match self.open_dir(&parents, None) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        self.walk_jobs(vec![DirJob::Sub(
            Arc::new(parent),
            name.to_owned(),
            path.clone(),
        )])
    }

    /// What is at `path` now (`lstat`, never a link's target); `None` when
    /// nothing is, or a parent is no longer a directory.
    pub fn stat(&self, path: &RelPath) -> io::Result<Option<Found>> {
        let (parents, name) = path.split_last();
        let dir = match self.open_dir(&parents, None) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno(e)),
        };
        let kind = match kind_of(&st) {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => match readlinkat(dir.as_fd(), name) {
                Ok(t) => Kind::Symlink(t.to_string_lossy().into_owned()),
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(errno(e)),
            },
            _ => Kind::Other,
        };
        Ok(Some(found(path.clone(), &st, kind)))
    }

    fn walk_jobs(&self, jobs: Vec<DirJob>) -> io::Result<Vec<Found>> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let queue = WalkQueue {
            state: Mutex::new((jobs, 0, None)),
            cv: Condvar::new(),
        };
        let parts: Vec<Vec<Found>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads).map(|_| s.spawn(|| queue.work())).collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let state = queue.state.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = state.2 {
            return Err(e);
        }
        Ok(parts.into_iter().flatten().collect())
    }

    /// True when the workspace holds anything but (empty) directories.
    pub fn has_files(&self) -> io::Result<bool> {
        Ok(self.walk()?.iter().any(|f| f.kind != Kind::Dir))
    }

    /// Opens a regular file for reading; refuses links, FIFOs and devices
    /// (`O_NONBLOCK` keeps a FIFO swapped in from blocking the open).
    pub fn open_file(&self, path: &RelPath) -> io::Result<std::fs::File> {
        let (parents, name) = path.split_last();
        let dir = self.open_dir(&parents, None)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(dir.as_fd(), name, flags, Mode::empty()).map_err(errno)?;
        let st = fstat(fd.as_fd()).map_err(errno)?;
        if kind_of(&st) != SFlag::S_IFREG {
            return Err(io::Error::other(format!("{path} is not a regular file")));
        }
        let file = std::fs::File::from(fd);
        // Back to blocking reads now that it is known to be a plain file.
        nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(errno)?;
        Ok(file)
    }

    /// Makes `path` (and missing parents) a directory owned by `owner`.
    pub fn mkdir(&self, path: &RelPath, mode: u32, owner: Owner) -> io::Result<()> {
        let comps: Vec<&str> = path.components().collect();
        let fd = self.open_dir(&comps, Some(owner))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(mode & 0o777)).map_err(errno)
    }

    /// A new temporary file in `path`'s directory; [`Root::commit_file`]
    /// moves it into place, dropping the [`TempFile`] removes it.
    pub fn create_temp(
        &self,
        path: &RelPath,
        owner: Owner,
    ) -> io::Result<(TempFile, std::fs::File)> {
        let (parents, name) = path.split_last();
        let dir = self.open_dir(&parents, Some(owner))?;
        let temp = format!(
            "{TEMP_PREFIX}{}-{}",
            uuid::Uuid::new_v4().simple(),
            short(name)
        );
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            dir.as_fd(),
            temp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        Ok((TempFile { dir, name: temp }, std::fs::File::from(fd)))
    }

    /// Gives the temp file its owner, mode and mtime, then renames it over
    /// `path` (replacing a file or link there, never writing through it).
    pub fn commit_file(
        &self,
        mut temp: TempFile,
        file: std::fs::File,
        path: &RelPath,
        mode: u32,
        mtime_ns: i64,
        owner: Owner,
    ) -> io::Result<()> {
        fchown(
            file.as_fd(),
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(errno)?;
        fchmod(file.as_fd(), Mode::from_bits_truncate(mode & 0o777)).map_err(errno)?;
        let mtime = TimeSpec::new(
            mtime_ns.div_euclid(1_000_000_000),
            mtime_ns.rem_euclid(1_000_000_000),
        );
        futimens(file.as_fd(), &mtime, &mtime).map_err(errno)?;
        drop(file);
        let (_, name) = path.split_last();
        self.replace(&temp.dir, &temp.name, name)?;
        temp.name.clear();
        Ok(())
    }

    /// Renames `from` over `to` in `dir`; a directory in the way is removed
    /// first when empty.
    fn replace(&self, dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
        match renameat(dir.as_fd(), from, dir.as_fd(), to) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {
                unlinkat(dir.as_fd(), to, UnlinkatFlags::RemoveDir).map_err(errno)?;
                renameat(dir.as_fd(), from, dir.as_fd(), to).map_err(errno)
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// Makes `path` a symlink to `target` (already checked to stay inside).
    pub fn symlink(&self, path: &RelPath, target: &str, owner: Owner) -> io::Result<()> {
        let (parents, name) = path.split_last();
        let dir = self.open_dir(&parents, Some(owner))?;
        if let Ok(cur) = readlinkat(dir.as_fd(), name) {
            if cur.to_str() == Some(target) {
                return Ok(());
            }
        }
        let temp = format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple());
        symlinkat(target, dir.as_fd(), temp.as_str()).map_err(errno)?;
        let done = fchownat(
            dir.as_fd(),
            temp.as_str(),
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
        .and_then(|()| self.replace(&dir, &temp, name));
        if done.is_err() {
            let _ = unlinkat(dir.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        done
    }

    /// Removes a file or link (a directory only when empty); missing is fine.
    pub fn remove(&self, path: &RelPath) -> io::Result<()> {
        let (parents, name) = path.split_last();
        let dir = match self.open_dir(&parents, None) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc_enoent()) => return Ok(()),
            Err(e) => return Err(e),
        };
        match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {
                match unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENOTEMPTY) => Ok(()),
                    Err(e) => Err(errno(e)),
                }
            }
            Err(e) => Err(errno(e)),
        }
    }
}

/// A directory to list: the root, or a name in an already open parent.
/// Subdirectories are opened only when their turn comes, so a wide tree
/// does not hold one descriptor per pending directory.
enum DirJob {
    Root(OwnedFd),
    Sub(Arc<OwnedFd>, String, RelPath),
}

/// Directories still to list, how many are being listed, the first error.
type WalkState = (Vec<DirJob>, usize, Option<io::Error>);

struct WalkQueue {
    state: Mutex<WalkState>,
    cv: Condvar,
}

impl WalkQueue {
    fn work(&self) -> Vec<Found> {
        let mut out = Vec::new();
        loop {
            let job = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if st.2.is_some() {
                        return out;
                    }
                    if let Some(job) = st.0.pop() {
                        st.1 += 1;
                        break job;
                    }
                    if st.1 == 0 {
                        return out;
                    }
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let mut subdirs = Vec::new();
            let r = match job {
                DirJob::Root(fd) => list_dir(fd, None, &mut out, &mut subdirs),
                DirJob::Sub(parent, name, path) => {
                    match openat(parent.as_fd(), name.as_str(), DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => list_dir(fd, Some(&path), &mut out, &mut subdirs),
                        // Removed, or swapped for a link or file, since it
                        // was seen: the agent is still working.
                        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(()),
                        Err(e) => Err(errno(e)),
                    }
                }
            };
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.1 -= 1;
            match r {
                Ok(()) => st.0.extend(subdirs),
                Err(e) => {
                    st.2.get_or_insert(e);
                }
            }
            drop(st);
            self.cv.notify_all();
        }
    }
}

/// Lists one directory: its entries into `out`, its subdirectories (opened
/// without following links) into `subdirs`.
fn list_dir(
    fd: OwnedFd,
    prefix: Option<&RelPath>,
    out: &mut Vec<Found>,
    subdirs: &mut Vec<DirJob>,
) -> io::Result<()> {
    let mut dir = Dir::from_fd(fd.try_clone()?).map_err(errno)?;
    let fd = Arc::new(fd);
    for ent in dir.iter() {
        let ent = ent.map_err(errno)?;
        let bytes = ent.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(bytes) else {
            tracing::warn!(message = "Skipping a file name that is not UTF-8.",
                name = %String::from_utf8_lossy(bytes));
            continue;
        };
        let path = match prefix {
            Some(p) => p.join(name),
            None => RelPath::parse(name),
        };
        let Ok(path) = path else { continue };
        let st = match fstatat(fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Deleted since it was listed: the agent is still working.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(errno(e)),
        };
        match kind_of(&st) {
            SFlag::S_IFREG => out.push(found(path, &st, Kind::File)),
            SFlag::S_IFLNK => {
                let target = match readlinkat(fd.as_fd(), name) {
                    Ok(t) => t,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(errno(e)),
                };
                let target = target.to_string_lossy().into_owned();
                out.push(found(path, &st, Kind::Symlink(target)));
            }
            SFlag::S_IFDIR => {
                out.push(found(path.clone(), &st, Kind::Dir));
                subdirs.push(DirJob::Sub(fd.clone(), name.to_owned(), path));
            }
            _ => out.push(found(path, &st, Kind::Other)),
        }
    }
    Ok(())
}

/// A parent that is gone or no longer a directory (or a link now).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
    )
}

fn libc_enoent() -> i32 {
    Errno::ENOENT as i32
}

/// Keeps temp names short: the real name may already be near NAME_MAX.
fn short(name: &str) -> String {
    name.chars().take(32).collect()
}

/// A temp file being filled; removed on drop unless committed.
pub struct TempFile {
    dir: OwnedFd,
    name: String,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = unlinkat(
                self.dir.as_fd(),
                self.name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn never_follows_a_symlinked_directory() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("d")).unwrap();
        let root = Root::open(ws.path()).unwrap();
        let p = RelPath::parse("d/secret").unwrap();
        assert!(root.open_file(&p).is_err(), "read through a link");
        assert!(root.create_temp(&p, me()).is_err(), "wrote through a link");
        assert!(root.symlink(&p, "x", me()).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        let walked = root.walk().unwrap();
        assert_eq!(walked.len(), 1);
        assert!(matches!(walked[0].kind, Kind::Symlink(_)));
        // A file replaced by a link is not read either.
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("f")).unwrap();
        assert!(root.open_file(&RelPath::parse("f").unwrap()).is_err());
    }

    #[test]
    fn commit_replaces_a_link_instead_of_writing_through_it() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, ws.path().join("f")).unwrap();
        let root = Root::open(ws.path()).unwrap();
        let p = RelPath::parse("f").unwrap();
        let (t, mut f) = root.create_temp(&p, me()).unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        root.commit_file(t, f, &p, 0o640, 1_000_000_000, me())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(ws.path().join("f")).unwrap(), "new");
        let meta = std::fs::symlink_metadata(ws.path().join("f")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o640
        );
    }
}
