//! Change tracking: which paths of a workspace may have changed since the
//! last push, whoever changed them (a tool, Bash, a process left running
//! in the background). See docs/sync.md, "Change tracking".
//!
//! fanotify with a filesystem mark (`FAN_MARK_FILESYSTEM`) and
//! `FAN_REPORT_DFID_NAME` on the workspace's own filesystem: each
//! workspace is a loop-mounted ext4 (the disk quota), so every write to it,
//! through the container's bind mount or not, is an event naming the
//! directory (a file handle) and the entry. Events are queued by the
//! kernel in the writer's system call, so reading the queue until it is
//! empty is a consistent cut: everything done before is in it. The queue
//! is read only when a push takes the changes; when it overflows (16,384
//! events by default), when the changes pass [`MAX_TRACKED`] paths, or when
//! the mark is gone (the filesystem was unmounted), tracking cannot vouch
//! and the push walks the workspace.
//!
//! nix gives `fanotify_init` and `fanotify_mark`; its event reader knows
//! no file-handle records, so they are parsed here from the bytes read,
//! and `open_by_handle_at` (which nix lacks) is the one unsafe call.

use super::paths::RelPath;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use nix::sys::stat::{fstat, stat, Mode};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Mutex;

/// Paths one push may take from tracking; past this a walk is cheaper
/// than checking each, and memory stays bounded.
pub const MAX_TRACKED: usize = 100_000;
/// Bytes read from the queue at a time.
const READ_BUF: usize = 64 * 1024;

/// `FAN_REPORT_DIR_FID | FAN_REPORT_NAME` (Linux 5.9), not in nix's flags.
const FAN_REPORT_DFID_NAME: u32 = 0x0000_0400 | 0x0000_0800;
/// Info record types (`FAN_EVENT_INFO_TYPE_*`) this group receives.
const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const METADATA_LEN: usize = 24;

