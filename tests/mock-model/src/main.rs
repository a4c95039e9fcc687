//! `mock-model` binary: serves the scripted Messages API mock until killed.
//! Usage: `mock-model [--listen 127.0.0.1:PORT]` (default 127.0.0.1:0).

use std::io::Write;

use anyhow::{bail, Context};
use mock_model::MockModel;

const DEFAULT_LISTEN: &str = "127.0.0.1:0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = parse_listen(std::env::args().skip(1))?;
    let mock = MockModel::start(&listen).await?;
    // Callers read this line to learn the port, so flush it right away.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "mock-model listening on {}", mock.url()).context("writing stdout")?;
    stdout.flush().context("flushing stdout")?;
    std::future::pending::<()>().await;
    Ok(())
}

fn parse_listen(mut args: impl Iterator<Item = String>) -> anyhow::Result<String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_string();
        } else if arg == "--listen" {
            listen = args.next().context("--listen needs an address")?;
        } else {
            bail!("unknown argument {arg:?}; usage: mock-model [--listen 127.0.0.1:PORT]");
        }
    }
    Ok(listen)
}
