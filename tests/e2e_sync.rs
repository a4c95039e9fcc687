//! Workspace sync, tested three ways:
//! - `suite_*`: the sync engine (restore, push, fences, outage) run as one
//!   generic suite against both backends: a local directory and S3 (moto
//!   on loopback), Garage-style;
//! - `daemon_*`: end to end with the real daemon, dockerd, image and CLI
//!   against moto;
//! - `lifecycle_*`: `appliance/s3/apply-lifecycle.sh` against moto.

mod common;

use agentbox::state::{ConversationRecord, Store};
use agentbox::sync::config::StorageConfig;
use agentbox::sync::fsx::Owner;
use agentbox::sync::manifest::{manifest_key, Manifest};
use agentbox::sync::paths::RelPath;
use agentbox::sync::push::{latest_manifest, ConvPrefix, PushError};
use agentbox::sync::store::{ByteStream, ObjectBackend, ObjectStoreBackend, StoreError};
use agentbox::sync::{Placement, SyncError, SyncService};
use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace_agent::protocol::AgentEvent;

const T: &str = "acme";
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
}

#[async_trait]
impl ObjectBackend for Switch {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(key, data).await
    }
    async fn put_file(
        &self,
        key: &str,
        file: std::fs::File,
        sha256: &str,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.put_file(key, file, sha256).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn get_stream(&self, key: &str) -> Result<ByteStream, StoreError> {
        self.check()?;
        self.inner.get_stream(key).await
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
    let r = n.svc.push_now(T, "rt").await.unwrap();
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
    let r = n.svc.push_now(T, "rt").await.unwrap();
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
    let r = n.svc.push_now(T, "inc").await.unwrap();
    assert_eq!(r.files, 50);
    let r = n.svc.push_now(T, "inc").await.unwrap();
    assert!(r.unchanged && r.files == 0, "{r:?}");

    write(&ws, "src/f0.txt", b"changed");
    std::fs::remove_file(ws.join("src/f1.txt")).unwrap();
    let r = n.svc.push_now(T, "inc").await.unwrap();
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
    n.svc.push_now(T, "inc").await.unwrap();
    let manifests = n.backend.list(&format!("{T}/inc/manifests")).await.unwrap();
    assert_eq!(manifests, [format!("{T}/inc/{}", manifest_key(2))]);
}

async fn failed_restore_never_leads_to_a_push(kind: Backend) {
    let (cfg, _keep) = storage(kind).await;
    let n = node(&cfg, raw_backend(&cfg));
    let root = tempfile::tempdir().unwrap();
    let ws1 = fresh_workspace(root.path(), "ws1");
    write(&ws1, "precious.txt", b"keep me");
    let mut rec = ConversationRecord::new(T, "fr");
    n.assign(&mut rec, 1, &ws1).await.unwrap();
    n.svc.push_now(T, "fr").await.unwrap();

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
    assert_eq!(err.code(), "workspace_restore_failed", "{err}");
    assert_eq!(rec.restored_generation, 0);
    n.backend.set_down(false);
    // Any push (checkpoint, final, manual) is refused.
    let err = n.svc.push_now(T, "fr").await.unwrap_err();
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
    a.svc.push_now(T, "st").await.unwrap();

    // Another writer owns generation 5 now (its own state, same store).
    let b = node(&cfg, backend.clone());
    let ws_b = fresh_workspace(root.path(), "ws_b");
    let mut rec_b = ConversationRecord::new(T, "st");
    b.assign(&mut rec_b, 5, &ws_b).await.unwrap();
    write(&ws_b, "b.txt", b"from 5");
    b.svc.push_now(T, "st").await.unwrap();

    // A writer of generation 3 whose state file still says 3: the stored
    // manifest of generation 5 refuses it.
    let c = node(&cfg, backend.clone());
    let ws_c = fresh_workspace(root.path(), "ws_c");
    let mut rec_c = ConversationRecord::new(T, "st");
    c.assign(&mut rec_c, 3, &ws_c).await.unwrap();
    write(&ws_c, "c.txt", b"stale");
    let err = c.svc.push_now(T, "st").await.unwrap_err();
    assert!(
        matches!(err, SyncError::Push(PushError::Stale { .. })),
        "{err}"
    );

    // Writer A: its state file moved on to generation 2 (a new container).
    let mut moved = rec.clone();
    moved.generation = 2;
    a.store.put_conversation(&moved).await.unwrap();
    write(&ws, "late.txt", b"stale too");
    let err = a.svc.push_now(T, "st").await.unwrap_err();
    assert!(
        matches!(err, SyncError::Push(PushError::Stale { .. })),
        "{err}"
    );

    let m = stored(backend.as_ref(), "st").await.unwrap();
    assert_eq!(m.generation, 5);
    assert!(has(&m, "b.txt") && !has(&m, "c.txt") && !has(&m, "late.txt"));
    assert_eq!(c.svc.stats().stale_refusals_total, 1);
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
    assert!(!n.svc.is_pending(T, "out"));

    n.backend.set_down(true);
    write(&ws, "during-outage.txt", b"must survive");
    run.observe(&tool_use("w1", "Write"));
    run.observe(&tool_result("w1"));
    assert!(n.svc.is_pending(T, "out"));
    wait_for("a failed checkpoint", Duration::from_secs(5), || async {
        n.svc.stats().push_failures_total >= 1
    })
    .await;
    assert_eq!(n.svc.stats().backlog, 1);

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
        assert_eq!(err.code(), "workspace_restore_failed", "{err}");
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0);
    }
    assert!(!root.path().join("escape.txt").exists());
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
    failed_restore_never_leads_to_a_push,
    stale_generation_cannot_write,
    store_outage_keeps_a_backlog_and_loses_nothing,
    tampered_manifest_is_refused,
);
