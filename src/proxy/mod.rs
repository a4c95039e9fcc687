//! The per-container egress proxy: one Unix socket per container, the
//! container's only way out (it has `--network none`).
//!
//! Two routes share the socket, chosen by the first request head
//! ([`request`], from the `egress-policy` crate with the rest of the
//! pure policy): origin-form requests go to the model gateway
//! ([`gateway`], which adds the credential), absolute-form `http://` and
//! `CONNECT` go to the forward proxy ([`forward`], allowlist and egress
//! rules), which intercepts TLS only to hosts whose rules must see inside
//! ([`intercept`], certificates from the local CA in [`ca`], brokered
//! credentials from [`brokered`]).
//! [`ProxyRegistry`] runs and supervises one proxy task per container.
//!
//! **Invariant:** credentials exist only inside this module (the model
//! gateway's and the brokered ones); no other part of the daemon, and
//! nothing in a container, ever holds them.

mod audit_gate;
mod body;
mod brokered;
pub mod ca;
mod conn;
mod credentials;
mod decision;
mod dns;
mod env;
mod forward;
mod gateway;
mod intercept;
mod io;
mod reach;
mod refusal;
mod sigv4;
pub mod spend;
mod upstream_outcome;
pub mod usage;

// The pure policy lives in its own crate (fuzzed there); these keep its
// modules at their old paths for the rest of the proxy and the daemon.
use egress_policy::policy;
pub use egress_policy::{addr, hostmatch, request};

pub use conn::KILL_HOOK_PATH;
pub use credentials::AwsEnv;
pub use env::container_env;
pub use gateway::{ModelGateway, ModelGatewayError};
pub use policy::Policy;
pub use refusal::Refusal;
pub use spend::{BudgetKind, Exceeded, RunSpend, Spend, SpendLedger};
pub use upstream_outcome::{UpstreamFailure, UpstreamOutcomes};

use crate::audit::{AuditEvent, Subject};
use crate::config::{Config, ConfigError};
use crate::secrets::Secret;
use agent_protocol::PROXY_SOCKET;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How often refusals held back by a container's audit gate are written
/// as a summary, if the gate does not open before.
const AUDIT_FLUSH: Duration = Duration::from_secs(10);

/// Set to `1` in the daemon's environment to enable test-only hooks
/// ([`KILL_HOOK_PATH`]). Read only by a build with the `fault-injection`
/// feature (the test build); other builds have no hook to enable.
pub const TEST_HOOKS_ENV: &str = "AGENTBOX_TEST_HOOKS";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    ModelGateway(#[from] ModelGatewayError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error("egress upstream TLS: {0}")]
    EgressTls(#[from] crate::upstream_tls::UpstreamTlsError),
}

/// Who a proxy socket belongs to; carried on every audit event it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyContext {
    pub container_id: String,
    pub tenant_id: String,
    pub conversation_id: String,
}

/// The egress gateway behind every container's proxy socket: the model
/// gateway, DNS and the tenants' policies, shared by all containers.
pub struct Gateway {
    model: ModelGateway,
    resolver: dns::Resolver,
    /// Bounds on a forward-proxy request body (no size limit).
    forward_limits: crate::config::BodyLimits,
    /// The allowlists, rules and credentials; replaced whole on SIGHUP,
    /// read per request.
    egress: std::sync::RwLock<Arc<Egress>>,
    /// Bumped on every reload of the egress rules, so open tunnels look
    /// again at whether they are still allowed.
    reloads: watch::Sender<u64>,
    /// The local CA, loaded (or made) once some rule needs interception.
    ca: std::sync::RwLock<Option<Arc<ca::LocalCa>>>,
    /// Conversations whose run kept only some of its tenant's egress rules
    /// (until the conversation's next run sets or clears it).
    narrowed: Mutex<HashMap<ConversationRef, Arc<Vec<String>>>>,
    /// TLS towards intercepted hosts: system roots plus
    /// `egress.extra_ca_file`.
    egress_tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    max_connections: usize,
    max_gateway_requests: usize,
    budget: body::Budget,
    refusal_burst: u32,
    refusals_per_minute: u32,
    #[cfg(feature = "fault-injection")]
    test_hooks: bool,
}

