//! Workspace sync, tested three ways:
//! - `suite_*`: the sync engine (restore, push, fences, outage) run as one
//!   generic suite against both backends: a local directory and S3 (moto
//!   on loopback), Garage-style;
//! - `daemon_*`: end to end with the real daemon, dockerd, image and CLI
//!   against moto;
//! - `lifecycle_*`: `appliance/s3/apply-lifecycle.sh` against moto.

use crate::harness::*;
use agent_protocol::AgentEvent;
use agentbox::config::{StorageConfig, SyncConfig};
use agentbox::ids::ConversationKey;
use agentbox::isolation::quota::{self, Quota};
use agentbox::state::{ConversationRecord, Store};
use agentbox::sync::fsx::Owner;
use agentbox::sync::fsx::{Kind, Root};
use agentbox::sync::manifest::{manifest_key, Entry, Manifest};
use agentbox::sync::paths::RelPath;
use agentbox::sync::push::{latest_manifest, ConvPrefix, PushError};
use agentbox::sync::store::{ByteStream, ObjectBackend, ObjectStoreBackend, StoreError};
use agentbox::sync::{Placement, SyncError, SyncService};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: &str = "acme";

/// Tenant `T`'s conversation `conversation`.
fn key(conversation: &str) -> ConversationKey {
    ConversationKey::new(T, conversation)
}
const OWNER: Owner = Owner {
    uid: 1234,
    gid: 2345,
};

// ---------------------------------------------------------------------
// The generic suite
// ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Backend {
    Local,
    S3,
}

/// Storage config for one test: its own directory or its own bucket.
async fn storage(kind: Backend) -> (StorageConfig, Option<tempfile::TempDir>) {
    let mut cfg = StorageConfig {
        debounce_ms: 50,
        multipart_threshold_mb: 5,
        final_sync_timeout_secs: 2,
        ..Default::default()
    };
    match kind {
        Backend::Local => {
            let dir = tempfile::tempdir().unwrap();
            cfg.url = format!("file://{}/objects", dir.path().display());
            (cfg, Some(dir))
        }
        Backend::S3 => {
            let endpoint = moto::endpoint();
            let bucket = moto::bucket(&endpoint).await;
            cfg.url = format!("s3://{bucket}/some/prefix");
            cfg.endpoint = endpoint;
            cfg.allow_http = true;
            cfg.path_style = true;
            cfg.region = moto::REGION.to_owned();
            (cfg, None)
        }
    }
}

/// A backend that can be switched off: the object store is "down".
struct Switch {
    inner: Arc<dyn ObjectBackend>,
    down: AtomicBool,
    /// Keys written, in order.
    written: std::sync::Mutex<Vec<String>>,
}

impl Switch {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Backend(
                "connection refused (switched off)".into(),
            ))
        } else {
            Ok(())
        }
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    /// The keys written since the last call.
    fn take_written(&self) -> Vec<String> {
        std::mem::take(&mut *self.written.lock().unwrap())
    }
}

#[async_trait]
impl ObjectBackend for Switch {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check()?;
        self.written.lock().unwrap().push(key.to_owned());
        self.inner.put(key, data).await
    }
    async fn put_file(
        &self,
        key: &str,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.written.lock().unwrap().push(key.to_owned());
        self.inner.put_file(key, file, size, sha256).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn get_stream(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.check()?;
        self.inner.get_stream(key).await
    }
    async fn get_range_stream(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        self.check()?;
        self.inner.get_range_stream(key, range).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check()?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }
}

/// One "daemon": a sync service with its own state file.
struct Node {
    svc: SyncService,
    store: Store,
    backend: Arc<Switch>,
    _state: tempfile::TempDir,
}

fn node(cfg: &StorageConfig, backend: Arc<dyn ObjectBackend>) -> Node {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(&state.path().join("s.redb")).unwrap();
    let backend = Arc::new(Switch {
        inner: backend,
        down: AtomicBool::new(false),
        written: Default::default(),
    });
    Node {
        svc: SyncService::new(cfg, OWNER, store.clone(), backend.clone()),
        store,
        backend,
        _state: state,
    }
}

impl Node {
    /// What the executor does when a conversation gets a container of
    /// generation `generation`: persist the record, then prepare.
    async fn assign(
        &self,
        rec: &mut ConversationRecord,
        generation: u64,
        dir: &Path,
    ) -> Result<agentbox::sync::RunSync, SyncError> {
        rec.generation = generation;
        self.store.put_conversation(rec).await.unwrap();
        self.svc
            .prepare(
                rec,
                Placement {
                    container: &format!("c{generation}"),
                    workspace_dir: dir,
                    // These tests reuse one host directory across
                    // generations, as a kept workspace would be.
                    fresh: false,
                },
            )
            .await
    }
}

