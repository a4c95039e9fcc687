//! `just bench-sync`: agentbox's workspace sync beside rclone, on the same
//! targets in one run (moto S3 on loopback, and a local directory):
//! - checkpoints: in a workspace of 10,000 and one of 100,000 files (each
//!   on its own loop-mounted ext4, as the daemon's quota makes them, so
//!   change tracking is on), one file, ten files, or the 50 files of one
//!   directory changed, then a push (agentbox) or `rclone sync` (rclone);
//! - full restore of 1,000 files into an empty directory: agentbox's
//!   restore or `rclone copy`.
//!
//! Prints median and spread (min..max) per figure. Expects moto, rclone,
//! root and loop devices (the recipe makes sure of the first two). Not a
//! test: it only reports. `BENCH_ONLY=local` or `BENCH_ONLY=S3` runs one
//! target; `BENCH_FILES=10000,100000` picks workspace sizes; `BENCH_RUNS`
//! (default 7) the runs per figure; `BENCH_OUT=FILE` where the raw results
//! (JSON, every sample) go, else `target/bench-results/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

// Shared with the suite; this bench does not use every helper.
#[allow(dead_code)]
mod record;

use agentbox::config::StorageConfig;
use agentbox::ids::ConversationKey;
use agentbox::isolation::quota::{self, Quota};
use agentbox::state::{ConversationRecord, Store};
use agentbox::sync::fsx::Owner;
use agentbox::sync::{Placement, SyncService};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 7;
const SIZES: [usize; 2] = [10_000, 100_000];
const RESTORE_FILES: usize = 1_000;
/// Files per directory of the generated workspaces.
const PER_DIR: usize = 50;
/// rclone gets the same parallelism as agentbox's `transfer_concurrency`.
const CONCURRENCY: usize = 16;
const TENANT: &str = "bench";

#[derive(Clone)]
struct Target {
    name: &'static str,
    cfg: StorageConfig,
    /// `remote:bucket/path` or a local path, plus where under it to write.
    rclone_base: String,
    rclone_env: Vec<(String, String)>,
}

fn main() -> Result<()> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("agentbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let endpoint = moto_endpoint()?;
    // Dummy credentials for moto, set before any thread exists.
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench-secret");
    std::env::set_var("AWS_REGION", "us-east-1");
    let started = record::start();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(bench(&root, &endpoint));
    let _ = std::fs::remove_dir_all(&root);
    if result.is_ok() {
        let out = std::env::var("BENCH_OUT").ok().filter(|p| !p.is_empty());
        record::save("sync", started, out.as_deref());
    }
    result
}