impl Gateway {
    /// Builds from a validated config; `api_key` is the Anthropic key,
    /// `aws_env` the daemon's AWS variables (Bedrock).
    pub fn new(cfg: &Config, api_key: Option<Secret>, aws_env: AwsEnv) -> Result<Self, ProxyError> {
        let p = &cfg.proxy;
        let limits = p.body_limits(cfg.model.max_request_body_mb << 20);
        let spend = Arc::new(SpendLedger::new(cfg));
        let mut egress_tls = crate::upstream_tls::client_config(&cfg.egress.extra_ca_file)?;
        egress_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let egress = Egress::from_config(cfg)?;
        let ca = egress.load_ca(cfg)?;
        Ok(Self {
            model: ModelGateway::new(&cfg.model, limits, api_key, aws_env, spend)?,
            resolver: dns::Resolver::new(
                p.resolve_overrides()?,
                Duration::from_secs(p.dns_cache_ttl_secs),
            ),
            forward_limits: p.body_limits(u64::MAX),
            egress: std::sync::RwLock::new(Arc::new(egress)),
            ca: std::sync::RwLock::new(ca),
            narrowed: Mutex::default(),
            reloads: watch::channel(0).0,
            egress_tls: Arc::new(egress_tls),
            connect_timeout: Duration::from_secs(p.connect_timeout_secs),
            max_connections: p.max_connections_per_container,
            max_gateway_requests: p.max_gateway_requests_per_container,
            budget: body::Budget::new(
                usize::try_from(p.buffer_budget_bytes).unwrap_or(usize::MAX),
                usize::try_from(p.buffer_share_bytes).unwrap_or(usize::MAX),
            ),
            refusal_burst: p.audit_refusal_burst,
            refusals_per_minute: p.audit_refusals_per_minute,
            #[cfg(feature = "fault-injection")]
            test_hooks: std::env::var(TEST_HOOKS_ENV).is_ok_and(|v| v == "1"),
        })
    }

    /// Takes the egress rules (allowlists, rules, credentials re-read,
    /// ports, private ranges, fixed DNS answers) of a reloaded config:
    /// every request from now on follows them, on open sockets and inside
    /// intercepted connections too; open tunnels to a destination the new
    /// rules refuse are closed.
    pub fn reload_egress(&self, cfg: &Config) -> Result<(), ProxyError> {
        let egress = Egress::from_config(cfg)?;
        let overrides = cfg.proxy.resolve_overrides()?;
        if self.ca().is_none() {
            if let Some(ca) = egress.load_ca(cfg)? {
                *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Some(ca);
            }
        }
        *self.egress.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(egress);
        self.resolver.replace_overrides(overrides);
        self.reloads.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Takes the tenants' spending limits of a reloaded config; the day's
    /// tallies are kept.
    pub fn reload_limits(&self, cfg: &Config) {
        self.model.spend().reload(cfg);
    }

    /// The spend tallies the gateway enforces, for the executor.
    pub fn spend(&self) -> &Arc<SpendLedger> {
        self.model.spend()
    }

    /// How the model upstream failed each conversation's current run.
    pub fn upstream_outcomes(&self) -> &Arc<UpstreamOutcomes> {
        self.model.outcomes()
    }

    /// Loads the local CA, or makes it on the first start: the daemon
    /// always has one, so every container trusts it from its creation and
    /// rules added later by SIGHUP need no new containers.
    pub fn ensure_ca(&self, cfg: &Config) -> Result<(), ProxyError> {
        if self.ca().is_none() {
            let ca = ca::LocalCa::load_or_create(&cfg.egress.ca_dir)?;
            *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(ca));
        }
        Ok(())
    }