fn raw_backend(cfg: &StorageConfig) -> Arc<dyn ObjectBackend> {
    Arc::new(ObjectStoreBackend::open(cfg).unwrap())
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn fresh_workspace(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn stored(backend: &dyn ObjectBackend, conv: &str) -> Option<Manifest> {
    latest_manifest(backend, &ConvPrefix(format!("{T}/{conv}")))
        .await
        .unwrap()
}

fn has(m: &Manifest, path: &str) -> bool {
    m.entries.contains_key(&RelPath::parse(path).unwrap())
}

async fn round_trip_keeps_content_modes_links_and_owner(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws1 = fresh_workspace(root.path(), "ws1");
    write(&ws1, "a.txt", b"hello");
    write(&ws1, "empty", b"");
    write(&ws1, "bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(ws1.join("bin/run.sh"), PermissionsExt::from_mode(0o751)).unwrap();
    write(
        &ws1,
        ".agentbox/home/.claude/projects/p/s.jsonl",
        b"{\"session\":1}\n",
    );
    std::fs::create_dir_all(ws1.join("dir/empty_dir")).unwrap();
    std::os::unix::fs::symlink("a.txt", ws1.join("link")).unwrap();
    std::os::unix::fs::symlink("../a.txt", ws1.join("dir/up")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ws1.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../outside", ws1.join("dir/esc")).unwrap();
    // Above the 5 MiB threshold: a multipart upload of two parts.
    let big: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    write(&ws1, "big.bin", &big);

    let mut rec = ConversationRecord::new(T, "rt");
    n.assign(&mut rec, 1, &ws1).await.unwrap();
    let r = n.svc.push_now(&key("rt")).await.unwrap();
    assert_eq!(r.files, 5, "{r:?}");
    assert!(r.bytes >= big.len() as u64, "{r:?}");

    // A new container on an empty workspace: everything comes back.
    let ws2 = fresh_workspace(root.path(), "ws2");
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(rec.restored_generation, 2);
    assert_eq!(std::fs::read(ws2.join("a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(ws2.join("empty")).unwrap(), b"");
    assert_eq!(std::fs::read(ws2.join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(ws2.join(".agentbox/home/.claude/projects/p/s.jsonl")).unwrap(),
        b"{\"session\":1}\n"
    );
    let mode = std::fs::metadata(ws2.join("bin/run.sh")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o751);
    assert!(ws2.join("dir/empty_dir").is_dir());
    assert_eq!(
        std::fs::read_link(ws2.join("link")).unwrap(),
        Path::new("a.txt")
    );
    assert_eq!(
        std::fs::read_link(ws2.join("dir/up")).unwrap(),
        Path::new("../a.txt")
    );
    assert!(
        std::fs::symlink_metadata(ws2.join("abs")).is_err(),
        "absolute link stored"
    );
    assert!(
        std::fs::symlink_metadata(ws2.join("dir/esc")).is_err(),
        "escaping link stored"
    );
    for p in ["a.txt", "bin/run.sh", "bin", "link", "big.bin"] {
        let m = std::fs::symlink_metadata(ws2.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (OWNER.uid, OWNER.gid), "{p}");
    }
    let mtime = |d: &Path| std::fs::metadata(d.join("a.txt")).unwrap().mtime();
    assert_eq!(mtime(&ws1), mtime(&ws2), "mtime kept");

    // The restored files are known: nothing travels again.
    let r = n.svc.push_now(&key("rt")).await.unwrap();
    assert_eq!((r.files, r.bytes), (0, 0), "{r:?}");
    let m = stored(n.backend.as_ref(), "rt").await.unwrap();
    assert_eq!(m.generation, 2);
}

async fn incremental_push_moves_only_changes_and_propagates_deletions(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    for i in 0..50 {
        write(
            &ws,
            &format!("src/f{i}.txt"),
            format!("file {i}").as_bytes(),
        );
    }
    let mut rec = ConversationRecord::new(T, "inc");
    n.assign(&mut rec, 1, &ws).await.unwrap();
    let r = n.svc.push_now(&key("inc")).await.unwrap();
    assert_eq!(r.files, 50);
    let r = n.svc.push_now(&key("inc")).await.unwrap();
    assert!(r.unchanged && r.files == 0, "{r:?}");

    write(&ws, "src/f0.txt", b"changed");
    std::fs::remove_file(ws.join("src/f1.txt")).unwrap();
    let r = n.svc.push_now(&key("inc")).await.unwrap();
    assert_eq!((r.files, r.deleted), (1, 1), "{r:?}");
    assert_eq!(r.bytes, 7);
    let blobs = n.backend.list(&format!("{T}/inc/blobs")).await.unwrap();
    assert_eq!(blobs.len(), 49, "unreferenced blobs are deleted");

    let ws2 = fresh_workspace(root.path(), "ws2");
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(std::fs::read(ws2.join("src/f0.txt")).unwrap(), b"changed");
    assert!(!ws2.join("src/f1.txt").exists(), "deletion propagated");
    assert_eq!(std::fs::read_dir(ws2.join("src")).unwrap().count(), 49);
    // The first push of generation 2 commits its manifest and drops
    // generation 1's.
    n.svc.push_now(&key("inc")).await.unwrap();
    let manifests = n.backend.list(&format!("{T}/inc/manifests")).await.unwrap();
    assert_eq!(manifests, [format!("{T}/inc/{}", manifest_key(2))]);
}

/// What the store holds under `{T}/{conv}/{dir}`.
async fn listed(backend: &dyn ObjectBackend, conv: &str, dir: &str) -> Vec<String> {
    let mut keys = backend.list(&format!("{T}/{conv}/{dir}")).await.unwrap();
    keys.sort();
    keys
}

async fn a_checkpoint_writes_only_the_chunks_that_changed(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    for i in 0..3000 {
        write(&ws, &format!("d{}/f{i}", i % 17), format!("{i}").as_bytes());
    }
    let mut rec = ConversationRecord::new(T, "chk");
    n.assign(&mut rec, 1, &ws).await.unwrap();
    n.svc.push_now(&key("chk")).await.unwrap();
    let chunks = listed(n.backend.as_ref(), "chk", "chunks").await;
    assert!(chunks.len() > 3, "{} chunks for 3,000 files", chunks.len());
    n.backend.take_written();

    write(&ws, "d3/f3", b"changed");
    let r = n.svc.push_now(&key("chk")).await.unwrap();
    assert_eq!(r.files, 1, "{r:?}");
    let written = n.backend.take_written();
    let new_chunks = written.iter().filter(|k| k.contains("/chunks/")).count();
    assert_eq!(
        new_chunks, 1,
        "one file changed, one chunk written: {written:?}"
    );
    assert_eq!(written.len(), 3, "blob, chunk, root: {written:?}");
    let after = listed(n.backend.as_ref(), "chk", "chunks").await;
    assert_eq!(after.len(), chunks.len(), "the replaced chunk is deleted");
    assert_eq!(
        after.iter().filter(|k| !chunks.contains(k)).count(),
        1,
        "{after:?}"
    );

    // Nothing changed: nothing written.
    let r = n.svc.push_now(&key("chk")).await.unwrap();
    assert!(r.unchanged, "{r:?}");
    assert_eq!(n.backend.take_written(), Vec::<String>::new());

    // The stored workspace reads back whole, by restore and by the API.
    let ws2 = fresh_workspace(root.path(), "ws2");
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(std::fs::read(ws2.join("d3/f3")).unwrap(), b"changed");
    assert_eq!(std::fs::read(ws2.join("d0/f2992")).unwrap(), b"2992");
    let files = n.svc.list_files(&key("chk")).await.unwrap();
    assert_eq!(files.iter().filter(|f| f.kind == "file").count(), 3000);
}

/// A workspace stored by a build that wrote the whole map inline (format
/// 1): it restores, the Files API reads it, and the first push moves it to
/// chunks and drops the old root.
async fn a_workspace_stored_in_the_inline_format_still_restores(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let blob = |content: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content));
    let (a, b) = (b"old format\n".as_slice(), b"#!/bin/sh\n".as_slice());
    for content in [a, b] {
        n.backend
            .put(
                &format!("{T}/old/blobs/{}", blob(content)),
                Bytes::copy_from_slice(content),
            )
            .await
            .unwrap();
    }
    // Byte for byte what the earlier build stored.
    let inline = json!({"format": 1, "generation": 3, "created_ms": 1, "entries": {
        "bin": {"kind": "dir", "mode": 0o755},
        "bin/run.sh": {"kind": "file", "mode": 0o750, "size": b.len(), "mtime_ns": 1_600_000_000_000_000_000i64, "sha256": blob(b)},
        "link": {"kind": "symlink", "target": "notes.txt"},
        "notes.txt": {"kind": "file", "mode": 0o644, "size": a.len(), "mtime_ns": 1_600_000_000_000_000_000i64, "sha256": blob(a)},
    }});
    n.backend
        .put(
            &format!("{T}/old/{}", manifest_key(3)),
            Bytes::from(inline.to_string()),
        )
        .await
        .unwrap();

    let listed_files = n.svc.list_files(&key("old")).await.unwrap();
    let paths: Vec<&str> = listed_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["bin", "bin/run.sh", "link", "notes.txt"]);

    let ws = fresh_workspace(root.path(), "ws");
    let mut rec = ConversationRecord::new(T, "old");
    n.assign(&mut rec, 4, &ws).await.unwrap();
    assert_eq!(std::fs::read(ws.join("notes.txt")).unwrap(), a);
    assert_eq!(std::fs::read(ws.join("bin/run.sh")).unwrap(), b);
    let mode = std::fs::metadata(ws.join("bin/run.sh")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        std::fs::read_link(ws.join("link")).unwrap(),
        Path::new("notes.txt")
    );

    // The first push stores chunks and drops the inline root.
    write(&ws, "new.txt", b"new");
    n.svc.push_now(&key("old")).await.unwrap();
    assert_eq!(
        listed(n.backend.as_ref(), "old", "manifests").await,
        [format!("{T}/old/{}", manifest_key(4))]
    );
    assert!(!listed(n.backend.as_ref(), "old", "chunks").await.is_empty());
    let ws2 = fresh_workspace(root.path(), "ws2");
    n.assign(&mut rec, 5, &ws2).await.unwrap();
    assert_eq!(std::fs::read(ws2.join("notes.txt")).unwrap(), a);
    assert_eq!(std::fs::read(ws2.join("new.txt")).unwrap(), b"new");
}

/// A workspace on its own loop-mounted ext4, as the daemon makes them
/// (the disk quota), so its changes can be tracked.
struct OwnFs {
    dir: PathBuf,
    _root: tempfile::TempDir,
}

async fn own_fs(size_mb: u64) -> OwnFs {
    let root = tempfile::tempdir().unwrap();
    let ws_root = root.path().join("workspaces");
    let quota = Quota::new(&ws_root, &root.path().join("images"), size_mb);
    let dir = ws_root.join("ws");
    quota
        .ensure(&dir, 0, 0)
        .await
        .expect("mount a workspace image");
    OwnFs { dir, _root: root }
}

impl OwnFs {
    /// Unmounts it; tracking must never keep the filesystem busy.
    fn release(self) {
        quota::release(&self.dir).expect("unmount the workspace");
    }
}

/// What a walk finds, as manifest entries (path -> kind, size or target,
/// mode): the reference a tracked push must match.
fn walked(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Root::open(dir)
        .unwrap()
        .walk()
        .unwrap()
        .into_iter()
        .map(|f| {
            let what = match f.kind {
                Kind::File => format!("file {} {:o}", f.size, f.mode),
                Kind::Dir => format!("dir {:o}", f.mode),
                Kind::Symlink(t) => format!("link {t}"),
                Kind::Other => "other".into(),
            };
            (f.path.to_string(), what)
        })
        .collect();
    out.sort();
    out
}

fn entries_of(m: &Manifest) -> Vec<(String, String)> {
    m.entries
        .iter()
        .map(|(p, e)| {
            let what = match e {
                Entry::File { size, mode, .. } => format!("file {size} {mode:o}"),
                Entry::Dir { mode } => format!("dir {mode:o}"),
                Entry::Symlink { target } => format!("link {target}"),
            };
            (p.to_string(), what)
        })
        .collect()
}

fn sh(script: &str, dir: &Path) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

async fn tracked_checkpoints_see_every_writer_without_walking(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let fs = own_fs(64).await;
    let ws = fs.dir.clone();
    write(&ws, "src/a.txt", b"a");
    write(&ws, "src/b.txt", b"b");
    write(&ws, "keep/x", b"x");
    write(&ws, "old/dir/y", b"y");
    write(&ws, "gone/deep/z", b"z");
    std::os::unix::fs::symlink("src/a.txt", ws.join("link")).unwrap();
    let mut rec = ConversationRecord::new(T, "trk");
    n.assign(&mut rec, 1, &ws).await.unwrap();
    let r = n.svc.push_now(&key("trk")).await.unwrap();
    assert!(r.walked, "the first push walks: {r:?}");
    let r = n.svc.push_now(&key("trk")).await.unwrap();
    assert!(r.unchanged && !r.walked, "{r:?}");

    // Every kind of change, by this process and by others (a shell, as
    // the Bash tool runs one; a process that outlives its parent).
    write(&ws, "src/a.txt", b"changed");
    std::fs::remove_file(ws.join("src/b.txt")).unwrap();
    std::fs::set_permissions(ws.join("keep/x"), PermissionsExt::from_mode(0o600)).unwrap();
    sh(
        "mkdir -p new/deep && echo z > new/deep/z.txt && mv old moved",
        &ws,
    );
    sh(
        "rm -rf gone && ln -sfn keep/x link && ln -s moved/dir/y link2",
        &ws,
    );
    let bg = std::process::Command::new("sh")
        .arg("-c")
        .arg("(echo background > bg.txt; mkdir -p bgdir/sub; echo b > bgdir/sub/f) &")
        .current_dir(&ws)
        .status()
        .unwrap();
    assert!(bg.success());
    wait_for("the background writer", Duration::from_secs(10), || {
        let ws = ws.clone();
        async move { std::fs::read(ws.join("bgdir/sub/f")).is_ok_and(|b| b == b"b\n") }
    })
    .await;
    let r = n.svc.push_now(&key("trk")).await.unwrap();
    assert!(!r.walked, "tracked: {r:?}");
    let m = stored(n.backend.as_ref(), "trk").await.unwrap();
    assert_eq!(
        entries_of(&m),
        walked(&ws),
        "a tracked push stores what a walk finds"
    );
    assert!(has(&m, "moved/dir/y") && !has(&m, "old/dir/y") && !has(&m, "gone/deep/z"));
    assert!(has(&m, "bgdir/sub/f") && has(&m, "link2"));

    // The stored workspace restores to the same tree.
    let elsewhere = tempfile::tempdir().unwrap();
    let ws2 = fresh_workspace(elsewhere.path(), "ws2");
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(walked(&ws2), walked(&ws));
    assert_eq!(std::fs::read(ws2.join("src/a.txt")).unwrap(), b"changed");
    fs.release();
}

async fn a_tracking_overflow_falls_back_to_a_walk(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let fs = own_fs(256).await;
    let ws = fs.dir.clone();
    write(&ws, "first", b"1");
    let mut rec = ConversationRecord::new(T, "ovf");
    n.assign(&mut rec, 1, &ws).await.unwrap();
    n.svc.push_now(&key("ovf")).await.unwrap();
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // More distinct files than the kernel queues events.
    let files = queue + queue / 4;
    for i in 0..files {
        write(&ws, &format!("many/d{}/f{i}", i % 64), b"x");
    }
    let r = n.svc.push_now(&key("ovf")).await.unwrap();
    assert!(r.walked, "an overflow walks: {r:?}");
    let m = stored(n.backend.as_ref(), "ovf").await.unwrap();
    assert_eq!(entries_of(&m), walked(&ws));
    // Tracking carries on after the walk.
    write(&ws, "many/d1/f1", b"changed");
    let r = n.svc.push_now(&key("ovf")).await.unwrap();
    assert!(!r.walked && r.files == 1, "{r:?}");
    fs.release();
}

async fn failed_restore_never_leads_to_a_push(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws1 = fresh_workspace(root.path(), "ws1");
    write(&ws1, "precious.txt", b"keep me");
    let mut rec = ConversationRecord::new(T, "fr");
    n.assign(&mut rec, 1, &ws1).await.unwrap();
    n.svc.push_now(&key("fr")).await.unwrap();

    // The container is lost and the store is down while the new one
    // starts on an empty workspace (what the image ships, nothing else).
    let ws2 = fresh_workspace(root.path(), "ws2");
    write(&ws2, "README.default", b"image default");
    std::fs::remove_file(ws2.join("README.default")).unwrap();
    n.backend.set_down(true);
    let err = n
        .assign(&mut rec, 2, &ws2)
        .await
        .err()
        .expect("restore must fail");
    assert_eq!(err.code().as_str(), "workspace_restore_failed", "{err}");
    assert_eq!(rec.restored_generation, 0);
    n.backend.set_down(false);
    // Any push (checkpoint, final, manual) is refused.
    let err = n.svc.push_now(&key("fr")).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Push(PushError::NotRestored)),
        "{err}"
    );
    let m = stored(n.backend.as_ref(), "fr").await.unwrap();
    assert_eq!(m.generation, 1);
    assert!(has(&m, "precious.txt"));
    assert_eq!(n.svc.stats().restore_failures_total, 1);

    // The next run restores for real.
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(std::fs::read(ws2.join("precious.txt")).unwrap(), b"keep me");
}

async fn stale_generation_cannot_write(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let backend = raw_backend(&cfg);
    let a = node(&cfg, backend.clone());
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    write(&ws, "a.txt", b"1");
    let mut rec = ConversationRecord::new(T, "st");
    a.assign(&mut rec, 1, &ws).await.unwrap();
    a.svc.push_now(&key("st")).await.unwrap();

    // A writer of generation 3 (its own state file, same store) restores...
    let c = node(&cfg, backend.clone());
    let ws_c = fresh_workspace(root.path(), "ws_c");
    let mut rec_c = ConversationRecord::new(T, "st");
    c.assign(&mut rec_c, 3, &ws_c).await.unwrap();
    assert_eq!(rec_c.generation, 3);

    // ...then another writer takes over with generation 5 and commits.
    let b = node(&cfg, backend.clone());
    let ws_b = fresh_workspace(root.path(), "ws_b");
    let mut rec_b = ConversationRecord::new(T, "st");
    b.assign(&mut rec_b, 5, &ws_b).await.unwrap();
    write(&ws_b, "b.txt", b"from 5");
    b.svc.push_now(&key("st")).await.unwrap();

    // Generation 3's state file still says 3, but the stored manifest of
    // generation 5 refuses it.
    write(&ws_c, "c.txt", b"stale");
    let err = c.svc.push_now(&key("st")).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Push(PushError::Stale { .. })),
        "{err}"
    );

    // Writer A: its state file moved on to generation 2 (a new container).
    let mut moved = rec.clone();
    moved.generation = 2;
    a.store.put_conversation(&moved).await.unwrap();
    write(&ws, "late.txt", b"stale too");
    let err = a.svc.push_now(&key("st")).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Push(PushError::Stale { .. })),
        "{err}"
    );

    let m = stored(backend.as_ref(), "st").await.unwrap();
    assert_eq!(m.generation, 5);
    assert!(has(&m, "b.txt") && !has(&m, "c.txt") && !has(&m, "late.txt"));
    assert_eq!(c.svc.stats().stale_refusals_total, 1);
}

