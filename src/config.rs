//! Typed configuration: a TOML file, `AGENTBOX_<SECTION>_<KEY>` environment
//! overrides, defaults for every key, and a pure [`Config::validate`].
//!
//! Secrets never live here: the model API key is read from the daemon's
//! environment by [`crate::secrets`]. Every key is documented in
//! `docs/configuration.md`.

pub use crate::proxy::config::{ModelConfig, Provider, ProxyConfig};
pub use crate::sync::config::StorageConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub model: ModelConfig,
    pub proxy: ProxyConfig,
    pub container: ContainerConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight streams may run on after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Names this daemon on container labels, so two daemons sharing one
    /// Docker engine never touch each other's containers.
    pub instance: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            shutdown_grace_secs: 30,
            instance: "default".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub path: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: "/var/lib/agentbox/state.redb".into(),
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
}

impl Config {
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
            if !["server", "state", "storage", "model", "proxy", "container"]
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
        self.storage.validate()?;
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
        if c.start_timeout_secs == 0 {
            return Err(invalid("container.start_timeout_secs", "must be positive"));
        }
        if !crate::ids::is_valid_id(&self.server.instance) {
            return Err(invalid(
                "server.instance",
                "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !crate::ids::is_valid_id(&t.id) {
                return Err(invalid(
                    &format!("tenants[{i}].id"),
                    "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
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
            crate::proxy::config::parse_patterns(
                &format!("tenants[{i}].allowed_domains"),
                &t.allowed_domains,
            )?;
        }
        Ok(())
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
    fn env_overrides_file() {
        let env = vec![
            (
                "AGENTBOX_SERVER_LISTEN".to_owned(),
                "127.0.0.1:9".to_owned(),
            ),
            ("AGENTBOX_CONTAINER_PIDS_LIMIT".to_owned(), "99".to_owned()),
            (
                "AGENTBOX_MODEL_ANTHROPIC_BASE_URL".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"", env).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9");
        assert_eq!(c.container.pids_limit, 99);
        assert_eq!(c.model.anthropic_base_url, "http://127.0.0.1:1");
    }
}