    /// The local CA, once loaded.
    pub fn ca(&self) -> Option<Arc<ca::LocalCa>> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn egress(&self) -> Arc<Egress> {
        self.egress
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A brokered credential as the config now stands.
    fn brokered(&self, name: &str) -> Option<Arc<brokered::Brokered>> {
        self.egress().credentials.get(name)
    }

    /// Sets (or, with `None`, clears) the egress rules a conversation's
    /// runs keep: only the named rules of its tenant, and no allowlist, so
    /// a narrowed run never reaches more than its tenant's rules did.
    pub fn narrow_conversation(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        names: Option<Vec<String>>,
    ) {
        let key = (tenant_id.to_owned(), conversation_id.to_owned());
        let mut narrowed = self.narrowed.lock().unwrap_or_else(|e| e.into_inner());
        match names {
            Some(names) => narrowed.insert(key, Arc::new(names)),
            None => narrowed.remove(&key),
        };
    }

    /// The rules a conversation's runs keep, when a run narrowed them.
    #[cfg(test)]
    pub(crate) fn narrowing(&self, tenant_id: &str, conversation_id: &str) -> Option<Vec<String>> {
        self.narrowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant_id.to_owned(), conversation_id.to_owned()))
            .map(|names| names.to_vec())
    }

    /// The first of `names` that is none of the tenant's rules.
    pub fn unknown_egress_rule(&self, tenant_id: &str, names: &[String]) -> Option<String> {
        let policy = self.policy(tenant_id);
        names
            .iter()
            .find(|n| !policy.rules().iter().any(|r| &r.name == *n))
            .cloned()
    }

    /// The policy for a container's request: its tenant's, narrowed by its
    /// conversation's run option.
    fn policy_for(&self, ctx: &ProxyContext) -> Arc<Policy> {
        let policy = self.policy(&ctx.tenant_id);
        let names = self
            .narrowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ctx.tenant_id.clone(), ctx.conversation_id.clone()))
            .cloned();
        match names {
            Some(names) => Arc::new(policy.narrowed(&names, false)),
            None => policy,
        }
    }

    /// The policy for a tenant's request, as the rules stand now.
    fn policy(&self, tenant_id: &str) -> Arc<Policy> {
        let egress = self.egress();
        egress
            .policies
            .get(tenant_id)
            .cloned()
            .unwrap_or_else(|| egress.default_policy.clone())
    }

    /// True when the Anthropic gateway would forward without a key.
    pub fn missing_api_key(&self) -> bool {
        self.model.missing_api_key()
    }

    /// The per-container state for `ctx` (its connection caps, buffer
    /// share and audit rate).
    pub fn container(&self, ctx: ProxyContext) -> Arc<ContainerProxy> {
        let (stop, _) = watch::channel(false);
        Arc::new(ContainerProxy {
            ctx,
            permits: Arc::new(Semaphore::new(self.max_connections)),
            gateway_slots: Arc::new(Semaphore::new(self.max_gateway_requests)),
            buffer_share: self.budget.share(),
            audit_gate: audit_gate::RefusalGate::new(self.refusal_burst, self.refusals_per_minute),
            serve_task: Mutex::new(None),
            stop,
            successor: std::sync::OnceLock::new(),
        })
    }

    /// Serves one accepted client connection in the background, or refuses
    /// it at once when the container is at its connection cap.
    pub fn accept<S>(self: &Arc<Self>, c: &Arc<ContainerProxy>, mut stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (proxy, c) = (self.clone(), c.clone());
        let mut stopped = c.stop.subscribe();
        tokio::spawn(async move {
            let Ok(_permit) = c.permits.clone().try_acquire_owned() else {
                let why = Refusal::ConnectionLimit;
                let _ = stream.write_all(&why.raw_response()).await;
                decision::Decision::blocked(decision::Route::None, "", "", 0, why).emit(
                    &c.ctx,
                    &c.audit_gate,
                    (0, 0),
                    Instant::now(),
                );
                return;
            };
            tokio::select! {
                () = conn::handle(proxy, c.clone(), stream) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }
}

/// A conversation, as (tenant id, conversation id).
type ConversationRef = (String, String);

/// The forward proxy's rules: one policy per tenant (the global
/// allowlist plus the tenant's additions; the tenant's egress rules, then
/// the global ones) and the global one for containers of no tenant (the
/// warm pool), with the brokered credentials of the same config.
struct Egress {
    policies: HashMap<String, Arc<Policy>>,
    default_policy: Arc<Policy>,
    credentials: brokered::Credentials,
}

impl Egress {
    fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let p = &cfg.proxy;
        let base = p.patterns()?;
        let ports = p.allowed_ports.clone();
        let exempt = p.private_cidrs()?;
        let global = cfg.egress.rules("egress.rules", &cfg.egress.rules)?;
        let mut policies = HashMap::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            let mut patterns = base.clone();
            patterns.extend(crate::config::parse_patterns(
                &format!("tenants[{i}].allowed_domains"),
                &t.allowed_domains,
            )?);
            let mut rules = cfg
                .egress
                .rules(&format!("tenants[{i}].egress_rules"), &t.egress_rules)?;
            rules.extend(global.iter().cloned());
            policies.insert(
                t.id.clone(),
                Arc::new(Policy::new(patterns, ports.clone(), exempt.clone()).with_rules(rules)),
            );
        }
        Ok(Self {
            policies,
            default_policy: Arc::new(Policy::new(base, ports, exempt).with_rules(global)),
            credentials: brokered::Credentials::load(&cfg.egress),
        })
    }

    /// True when some rule (global or a tenant's) must see inside TLS.
    fn intercepts(&self) -> bool {
        self.policies
            .values()
            .chain([&self.default_policy])
            .any(|p| p.rules().iter().any(|r| r.inspects()))
    }

    /// The local CA, when some rule needs it: loaded, or made at its
    /// first need.
    fn load_ca(&self, cfg: &Config) -> Result<Option<Arc<ca::LocalCa>>, ca::CaError> {
        if !self.intercepts() {
            return Ok(None);
        }
        Ok(Some(Arc::new(ca::LocalCa::load_or_create(
            &cfg.egress.ca_dir,
        )?)))
    }
}