async fn a_new_state_file_carries_on_above_the_stored_generation(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let backend = raw_backend(&cfg);
    let old = node(&cfg, backend.clone());
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    write(&ws, "a.txt", b"before the reinstall");
    let mut rec = ConversationRecord::new(T, "re");
    old.assign(&mut rec, 7, &ws).await.unwrap();
    old.svc.push_now(&key("re")).await.unwrap();

    // The host is reinstalled: a new state file, the same bucket.
    let new = node(&cfg, backend.clone());
    let ws2 = fresh_workspace(root.path(), "ws2");
    let mut rec2 = ConversationRecord::new(T, "re");
    new.assign(&mut rec2, 1, &ws2).await.unwrap();
    assert_eq!(rec2.generation, 8, "continues above the stored generation");
    let persisted = new.store.conversation(&key("re")).await.unwrap().unwrap();
    assert_eq!(persisted.generation, 8);
    assert_eq!(
        std::fs::read(ws2.join("a.txt")).unwrap(),
        b"before the reinstall"
    );
    write(&ws2, "b.txt", b"after");
    new.svc.push_now(&key("re")).await.unwrap();
    let m = stored(backend.as_ref(), "re").await.unwrap();
    assert_eq!(m.generation, 8);
    assert!(has(&m, "a.txt") && has(&m, "b.txt"));
}

