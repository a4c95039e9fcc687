//! Configuration of the model gateway (`[model]`) and of the egress proxy
//! (`[proxy]`). `validate()` is pure; the typed values the proxy runs on
//! are derived here too, so a config that validates always builds.

use super::{invalid, ConfigError};
use egress_policy::addr::{Cidr, CidrError};
use egress_policy::gateway_paths::{Call, CallPolicy, DEFAULT_ANTHROPIC_CALLS};
use egress_policy::hostmatch::{normalize, Pattern};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Anthropic,
    Bedrock,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub provider: Provider,
    pub anthropic_base_url: String,
    /// Bedrock runtime endpoint; empty means
    /// `https://bedrock-runtime.{region}.amazonaws.com`.
    pub bedrock_base_url: String,
    /// Bedrock control-plane endpoint, for the CLI's inference-profile
    /// listing; empty means `https://bedrock.{region}.amazonaws.com`.
    pub bedrock_control_url: String,
    pub region: String,
    /// `ANTHROPIC_MODEL` for the CLI in Bedrock mode.
    pub bedrock_model: String,
    /// `ANTHROPIC_DEFAULT_HAIKU_MODEL` for the CLI in Bedrock mode.
    pub bedrock_small_model: String,
    /// Profile in the shared AWS files; empty means `AWS_PROFILE` or
    /// `default`.
    pub aws_profile: String,
    /// A PEM file of extra CA certificates the gateway trusts for its
    /// upstream, besides the system roots (a TLS-inspecting proxy, a
    /// private gateway); empty means the system roots only.
    pub extra_ca_file: String,
    /// Retries the CLI makes on a failed model call (the CLI's default is 10).
    pub max_retries: u32,
    /// Longest wait for the upstream's answer to begin (its status line
    /// and headers); past it the gateway answers 504 and the run's failure
    /// is `upstream_unavailable`.
    pub first_byte_timeout_secs: u64,
    /// Largest request body the gateway accepts; the default is the
    /// Messages API's own limit.
    pub max_request_body_mb: u64,
    /// Anthropic: the `METHOD /path` calls the gateway forwards with the
    /// key; every other call is refused (403).
    pub allowed_calls: Vec<String>,
    /// Bedrock: the model ids the gateway signs calls for; empty means
    /// `bedrock_model` and `bedrock_small_model`.
    pub bedrock_models: Vec<String>,
    /// What the gateway charges runs and tenants for, per model family: a
    /// model is priced by the longest key its name contains, and a model no
    /// key matches by the most expensive entry (an unknown model must not
    /// spend for free). Setting the table replaces the default one whole.
    pub prices: BTreeMap<String, ModelPrice>,
}

/// USD per million tokens of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl ModelPrice {
    const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Self {
        Self {
            input,
            output,
            cache_write,
            cache_read,
        }
    }
}

