//! Raw results of a bench run, kept so that every figure in
//! `docs/benchmarks.md` can be traced: each table row with its samples,
//! plus the command, the commit (and whether the tree was dirty), the
//! machine and its load before and after. Written as JSON at the end of
//! the run (`--out FILE`, else `target/bench-results/<name>-<unix>.json`);
//! the ones the docs cite are committed under `docs/benchmarks/`.

use serde::Serialize;
use std::sync::Mutex;

/// Median and spread of a sample, with the sample itself.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

pub fn summarize(mut v: Vec<f64>) -> Summary {
    assert!(!v.is_empty(), "empty sample");
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Summary {
        n: v.len(),
        p50: pick(0.5),
        p90: pick(0.9),
        p99: pick(0.99),
        min: v[0],
        max: v[v.len() - 1],
        samples: v,
    }
}

#[derive(Serialize)]
struct Row {
    table: String,
    measure: String,
    #[serde(flatten)]
    summary: Summary,
}

#[derive(Default)]
struct Recorder {
    table: String,
    rows: Vec<Row>,
    notes: Vec<(String, String)>,
}

static RECORDER: Mutex<Recorder> = Mutex::new(Recorder {
    table: String::new(),
    rows: Vec::new(),
    notes: Vec::new(),
});

fn recorder() -> std::sync::MutexGuard<'static, Recorder> {
    RECORDER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a markdown table: its title, then the column header. Rows
/// after it are recorded under `title`.
pub fn table(title: &str) {
    println!("\n### {title}\n");
    header();
    recorder().table = title.to_owned();
}

/// The column header of a table (for tables whose title is printed apart).
pub fn header() {
    println!("| measure | n | p50 | p90 | p99 | min | max |");
    println!("|---|---|---|---|---|---|---|");
}

/// Prints a row and records it with its samples.
pub fn row(name: &str, s: &Summary) {
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.n, s.p50, s.p90, s.p99, s.min, s.max
    );
    record(name, s);
}

/// Records a row without printing it (for tables of another shape).
pub fn record(name: &str, s: &Summary) {
    let mut r = recorder();
    let table = r.table.clone();
    r.rows.push(Row {
        table,
        measure: name.to_owned(),
        summary: s.clone(),
    });
}

/// Sets the table later [`record`]s go under, without printing.
pub fn set_table(title: &str) {
    recorder().table = title.to_owned();
}

/// Prints a line of prose and records it under the current table.
pub fn note(text: &str) {
    println!("\n{text}\n");
    let mut r = recorder();
    let table = r.table.clone();
    r.notes.push((table, text.to_owned()));
}

/// The machine and its state, for the results' header.
#[derive(Serialize)]
pub struct Context {
    command: Vec<String>,
    commit: String,
    dirty: bool,
    started_unix: u64,
    finished_unix: u64,
    build: &'static str,
    cores: usize,
    kernel: String,
    mem_total_mib: u64,
    load_before: String,
    load_after: String,
}

/// Captured when the run starts (the tree it was built from, as near as
/// can be told); finished by [`save`].
pub struct Started {
    started_unix: u64,
    load_before: String,
    commit: String,
    dirty: bool,
}

pub fn start() -> Started {
    Started {
        started_unix: unix_now(),
        load_before: loadavg(),
        commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()),
        dirty: git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes the results of this run as JSON to `out`, or under
/// `target/bench-results/`, and says where.
pub fn save(name: &str, started: Started, out: Option<&str>) {
    let mem_total_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let context = Context {
        command: std::env::args()
            .enumerate()
            .map(|(i, a)| if i == 0 { from_target(&a) } else { a })
            .collect(),
        commit: started.commit,
        dirty: started.dirty,
        started_unix: started.started_unix,
        finished_unix: unix_now(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        mem_total_mib,
        load_before: started.load_before,
        load_after: loadavg(),
    };
    let r = recorder();
    let notes: Vec<_> = r
        .notes
        .iter()
        .map(|(table, text)| serde_json::json!({"table": table, "text": text}))
        .collect();
    let doc = serde_json::json!({"context": context, "rows": r.rows, "notes": notes});
    let path = match out {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/bench-results")
            .join(format!("{name}-{}.json", context_time(&doc))),
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_vec_pretty(&doc).map(|b| std::fs::write(&path, b)) {
        Ok(Ok(())) => eprintln!("bench: raw results in {}", path.display()),
        Ok(Err(e)) => eprintln!("bench: writing {}: {e}", path.display()),
        Err(e) => eprintln!("bench: encoding results: {e}"),
    }
}

fn context_time(doc: &serde_json::Value) -> u64 {
    doc["context"]["started_unix"].as_u64().unwrap_or(0)
}

/// The bench binary as `target/<profile>/...`: the results name no
/// checkout's path, nor a target directory moved elsewhere
/// (`CARGO_TARGET_DIR`).
fn from_target(arg0: &str) -> String {
    for profile in ["/release/", "/debug/"] {
        if let Some(i) = arg0.rfind(profile) {
            return format!("target{}", &arg0[i..]);
        }
    }
    arg0.to_owned()
}
