//! What a conversation's lease (docs/scale-out.md) adds to a run: the
//! run start's take and the run end's release, on a local directory and
//! on S3 (moto on loopback); with `scaleout.lease_ttl_secs = 0` neither
//! is made. The same conversation again and again, as one host serves it.
//!
//!     just bench-lease            # or: cargo run --release --example lease_bench
//!
//! Prints median and spread (min..max) in microseconds; writes the raw
//! results (every sample) to `--out FILE`, else `target/bench-results/`.
//! Expects moto (`tests/setup/ensure-moto.sh` starts it). Not a test.

// Shared with the suite; this bench does not use every helper.
#[allow(dead_code)]
mod record;

use agentbox::config::StorageConfig;
use agentbox::sync::lease::Leases;
use agentbox::sync::store::ObjectStoreBackend;
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 200;

fn main() -> Result<()> {
    let root = std::env::temp_dir().join(format!("agentbox-lease-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup/ensure-moto.sh");
    let out = Command::new("bash").arg(script).output()?;
    if !out.status.success() {
        bail!("ensure-moto.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    let endpoint = String::from_utf8(out.stdout)?.trim().to_owned();
    // Dummy credentials for moto, set before any thread exists.
    std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench-secret");
    std::env::set_var("AWS_REGION", "us-east-1");
    let mut args = std::env::args().skip(1);
    let out = match (args.next().as_deref(), args.next()) {
        (Some("--out"), Some(file)) => Some(file),
        (None, _) => None,
        _ => bail!("usage: lease_bench [--out FILE]"),
    };
    let started = record::start();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(bench(&root, &endpoint));
    let _ = std::fs::remove_dir_all(&root);
    if result.is_ok() {
        record::save("lease", started, out.as_deref());
    }
    result
}

async fn bench(root: &Path, endpoint: &str) -> Result<()> {
    let bucket = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("create bucket: {}", r.status());
    }
    let targets = [
        (
            "local directory",
            StorageConfig {
                url: format!("file://{}/objects", root.display()),
                ..Default::default()
            },
        ),
        (
            "S3 (moto, loopback)",
            StorageConfig {
                url: format!("s3://{bucket}/agentbox"),
                endpoint: endpoint.to_owned(),
                allow_http: true,
                path_style: true,
                region: "us-east-1".into(),
                ..Default::default()
            },
        ),
    ];
    // With leases off (`lease_ttl_secs = 0`) neither call is made.
    println!("| store | take (run start) | release (run end) |");
    println!("|---|---|---|");
    for (name, cfg) in targets {
        let backend = Arc::new(ObjectStoreBackend::open(&cfg)?);
        let leases = Leases::new(backend, "bench-host", Duration::from_secs(15));
        let (mut take, mut release) = (Vec::new(), Vec::new());
        for run in 0..RUNS as u64 {
            let t = Instant::now();
            let taken = leases.acquire("t", "c", run).await?;
            take.push(t.elapsed());
            let t = Instant::now();
            taken.hold.release().await;
            release.push(t.elapsed());
        }
        println!(
            "| {name} | {} | {} |",
            figure(&mut take),
            figure(&mut release)
        );
        let us =
            |v: &[Duration]| record::summarize(v.iter().map(|d| d.as_secs_f64() * 1e6).collect());
        record::set_table(&format!("{name}: one conversation's lease (µs)"));
        record::record("take (run start)", &us(&take));
        record::record("release (run end)", &us(&release));
    }
    Ok(())
}

/// Median and spread in microseconds.
fn figure(v: &mut [Duration]) -> String {
    v.sort();
    let us = |d: Duration| d.as_micros();
    format!(
        "{} µs ({}..{})",
        us(v[v.len() / 2]),
        us(v[0]),
        us(v[v.len() - 1])
    )
}
