//! `agentbox gc`: asks the running daemon to sweep now (idle, too old and
//! orphaned containers), instead of waiting for `gc.interval_secs`.

use super::client::AdminClient;
use super::{load_config, AdminArgs, CliError};
use std::process::ExitCode;

pub async fn run(args: &AdminArgs) -> Result<ExitCode, CliError> {
    let cfg = load_config(args.config.as_ref())?;
    let client = AdminClient::new(&cfg, args)?;
    let answer = client.post("/admin/api/gc").await?;
    let removed = answer["removed"]
        .as_u64()
        .ok_or_else(|| CliError::BadResponse(answer.to_string()))?;
    println!("swept: {removed} containers removed");
    Ok(ExitCode::SUCCESS)
}
