//! `agentbox image build`: builds the workspace image by running
//! `workspace-base/build-image.sh`, streaming its output and reporting
//! progress while a long step (the npm download, `docker build`) is quiet.

use super::CliError;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCRIPT: &str = "build-image.sh";
/// Silence this long earns a progress line.
const QUIET: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default)]
pub struct BuildArgs {
    /// The `workspace-base` directory (holding build-image.sh), or a
    /// directory above it.
    pub context: Option<PathBuf>,
    pub force: bool,
    pub no_cache: bool,
    pub tag: Option<String>,
}

pub fn build(args: &BuildArgs) -> Result<ExitCode, CliError> {
    let script = find_script(args.context.as_deref())?;
    eprintln!("image build: running {}", script.display());
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if args.force {
        cmd.arg("--force");
    }
    if args.no_cache {
        cmd.arg("--no-cache");
    }
    if let Some(tag) = &args.tag {
        cmd.arg(tag);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let started = Instant::now();
    let progress = Arc::new(Mutex::new(Progress {
        step: "starting".to_owned(),
        step_started: started,
        last_output: started,
    }));
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(forward(out, progress.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(forward(err, progress.clone()));
    }
    let ticker = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(line) =
                    heartbeat(&p.step, p.last_output.elapsed(), p.step_started.elapsed())
                {
                    eprintln!("{line}");
                    // Counts as output, so the next line comes after another quiet spell.
                    p.last_output = Instant::now();
                }
            }
        })
    };
    let status = child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let took = super::human_duration(started.elapsed().as_millis() as u64);
    if status.success() {
        eprintln!("image build: finished in {took}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("image build: failed after {took} ({status})");
        Ok(ExitCode::FAILURE)
    }
}

struct Progress {
    step: String,
    step_started: Instant,
    last_output: Instant,
}

/// Copies the child's lines to our stderr, noting the step each
/// `build-image: == STEP` line starts.
fn forward(
    from: impl Read + Send + 'static,
    progress: Arc<Mutex<Progress>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut err = std::io::stderr();
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            {
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.last_output = Instant::now();
                if let Some(step) = line.strip_prefix("build-image: == ") {
                    p.step = step.to_owned();
                    p.step_started = p.last_output;
                }
            }
            let _ = writeln!(err, "{line}");
        }
    })
}

/// Pure: the progress line for a step that has been quiet for `quiet`.
fn heartbeat(step: &str, quiet: Duration, in_step: Duration) -> Option<String> {
    (quiet >= QUIET).then(|| {
        format!(
            "image build: still on \"{step}\" ({} so far)",
            super::human_duration(in_step.as_millis() as u64)
        )
    })
}

/// `--context`, else `workspace-base/` next to the binary (a source
/// checkout's `target/*/agentbox`, or an install's `share/agentbox`), else
/// above the current directory.
fn find_script(context: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(dir) = context {
        return [dir.join(SCRIPT), dir.join("workspace-base").join(SCRIPT)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CliError::Usage(format!("no {SCRIPT} in {} (--context)", dir.display()))
            });
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let cwd = std::env::current_dir().ok();
    for start in [exe_dir, cwd].into_iter().flatten() {
        for dir in start.ancestors() {
            for candidate in [
                dir.join("workspace-base").join(SCRIPT),
                dir.join("share/agentbox/workspace-base").join(SCRIPT),
            ] {
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(CliError::Usage(format!(
        "cannot find workspace-base/{SCRIPT} near the binary or the current directory; \
         pass --context DIR"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_only_after_quiet() {
        assert_eq!(heartbeat("x", Duration::from_secs(3), Duration::ZERO), None);
        let line = heartbeat("docker build", QUIET, Duration::from_secs(75)).unwrap();
        assert_eq!(
            line,
            "image build: still on \"docker build\" (1m 15s so far)"
        );
    }

    #[test]
    fn context_finds_the_script() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let want = repo.join("workspace-base").join(SCRIPT);
        assert_eq!(find_script(Some(&repo)).unwrap(), want);
        assert_eq!(
            find_script(Some(&repo.join("workspace-base"))).unwrap(),
            want
        );
        assert!(find_script(Some(Path::new("/nonexistent"))).is_err());
    }
}