/// One container's proxy: its context and its caps.
pub struct ContainerProxy {
    ctx: ProxyContext,
    permits: Arc<Semaphore>,
    /// Model requests in flight (`proxy.max_gateway_requests_per_container`).
    gateway_slots: Arc<Semaphore>,
    /// This container's share of the daemon's body-buffer budget.
    buffer_share: body::Share,
    /// This container's rate of refusals written to the audit log.
    audit_gate: audit_gate::RefusalGate,
    /// The running accept loop, so the test hook can kill it.
    serve_task: Mutex<Option<AbortHandle>>,
    /// Set when the container's proxy is stopped: open connections end.
    stop: watch::Sender<bool>,
    /// The state that replaced this one on the same socket (a claim), so
    /// a connection this one's accept loop takes while it is being
    /// stopped is served with the new context, not dropped.
    successor: std::sync::OnceLock<Arc<ContainerProxy>>,
}

impl ContainerProxy {
    /// The state that serves this socket now: the last successor.
    fn current(self: &Arc<Self>) -> Arc<Self> {
        let mut c = self.clone();
        while let Some(next) = c.successor.get().cloned() {
            c = next;
        }
        c
    }

    /// Writes the summary of refusals held back, if any.
    fn flush_audit(&self) {
        if let Some(c) = self.audit_gate.flush(Instant::now()) {
            decision::emit_coalesced(&self.ctx, c);
        }
    }

