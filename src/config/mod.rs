//! Typed configuration: a TOML file, `AGENTBOX_<SECTION>_<KEY>` environment
//! overrides, defaults for every key, and a pure [`Config::validate`].
//!
//! Secrets never live here: the model API key is read from the daemon's
//! environment by [`crate::secrets`]. Every key is documented in
//! `docs/configuration.md`.

mod agent;
mod egress;
mod proxy;
mod scaleout;
mod sync;
mod telemetry;
mod tier;

pub use agent::AgentConfig;
pub use egress::{CredentialConfig, CredentialFormat, EgressConfig, RuleConfig};
pub use proxy::{parse_patterns, BodyLimits, ModelConfig, ModelPrice, Provider, ProxyConfig};
pub use scaleout::ScaleoutConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
pub use sync::{StorageConfig, SyncConfig};
pub use telemetry::TelemetryConfig;
pub use tier::IsolationTier;

/// The image tag that `workspace-base/build-image.sh` produces.
pub const DEFAULT_IMAGE: &str = "agentbox/workspace-base:latest";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub state: StateConfig,
    pub storage: StorageConfig,
    /// What a sync may store: file and workspace size limits.
    pub sync: SyncConfig,
    pub model: ModelConfig,
    pub proxy: ProxyConfig,
    /// Egress rules down to method and path, and brokered credentials.
    pub egress: EgressConfig,
    pub container: ContainerConfig,
    pub pool: PoolConfig,
    pub gc: GcConfig,
    pub telemetry: TelemetryConfig,
    /// Bounds on the agent's stream (hostile input): `[agent]`.
    pub agent: AgentConfig,
    /// Several hosts sharing one bucket: `[scaleout]`.
    pub scaleout: ScaleoutConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The admin listener (status page, JSON, operator commands); loopback
    /// only by default.
    pub admin_listen: SocketAddr,
    /// PEM certificate chain and key: with both, the API speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback address must be asked for explicitly.
    pub allow_insecure_http: bool,
    /// Hex SHA-256 of the admin token; required when `admin_listen` is not
    /// loopback, and never one of the tenants' tokens.
    pub admin_token_sha256: Option<String>,
    /// How long in-flight streams may run on after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Names this daemon on container labels, so two daemons sharing one
    /// Docker engine never touch each other's containers.
    pub instance: String,

    // Listener limits (both listeners, see `crate::listener`). They share
    // the daemon's file descriptors with every container's proxy socket, so
    // a client must not be able to hold them for free.
    /// A connection must deliver a whole request head (and, with TLS, its
    /// handshake first) within this long of being accepted, and within this
    /// long of its first byte on a kept-alive connection.
    pub header_read_timeout_secs: u64,
    /// How long a kept-alive connection may wait for its next request.
    /// Never applies while a request is being answered, so a long SSE
    /// stream is not cut.
    pub idle_timeout_secs: u64,
    /// Most connections the API listener holds open at once; further ones
    /// wait in the kernel's accept queue.
    pub max_connections: usize,
    /// The same for the admin listener.
    pub admin_max_connections: usize,
    /// How often a run's SSE stream gets a comment line while no event
    /// comes (a tool that runs for minutes), so clients and proxies keep it.
    pub sse_heartbeat_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8788)),
            tls_cert: None,
            tls_key: None,
            allow_insecure_http: false,
            admin_token_sha256: None,
            shutdown_grace_secs: 30,
            instance: "default".to_owned(),
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 4096,
            admin_max_connections: 64,
            sse_heartbeat_secs: 15,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub path: PathBuf,
    /// New runs are refused (503 `state_disk_full`) while the state
    /// file's filesystem has less free space than this.
    pub min_free_mb: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: "/var/lib/agentbox/state.redb".into(),
            min_free_mb: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    pub image: String,
    /// Host directory holding one workspace directory per conversation.
    pub workspace_root: PathBuf,
    /// Host directory holding one socket directory per container.
    pub socket_root: PathBuf,
    /// The image's non-root user; workspace and socket directories are
    /// handed to it.
    pub uid: u32,
    pub gid: u32,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_limit: i64,
    pub tmp_size_mb: u64,
    /// How long a new container may take until its agent answers.
    pub start_timeout_secs: u64,
    /// Start the CLI in every container ahead of its first prompt, so the
    /// prompt does not wait for the CLI's start-up (about half a second),
    /// at the price of the idle CLI's memory (about 150 MiB) per container.
    pub prestart_cli: bool,
    /// Seccomp profile file replacing the embedded `seccomp/workspace.json`.
    pub seccomp_profile: Option<PathBuf>,
    /// Hard size limit of each workspace, an ext4 image loop-mounted at the
    /// workspace directory; 0 turns the quota off.
    pub disk_quota_mb: u64,
    /// Where the workspace images live; default `{workspace_root}/../quota-images`.
    pub quota_dir: Option<PathBuf>,
    /// The tier of tenants that name none: `runc` or `gvisor`.
    pub isolation_tier: IsolationTier,
    /// The name under which the engine knows gVisor's runtime (its
    /// `daemon.json` `runtimes` key); only used by the `gvisor` tier.
    pub gvisor_runtime: String,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            workspace_root: "/var/lib/agentbox/workspaces".into(),
            socket_root: "/run/agentbox".into(),
            uid: 1000,
            gid: 1000,
            memory_mb: 2048,
            cpus: 1.0,
            pids_limit: 512,
            tmp_size_mb: 256,
            start_timeout_secs: 60,
            prestart_cli: true,
            seccomp_profile: None,
            disk_quota_mb: 1024,
            quota_dir: None,
            isolation_tier: IsolationTier::Runc,
            gvisor_runtime: "runsc".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Ready `runc`-tier containers kept warm, bound to nobody.
    pub min_size: usize,
    /// Ready `gvisor`-tier containers kept warm; a claim never takes a
    /// container of another tier than its tenant's.
    pub gvisor_min_size: usize,
    /// Most containers this daemon runs at once, warm and claimed together.
    pub max_size: usize,
    /// Containers created at the same time while refilling.
    pub refill_parallelism: usize,
    /// Most container starts (pool refills and cold starts together) in
    /// flight at once; more wait their turn in arrival order. Starting more
    /// than the host's cores can take at once only slows every one of them
    /// (each start loads a CLI). Default: the host's CPU count.
    pub max_parallel_starts: usize,
    /// After a burst of claims the pool keeps up to this many ready
    /// containers per tier (as many as were claimed in the last
    /// `burst_window_secs`), so the next burst finds them warm; never less
    /// than the tier's configured size.
    pub burst_max_size: usize,
    /// How long claims count towards the burst size; a pool that saw no
    /// claim for this long is back to its configured size.
    pub burst_window_secs: u64,
    /// Ready containers per tier whose agent keeps a pre-started CLI (about
    /// 150 MiB each); the rest start theirs with the first message. Claims
    /// take a pre-started one first. Unset: all (with
    /// `container.prestart_cli`).
    pub prestarted_max: Option<usize>,
    /// CPU weight (the engine's `cpu_shares`; a container that sets none
    /// has 1024) of a `runc`-tier pool container until it is claimed, when
    /// it gets the default weight. Under contention the refill's starts
    /// (each a CLI's boot) then take only what the running conversations
    /// leave; on an idle host they run at full speed. `0`: every container
    /// has the engine's default weight.
    pub refill_cpu_shares: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_size: 2,
            gvisor_min_size: 0,
            max_size: 32,
            refill_parallelism: 2,
            max_parallel_starts: std::thread::available_parallelism().map_or(2, |n| n.get()),
            burst_max_size: 8,
            burst_window_secs: 120,
            prestarted_max: None,
            refill_cpu_shares: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// A claimed container idle this long (no agent activity) is removed.
    pub idle_ttl_secs: u64,
    /// Any container older than this is removed once no run holds it.
    pub max_age_secs: u64,
    /// How often the sweeper runs (idle, age, orphans).
    pub interval_secs: u64,
    /// How long a finished run's events stay available for replay.
    pub run_retention_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            idle_ttl_secs: 1800,
            max_age_secs: 86_400,
            interval_secs: 30,
            run_retention_secs: 86_400,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Hex SHA-256 of the tenant's bearer token; the token itself is never stored.
    pub token_sha256: String,
    /// Names this tenant's containers may reach on top of `proxy.allowed_domains`.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// This tenant's egress rules, tried before the global `[[egress.rules]]`.
    #[serde(default)]
    pub egress_rules: Vec<RuleConfig>,
    /// Most runs this tenant may have in progress at once (all its
    /// conversations together); unset means no limit but the pool's.
    #[serde(default)]
    pub max_concurrent_runs: Option<usize>,
    /// Model tokens (input, output and cache, all models) this tenant may
    /// spend per UTC day; past it the gateway refuses its model requests.
    #[serde(default)]
    pub daily_token_limit: Option<u64>,
    /// The same in USD, priced by `model.prices`.
    #[serde(default)]
    pub daily_cost_limit_usd: Option<f64>,
    /// This tenant's containers' tier; unset means `container.isolation_tier`.
    #[serde(default)]
    pub isolation_tier: Option<IsolationTier>,
}