async fn store_outage_keeps_a_backlog_and_loses_nothing(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    let mut rec = ConversationRecord::new(T, "out");
    let mut run = n.assign(&mut rec, 1, &ws).await.unwrap();

    // A tool that changes nothing schedules nothing.
    run.observe(&tool_use("r1", "Read"));
    run.observe(&tool_result("r1"));
    assert!(!n.svc.is_pending(&key("out")));

    n.backend.set_down(true);
    write(&ws, "during-outage.txt", b"must survive");
    run.observe(&tool_use("w1", "Write"));
    run.observe(&tool_result("w1"));
    assert!(n.svc.is_pending(&key("out")));
    wait_for("a failed checkpoint", Duration::from_secs(5), || async {
        n.svc.stats().push_failures_total >= 1
    })
    .await;
    assert_eq!(n.svc.stats().backlog, 1);
    assert!(
        !n.svc.forget(&key("out")),
        "pending changes are never forgotten"
    );

    // The end of the run cannot sync either; it gives up after the
    // configured wait and leaves the work to the background worker.
    let t0 = Instant::now();
    assert!(run.finish().await.is_err());
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(n.svc.stats().backlog, 1);

    n.backend.set_down(false);
    wait_for("the backlog to drain", Duration::from_secs(40), || async {
        n.svc.stats().backlog == 0
    })
    .await;
    let m = stored(n.backend.as_ref(), "out").await.unwrap();
    assert!(has(&m, "during-outage.txt"));
    wait_for(
        "the idle state to be dropped",
        Duration::from_secs(5),
        || async { n.svc.forget(&key("out")) },
    )
    .await;
}

