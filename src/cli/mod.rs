//! The operator commands of the `agentbox` binary, besides `serve`:
//! `status`, `doctor`, `gc`, `destroy-all` and `image build`. `main.rs`
//! only parses the command line and calls the `run` function here.

pub mod client;
pub mod destroy;
pub mod doctor;
pub mod gc;
pub mod image;
pub mod status;
mod table;

use crate::config::{Config, ConfigError};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a bad configuration (EX_CONFIG-style usage error).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(
        "daemon not reachable at {addr} ({reason}); is `agentbox serve` running? (--admin ADDR)"
    )]
    Unreachable { addr: String, reason: String },
    #[error("daemon answered {status}: {message}")]
    Http { status: u16, message: String },
    #[error("unreadable answer from the daemon: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) | Self::Usage(_) => ExitCode::from(EXIT_CONFIG),
            _ => ExitCode::FAILURE,
        }
    }
}

/// How a command finds the running daemon's admin listener.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AdminArgs {
    /// Config file (TOML): its `server.admin_listen` says where the daemon is.
    #[arg(long, env = "AGENTBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin listener's address (HOST:PORT), overriding the config's.
    #[arg(long, env = "AGENTBOX_ADMIN_ADDR")]
    pub admin: Option<String>,
    /// The admin token, when the daemon has `server.admin_token_sha256`.
    #[arg(long, env = "AGENTBOX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

pub fn load_config(path: Option<&PathBuf>) -> Result<Config, CliError> {
    Ok(Config::load(path.map(PathBuf::as_path))?)
}

/// Runs `f` to completion on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CliError> {
    let rt = tokio::runtime::Runtime::new()?;
    Ok(rt.block_on(f))
}

/// Prints the error the way every command does and picks the exit status.
pub fn finish(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentbox: {e}");
            e.exit_code()
        }
    }
}

/// `1h 4m`, `3m 12s`, `42s`: durations for people.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=172_799 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `1.5 GiB`: sizes for people.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_units() {
        assert_eq!(human_duration(42_000), "42s");
        assert_eq!(human_duration(192_000), "3m 12s");
        assert_eq!(human_duration(3_840_000), "1h 4m");
        assert_eq!(human_duration(200_000_000), "2d 7h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5 GiB");
    }
}