/// List prices of the Claude families (USD per million tokens).
fn default_prices() -> BTreeMap<String, ModelPrice> {
    BTreeMap::from([
        ("haiku".to_owned(), ModelPrice::new(1.0, 5.0, 1.25, 0.10)),
        ("opus".to_owned(), ModelPrice::new(15.0, 75.0, 18.75, 1.5)),
        ("sonnet".to_owned(), ModelPrice::new(3.0, 15.0, 3.75, 0.30)),
    ])
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            provider: Provider::Anthropic,
            anthropic_base_url: "https://api.anthropic.com".to_owned(),
            bedrock_base_url: String::new(),
            bedrock_control_url: String::new(),
            region: "us-east-1".to_owned(),
            bedrock_model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0".to_owned(),
            bedrock_small_model: "us.anthropic.claude-haiku-4-5-20251001-v1:0".to_owned(),
            aws_profile: String::new(),
            extra_ca_file: String::new(),
            max_retries: 10,
            first_byte_timeout_secs: 600,
            max_request_body_mb: 32,
            allowed_calls: DEFAULT_ANTHROPIC_CALLS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            bedrock_models: Vec::new(),
            prices: default_prices(),
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_url("model.anthropic_base_url", &self.anthropic_base_url)?;
        for (key, url) in [
            ("model.bedrock_base_url", &self.bedrock_base_url),
            ("model.bedrock_control_url", &self.bedrock_control_url),
        ] {
            if !url.is_empty() {
                check_url(key, url)?;
            }
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("model.region", "must look like us-east-1"));
        }
        for (key, id) in [
            ("model.bedrock_model", &self.bedrock_model),
            ("model.bedrock_small_model", &self.bedrock_small_model),
        ] {
            if id.is_empty()
                || id
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid(key, "must be a model id without spaces"));
            }
        }
        if !self.extra_ca_file.is_empty() && !self.extra_ca_file.starts_with('/') {
            return Err(invalid("model.extra_ca_file", "must be an absolute path"));
        }
        if self.first_byte_timeout_secs == 0 || self.first_byte_timeout_secs > 3600 {
            return Err(invalid(
                "model.first_byte_timeout_secs",
                "must be in 1..=3600",
            ));
        }
        if self.max_request_body_mb == 0 || self.max_request_body_mb > 1024 {
            return Err(invalid("model.max_request_body_mb", "must be in 1..=1024"));
        }
        self.calls()?;
        for (i, id) in self.bedrock_models.iter().enumerate() {
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-_".contains(&b))
            {
                return Err(invalid(
                    &format!("model.bedrock_models[{i}]"),
                    "must be a model id (letters, digits, . : - _)",
                ));
            }
        }
        if self.prices.is_empty() {
            return Err(invalid(
                "model.prices",
                "must price at least one model family",
            ));
        }
        for (family, p) in &self.prices {
            let key = format!("model.prices.{family}");
            if family.is_empty() || family.trim() != family {
                return Err(invalid(&key, "must be a non-empty model family name"));
            }
            for v in [p.input, p.output, p.cache_write, p.cache_read] {
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(&key, "prices must be finite and not negative"));
                }
            }
        }
        Ok(())
    }

    fn calls(&self) -> Result<Vec<Call>, ConfigError> {
        self.allowed_calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Call::parse(c).map_err(|e| invalid(&format!("model.allowed_calls[{i}]"), e))
            })
            .collect()
    }

    /// The calls the gateway forwards for the configured provider.
    pub fn call_policy(&self) -> CallPolicy {
        match self.provider {
            Provider::Anthropic => CallPolicy::Anthropic(self.calls().unwrap_or_default()),
            Provider::Bedrock if self.bedrock_models.is_empty() => CallPolicy::Bedrock(vec![
                self.bedrock_model.clone(),
                self.bedrock_small_model.clone(),
            ]),
            Provider::Bedrock => CallPolicy::Bedrock(self.bedrock_models.clone()),
        }
    }

    /// The Bedrock runtime endpoint, the default one for the region when unset.
    pub fn bedrock_runtime_url(&self) -> String {
        if self.bedrock_base_url.is_empty() {
            format!("https://bedrock-runtime.{}.amazonaws.com", self.region)
        } else {
            self.bedrock_base_url.clone()
        }
    }

    pub fn bedrock_control_plane_url(&self) -> String {
        if self.bedrock_control_url.is_empty() {
            format!("https://bedrock.{}.amazonaws.com", self.region)
        } else {
            self.bedrock_control_url.clone()
        }
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .parse::<hyper::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, "must be an http(s) URL"))
    }
}