async fn tampered_manifest_is_refused(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let sha = "0".repeat(64);
    for (conv, entries) in [
        (
            "evil1",
            json!({"../escape.txt": {"kind": "file", "mode": 420, "size": 1, "mtime_ns": 0, "sha256": sha}}),
        ),
        (
            "evil2",
            json!({"etc": {"kind": "symlink", "target": "/etc"}}),
        ),
    ] {
        let m = json!({"format": 1, "generation": 1, "created_ms": 0, "entries": entries});
        n.backend
            .put(
                &format!("{T}/{conv}/{}", manifest_key(1)),
                Bytes::from(m.to_string()),
            )
            .await
            .unwrap();
        let ws = fresh_workspace(root.path(), conv);
        let mut rec = ConversationRecord::new(T, conv);
        let err = n.assign(&mut rec, 2, &ws).await.err().expect("refused");
        assert_eq!(err.code().as_str(), "workspace_restore_failed", "{err}");
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0);
    }
    // Format 2: a chunk that hashes to its name but holds an escaping
    // path, and a chunk whose bytes do not match its name.
    let chunk = json!({"entries": {"../escape.txt": {"kind": "file", "mode": 420, "size": 1, "mtime_ns": 0, "sha256": sha}}}).to_string();
    let named = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(chunk.as_bytes()));
    for (conv, name) in [("evil3", named.clone()), ("evil4", "1".repeat(64))] {
        n.backend
            .put(
                &format!("{T}/{conv}/chunks/{name}"),
                Bytes::from(chunk.clone()),
            )
            .await
            .unwrap();
        let m = json!({"format": 2, "generation": 1, "created_ms": 0,
            "chunks": [{"sha256": name, "first": "../escape.txt", "count": 1}]});
        n.backend
            .put(
                &format!("{T}/{conv}/{}", manifest_key(1)),
                Bytes::from(m.to_string()),
            )
            .await
            .unwrap();
        let ws = fresh_workspace(root.path(), conv);
        let mut rec = ConversationRecord::new(T, conv);
        let err = n.assign(&mut rec, 2, &ws).await.err().expect("refused");
        assert_eq!(err.code().as_str(), "workspace_restore_failed", "{err}");
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0);
    }
    assert!(!root.path().join("escape.txt").exists());
}

async fn files_over_the_size_limits_are_refused_and_the_rest_syncs(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    const MIB: u64 = 1 << 20;
    n.svc.set_limits(SyncConfig {
        max_file_bytes: MIB,
        max_workspace_bytes: 3 * MIB,
    });
    let root = tempfile::tempdir().unwrap();
    let ws = fresh_workspace(root.path(), "ws");
    write(&ws, "src/main.rs", b"fn main() {}\n");
    // 16 TiB of holes (ext4's largest file is one block short of it): no
    // quota at all, and hours to hash, so the test ending shows it was
    // never read.
    let huge = (16 << 40) - 4096;
    std::fs::File::create(ws.join("huge.img"))
        .unwrap()
        .set_len(huge)
        .unwrap();
    write(&ws, "big.bin", &vec![1u8; MIB as usize + 1]);
    let mut rec = ConversationRecord::new(T, "lim");
    n.assign(&mut rec, 1, &ws).await.unwrap();
    let r = n.svc.push_now(&key("lim")).await.unwrap();
    let refused = |r: &agentbox::sync::push::PushReport| -> Vec<(String, &'static str)> {
        r.refused
            .iter()
            .map(|x| (x.path.to_string(), x.reason.as_str()))
            .collect()
    };
    assert_eq!(
        refused(&r),
        [
            ("big.bin".to_owned(), "file_too_large"),
            ("huge.img".to_owned(), "file_too_large")
        ]
    );
    let sparse = &r.refused[1];
    assert_eq!(sparse.size, huge);
    assert!(sparse.allocated < MIB, "{sparse:?}");
    assert_eq!((r.files, r.bytes), (1, 13), "only the source travelled");
    let m = stored(n.backend.as_ref(), "lim").await.unwrap();
    assert!(has(&m, "src/main.rs") && !has(&m, "huge.img") && !has(&m, "big.bin"));
    let blobs = n.backend.list(&format!("{T}/lim/blobs")).await.unwrap();
    assert_eq!(blobs.len(), 1, "nothing of the refused files is stored");
    match n.svc.skipped_event(&r) {
        Some(AgentEvent::SyncSkipped {
            count,
            files,
            max_file_bytes,
            max_workspace_bytes,
        }) => {
            assert_eq!(
                (count, max_file_bytes, max_workspace_bytes),
                (2, MIB, 3 * MIB)
            );
            assert_eq!(files[1].path, "huge.img");
            assert_eq!(
                (files[1].size, files[1].reason.as_str()),
                (huge, "file_too_large")
            );
        }
        other => panic!("no sync_skipped event: {other:?}"),
    }
    // Still there, still refused; an unchanged push writes nothing.
    let again = n.svc.push_now(&key("lim")).await.unwrap();
    assert!(again.unchanged, "{again:?}");
    assert_eq!(refused(&again), refused(&r));

    // The workspace budget: 13 B + 1 MiB + 1 MiB fit in 3 MiB, a third
    // MiB does not; of equal sizes the last by path is left out.
    std::fs::remove_file(ws.join("big.bin")).unwrap();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        write(&ws, name, &vec![i as u8; MIB as usize]);
    }
    let r = n.svc.push_now(&key("lim")).await.unwrap();
    assert_eq!(
        refused(&r),
        [
            ("c.bin".to_owned(), "workspace_too_large"),
            ("huge.img".to_owned(), "file_too_large")
        ]
    );
    let m = stored(n.backend.as_ref(), "lim").await.unwrap();
    assert!(has(&m, "a.bin") && has(&m, "b.bin") && !has(&m, "c.bin"));

    // A stored file grown past the limit (sparse growth is free) leaves
    // the store, and makes room for the one left out before.
    std::fs::OpenOptions::new()
        .write(true)
        .open(ws.join("a.bin"))
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    let r = n.svc.push_now(&key("lim")).await.unwrap();
    assert_eq!(
        refused(&r),
        [
            ("a.bin".to_owned(), "file_too_large"),
            ("huge.img".to_owned(), "file_too_large")
        ]
    );
    let m = stored(n.backend.as_ref(), "lim").await.unwrap();
    assert!(!has(&m, "a.bin") && has(&m, "b.bin") && has(&m, "c.bin"));

    // A new container gets back what was stored, and nothing else.
    let ws2 = fresh_workspace(root.path(), "ws2");
    n.assign(&mut rec, 2, &ws2).await.unwrap();
    assert_eq!(
        std::fs::read(ws2.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    assert_eq!(std::fs::read(ws2.join("c.bin")).unwrap().len() as u64, MIB);
    assert!(!ws2.join("huge.img").exists() && !ws2.join("a.bin").exists());
}

fn tool_use(id: &str, name: &str) -> AgentEvent {
    AgentEvent::ToolUse {
        id: id.into(),
        name: name.into(),
        input: json!({}),
    }
}

fn tool_result(id: &str) -> AgentEvent {
    AgentEvent::ToolResult {
        tool_use_id: id.into(),
        content: json!("ok"),
        is_error: false,
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !cond().await {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod suite_local {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::Local).await })*
        }
        mod suite_s3 {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::S3).await })*
        }
    };
}