impl Config {
    /// The tier a tenant's new containers run under.
    pub fn tier_for(&self, tenant_id: &str) -> IsolationTier {
        self.tenants
            .iter()
            .find(|t| t.id == tenant_id)
            .and_then(|t| t.isolation_tier)
            .unwrap_or(self.container.isolation_tier)
    }

    /// Ready containers the pool keeps of `tier`.
    pub fn pool_min(&self, tier: IsolationTier) -> usize {
        match tier {
            IsolationTier::Runc => self.pool.min_size,
            IsolationTier::Gvisor => self.pool.gvisor_min_size,
        }
    }

    /// Whether anything may start a gVisor container: the default tier, a
    /// tenant's or the pool's. The engine must then know the runtime.
    pub fn uses_gvisor(&self) -> bool {
        self.container.isolation_tier == IsolationTier::Gvisor
            || self.pool.gvisor_min_size > 0
            || self
                .tenants
                .iter()
                .any(|t| t.isolation_tier == Some(IsolationTier::Gvisor))
    }

    /// Reads `path` (or only defaults when `None`), applies environment
    /// overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let cfg = Self::from_toml(&text, std::env::vars())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text after applying `AGENTBOX_<SECTION>_<KEY>` overrides
    /// from `env` (values are read as TOML, else as plain strings).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("AGENTBOX_") else {
                continue;
            };
            let Some((section, key)) = rest
                .to_ascii_lowercase()
                .split_once('_')
                .map(|(s, k)| (s.to_owned(), k.to_owned()))
            else {
                continue;
            };
            if ![
                "server",
                "state",
                "storage",
                "sync",
                "model",
                "proxy",
                "egress",
                "container",
                "pool",
                "gc",
                "telemetry",
                "agent",
                "scaleout",
            ]
            .contains(&section.as_str())
            {
                continue;
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            let table = doc
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table.as_table_mut() {
                Some(t) => {
                    t.insert(key, parsed);
                }
                None => return Err(invalid(&section, "must be a table")),
            }
        }
        toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    /// Checks values without touching the system.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate()?;
        self.proxy.validate()?;
        self.egress.validate()?;
        self.storage.validate()?;
        self.sync.validate()?;
        self.telemetry.validate()?;
        self.agent.validate()?;
        self.scaleout.validate()?;
        let c = &self.container;
        if c.image.trim().is_empty() {
            return Err(invalid("container.image", "must not be empty"));
        }
        for (key, path) in [
            ("state.path", &self.state.path),
            ("container.workspace_root", &c.workspace_root),
            ("container.socket_root", &c.socket_root),
        ] {
            if !path.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if c.uid == 0 {
            return Err(invalid("container.uid", "the agent must not run as root"));
        }
        if c.memory_mb < 64 {
            return Err(invalid("container.memory_mb", "must be at least 64"));
        }
        if !(c.cpus > 0.0 && c.cpus <= 1024.0) {
            return Err(invalid("container.cpus", "must be in (0, 1024]"));
        }
        if c.pids_limit < 16 {
            return Err(invalid("container.pids_limit", "must be at least 16"));
        }
        for (key, path) in [
            ("container.seccomp_profile", &c.seccomp_profile),
            ("container.quota_dir", &c.quota_dir),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        // Below this mkfs.ext4 has no room for its journal and metadata.
        if c.disk_quota_mb != 0 && c.disk_quota_mb < 16 {
            return Err(invalid(
                "container.disk_quota_mb",
                "must be 0 (off) or at least 16",
            ));
        }
        if c.start_timeout_secs == 0 {
            return Err(invalid("container.start_timeout_secs", "must be positive"));
        }
        let srv = &self.server;
        match (&srv.tls_cert, &srv.tls_key) {
            (Some(_), None) => return Err(invalid("server.tls_key", "is required with server.tls_cert")),
            (None, Some(_)) => return Err(invalid("server.tls_cert", "is required with server.tls_key")),
            (None, None) if !srv.listen.ip().is_loopback() && !srv.allow_insecure_http => {
                return Err(invalid(
                    "server.listen",
                    "a non-loopback address needs TLS (server.tls_cert/tls_key) or server.allow_insecure_http = true",
                ))
            }
            _ => {}
        }
        let p = &self.pool;
        if p.max_size == 0 || p.min_size + p.gvisor_min_size > p.max_size {
            return Err(invalid(
                "pool.max_size",
                "must be at least 1 and at least pool.min_size + pool.gvisor_min_size",
            ));
        }
        // Docker's runtime names: a daemon.json key, passed to the engine as is.
        if c.gvisor_runtime.is_empty()
            || !c
                .gvisor_runtime
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "container.gvisor_runtime",
                "must be a runtime name (letters, digits, '.', '_', '-')",
            ));
        }
        if p.refill_parallelism == 0 {
            return Err(invalid("pool.refill_parallelism", "must be at least 1"));
        }
        if p.max_parallel_starts == 0 {
            return Err(invalid("pool.max_parallel_starts", "must be at least 1"));
        }
        // The engine takes 2 and up; past the default the pool would outweigh
        // the conversations it serves.
        if p.refill_cpu_shares == 1 || p.refill_cpu_shares > 1024 {
            return Err(invalid(
                "pool.refill_cpu_shares",
                "must be 0 (off) or from 2 to 1024",
            ));
        }
        for (key, v) in [
            ("gc.idle_ttl_secs", self.gc.idle_ttl_secs),
            ("gc.max_age_secs", self.gc.max_age_secs),
            ("gc.interval_secs", self.gc.interval_secs),
            ("gc.run_retention_secs", self.gc.run_retention_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if !crate::ids::is_valid_id(&self.server.instance) {
            return Err(invalid(
                "server.instance",
                "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            ));
        }
        self.validate_admin()?;
        self.validate_listeners()?;
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !crate::ids::is_valid_id(&t.id) {
                return Err(invalid(
                    &format!("tenants[{i}].id"),
                    "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                ));
            }
            if t.max_concurrent_runs == Some(0) {
                return Err(invalid(
                    &format!("tenants[{i}].max_concurrent_runs"),
                    "must be at least 1",
                ));
            }
            if t.daily_cost_limit_usd
                .is_some_and(|v| !v.is_finite() || v < 0.0)
            {
                return Err(invalid(
                    &format!("tenants[{i}].daily_cost_limit_usd"),
                    "must be a finite number, not negative",
                ));
            }
            if !seen.insert(&t.id) {
                return Err(invalid(&format!("tenants[{i}].id"), "duplicate tenant id"));
            }
            if t.token_sha256.len() != 64 || !t.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid(
                    &format!("tenants[{i}].token_sha256"),
                    "must be 64 hex digits (sha256 of the token)",
                ));
            }
            parse_patterns(&format!("tenants[{i}].allowed_domains"), &t.allowed_domains)?;
            self.egress
                .rules(&format!("tenants[{i}].egress_rules"), &t.egress_rules)?;
        }
        Ok(())
    }

    /// Listener limits: zero would turn a limit into a refusal of every
    /// connection; the upper bounds catch unit mistakes (milliseconds
    /// written as seconds) and keep the cap within a semaphore's range.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, v, max) in [
            (
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
                300,
            ),
            ("server.idle_timeout_secs", s.idle_timeout_secs, 3600),
            ("server.sse_heartbeat_secs", s.sse_heartbeat_secs, 300),
            (
                "server.max_connections",
                s.max_connections as u64,
                1_000_000,
            ),
            (
                "server.admin_max_connections",
                s.admin_max_connections as u64,
                1_000_000,
            ),
        ] {
            if v == 0 || v > max {
                return Err(invalid(key, format!("must be between 1 and {max}")));
            }
        }
        Ok(())
    }

    /// The admin listener shows every tenant's conversations and can sweep
    /// containers: off loopback it needs its own token, which must not be
    /// a tenant's (a tenant would otherwise hold admin rights).
    fn validate_admin(&self) -> Result<(), ConfigError> {
        const KEY: &str = "server.admin_token_sha256";
        match &self.server.admin_token_sha256 {
            None if !self.server.admin_listen.ip().is_loopback() => Err(invalid(
                KEY,
                "required when server.admin_listen is not a loopback address",
            )),
            None => Ok(()),
            Some(h) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Err(invalid(KEY, "must be 64 hex digits (sha256 of the token)"))
            }
            Some(h)
                if self
                    .tenants
                    .iter()
                    .any(|t| t.token_sha256.eq_ignore_ascii_case(h)) =>
            {
                Err(invalid(KEY, "must not be a tenant's token"))
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(text, Vec::new())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(c.container.image, DEFAULT_IMAGE);
        assert_eq!(c.model.provider, Provider::Anthropic);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[server]\nlisten_addr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = parse("[container]\ncpus = 0.0").unwrap_err().to_string();
        assert!(err.contains("container.cpus"), "{err}");
        let err = parse("[[tenants]]\nid = \"a\"\ntoken_sha256 = \"zz\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants[0].token_sha256"), "{err}");
    }

    #[test]
    fn non_loopback_plain_http_needs_an_opt_in() {
        let err = parse("[server]\nlisten = \"0.0.0.0:8787\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        parse("[server]\nlisten = \"0.0.0.0:8787\"\nallow_insecure_http = true").unwrap();
        parse("[server]\nlisten = \"0.0.0.0:8787\"\ntls_cert = \"/c\"\ntls_key = \"/k\"").unwrap();
        let err = parse("[server]\ntls_cert = \"/c\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.tls_key"), "{err}");
    }

    #[test]
    fn admin_off_loopback_needs_its_own_token() {
        let err = parse("[server]\nadmin_listen = \"0.0.0.0:8788\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.admin_token_sha256"), "{err}");
        let hash = "ab".repeat(32);
        parse(&format!(
            "[server]\nadmin_listen = \"0.0.0.0:8788\"\nadmin_token_sha256 = \"{hash}\""
        ))
        .unwrap();
        let err = parse(&format!(
            "[server]\nadmin_token_sha256 = \"{hash}\"\n[[tenants]]\nid = \"a\"\ntoken_sha256 = \"{}\"",
            hash.to_uppercase()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenant"), "{err}");
    }

    #[test]
    fn listener_limits_have_defaults_and_bounds() {
        let c = parse("").unwrap();
        assert_eq!(c.server.header_read_timeout_secs, 10);
        assert_eq!(c.server.idle_timeout_secs, 60);
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(c.server.admin_max_connections, 64);
        for bad in [
            "header_read_timeout_secs = 0",
            "header_read_timeout_secs = 301",
            "idle_timeout_secs = 0",
            "max_connections = 0",
            "admin_max_connections = 2000000",
        ] {
            let err = parse(&format!("[server]\n{bad}")).unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(err.contains(&format!("server.{key}")), "{err}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let env = vec![
            (
                "AGENTBOX_SERVER_LISTEN".to_owned(),
                "127.0.0.1:9".to_owned(),
            ),
            ("AGENTBOX_CONTAINER_PIDS_LIMIT".to_owned(), "99".to_owned()),
            ("AGENTBOX_SYNC_MAX_FILE_BYTES".to_owned(), "4096".to_owned()),
            (
                "AGENTBOX_MODEL_ANTHROPIC_BASE_URL".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
            // The image build's own variables share the prefix but name no
            // section: a shell that exported them still starts the daemon.
            ("AGENTBOX_IMAGE_AGENT_BIN".to_owned(), "/x".to_owned()),
            ("AGENTBOX_DEBIAN_MIRROR".to_owned(), "http://m".to_owned()),
        ];
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"", env).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9");
        assert_eq!(c.container.pids_limit, 99);
        assert_eq!(c.sync.max_file_bytes, 4096);
        assert_eq!(c.model.anthropic_base_url, "http://127.0.0.1:1");
    }

    #[test]
    fn tiers_default_to_runc_and_tenants_override() {
        let hash = "ab".repeat(32);
        let c = parse(&format!(
            "[[tenants]]\nid = \"a\"\ntoken_sha256 = \"{hash}\"\nisolation_tier = \"gvisor\"\n\
             [[tenants]]\nid = \"b\"\ntoken_sha256 = \"{}\"",
            "cd".repeat(32)
        ))
        .unwrap();
        assert_eq!(c.tier_for("a"), IsolationTier::Gvisor);
        assert_eq!(c.tier_for("b"), IsolationTier::Runc);
        assert_eq!(c.tier_for("unknown"), IsolationTier::Runc);
        assert!(c.uses_gvisor());
        assert!(!parse("").unwrap().uses_gvisor());
        let c = parse("[container]\nisolation_tier = \"gvisor\"").unwrap();
        assert_eq!(c.tier_for("b"), IsolationTier::Gvisor);
        assert_eq!(c.container.gvisor_runtime, "runsc");
        let err = parse("[container]\nisolation_tier = \"kata\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kata"), "{err}");
        let err = parse("[container]\ngvisor_runtime = \"run sc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("container.gvisor_runtime"), "{err}");
    }

    #[test]
    fn pool_tiers_fit_in_max_size() {
        let c = parse("[pool]\nmin_size = 1\ngvisor_min_size = 2\nmax_size = 3").unwrap();
        assert_eq!(c.pool_min(IsolationTier::Runc), 1);
        assert_eq!(c.pool_min(IsolationTier::Gvisor), 2);
        assert!(c.uses_gvisor());
        let err = parse("[pool]\nmin_size = 2\ngvisor_min_size = 2\nmax_size = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool.max_size"), "{err}");
    }

    #[test]
    fn refill_cpu_shares_is_off_or_an_engine_weight_up_to_the_default() {
        assert_eq!(parse("").unwrap().pool.refill_cpu_shares, 64);
        for ok in [0, 2, 1024] {
            let c = parse(&format!("[pool]\nrefill_cpu_shares = {ok}")).unwrap();
            assert_eq!(c.pool.refill_cpu_shares, ok);
        }
        for bad in [1, 1025] {
            let err = parse(&format!("[pool]\nrefill_cpu_shares = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("pool.refill_cpu_shares"), "{err}");
        }
    }

    #[test]
    fn agent_limits_parse_and_take_env_overrides() {
        let env = vec![(
            "AGENTBOX_AGENT_MAX_EVENTS_PER_RUN".to_owned(),
            "500".to_owned(),
        )];
        let c = Config::from_toml("[agent]\nmax_line_bytes = 65536", env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.agent.max_line_bytes, 65536);
        assert_eq!(c.agent.max_events_per_run, 500);
        let err = parse("[agent]\nidle_timeout_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.idle_timeout_secs"), "{err}");
    }
}