/// The forward-proxy route (everything but the model gateway).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Names (`example.com`), subdomain wildcards (`*.example.com`) and IP
    /// addresses the containers may reach.
    pub allowed_domains: Vec<String>,
    pub allowed_ports: Vec<u16>,
    /// Ranges exempt from the private/loopback/metadata refusal.
    pub allow_private_cidrs: Vec<String>,
    /// Fixed answers for names, like curl's `--resolve` (name -> address).
    pub resolve: BTreeMap<String, String>,
    /// How long a DNS answer is reused.
    pub dns_cache_ttl_secs: u64,
    pub max_connections_per_container: usize,
    pub connect_timeout_secs: u64,
    /// Model requests one container may have in flight at once; more get
    /// 429 (the CLI retries).
    pub max_gateway_requests_per_container: usize,
    /// Bytes the daemon holds at most in buffered request bodies (Bedrock
    /// signing), all containers together.
    pub buffer_budget_bytes: u64,
    /// Of that budget, what one container may hold at once.
    pub buffer_share_bytes: u64,
    /// A request body must have arrived whole within this.
    pub body_timeout_secs: u64,
    /// Longest pause between two reads of a request body.
    pub read_idle_timeout_secs: u64,
    /// Refusals one container may write to the audit log at once...
    pub audit_refusal_burst: u32,
    /// ...and per minute after that; the rest are counted into one
    /// `proxy_requests_coalesced` summary.
    pub audit_refusals_per_minute: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            allowed_domains: Vec::new(),
            allowed_ports: vec![443, 80],
            allow_private_cidrs: Vec::new(),
            resolve: BTreeMap::new(),
            dns_cache_ttl_secs: 30,
            max_connections_per_container: 64,
            connect_timeout_secs: 10,
            max_gateway_requests_per_container: 8,
            buffer_budget_bytes: 256 << 20,
            buffer_share_bytes: 64 << 20,
            body_timeout_secs: 120,
            read_idle_timeout_secs: 30,
            audit_refusal_burst: 20,
            audit_refusals_per_minute: 60,
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_patterns("proxy.allowed_domains", &self.allowed_domains)?;
        if self.allowed_ports.contains(&0) {
            return Err(invalid("proxy.allowed_ports", "0 is not a port"));
        }
        self.private_cidrs()?;
        self.resolve_overrides()?;
        if self.dns_cache_ttl_secs > 3600 {
            return Err(invalid("proxy.dns_cache_ttl_secs", "must be at most 3600"));
        }
        if self.max_connections_per_container == 0 {
            return Err(invalid(
                "proxy.max_connections_per_container",
                "must be positive",
            ));
        }
        if self.connect_timeout_secs == 0 || self.connect_timeout_secs > 300 {
            return Err(invalid("proxy.connect_timeout_secs", "must be in 1..=300"));
        }
        if self.max_gateway_requests_per_container == 0 {
            return Err(invalid(
                "proxy.max_gateway_requests_per_container",
                "must be positive",
            ));
        }
        if self.buffer_budget_bytes < 1 << 20 {
            return Err(invalid(
                "proxy.buffer_budget_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.buffer_share_bytes == 0 || self.buffer_share_bytes > self.buffer_budget_bytes {
            return Err(invalid(
                "proxy.buffer_share_bytes",
                "must be positive and at most proxy.buffer_budget_bytes",
            ));
        }
        if self.audit_refusal_burst == 0 {
            return Err(invalid("proxy.audit_refusal_burst", "must be positive"));
        }
        for (key, v) in [
            ("proxy.body_timeout_secs", self.body_timeout_secs),
            ("proxy.read_idle_timeout_secs", self.read_idle_timeout_secs),
        ] {
            if v == 0 || v > 3600 {
                return Err(invalid(key, "must be in 1..=3600"));
            }
        }
        Ok(())
    }

    /// The bounds on one request body through the gateway.
    pub fn body_limits(&self, max_bytes: u64) -> BodyLimits {
        BodyLimits {
            max_bytes,
            deadline: Duration::from_secs(self.body_timeout_secs),
            idle: Duration::from_secs(self.read_idle_timeout_secs),
        }
    }

    pub fn patterns(&self) -> Result<Vec<Pattern>, ConfigError> {
        parse_patterns("proxy.allowed_domains", &self.allowed_domains)
    }

    pub fn private_cidrs(&self) -> Result<Vec<Cidr>, ConfigError> {
        self.allow_private_cidrs
            .iter()
            .map(|c| {
                c.parse()
                    .map_err(|e: CidrError| invalid("proxy.allow_private_cidrs", e.to_string()))
            })
            .collect()
    }

    /// The `resolve` table with names in normal form.
    pub fn resolve_overrides(&self) -> Result<BTreeMap<String, IpAddr>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, ip) in &self.resolve {
            let key = format!("proxy.resolve.{name}");
            let name = normalize(name).map_err(|e| invalid(&key, e.to_string()))?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| invalid(&key, "must be an IP address"))?;
            out.insert(name.as_str().to_owned(), ip);
        }
        Ok(out)
    }
}

/// Parses allowlist entries, naming the bad one in the error.
pub fn parse_patterns(key: &str, entries: &[String]) -> Result<Vec<Pattern>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Pattern::parse(e).map_err(|err| invalid(&format!("{key}[{i}]"), err.to_string()))
        })
        .collect()
}

/// Size and time bounds of one request body through the proxy.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max_bytes: u64,
    /// The whole body must have arrived within this.
    pub deadline: Duration,
    /// No gap between two reads may be longer than this.
    pub idle: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_defaults_validate_and_bad_entries_are_named() {
        ProxyConfig::default().validate().unwrap();
        let c = ProxyConfig {
            allowed_domains: vec!["ok.com".into(), "127.1".into()],
            ..Default::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("proxy.allowed_domains[1]"), "{err}");
        let c = ProxyConfig {
            resolve: BTreeMap::from([("allowed.test".into(), "nope".into())]),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("proxy.resolve.allowed.test"));
        let c = ProxyConfig {
            allow_private_cidrs: vec!["10.0.0.0/99".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn bedrock_urls_default_from_region() {
        let m = ModelConfig {
            provider: Provider::Bedrock,
            region: "eu-west-1".into(),
            ..Default::default()
        };
        m.validate().unwrap();
        assert_eq!(
            m.bedrock_runtime_url(),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            m.bedrock_control_plane_url(),
            "https://bedrock.eu-west-1.amazonaws.com"
        );
        let bad = ModelConfig {
            region: "EU WEST".into(),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("model.region"));
    }
}
