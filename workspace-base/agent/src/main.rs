//! `workspace-agent`: the first process of every workspace container.
//!
//! It serves the agent API on `$AGENTBOX_SOCKET_DIR/agent.sock` and bridges
//! `127.0.0.1:8080` to the host proxy's socket in the same directory.
//!
//! Start-up order matters: bind both listeners, then confine the process
//! with Landlock (unless AppArmor does), then start the runtime. Binding
//! first means the socket directory never needs to be writable inside the
//! sandbox; confining before the runtime means no thread escapes it.

use agent_protocol::{
    Confinement, Enforcement, PathLayer, AGENT_SOCKET, GATEWAY_ADDR, L2_ENV, PROXY_SOCKET,
    SOCKET_DIR,
};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};
use workspace_agent::landlock::{self, Policy};
use workspace_agent::{bridge, cli::CliConfig, server};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("workspace-agent: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    let dir = PathBuf::from(env_or("AGENTBOX_SOCKET_DIR", SOCKET_DIR));
    let cli = CliConfig {
        program: env_or("AGENTBOX_CLAUDE", "claude").into(),
        workdir: env_or("AGENTBOX_WORKDIR", "/workspace").into(),
        home: env_or("HOME", "/workspace/.agentbox/home").into(),
    };
    let gateway = std::net::TcpListener::bind(env_or("AGENTBOX_GATEWAY_ADDR", GATEWAY_ADDR))?;
    gateway.set_nonblocking(true)?;
    let agent_sock = dir.join(AGENT_SOCKET);
    // A socket left by an earlier run of this container would make bind fail.
    let _ = std::fs::remove_file(&agent_sock);
    let listener = std::os::unix::net::UnixListener::bind(&agent_sock)?;
    listener.set_nonblocking(true)?;

    let confinement = confine(&cli.workdir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let gateway = TcpListener::from_std(gateway)?;
        let listener = UnixListener::from_std(listener)?;
        eprintln!("workspace-agent: ready on {}", agent_sock.display());
        tokio::select! {
            r = server::serve(listener, server::Agent::new(cli, confinement, env_or("AGENTBOX_PRESTART_CLI", "1") == "1")) => r,
            r = bridge::serve(gateway, dir.join(PROXY_SOCKET)) => r,
            r = terminated() => r,
        }
    })
}

/// Applies Landlock unless the host says AppArmor confines this container
/// (or, on the gVisor tier, the kernel has no Landlock), and says on stderr
/// what took effect.
fn confine(workdir: &Path) -> Confinement {
    let layer = PathLayer::from_env_value(std::env::var(L2_ENV).ok().as_deref());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let c = landlock::apply(layer, &Policy::new(workdir, home.as_deref()));
    let abi = c
        .landlock_abi
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    let detail = c.detail.as_deref().unwrap_or("");
    match c.landlock {
        Enforcement::Skipped => eprintln!(
            "workspace-agent: confinement {}; landlock skipped ({detail})",
            c.layer.as_str()
        ),
        e => eprintln!(
            "workspace-agent: confinement landlock {}, abi {abi} {detail}",
            serde_json::to_value(e)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ),
    }
    c
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
