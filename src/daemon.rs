//! `agentbox serve`: builds every subsystem from the config, serves the API
//! and drains on SIGTERM.
//!
//! Order: state file -> Docker -> isolation detection -> proxy gateway ->
//! TLS -> object store (sync) -> orchestrator (reconcile) -> listeners. SIGHUP reloads the config
//! and the certificate.
//! Both listeners are served by [`crate::listener`] (connection caps,
//! head and idle timeouts). On SIGTERM or SIGINT new runs are refused
//! (503 `shutting_down`) while the API keeps serving; runs in flight get
//! `server.shutdown_grace_secs` to end, then the ones still going are cut
//! (final sync, `error` `shutting_down`). Then the API listener stops, the
//! background workers ([`crate::workers::WorkerSet`]: watchdog, pool
//! refill, sweeper, reload) stop, the last started first, and the process
//! exits 0.
//! Under systemd (`Type=notify`) each of these steps is announced through
//! [`crate::systemd::Notifier`].

use crate::admin;
use crate::api::{self, AppState, Authenticator};
use crate::config::Config;
use crate::conversations::Conversations;
use crate::execute::Executor;
use crate::isolation::{HostFiles, Isolation, IsolationError};
use crate::listener::{self, Limits};
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::proxy::{AwsEnv, Gateway, ProxyError};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::RuntimeError;
use crate::secrets;
use crate::state::{StateError, Store};
use crate::sync::fsx::Owner;
use crate::sync::store::StoreError;
use crate::sync::SyncService;
use crate::tls::TlsConfig;
use crate::workers::WorkerSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How long each background worker may take to finish its pass on drain
/// before it is aborted.
const WORKER_STOP_PATIENCE: Duration = Duration::from_secs(5);
/// What a cut run may take beyond its final sync's bound to record its end.
const CUT_RUN_PATIENCE: Duration = Duration::from_secs(10);
/// How long the streams of ended runs may take to close once the drain is over.
const STREAM_CLOSE_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    #[error("isolation: {0}")]
    Isolation(#[from] IsolationError),
    #[error("egress proxy: {0}")]
    Gateway(ProxyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("object store: {0}")]
    Storage(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

pub async fn serve(cfg: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    // Handlers first: a SIGTERM that arrives during start-up must drain,
    // not kill the process with the default action.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Serve)?;
    let notifier = Arc::new(crate::systemd::Notifier::from_env());
    // Every background loop, stopped in order on drain.
    let mut workers = WorkerSet::default();
    // Pings from the start: reconcile may take a while, and a start that
    // hangs is TimeoutStartSec='s to catch, not the watchdog's.
    if let Some(every) = notifier.watchdog_every() {
        let notifier = notifier.clone();
        workers.spawn("systemd_watchdog", move |mut shutdown| async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => notifier.watchdog(),
                    () = shutdown.requested() => return,
                }
            }
        });
    }
    let stop_notifier = notifier.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(message = "Shutdown requested; draining.");
        stop_notifier.stopping();
        let _ = stop_tx.send(true);
    });
    // Before anything that emits audit events (reconcile at start-up).
    crate::metrics::count_audit_events();
    crate::admin::recent::keep_audit_events();
    crate::admin::rule_tally::count_rule_decisions();
    let t = &cfg.telemetry;
    crate::audit::install(crate::audit::AuditFile::open(
        &t.audit_path,
        t.audit_max_bytes,
        t.audit_max_files,
    )?)?;
    check_fd_limit(&cfg.server);
    let store = Store::open(&cfg.state.path)?;
    let runtime = Arc::new(DockerRuntime::connect().await?);
    let isolation = Isolation::detect(&cfg, &runtime.engine_facts().await?, &HostFiles::default())?;
    isolation.report.log();
    let gateway = Arc::new(
        Gateway::new(&cfg, secrets::anthropic_api_key(), AwsEnv::from_process())
            .map_err(DaemonError::Gateway)?,
    );
    gateway.ensure_ca(&cfg).map_err(DaemonError::Gateway)?;
    if gateway.missing_api_key() {
        tracing::warn!(
            message = "ANTHROPIC_API_KEY is not set; model requests go out without a key."
        );
    }
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::load(cert, key)?),
        _ => None,
    };
    // Restored files belong to the container's user as the host sees it
    // (a different uid under userns-remap).
    let (uid, gid) = isolation.host_owner(cfg.container.uid, cfg.container.gid);
    let sync = SyncService::open(&cfg.storage, Owner { uid, gid }, store.clone())?;
    sync.set_limits(cfg.sync);
    let orchestrator = Orchestrator::with_isolation(
        cfg.clone(),
        runtime.clone(),
        store,
        gateway.clone(),
        isolation,
    );
    orchestrator.set_sync(sync.clone());
    orchestrator.start(&mut workers).await?;
    let auth = Arc::new(Authenticator::new(&cfg.tenants));
    spawn_reload_on_sighup(
        &mut workers,
        orchestrator.clone(),
        gateway,
        config_path,
        tls.clone(),
        auth.clone(),
        notifier.clone(),
    )?;
    let executor = Executor::new(orchestrator.clone(), sync);
    // A host back after its conversations moved to another drops their
    // containers unpushed (docs/scale-out.md); runs meanwhile do the same
    // check on their conversation's first message.
    tokio::spawn({
        let executor = executor.clone();
        async move {
            let dropped = executor.drop_moved_containers().await;
            if dropped > 0 {
                tracing::info!(
                    message = "Dropped the containers of conversations that moved.",
                    dropped
                );
            }
        }
    });
    let state = AppState {
        auth,
        conversations: Conversations::new(executor.clone()),
        // Validated to be a plain name (it is on container labels too).
        host: axum::http::HeaderValue::from_str(&cfg.server.instance)
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("agentbox")),
    };
    let addr = cfg.server.listen;
    let api_listener =
        listener::bind(addr).map_err(|source| DaemonError::Listen { addr, source })?;
    let local = api_listener.local_addr().map_err(DaemonError::Serve)?;
    let admin_addr = cfg.server.admin_listen;
    let admin_listener = listener::bind(admin_addr).map_err(|source| DaemonError::Listen {
        addr: admin_addr,
        source,
    })?;
    let admin_local = admin_listener.local_addr().map_err(DaemonError::Serve)?;
    let admin_app = admin::router(&cfg, orchestrator.clone(), runtime, executor.leases());
    // The admin listener serves until the process ends: the operator keeps
    // the status page while the API drains.
    let (admin_stop_tx, admin_stop) = watch::channel(false);
    let admin_limits = Limits::admin(&cfg.server);
    tokio::spawn(async move {
        let _keep_serving = admin_stop_tx;
        listener::serve(
            "admin",
            admin_listener,
            admin_app,
            admin_limits,
            None,
            admin_stop,
        )
        .await
    });
    tracing::info!(message = "Listening.", addr = %local, admin_addr = %admin_local, tls = tls.is_some(), instance = %cfg.server.instance,
        version = env!("CARGO_PKG_VERSION"));
    notifier.ready(&serving_status(local, admin_local));

    if tls.is_none() && !cfg.server.listen.ip().is_loopback() {
        tracing::warn!(message = "The API listens on a non-loopback address over plain HTTP; bearer tokens travel in clear.");
    }
    let app = api::router(state);
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    // The API listener outlives the stop request: while runs drain it
    // answers new runs with 503 `shutting_down` and lets clients follow
    // the runs still going.
    let (api_stop_tx, api_stop) = watch::channel(false);
    let mut api = tokio::spawn(listener::serve(
        "api",
        api_listener,
        app,
        Limits::api(&cfg.server),
        tls,
        api_stop,
    ));
    let mut drain_rx = stop_rx;
    tokio::select! {
        _ = &mut api => {}
        _ = drain_rx.wait_for(|s| *s) => {
            drain_runs(&executor, grace, &cfg).await;
            api_stop_tx.send_replace(true);
            // Every run has ended, so the streams still open end too.
            if tokio::time::timeout(STREAM_CLOSE_PATIENCE, &mut api).await.is_err() {
                tracing::warn!(message = "Streams still open after the drain; closing them.");
                api.abort();
            }
        }
    }
    // The API no longer accepts; nothing may touch containers or the
    // state file behind the drain.
    workers.stop_all(WORKER_STOP_PATIENCE).await;
    tracing::info!(message = "Stopped.");
    Ok(())
}