/// What a push may rely on.
#[derive(Debug)]
pub enum Changes {
    /// Every path that may have changed since the last take; `true` when
    /// a directory appeared there (created or moved in), so everything
    /// below it is new too.
    Known(HashMap<RelPath, bool>),
    /// Tracking cannot vouch; the reason, for the log.
    Unknown(&'static str),
}

/// One workspace's fanotify group. Holds no descriptor on the workspace
/// itself, so it never keeps its filesystem from being unmounted.
pub struct Tracker {
    fan: Fanotify,
    dir: PathBuf,
    /// The filesystem's device: its mark's `sdev` in the group's fdinfo.
    dev: u64,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    paths: HashMap<RelPath, bool>,
    lost: Option<&'static str>,
}

/// fanotify groups this process holds: one per tracked workspace, each one
/// of the user's 128 (`agentbox_sync_tracked_workspaces`).
static GROUPS: AtomicI64 = AtomicI64::new(0);

fn count_group(n: i64) {
    let now = GROUPS.fetch_add(n, Relaxed) + n;
    crate::metrics::set_sync_tracked(now);
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Tracker {
    /// Starts tracking `dir`, which must be the root of its own filesystem
    /// (`Ok(None)` otherwise: a workspace without a quota shares the
    /// host's filesystem, whose events are not its own). Nothing is known
    /// yet: the first take answers [`Changes::Unknown`].
    pub fn start(dir: &Path) -> io::Result<Option<Tracker>> {
        let own = stat(dir).map_err(errno)?;
        let parent = stat(&dir.join("..")).map_err(errno)?;
        if own.st_dev == parent.st_dev {
            return Ok(None);
        }
        let flags = InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::from_bits_retain(FAN_REPORT_DFID_NAME);
        let fan = Fanotify::init(flags, EventFFlags::O_RDONLY).map_err(errno)?;
        let mask = MaskFlags::FAN_CREATE
            | MaskFlags::FAN_DELETE
            | MaskFlags::FAN_MOVED_FROM
            | MaskFlags::FAN_MOVED_TO
            | MaskFlags::FAN_MODIFY
            // A file written through mmap sends no MODIFY; its close does.
            | MaskFlags::FAN_CLOSE_WRITE
            | MaskFlags::FAN_ATTRIB
            | MaskFlags::FAN_ONDIR;
        let root = open_dir(dir)?;
        fan.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            mask,
            root.as_fd(),
            None::<&Path>,
        )
        .map_err(errno)?;
        count_group(1);
        Ok(Some(Tracker {
            fan,
            dir: dir.to_owned(),
            dev: own.st_dev,
            state: Mutex::new(Pending {
                paths: HashMap::new(),
                lost: Some("tracking just started"),
            }),
        }))
    }

    /// The changes since the last take, and a fresh start. Blocking (a few
    /// system calls per changed directory).
    pub fn take(&self) -> Changes {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(why) = self.drain(&mut st) {
            st.lost.get_or_insert(why);
        }
        let taken = std::mem::take(&mut *st);
        match taken.lost {
            Some(why) => Changes::Unknown(why),
            None => Changes::Known(taken.paths),
        }
    }

    /// False once the filesystem mark is gone (unmounted): the group can
    /// never report again and only holds one of the user's fanotify groups.
    pub fn alive(&self) -> bool {
        self.marked()
    }

    /// The next take answers [`Changes::Unknown`] (a push failed after
    /// taking the changes, so they are not in the store).
    pub fn lose(&self, why: &'static str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.lost.get_or_insert(why);
    }

    fn drain(&self, st: &mut Pending) -> Result<(), &'static str> {
        let root = open_dir(&self.dir).map_err(|_| "the workspace cannot be opened")?;
        let dev = fstat(root.as_fd())
            .map_err(|_| "the workspace cannot be opened")?
            .st_dev;
        if dev != self.dev || !self.marked() {
            return Err("the workspace filesystem was remounted");
        }
        let prefix = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd()))
            .map_err(|_| "the workspace cannot be opened")?;
        let mut dirs: HashMap<Vec<u8>, Option<DirAt>> = HashMap::new();
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match nix::unistd::read(self.fan.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => return Err("the event queue cannot be read"),
            };
            for ev in Events::new(&buf[..n]) {
                // Reading on after either only empties the queue.
                let Some(ev) = ev else {
                    st.lost.get_or_insert("an event could not be parsed");
                    continue;
                };
                if ev.mask & MaskFlags::FAN_Q_OVERFLOW.bits() != 0 {
                    st.lost.get_or_insert("the event queue overflowed");
                    continue;
                }
                let Some((handle, name)) = ev.dir else {
                    continue;
                };
                if st.lost.is_some() {
                    continue;
                }
                let at = dirs
                    .entry(handle.to_vec())
                    .or_insert_with(|| resolve(root.as_fd(), &prefix, handle))
                    .clone();
                let path = match (at, name) {
                    // Deleted or unreachable: its parent has an event of
                    // its own for the directory's name.
                    (None, _) => continue,
                    (Some(DirAt::Root), "." | "") => continue,
                    (Some(DirAt::Root), name) => RelPath::parse(name),
                    (Some(DirAt::Sub(p)), "." | "") => Ok(p),
                    (Some(DirAt::Sub(p)), name) => p.join(name),
                };
                // Names the walk skips too (not valid paths).
                let Ok(path) = path else { continue };
                let appeared = ev.mask & MaskFlags::FAN_ONDIR.bits() != 0
                    && ev.mask & (MaskFlags::FAN_CREATE | MaskFlags::FAN_MOVED_TO).bits() != 0;
                *st.paths.entry(path).or_default() |= appeared;
                if st.paths.len() > MAX_TRACKED {
                    st.lost = Some("too many changes");
                    st.paths = HashMap::new();
                }
            }
        }
    }

    /// The group's filesystem mark still exists: it goes when the
    /// filesystem is unmounted, and then no event would ever come.
    fn marked(&self) -> bool {
        let info = format!("/proc/self/fdinfo/{}", self.fan.as_fd().as_raw_fd());
        // The kernel's own encoding of the device: major << 20 | minor.
        let sdev = (nix::sys::stat::major(self.dev) << 20) | nix::sys::stat::minor(self.dev);
        let want = format!("sdev:{sdev:x} ");
        std::fs::read_to_string(info).is_ok_and(|t| {
            t.lines()
                .any(|l| l.starts_with("fanotify ") && l.contains(&want))
        })
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        count_group(-1);
    }
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(nix::fcntl::AT_FDCWD, dir, flags, Mode::empty()).map_err(errno)
}

/// Where an event's directory is, relative to the workspace.
#[derive(Clone)]
enum DirAt {
    Root,
    Sub(RelPath),
}