fn moto_endpoint() -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup/ensure-moto.sh");
    let out = Command::new("bash").arg(script).output()?;
    if !out.status.success() {
        bail!("ensure-moto.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn bench(root: &Path, endpoint: &str) -> Result<()> {
    let bucket = format!("bench-{}", uuid::Uuid::new_v4().simple());
    // reqwest has rustls without a provider (the daemon's build): ring first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("create bucket: {}", r.status());
    }
    let base = StorageConfig {
        transfer_concurrency: CONCURRENCY,
        ..Default::default()
    };
    let targets = [
        Target {
            name: "S3 (moto, loopback)",
            cfg: StorageConfig {
                url: format!("s3://{bucket}/agentbox"),
                endpoint: endpoint.to_owned(),
                allow_http: true,
                path_style: true,
                region: "us-east-1".into(),
                ..base.clone()
            },
            rclone_base: format!("benchs3:{bucket}/rclone"),
            rclone_env: [
                ("TYPE", "s3"),
                ("PROVIDER", "Other"),
                ("ENDPOINT", endpoint),
                ("ACCESS_KEY_ID", "bench"),
                ("SECRET_ACCESS_KEY", "bench-secret"),
                ("REGION", "us-east-1"),
                ("FORCE_PATH_STYLE", "true"),
            ]
            .iter()
            .map(|(k, v)| (format!("RCLONE_CONFIG_BENCHS3_{k}"), v.to_string()))
            .collect(),
        },
        Target {
            name: "local directory",
            cfg: StorageConfig {
                url: format!("file://{}/objects", root.display()),
                ..base.clone()
            },
            rclone_base: format!("{}/rclone", root.display()),
            rclone_env: Vec::new(),
        },
    ];

    let runs: usize = match std::env::var("BENCH_RUNS") {
        Ok(v) => v.parse().context("BENCH_RUNS")?,
        Err(_) => RUNS,
    };
    let sizes: Vec<usize> = match std::env::var("BENCH_FILES") {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().context("BENCH_FILES"))
            .collect::<Result<_>>()?,
        Err(_) => SIZES.to_vec(),
    };
    println!("## agentbox sync vs rclone ({runs} runs each; median, min..max)\n");
    println!("| target | operation | agentbox | rclone | rclone / agentbox |");
    println!("|---|---|---|---|---|");
    // BENCH_ONLY=local (or =S3) runs one target only.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for t in targets.iter().filter(|t| t.name.starts_with(&only)) {
        let dir = root.join(t.name.split(' ').next().unwrap_or("t"));
        std::fs::create_dir_all(&dir)?;
        for &files in &sizes {
            for (change, figures) in checkpoints(t, &dir, files, runs).await? {
                let op = format!(
                    "checkpoint, {} of {} files",
                    change.label(),
                    thousands(files)
                );
                row(t.name, &op, &figures.0, &figures.1);
            }
        }
        let (a, r) = restore(t, &dir, runs).await?;
        row(t.name, "full restore, 1,000 files", &a, &r);
    }
    record::set_table("");
    record::note(&format!(
        "{} with --transfers {CONCURRENCY} --checkers {CONCURRENCY}; best of its \
         default (size+modtime) and --checksum modes per row (--checksum alone on S3 \
         at 100,000 files, where the default mode HEADs every object; on S3 --checksum \
         runs with --fast-list).",
        rclone_version()
    ));
    Ok(())
}

struct Node {
    svc: SyncService,
    store: Store,
    _state: tempfile::TempDir,
}

fn node(cfg: &StorageConfig) -> Result<Node> {
    let state = tempfile::tempdir()?;
    let store = Store::open(&state.path().join("s.redb"))?;
    let owner = Owner {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    let svc = SyncService::open(cfg, owner, store.clone())?;
    Ok(Node {
        svc,
        store,
        _state: state,
    })
}

impl Node {
    async fn assign(
        &self,
        rec: &mut ConversationRecord,
        generation: u64,
        dir: &Path,
    ) -> Result<()> {
        rec.generation = generation;
        self.store.put_conversation(rec).await?;
        self.svc
            .prepare(
                rec,
                Placement {
                    container: "bench",
                    workspace_dir: dir,
                    fresh: false,
                },
            )
            .await?;
        Ok(())
    }
}

/// A workspace of `n` small files (about 200 bytes: a source tree or
/// `node_modules` is mostly small files), 50 to a directory.
fn make_workspace(dir: &Path, n: usize) -> Result<()> {
    for i in 0..n {
        let p = dir.join(format!("d{:04}/f{i:06}.txt", i / PER_DIR));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(p.parent().context("parent")?)?;
        }
        let line = format!("file {i} of the benchmark workspace\n");
        std::fs::write(p, line.repeat(200 / line.len() + 1))?;
    }
    Ok(())
}