/// The drain of runs in flight: new runs are refused from now on, the
/// runs going on get `grace` to end by themselves, and those still going
/// then are cut (each syncs its workspace and ends with `shutting_down`),
/// with the final sync's own bound to finish.
async fn drain_runs(executor: &Executor, grace: Duration, cfg: &Config) {
    executor.drain().begin().await;
    let running = executor.hub().running();
    tracing::info!(
        message = "Draining: new runs are refused.",
        runs = running,
        grace_secs = grace.as_secs()
    );
    if executor.hub().wait_idle(grace).await {
        return;
    }
    tracing::warn!(
        message = "Grace period over; cutting the runs still going.",
        runs = executor.hub().running()
    );
    executor.drain().cut();
    let patience = Duration::from_secs(cfg.storage.final_sync_timeout_secs) + CUT_RUN_PATIENCE;
    if !executor.hub().wait_idle(patience).await {
        tracing::error!(
            message = "Runs did not end after the cut; they are left to the next start.",
            runs = executor.hub().running()
        );
    }
}

/// Lifts the soft descriptor limit and warns when it leaves too little
/// room: both connection caps plus a margin for the state file, logs, the
/// engine and every container's proxy socket and its connections.
fn check_fd_limit(s: &crate::config::ServerConfig) {
    const MARGIN: u64 = 1024;
    let wanted = (s.max_connections + s.admin_max_connections) as u64 + MARGIN;
    match listener::raise_fd_limit() {
        Ok(limit) if limit < wanted => tracing::warn!(
            message = "RLIMIT_NOFILE is low for the connection caps; lower server.max_connections or raise LimitNOFILE.",
            limit, wanted),
        Ok(_) => {}
        Err(error) => tracing::warn!(message = "Cannot read or raise RLIMIT_NOFILE.", %error),
    }
}