    fn kill_serve_task(&self) {
        if let Some(h) = self
            .serve_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.abort();
        }
    }
}

/// Answers the proxy writes itself: short plain text.
pub(crate) fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(forward::text_body(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    resp
}

pub(crate) fn refusal_response(why: Refusal) -> Response<ProxyBody> {
    text_response(why.status(), why.body())
}

struct Running {
    supervisor: JoinHandle<()>,
    container: Arc<ContainerProxy>,
    /// The bound socket, kept when a claim changes the context.
    listener: Arc<UnixListener>,
    /// The CA whose trust bundle was placed beside the socket.
    ca: Option<Arc<ca::LocalCa>>,
}

/// The running proxy tasks, one supervised task per container.
#[derive(Default)]
pub struct ProxyRegistry {
    tasks: Mutex<HashMap<String, Running>>,
}

impl ProxyRegistry {
    /// Makes sure a proxy serves `socket_dir/proxy.sock` for the container
    /// with this context, starting one if none runs (after a daemon
    /// restart, or if it died) and restarting it when the context changed
    /// (a pool container claimed by a conversation).
    ///
    /// A claim keeps the bound socket and the trust bundle beside it: the
    /// socket directory is sealed once the agent is up, and only
    /// agentbox's own agent and CLI ran in the container before that, so
    /// both are still the ones placed at its start. Binding again and
    /// rewriting the bundle (the host's roots, hundreds of KiB, renamed
    /// over the old file) was the largest part of a claim's own CPU, under
    /// this lock; a new CA (a reload) is still placed.
    pub fn ensure(
        &self,
        proxy: Arc<Gateway>,
        socket_dir: &Path,
        ctx: ProxyContext,
    ) -> std::io::Result<()> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tasks.get(&ctx.container_id) {
            if !t.supervisor.is_finished() && t.container.ctx == ctx {
                return Ok(());
            }
        }
        let ca = proxy.ca();
        let id = ctx.container_id.clone();
        let c = proxy.container(ctx);
        // A claim changes who the socket serves: the old task and its
        // connections go, a new one starts with the new context. Set
        // before the stop, the successor gets any connection the old
        // accept loop still takes before its abort lands.
        let kept = tasks.remove(&id).and_then(|old| {
            // A supervisor that ended on its own may have lost its socket.
            let alive = !old.supervisor.is_finished();
            let _ = old.container.successor.set(c.clone());
            old.supervisor.abort();
            let _ = old.container.stop.send(true);
            alive.then_some((old.listener, old.ca))
        });
        let bundle = ca.as_ref().map(|ca| ca.bundle().as_bytes());
        let listener = match kept {
            Some((listener, old_ca)) => {
                let same_ca = match (&old_ca, &ca) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                if let Some(b) = bundle.filter(|_| !same_ca) {
                    place_file(socket_dir, ca::BUNDLE_FILE, b)?;
                }
                listener
            }
            None => Arc::new(bind_socket(
                &socket_dir.join(PROXY_SOCKET),
                bundle.map(|b| (ca::BUNDLE_FILE, b)),
            )?),
        };
        let supervisor = tokio::spawn(supervise(listener.clone(), proxy, c.clone()));
        tasks.insert(
            id,
            Running {
                supervisor,
                container: c,
                listener,
                ca,
            },
        );
        Ok(())
    }

    #[cfg(test)]
    fn container_state(&self, container_id: &str) -> Option<Arc<ContainerProxy>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.get(container_id).map(|t| t.container.clone())
    }

    /// Stops the container's proxy and its open connections, if any.
    pub fn stop(&self, container_id: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tasks.remove(container_id) {
            t.supervisor.abort();
            let _ = t.container.stop.send(true);
        }
    }
}

