//! `workspace-agent`: the first process of every workspace container.
//!
//! It serves the agent API on `$AGENTBOX_SOCKET_DIR/agent.sock` and bridges
//! `127.0.0.1:8080` to the host proxy's socket in the same directory.

use std::path::PathBuf;
use tokio::net::{TcpListener, UnixListener};
use workspace_agent::protocol::{AGENT_SOCKET, GATEWAY_ADDR, PROXY_SOCKET, SOCKET_DIR};
use workspace_agent::{bridge, cli::CliConfig, server};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("workspace-agent: {e}");
        std::process::exit(1);
    }
}

async fn run() -> std::io::Result<()> {
    let dir = PathBuf::from(env_or("AGENTBOX_SOCKET_DIR", SOCKET_DIR));
    let cli = CliConfig {
        program: env_or("AGENTBOX_CLAUDE", "claude").into(),
        workdir: env_or("AGENTBOX_WORKDIR", "/workspace").into(),
        home: env_or("HOME", "/workspace/.agentbox/home").into(),
    };
    let gateway = TcpListener::bind(env_or("AGENTBOX_GATEWAY_ADDR", GATEWAY_ADDR)).await?;
    let agent_sock = dir.join(AGENT_SOCKET);
    // A socket left by an earlier run of this container would make bind fail.
    let _ = std::fs::remove_file(&agent_sock);
    let listener = UnixListener::bind(&agent_sock)?;
    eprintln!("workspace-agent: ready on {}", agent_sock.display());
    tokio::select! {
        r = server::serve(listener, server::Agent::new(cli)) => r,
        r = bridge::serve(gateway, dir.join(PROXY_SOCKET)) => r,
        r = terminated() => r,
    }
}

/// Resolves on SIGTERM (`docker stop`) or SIGINT.
async fn terminated() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        r = tokio::signal::ctrl_c() => r,
    }
}
