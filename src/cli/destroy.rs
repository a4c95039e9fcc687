//! `agentbox destroy-all`: removes every container of this instance (or of
//! every instance) with its directories and state records.

use super::{load_config, CliError};
use crate::runtime::docker::DockerRuntime;
use std::path::PathBuf;
use std::process::ExitCode;

pub async fn run(config: Option<&PathBuf>, every_instance: bool) -> Result<ExitCode, CliError> {
    let cfg = load_config(config)?;
    let runtime = DockerRuntime::connect().await?;
    let t = crate::orchestrator::destroy_all(&cfg, &runtime, every_instance).await?;
    println!(
        "removed {} containers, {} directories, {} state records",
        t.containers, t.dirs, t.records
    );
    if let Some(why) = t.state_skipped {
        println!("state file left alone ({why}); a running daemon reconciles it");
    }
    Ok(ExitCode::SUCCESS)
}