/// Binds the socket so the container's unprivileged user can connect.
///
/// The socket directory is writable from inside the container, so nothing
/// here may touch a path in it but by `rename`: a symlink planted at the
/// socket path between a bind and a chmod there would turn the daemon's
/// chmod onto any host file. The socket is bound and opened up in a
/// daemon-only directory beside the socket directory, then renamed into
/// place; rename replaces whatever is there and never follows it. The CA
/// bundle for the container's TLS clients (`extra`, a name and its bytes,
/// world-readable) is placed the same way.
fn bind_socket(path: &Path, extra: Option<(&str, &[u8])>) -> std::io::Result<UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("socket path has no directory"))?;
    let private = staging_dir(dir)?;
    let staged = private.join("proxy.sock");
    let listener = UnixListener::bind(&staged)?;
    // Connecting needs write permission on the socket file; the directory
    // around it (owned by the container user, mode 0700) keeps others out.
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o666))?;
    std::fs::rename(&staged, path)?;
    if let Some((name, bytes)) = extra {
        stage_into(&private, dir, name, bytes)?;
    }
    let _ = std::fs::remove_dir(&private);
    Ok(listener)
}

/// Places a world-readable file in the socket directory `dir` the same
/// way (staged beside it, renamed in).
fn place_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let private = staging_dir(dir)?;
    let placed = stage_into(&private, dir, name, bytes);
    let _ = std::fs::remove_dir(&private);
    placed
}

/// `{container}.bind` beside the socket directory, daemon-only and empty;
/// cleaned up like the container's own directories (destroy-all, stray
/// sweep) should a crash leave it behind.
fn staging_dir(dir: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let private = dir.with_file_name(format!("{name}.bind"));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    Ok(private)
}

fn stage_into(private: &Path, dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staged = private.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&staged)?;
    f.write_all(bytes)?;
    std::fs::rename(&staged, dir.join(name))
}

/// Ends the accept loop and every open connection when dropped, which is
/// what aborting the supervisor does.
struct StopGuard(Arc<ContainerProxy>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.flush_audit();
        self.0.kill_serve_task();
        let _ = self.0.stop.send(true);
    }
}

/// Runs the accept loop and starts it again the moment it dies. The
/// listener outlives each loop, so connections arriving meanwhile wait in
/// its backlog instead of failing.
async fn supervise(listener: Arc<UnixListener>, proxy: Arc<Gateway>, c: Arc<ContainerProxy>) {
    let _guard = StopGuard(c.clone());
    let mut quick_deaths = 0u32;
    loop {
        let started = Instant::now();
        let mut task = tokio::spawn(serve(listener.clone(), proxy.clone(), c.clone()));
        *c.serve_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        let mut flush = tokio::time::interval(AUDIT_FLUSH);
        let ended = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = flush.tick() => c.flush_audit(),
            }
        };
        let cause = match ended {
            Ok(()) => "stopped".to_owned(),
            Err(e) if e.is_panic() => "panicked".to_owned(),
            Err(_) => "killed".to_owned(),
        };
        tracing::warn!(message = "Proxy task died; restarting.", container_id = %c.ctx.container_id, %cause);
        crate::audit::emit(&AuditEvent::ProxyTaskRestarted {
            subject: Subject {
                tenant_id: c.ctx.tenant_id.clone(),
                conversation_id: c.ctx.conversation_id.clone(),
                container_id: c.ctx.container_id.clone(),
            },
            cause,
        });
        // A loop that dies at once again and again gets a short pause, so a
        // persistent fault cannot spin a core.
        quick_deaths = if started.elapsed() < Duration::from_secs(1) {
            quick_deaths + 1
        } else {
            0
        };
        if quick_deaths > 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn serve(listener: Arc<UnixListener>, proxy: Arc<Gateway>, c: Arc<ContainerProxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => proxy.accept(&c.current(), stream),
            Err(error) => {
                tracing::warn!(message = "Proxy accept failed.", %error, container_id = %c.ctx.container_id);
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod intercept_tests;
#[cfg(test)]
mod tests;
