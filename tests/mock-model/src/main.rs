//! `mock-model` binary: serves the scripted Messages API mock until killed.
//! Usage: `mock-model [--listen 127.0.0.1:PORT] [--tls-ca-out FILE]
//! [--pace-ms N]` (default 127.0.0.1:0, plain HTTP, no pacing). With
//! `--tls-ca-out` it serves HTTPS and writes its test CA (PEM) to FILE.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use mock_model::{MockModel, Options};

const DEFAULT_LISTEN: &str = "127.0.0.1:0";
const USAGE: &str = "usage: mock-model [--listen 127.0.0.1:PORT] [--tls-ca-out FILE] [--pace-ms N]";

struct Args {
    listen: String,
    ca_out: Option<String>,
    pace: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let opts = Options {
        tls: args.ca_out.is_some(),
        pace: args.pace,
        bedrock_key: None,
    };
    let mock = MockModel::start_opts(&args.listen, opts).await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, mock.ca_pem()) {
        std::fs::write(path, pem).with_context(|| format!("writing {path}"))?;
    }
    // Callers read this line to learn the port, so flush it right away.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "mock-model listening on {}", mock.url()).context("writing stdout")?;
    stdout.flush().context("flushing stdout")?;
    std::future::pending::<()>().await;
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        listen: DEFAULT_LISTEN.to_string(),
        ca_out: None,
        pace: Duration::ZERO,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || match inline.clone() {
            Some(v) => Ok(v),
            None => args.next().with_context(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--listen" => parsed.listen = value()?,
            "--tls-ca-out" => parsed.ca_out = Some(value()?),
            "--pace-ms" => {
                let ms = value()?.parse().context("--pace-ms takes milliseconds")?;
                parsed.pace = Duration::from_millis(ms);
            }
            _ => bail!("unknown argument {arg:?}; {USAGE}"),
        }
    }
    Ok(parsed)
}