fn rclone(t: &Target, args: &[&str]) -> Result<Duration> {
    let conc = CONCURRENCY.to_string();
    let t0 = Instant::now();
    let out = Command::new("rclone")
        .args(args)
        .args(["--transfers", &conc, "--checkers", &conc])
        .envs(t.rclone_env.iter().map(|(k, v)| (k, v)))
        // rclone's AWS SDK refuses a custom CA bundle with its own HTTP
        // transport; the targets here are plain-HTTP loopback anyway.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .context("run rclone (apt-get install rclone)")?;
    let d = t0.elapsed();
    if !out.status.success() {
        bail!("rclone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(d)
}

fn rclone_version() -> String {
    Command::new("rclone")
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// What a checkpoint run changes.
#[derive(Clone, Copy, Debug)]
enum Change {
    OneFile,
    TenFiles,
    OneDir,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::OneFile => "1",
            Change::TenFiles => "10",
            Change::OneDir => "1 directory (50)",
        }
    }

    /// The files run `run` rewrites: each in a directory of its own, or
    /// every file of one directory; never the same twice in a row.
    fn files(self, run: usize, total: usize) -> Vec<PathBuf> {
        let dirs = total / PER_DIR;
        let spread = |k: usize| {
            let d = (run * 31 + k * 97 + 7) % dirs;
            PathBuf::from(format!("d{d:04}/f{:06}.txt", d * PER_DIR + k % PER_DIR))
        };
        match self {
            Change::OneFile => vec![spread(0)],
            Change::TenFiles => (0..10).map(spread).collect(),
            Change::OneDir => {
                let d = (run * 13 + 3) % dirs;
                (0..PER_DIR)
                    .map(|k| PathBuf::from(format!("d{d:04}/f{:06}.txt", d * PER_DIR + k)))
                    .collect()
            }
        }
    }
}

/// A workspace filesystem of its own, as the daemon's quota makes one;
/// unmounted (and its image deleted) on drop.
struct OwnFs(PathBuf);

impl OwnFs {
    async fn mount(dir: &Path, files: usize) -> Result<OwnFs> {
        let ws = dir.join(format!("ws{files}"));
        // One inode per file and directory, at ext4's default of one
        // inode per 16 KiB: the image is sparse, only what is written
        // takes disk.
        let size_mb = (files as u64 * 3 / 2 * 16 / 1024).max(64);
        let quota = Quota::new(dir, &dir.join("images"), size_mb);
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        quota
            .ensure(&ws, uid, gid)
            .await
            .context("mount a workspace image (needs root and loop devices)")?;
        Ok(OwnFs(ws))
    }
}

impl Drop for OwnFs {
    fn drop(&mut self) {
        if let Err(e) = quota::release(&self.0) {
            eprintln!("release {}: {e}", self.0.display());
        }
    }
}

async fn checkpoints(
    t: &Target,
    dir: &Path,
    files: usize,
    runs: usize,
) -> Result<Vec<(Change, (Vec<Duration>, Vec<Duration>))>> {
    let fs = OwnFs::mount(dir, files).await?;
    let ws = fs.0.clone();
    make_workspace(&ws, files)?;
    // Past the stat cache's 2 s racy window, as a workspace that has been
    // around is.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let n = node(&t.cfg)?;
    let key = ConversationKey::new(TENANT, format!("ckpt{}", uuid::Uuid::new_v4().simple()));
    let mut rec = ConversationRecord::new(TENANT, &key.conversation_id);
    n.assign(&mut rec, 1, &ws).await?;
    let ws_s = ws.display().to_string();
    let remote = format!("{}/ckpt{files}", t.rclone_base);
    // Both stores are loaded side by side, rclone's without the checks a
    // sync makes (the destination is empty): on moto, 100,000 PUTs each
    // are most of the benchmark's time. Not measured.
    let seed = {
        let (t, from, to) = (t.clone(), ws_s.clone(), remote.clone());
        tokio::task::spawn_blocking(move || {
            rclone(
                &t,
                &[
                    "copy",
                    "--no-check-dest",
                    "--s3-no-check-bucket",
                    "--s3-no-head",
                    &from,
                    &to,
                ],
            )
        })
    };
    n.svc.push_now(&key).await?;
    seed.await??;
    // On S3 rclone's default mode reads each object's modification time
    // with a HEAD request: minutes per run at 100,000 files. Its
    // --checksum mode compares listed ETags and is the faster there.
    let default_mode = !(t.name.starts_with("S3") && files >= 100_000);
    let mut out = Vec::new();
    for change in [Change::OneFile, Change::TenFiles, Change::OneDir] {
        let (mut ours, mut default, mut checksum) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let paths = change.files(run, files);
            let rewrite = |what: &str| -> Result<()> {
                for p in &paths {
                    let text = format!("{} {what} in run {run} ({change:?})\n", p.display());
                    std::fs::write(ws.join(p), text)?;
                }
                Ok(())
            };
            rewrite("changed")?;
            let t0 = Instant::now();
            let r = n.svc.push_now(&key).await?;
            ours.push(t0.elapsed());
            if r.files != paths.len() as u64 || r.walked {
                bail!("expected {} uploaded files, tracked: {r:?}", paths.len());
            }
            if default_mode {
                default.push(rclone(t, &["sync", &ws_s, &remote])?);
            }
            rewrite("changed again")?;
            n.svc.push_now(&key).await?;
            // On S3, --fast-list: one recursive listing instead of one per
            // directory, rclone's own advice for buckets with many objects
            // (and what makes 100,000 files measurable against moto).
            let fast = if t.name.starts_with("S3") {
                &["--fast-list"][..]
            } else {
                &[]
            };
            let args = [
                &["sync", "--checksum"][..],
                fast,
                &[ws_s.as_str(), remote.as_str()],
            ]
            .concat();
            checksum.push(rclone(t, &args)?);
        }
        let theirs = if default_mode {
            best(default, checksum)
        } else {
            checksum
        };
        out.push((change, (ours, theirs)));
    }
    drop(n);
    drop(fs);
    Ok(out)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn restore(t: &Target, dir: &Path, runs: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let ws = dir.join("ws1k");
    std::fs::create_dir_all(&ws)?;
    make_workspace(&ws, RESTORE_FILES)?;
    let n = node(&t.cfg)?;
    let mut rec =
        ConversationRecord::new(TENANT, &format!("rest{}", uuid::Uuid::new_v4().simple()));
    n.assign(&mut rec, 1, &ws).await?;
    n.svc
        .push_now(&ConversationKey::new(TENANT, &rec.conversation_id))
        .await?;
    let remote = format!("{}/restore", t.rclone_base);
    rclone(t, &["sync", &ws.display().to_string(), &remote])?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let target = dir.join(format!("restore-a{run}"));
        std::fs::create_dir_all(&target)?;
        let t0 = Instant::now();
        n.assign(&mut rec, 2 + run as u64, &target).await?;
        ours.push(t0.elapsed());
        let got = std::fs::read_dir(target.join("d0000"))?.count();
        if got != PER_DIR {
            bail!("restore incomplete: {got} files in d0000");
        }
        let target = dir.join(format!("restore-r{run}"));
        theirs.push(rclone(
            t,
            &["copy", &remote, &target.display().to_string()],
        )?);
    }
    Ok((ours, theirs))
}

/// The faster of two rclone modes, by median.
fn best(a: Vec<Duration>, b: Vec<Duration>) -> Vec<Duration> {
    if median(&a) <= median(&b) {
        a
    } else {
        b
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn fmt(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    format!(
        "{:.0} ms ({:.0}..{:.0})",
        median(&s).as_secs_f64() * 1e3,
        s[0].as_secs_f64() * 1e3,
        s[s.len() - 1].as_secs_f64() * 1e3
    )
}

/// Prints a row and records both samples (ms) under the target.
fn row(target: &str, op: &str, ours: &[Duration], theirs: &[Duration]) {
    let ms = |v: &[Duration]| record::summarize(v.iter().map(|d| d.as_secs_f64() * 1e3).collect());
    record::set_table(&format!("{target}: {op} (ms)"));
    record::record("agentbox", &ms(ours));
    record::record("rclone", &ms(theirs));
    println!(
        "| {target} | {op} | {} | {} | {:.1}x |",
        fmt(ours),
        fmt(theirs),
        median(theirs).as_secs_f64() / median(ours).as_secs_f64()
    );
}
