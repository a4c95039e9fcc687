//! The `agentbox` command: the host daemon and its operator commands. Only
//! the command line lives here; each command is in `agentbox::cli` (or
//! `agentbox::daemon` for `serve`).

use agentbox::cli::{self, AdminArgs, CliError};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Print the token_sha256 value for a tenant's (or the admin) token.
    HashToken { token: String },
    /// Show the running daemon's pool, containers, conversations, workers,
    /// recent audit events and health.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this host for the daemon: pass, warn or fail with the fix for
    /// each (exit 1 when anything fails).
    Doctor {
        #[command(flatten)]
        admin: AdminArgs,
        /// HTTPS endpoint whose Date header the clock is checked against
        /// (default: model.anthropic_base_url when it is HTTPS).
        #[arg(long)]
        clock_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to sweep idle, old and orphaned containers now.
    Gc {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove every container of this instance, with its sockets,
    /// workspace directories and state records (unsynced changes are lost).
    DestroyAll {
        #[arg(long, env = "AGENTBOX_CONFIG")]
        config: Option<PathBuf>,
        /// Every agentbox container on the engine, whatever its instance.
        #[arg(long)]
        all_instances: bool,
    },
    /// The workspace image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build it (workspace-base/build-image.sh), streaming progress.
    Build {
        /// The workspace-base directory, or a checkout holding it.
        #[arg(long)]
        context: Option<PathBuf>,
        /// Run `docker build` even when the image's inputs are unchanged.
        #[arg(long)]
        force: bool,
        /// Also bypass Docker's layer cache.
        #[arg(long)]
        no_cache: bool,
        /// Image tag (default agentbox/workspace-base:latest).
        tag: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { config } => cli::finish(cli::load_config(config.as_ref()).map(|_| {
            println!("config ok");
            ExitCode::SUCCESS
        })),
        Command::HashToken { token } => {
            println!("{}", agentbox::token_sha256(&token));
            ExitCode::SUCCESS
        }
        Command::Status { admin, json } => {
            cli::finish(cli::block_on(cli::status::run(&admin, json)).and_then(|r| r))
        }
        Command::Doctor {
            admin,
            clock_url,
            json,
        } => cli::finish(
            cli::block_on(cli::doctor::run(&admin, clock_url.as_deref(), json)).and_then(|r| r),
        ),
        Command::Gc { admin } => cli::finish(cli::block_on(cli::gc::run(&admin)).and_then(|r| r)),
        Command::DestroyAll {
            config,
            all_instances,
        } => cli::finish(
            cli::block_on(cli::destroy::run(config.as_ref(), all_instances)).and_then(|r| r),
        ),
        Command::Image {
            command:
                ImageCommand::Build {
                    context,
                    force,
                    no_cache,
                    tag,
                },
        } => cli::finish(cli::image::build(&cli::image::BuildArgs {
            context,
            force,
            no_cache,
            tag,
        })),
        Command::Serve { config } => serve(config),
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let cfg = match cli::load_config(config.as_ref()) {
        Ok(c) => c,
        Err(e) => return cli::finish(Err::<ExitCode, CliError>(e)),
    };
    agentbox::telemetry::init();
    match cli::block_on(agentbox::daemon::serve(cfg, config)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(message = "Daemon failed.", error = %e);
            eprintln!("agentbox: {e}");
            ExitCode::FAILURE
        }
        Err(e) => cli::finish(Err(e)),
    }
}