suite!(
    round_trip_keeps_content_modes_links_and_owner,
    incremental_push_moves_only_changes_and_propagates_deletions,
    a_checkpoint_writes_only_the_chunks_that_changed,
    a_workspace_stored_in_the_inline_format_still_restores,
    failed_restore_never_leads_to_a_push,
    stale_generation_cannot_write,
    a_new_state_file_carries_on_above_the_stored_generation,
    store_outage_keeps_a_backlog_and_loses_nothing,
    tampered_manifest_is_refused,
    tracked_checkpoints_see_every_writer_without_walking,
    a_tracking_overflow_falls_back_to_a_walk,
    files_over_the_size_limits_are_refused_and_the_rest_syncs,
);

// ---------------------------------------------------------------------
// End to end: the real daemon, dockerd, image and CLI, syncing to moto
// ---------------------------------------------------------------------

const KEY: &str = "sk-ant-e2e-sync";
const STORE_PREFIX: &str = "agentbox";

/// A daemon syncing to a fresh moto bucket through `endpoint` (moto
/// itself, or a forwarder in front of it); returns a backend reading the
/// same bucket directly from moto.
async fn s3_daemon(
    endpoint: Option<&str>,
    extra: &[(&str, &str)],
) -> (mock_model::MockModel, Daemon, Arc<dyn ObjectBackend>) {
    let moto_url = moto::endpoint();
    let bucket = moto::bucket(&moto_url).await;
    let mut env = moto::daemon_env(endpoint.unwrap_or(&moto_url), &bucket, STORE_PREFIX);
    env.push(("AGENTBOX_STORAGE_DEBOUNCE_MS".into(), "200".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mock = mock_model::MockModel::start("127.0.0.1:0")
        .await
        .expect("mock model");
    // No warm pool: each test reasons about the one container of its run.
    let opts = DaemonOptions {
        pool_min: 0,
        env: Vec::new(),
        model_url: mock.url(),
        api_key: KEY.to_owned(),
        extra_config: String::new(),
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start_with_env(opts, &env))
        .await
        .unwrap();
    let cfg = StorageConfig {
        url: format!("s3://{bucket}/{STORE_PREFIX}"),
        endpoint: moto_url,
        allow_http: true,
        path_style: true,
        region: moto::REGION.to_owned(),
        ..Default::default()
    };
    (mock, daemon, raw_backend(&cfg))
}

/// Posts a prompt and streams its events into `tx` as they arrive.
fn stream_run(
    daemon: &Daemon,
    conversation: &str,
    prompt: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<SseEvent> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let url = daemon.url(&format!("/v1/conversations/{conversation}/messages"));
    let body = json!({"prompt": prompt});
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let resp = crate::harness::client()
            .post(url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("post message");
        assert_eq!(resp.status().as_u16(), 200);
        let mut buf = String::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                for ev in parse_sse(&block) {
                    let _ = tx.send(ev);
                }
            }
        }
    });
    rx
}

/// Every event of a run, bounded in time.
async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<SseEvent>) -> Vec<SseEvent> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(150), async {
        while let Some(ev) = rx.recv().await {
            out.push(ev);
        }
    })
    .await
    .expect("the run did not end within 150 s");
    out
}

async fn run_to_end(daemon: &Daemon, conversation: &str, prompt: &str) -> Vec<SseEvent> {
    collect(stream_run(daemon, conversation, prompt)).await
}