fn serving_status(api: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    format!("Serving on {api} (admin {admin})")
}

/// SIGHUP re-reads the config file (tenants, egress rules, pool, gc,
/// image) and the certificate; an invalid file is logged and ignored.
fn spawn_reload_on_sighup(
    workers: &mut WorkerSet,
    orchestrator: std::sync::Arc<Orchestrator>,
    gateway: Arc<Gateway>,
    path: Option<PathBuf>,
    tls: Option<Arc<TlsConfig>>,
    auth: Arc<Authenticator>,
    notifier: Arc<crate::systemd::Notifier>,
) -> Result<(), DaemonError> {
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Serve)?;
    workers.spawn("reload", move |mut shutdown| async move {
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                () = shutdown.requested() => return,
            }
            notifier.reloading();
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!(message = "TLS certificate reloaded."),
                    Err(error) => {
                        tracing::error!(message = "TLS reload failed; keeping the old certificate.", %error)
                    }
                }
            }
            match Config::load(path.as_deref()) {
                Ok(cfg) => {
                    auth.replace(&cfg.tenants);
                    // Validated above, so the rules always build.
                    if let Err(error) = gateway.reload_egress(&cfg) {
                        tracing::error!(message = "Egress rules not reloaded; keeping the old ones.", %error);
                    }
                    gateway.reload_limits(&cfg);
                    orchestrator.reload(cfg)
                }
                Err(error) => {
                    tracing::error!(message = "Reload refused; keeping the running config.", %error)
                }
            }
            notifier.ready("Serving (configuration reloaded)");
        }
    });
    Ok(())
}
