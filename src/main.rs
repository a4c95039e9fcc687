//! The `agentbox` command: the host daemon and its admin commands.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a bad configuration (EX_CONFIG-style usage error).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "agentbox",
    version,
    about = "Runs AI coding agents in hardened per-conversation containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML); without it every key takes its default.
        #[arg(long, env = "AGENTBOX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file and exit (0 valid, 64 invalid).
    Validate {
        #[arg(long, env = "AGENTBOX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the token_sha256 value for a tenant's bearer token.
    HashToken { token: String },
    /// Remove every container of this instance, with its sockets,
    /// workspace directories and state records (unsynced changes are lost).
    DestroyAll {
        #[arg(long, env = "AGENTBOX_CONFIG")]
        config: Option<PathBuf>,
        /// Every agentbox container on the engine, whatever its instance.
        #[arg(long)]
        all_instances: bool,
    },
}

fn load(path: Option<&PathBuf>) -> Result<agentbox::config::Config, ExitCode> {
    agentbox::config::Config::load(path.map(PathBuf::as_path)).map_err(|e| {
        eprintln!("agentbox: invalid config: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("agentbox: cannot start the runtime: {e}");
            std::process::exit(1)
        }
    }
}

async fn destroy_all(cfg: &agentbox::config::Config, every: bool) -> anyhow::Result<()> {
    let runtime = agentbox::runtime::docker::DockerRuntime::connect().await?;
    let t = agentbox::orchestrator::destroy_all(cfg, &runtime, every).await?;
    println!(
        "removed {} containers, {} directories, {} state records",
        t.containers, t.dirs, t.records
    );
    if let Some(why) = t.state_skipped {
        println!("state file left alone ({why}); a running daemon reconciles it");
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { config } => match load(config.as_ref()) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashToken { token } => {
            println!("{}", agentbox::api::token_sha256(&token));
            ExitCode::SUCCESS
        }
        Command::DestroyAll {
            config,
            all_instances,
        } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match block_on(destroy_all(&cfg, all_instances)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agentbox: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            agentbox::telemetry::init();
            match block_on(agentbox::daemon::serve(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(message = "Daemon failed.", error = %e);
                    eprintln!("agentbox: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