/// The workspace path of the directory `handle` names, or `None` when it
/// is gone (deleted, or no longer under the workspace's path).
fn resolve(mount: BorrowedFd<'_>, prefix: &Path, handle: &[u8]) -> Option<DirAt> {
    let fd = open_by_handle(mount, handle).ok()?;
    if fstat(fd.as_fd()).ok()?.st_nlink == 0 {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = path.strip_prefix(prefix).ok()?;
    if rel.as_os_str().is_empty() {
        return Some(DirAt::Root);
    }
    RelPath::parse(rel.to_str()?).ok().map(DirAt::Sub)
}

/// `open_by_handle_at(O_PATH)`: `handle` is a `struct file_handle` as the
/// kernel wrote it (`handle_bytes`, `handle_type`, then the bytes),
/// already checked by [`Events`] to hold `handle_bytes` bytes.
fn open_by_handle(mount: BorrowedFd<'_>, handle: &[u8]) -> io::Result<OwnedFd> {
    // Copied into u32 words: the struct's alignment, whatever the read
    // buffer's offset was.
    let mut words = vec![0u32; handle.len().div_ceil(4)];
    for (w, c) in words.iter_mut().zip(handle.chunks(4)) {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        *w = u32::from_ne_bytes(b);
    }
    // SAFETY: `words` holds a complete `struct file_handle` whose
    // `handle_bytes` fits in it (checked by `Events`), lives across the
    // call, and the kernel only reads it. A non-negative result is a new
    // descriptor nothing else owns.
    unsafe {
        let fd = libc::open_by_handle_at(
            mount.as_raw_fd(),
            words.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// One event: its mask and, when it has one, the directory's handle and
/// the entry's name.
struct Event<'a> {
    mask: u64,
    dir: Option<(&'a [u8], &'a str)>,
}

/// The events in a buffer read from the group; `None` for bytes that do
/// not parse (every length is checked against the buffer).
struct Events<'a> {
    buf: &'a [u8],
}

impl<'a> Events<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Iterator for Events<'a> {
    type Item = Option<Event<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let parsed = parse_event(self.buf);
        match parsed {
            Some((ev, len)) => {
                self.buf = &self.buf[len..];
                Some(Some(ev))
            }
            None => {
                self.buf = &[];
                Some(None)
            }
        }
    }
}

/// `struct fanotify_event_metadata` and its info records.
fn parse_event(buf: &[u8]) -> Option<(Event<'_>, usize)> {
    let len = u32_at(buf, 0)? as usize;
    let version = *buf.get(4)?;
    let meta_len = u16_at(buf, 6)? as usize;
    let mask = u64_at(buf, 8)?;
    if version != libc::FANOTIFY_METADATA_VERSION || meta_len < METADATA_LEN || len < meta_len {
        return None;
    }
    let ev = buf.get(..len)?;
    let mut dir = None;
    let mut at = meta_len;
    while at < len {
        let kind = *ev.get(at)?;
        let rec_len = u16_at(ev, at + 2)? as usize;
        let rec = ev.get(at..at.checked_add(rec_len)?)?;
        if rec_len < 4 {
            return None;
        }
        if matches!(kind, INFO_DFID_NAME | INFO_DFID | INFO_FID) {
            // Header (4), fsid (8), then the file handle.
            let handle_bytes = u32_at(rec, 12)? as usize;
            let handle_end = 20usize.checked_add(handle_bytes)?;
            let handle = rec.get(12..handle_end)?;
            let name = match kind {
                INFO_DFID_NAME => {
                    let rest = rec.get(handle_end..)?;
                    let end = rest.iter().position(|b| *b == 0)?;
                    // Not UTF-8: skipped, as the walk skips it.
                    std::str::from_utf8(&rest[..end]).ok()
                }
                INFO_DFID => Some("."),
                _ => None,
            };
            if let (INFO_DFID_NAME | INFO_DFID, Some(name)) = (kind, name) {
                dir = Some((handle, name));
            }
        }
        at += rec_len;
    }
    Some((Event { mask, dir }, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Vec<u8> {
        let handle = [8u32.to_ne_bytes(), 1i32.to_ne_bytes()].concat();
        let mut rec = vec![INFO_DFID_NAME, 0, 0, 0];
        rec.extend([0u8; 8]);
        rec.extend(&handle);
        rec.extend([7u8; 8]);
        rec.extend(name.as_bytes());
        rec.push(0);
        while rec.len() % 4 != 0 {
            rec.push(0);
        }
        let n = rec.len() as u16;
        rec[2..4].copy_from_slice(&n.to_ne_bytes());
        rec
    }

    fn event(mask: u64, rec: &[u8]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend(((METADATA_LEN + rec.len()) as u32).to_ne_bytes());
        ev.push(libc::FANOTIFY_METADATA_VERSION);
        ev.push(0);
        ev.extend((METADATA_LEN as u16).to_ne_bytes());
        ev.extend(mask.to_ne_bytes());
        ev.extend((-1i32).to_ne_bytes());
        ev.extend(0i32.to_ne_bytes());
        ev.extend(rec);
        ev
    }

    #[test]
    fn parses_events_and_refuses_lengths_past_the_buffer() {
        let mut buf = event(0x100, &record("a.txt"));
        buf.extend(event(0x4000, &[]));
        let evs: Vec<_> = Events::new(&buf).collect();
        assert_eq!(evs.len(), 2);
        let first = evs[0].as_ref().unwrap();
        assert_eq!(first.mask, 0x100);
        let (handle, name) = first.dir.unwrap();
        assert_eq!((handle.len(), name), (16, "a.txt"));
        assert!(evs[1].as_ref().unwrap().dir.is_none());

        // Every truncation parses to an error or fewer events, never a
        // read past the end.
        for cut in 0..buf.len() {
            let _ = Events::new(&buf[..cut]).count();
        }
        let mut evil = event(0x100, &record("a"));
        // handle_bytes claims far more than the record holds.
        evil[METADATA_LEN + 12..METADATA_LEN + 16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Events::new(&evil).next().unwrap().is_none());
    }
}