fn tool_output(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "tool_result")
        .map(|e| e.data["content"].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_ok_result(events: &[SseEvent]) {
    let result = events.iter().find(|e| e.event == "result");
    assert!(
        result.is_some_and(|r| r.data["is_error"] == false),
        "no successful result: {events:#?}"
    );
}

async fn stored_at(backend: &Arc<dyn ObjectBackend>, conv: &str) -> Option<Manifest> {
    latest_manifest(backend.as_ref(), &ConvPrefix(format!("{TENANT}/{conv}")))
        .await
        .expect("read the store")
}

/// Removes the conversation's container and its host workspace, so only
/// the object store still has its files.
fn lose_container_and_workspace(daemon: &Daemon, conv: &str) {
    let ws = daemon.workspace(TENANT, conv);
    for id in daemon.containers() {
        docker_ok(&["rm", "-f", &id]);
    }
    // The quota mount point may stay behind; its contents must go.
    let _ = std::process::Command::new("umount").arg(&ws).status();
    let _ = std::fs::remove_dir_all(&ws);
    assert!(
        !ws.join("notes.txt").exists() && !ws.join("early.txt").exists(),
        "workspace not wiped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_files_and_session_survive_container_loss_and_host_wipe() {
    let _engine = serial::shared().await;
    let (mock, daemon, backend) = s3_daemon(None, &[]).await;
    let conv = "survive";
    let events = run_to_end(
        &daemon,
        conv,
        "Make files.\n!write notes.txt hello from run one\n\
         !bash mkdir -p tools && echo tool > tools/t.sh && chmod 750 tools/t.sh && ln -s notes.txt alias",
    )
    .await;
    assert_ok_result(&events);
    // `result` came after the final sync: the store has the files now.
    let m = stored_at(&backend, conv).await.expect("a manifest");
    for p in ["notes.txt", "tools/t.sh", "alias"] {
        assert!(has(&m, p), "{p} missing: {:?}", m.entries.keys());
    }
    assert!(
        m.entries
            .keys()
            .any(|k| k.as_str().starts_with(".agentbox/home/.claude/projects/")),
        "the CLI's session files are synced: {:?}",
        m.entries.keys()
    );
    let first_container = daemon.containers();
    let requests_before = mock.requests().len();

    lose_container_and_workspace(&daemon, conv);
    let events = run_to_end(
        &daemon,
        conv,
        "!bash cat notes.txt && ls -l tools/t.sh && readlink alias",
    )
    .await;
    assert_ok_result(&events);
    let out = tool_output(&events);
    assert!(out.contains("hello from run one"), "{out}");
    assert!(out.contains("-rwxr-x---"), "mode kept: {out}");
    assert!(out.contains("notes.txt"), "link kept: {out}");
    assert_ne!(daemon.containers(), first_container, "a new container");
    let meta = std::fs::metadata(daemon.workspace(TENANT, conv).join("notes.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // The CLI resumed the session restored from the store: the model saw
    // the first run's prompt again.
    let resumed = mock.requests()[requests_before..]
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .any(|r| r.body.to_string().contains("Make files."));
    assert!(resumed, "the second run did not resume the first session");
    let audit = daemon.logs().join("\n");
    assert!(audit.contains("file_sync_from_container"), "no push audit");
    assert!(audit.contains("file_sync_to_container"), "no restore audit");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_checkpoint_lands_mid_run_and_survives_docker_kill() {
    let _engine = serial::shared().await;
    let (_mock, daemon, backend) = s3_daemon(None, &[]).await;
    let conv = "checkpoint";
    let mut rx = stream_run(
        &daemon,
        conv,
        "!write early.txt early bird\n!sleep 6000\n!write late.txt late",
    );
    let mut seen = Vec::new();
    let t0 = Instant::now();
    loop {
        while let Ok(ev) = rx.try_recv() {
            seen.push(ev);
        }
        assert!(
            !seen
                .iter()
                .any(|e| e.event == "result" || e.event == "error"),
            "the run ended before the checkpoint was seen: {seen:#?}"
        );
        if let Some(m) = stored_at(&backend, conv).await {
            if has(&m, "early.txt") {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Mid-run, the container dies.
    let containers = daemon.containers();
    assert_eq!(containers.len(), 1);
    docker_ok(&["kill", &containers[0]]);
    let rest = collect(rx).await;
    assert!(
        !rest.iter().any(|e| e.event == "result"),
        "the run cannot have finished: {rest:#?}"
    );

    lose_container_and_workspace(&daemon, conv);
    let events = run_to_end(&daemon, conv, "!bash cat early.txt").await;
    assert_ok_result(&events);
    assert!(tool_output(&events).contains("early bird"), "{events:#?}");
}

/// One series of the daemon's `/metrics` scrape.
async fn metric(daemon: &Daemon, series: &str) -> f64 {
    let scrape = crate::harness::client()
        .get(format!("http://{}/metrics", daemon.admin_addr))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_tracks_changes_by_bash_and_a_background_process_between_tool_results() {
    let _engine = serial::shared().await;
    let (_mock, daemon, backend) = s3_daemon(None, &[]).await;
    let conv = "tracked";
    // The first Bash command leaves a process behind that writes once the
    // test says so (`go`, made on the host after the first checkpoint);
    // the second waits for its files, so they change between two tool
    // results, by no tool of the agent's.
    let rx = stream_run(
        &daemon,
        conv,
        "!bash mkdir -p out && echo one > out/a.txt && setsid sh -c 'while [ ! -e go ]; do sleep 0.1; done; echo bg > out/bg.txt; mkdir -p out/bgdir/sub; echo deep > out/bgdir/sub/f; rm out/a.txt' > /dev/null 2>&1 &\n\
         !bash while [ ! -e out/bgdir/sub/f ]; do sleep 0.1; done; echo two > out/b.txt\n\
         !text done",
    );
    let walked = "agentbox_sync_scans_total{kind=\"walked\"}";
    wait_for("the first checkpoint", Duration::from_secs(60), || {
        let (backend, daemon) = (backend.clone(), &daemon);
        async move {
            stored_at(&backend, conv)
                .await
                .is_some_and(|m| has(&m, "out/a.txt"))
                && metric(daemon, walked).await >= 1.0
        }
    })
    .await;
    assert_eq!(
        metric(&daemon, walked).await,
        1.0,
        "only the first push walks"
    );
    std::fs::write(daemon.workspace(TENANT, conv).join("go"), b"").unwrap();
    let events = collect(rx).await;
    assert_ok_result(&events);

    let m = stored_at(&backend, conv).await.expect("stored");
    assert!(has(&m, "out/bg.txt") && has(&m, "out/bgdir/sub/f") && has(&m, "out/b.txt"));
    assert!(
        !has(&m, "out/a.txt"),
        "a deletion by the background process"
    );
    // Every later push looked only at tracked changes: the background
    // process's files reached the store without a walk.
    assert_eq!(metric(&daemon, walked).await, 1.0);
    assert!(metric(&daemon, "agentbox_sync_scans_total{kind=\"tracked\"}").await >= 1.0);

    // The conversation holds one fanotify group (one of the user's 128),
    // freed with its container.
    let groups = "agentbox_sync_tracked_workspaces";
    assert_eq!(metric(&daemon, groups).await, 1.0);
    let del = crate::harness::client()
        .delete(daemon.url(&format!("/v1/conversations/{conv}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE the conversation");
    assert_eq!(del.status(), 204);
    assert_eq!(metric(&daemon, groups).await, 0.0, "the group is freed");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_files_api_streams_files_and_byte_ranges() {
    let _engine = serial::shared().await;
    let (_mock, daemon, _backend) = s3_daemon(None, &[]).await;
    let conv = "ranges";
    // About 2.7 MB of known bytes, written by the agent.
    let events = run_to_end(&daemon, conv, "!bash seq 0 400000 > numbers.txt").await;
    assert_ok_result(&events);
    let want: Vec<u8> = (0..=400_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes();
    let len = want.len();
    let url = daemon.url(&format!("/v1/conversations/{conv}/files/numbers.txt"));
    let client = crate::harness::client();
    let get = |headers: &[(&str, &str)]| {
        let mut req = client.get(&url).bearer_auth(TOKEN);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move {
            let resp = req.send().await.expect("GET the file");
            let status = resp.status().as_u16();
            let h = resp.headers().clone();
            let body = resp.bytes().await.expect("the body").to_vec();
            (status, h, body)
        }
    };
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };

    let (status, h, body) = get(&[]).await;
    assert_eq!(status, 200);
    assert!(
        body == want,
        "the whole file ({} of {len} bytes)",
        body.len()
    );
    assert_eq!(header(&h, "content-length"), len.to_string());
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    let etag = header(&h, "etag");
    assert_eq!(etag.len(), 66, "a quoted sha256: {etag}");

    let last = len - 1;
    for (range, from, to) in [
        ("bytes=0-9".to_owned(), 0, 10),
        ("bytes=1000000-1000099".to_owned(), 1_000_000, 1_000_100),
        ("bytes=2000000-".to_owned(), 2_000_000, len),
        ("bytes=-7".to_owned(), len - 7, len),
        (format!("bytes={last}-99999999999"), last, len),
    ] {
        let (status, h, body) = get(&[("range", &range)]).await;
        assert_eq!(status, 206, "{range}");
        assert!(body == want[from..to], "{range}: wrong bytes");
        assert_eq!(
            header(&h, "content-range"),
            format!("bytes {from}-{}/{len}", to - 1),
            "{range}"
        );
        assert_eq!(header(&h, "content-length"), (to - from).to_string());
        assert_eq!(header(&h, "accept-ranges"), "bytes");
    }

    for range in [format!("bytes={len}-"), "bytes=-0".to_owned()] {
        let (status, h, body) = get(&[("range", &range)]).await;
        assert_eq!(status, 416, "{range}");
        assert_eq!(header(&h, "content-range"), format!("bytes */{len}"));
        let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(err["error"]["code"], "range_not_satisfiable");
    }
    // Several ranges, an invalid one, or a stale If-Range: the whole file.
    for headers in [
        vec![("range", "bytes=0-1,5-6")],
        vec![("range", "bytes=9-1")],
        vec![("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    ] {
        let (status, _, body) = get(&headers).await;
        assert_eq!(status, 200, "{headers:?}");
        assert_eq!(body.len(), len, "{headers:?}");
    }
    let (status, _, body) = get(&[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!((status, &body[..]), (206, &want[..10]));

    let resp = client.head(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(header(resp.headers(), "content-length"), len.to_string());
    assert!(resp.bytes().await.unwrap().is_empty());
    let missing = daemon.url(&format!("/v1/conversations/{conv}/files/nope.txt"));
    let resp = client.get(missing).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

/// A TCP forwarder on loopback that can drop its listener (and every
/// connection) and come back on the same port: an object store that goes
/// down and returns.
struct Forwarder {
    addr: std::net::SocketAddr,
    target: String,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Forwarder {
    async fn start(target: &str) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Forwarder {
            addr: listener.local_addr().unwrap(),
            target: target.trim_start_matches("http://").to_owned(),
            task: std::sync::Mutex::new(None),
        };
        f.serve(listener);
        f
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) drops every
            // connection with it.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    fn down(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_store_outage_mid_run_loses_nothing() {
    let _engine = serial::shared().await;
    let fwd = Forwarder::start(&moto::endpoint()).await;
    let (_mock, daemon, backend) = s3_daemon(
        Some(&fwd.url()),
        &[("AGENTBOX_STORAGE_FINAL_SYNC_TIMEOUT_SECS", "2")],
    )
    .await;
    let conv = "outage";
    let mut rx = stream_run(
        &daemon,
        conv,
        "!write one.txt first\n!sleep 1500\n!write two.txt second",
    );
    let mut events = Vec::new();
    while let Some(ev) = rx.recv().await {
        let first_result = ev.event == "tool_result";
        events.push(ev);
        if first_result {
            // The store goes away in the middle of the run.
            fwd.down();
            break;
        }
    }
    events.extend(collect(rx).await);
    assert_ok_result(&events);
    assert!(
        daemon.logs().iter().any(|l| l.contains("Sync failed.")),
        "the outage is visible in the log"
    );

    fwd.up().await;
    let t0 = Instant::now();
    loop {
        if let Some(m) = stored_at(&backend, conv).await {
            if has(&m, "one.txt") && has(&m, "two.txt") {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the backlog never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    lose_container_and_workspace(&daemon, conv);
    let events = run_to_end(&daemon, conv, "!bash cat one.txt two.txt").await;
    assert_ok_result(&events);
    let out = tool_output(&events);
    assert!(out.contains("first") && out.contains("second"), "{out}");
}

// ---------------------------------------------------------------------
// The S3 lifecycle policy, applied to a bucket on moto
// ---------------------------------------------------------------------

fn aws(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("aws")
        .args(["--endpoint-url", endpoint, "--output", "json", "s3api"])
        .args(args)
        .output()
        .expect("run the AWS CLI (ensure-moto.sh installs it)");
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("aws json")
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_policy_applies_and_reads_back_equal() {
    let endpoint = moto::endpoint();
    let bucket = moto::bucket(&endpoint).await;
    let script = repo_root().join("appliance/s3/apply-lifecycle.sh");
    for _ in 0..2 {
        // Twice: applying is idempotent.
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args([&bucket, &endpoint])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let file: serde_json::Value = serde_json::from_str(&read_file(
        &repo_root().join("appliance/s3/lifecycle-policy.json"),
    ))
    .unwrap();
    let mut got = aws(
        &endpoint,
        &["get-bucket-lifecycle-configuration", "--bucket", &bucket],
    );
    // Servers add their default for this one key; the rules are ours.
    got.as_object_mut()
        .unwrap()
        .remove("TransitionDefaultMinimumObjectSize");
    assert_eq!(got, file);
    let versioning = aws(&endpoint, &["get-bucket-versioning", "--bucket", &bucket]);
    assert_eq!(versioning["Status"], "Enabled");
}

/// The lifecycle rules against what the code writes, on a versioned
/// bucket: every rule's filter matches objects the daemon stored, and a
/// purge removes the current objects while the old versions stay for the
/// noncurrent-version rule (moto stores versions but does not run
/// lifecycle rules; the 30 days are the rule's, read back from the bucket).
#[tokio::test(flavor = "multi_thread")]
async fn purge_on_a_versioned_bucket_leaves_noncurrent_versions_under_the_rules() {
    let _engine = serial::shared().await;
    let endpoint = moto::endpoint();
    let bucket = moto::bucket(&endpoint).await;
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("appliance/s3/apply-lifecycle.sh"))
        .args([&bucket, &endpoint])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = moto::daemon_env(&endpoint, &bucket, STORE_PREFIX);
    let mock = mock_model::MockModel::start("127.0.0.1:0").await.unwrap();
    let opts = DaemonOptions {
        pool_min: 0,
        env: Vec::new(),
        model_url: mock.url(),
        api_key: KEY.to_owned(),
        extra_config: String::new(),
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start_with_env(opts, &env))
        .await
        .unwrap();
    for content in ["one", "two"] {
        let events = run_to_end(&daemon, "kept", &format!("!write a.txt {content}")).await;
        assert_ok_result(&events);
    }

    let keys = |listing: &serde_json::Value, field: &str| -> Vec<String> {
        listing[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["Key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let stored = keys(
        &aws(&endpoint, &["list-objects-v2", "--bucket", &bucket]),
        "Contents",
    );
    assert!(!stored.is_empty());
    let rules = aws(
        &endpoint,
        &["get-bucket-lifecycle-configuration", "--bucket", &bucket],
    );
    for rule in rules["Rules"].as_array().unwrap() {
        let prefix = rule["Filter"]["Prefix"].as_str().unwrap_or("");
        assert!(
            stored.iter().any(|k| k.starts_with(prefix)),
            "rule {} targets {prefix:?}, which nothing the daemon wrote is under: {stored:?}",
            rule["ID"]
        );
    }
    let noncurrent_days = rules["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r["NoncurrentVersionExpiration"]["NoncurrentDays"].as_u64());
    assert_eq!(noncurrent_days, Some(30), "{rules:#}");

    let del = crate::harness::client()
        .delete(daemon.url("/v1/conversations/kept?purge=true"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let current = keys(
        &aws(&endpoint, &["list-objects-v2", "--bucket", &bucket]),
        "Contents",
    );
    let ours: Vec<_> = current.iter().filter(|k| k.contains("/kept/")).collect();
    assert!(ours.is_empty(), "purge left current objects: {ours:?}");
    let versions = aws(&endpoint, &["list-object-versions", "--bucket", &bucket]);
    let old: Vec<_> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["Key"].as_str().unwrap_or("").contains("/kept/") && v["IsLatest"] == false)
        .collect();
    assert!(
        !old.is_empty(),
        "versioning keeps the purged objects as noncurrent versions: {versions:#}"
    );
}
