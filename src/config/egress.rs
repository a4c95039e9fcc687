//! Egress rules finer than a domain and brokered credentials (`[egress]`,
//! `[[egress.rules]]`, `[[egress.credentials]]`, and a tenant's
//! `[[tenants.egress_rules]]`). `validate()` is pure; secrets are never
//! read here, only where they come from.

use super::{invalid, ConfigError};
use egress_policy::hostmatch::Pattern;
use egress_policy::rules::Rule;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Directory of the local CA that signs the certificates the proxy
    /// shows a container for intercepted hosts (`ca.pem`, and `ca.key`
    /// readable by the daemon only); created at first start.
    pub ca_dir: PathBuf,
    /// A PEM file of extra CAs the proxy trusts for intercepted hosts,
    /// besides the system roots; empty means the system roots only.
    pub extra_ca_file: String,
    /// Rules for every tenant, tried after a tenant's own.
    pub rules: Vec<RuleConfig>,
    pub credentials: Vec<CredentialConfig>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            ca_dir: "/var/lib/agentbox/egress-ca".into(),
            extra_ca_file: String::new(),
            rules: Vec::new(),
            credentials: Vec::new(),
        }
    }
}

/// One rule: a host pattern (as in `proxy.allowed_domains`) and,
/// optionally, methods, path patterns and a credential's name.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub host: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialFormat {
    /// `Bearer <secret>`.
    Bearer,
    /// `Basic base64(<user>:<secret>)`.
    Basic,
    /// The secret as it is.
    Raw,
}

/// A credential the proxy adds to the requests a rule allows. Its secret
/// comes from the daemon's environment or a file, never from here.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub name: String,
    #[serde(default = "default_header")]
    pub header: String,
    pub format: CredentialFormat,
    /// The fixed user of a `basic` credential.
    #[serde(default)]
    pub user: Option<String>,
    /// The daemon's environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A file of the daemon holding the secret (one trailing newline is
    /// dropped); re-read on SIGHUP.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    // Accepted only to be refused with a clear message: a secret in the
    // config file would be one more copy to guard.
    #[serde(default)]
    secret: Option<toml::Value>,
    #[serde(default)]
    password: Option<toml::Value>,
    #[serde(default)]
    token: Option<toml::Value>,
}

fn default_header() -> String {
    "authorization".to_owned()
}

impl EgressConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.ca_dir.is_absolute() {
            return Err(invalid("egress.ca_dir", "must be an absolute path"));
        }
        if !self.extra_ca_file.is_empty() && !self.extra_ca_file.starts_with('/') {
            return Err(invalid("egress.extra_ca_file", "must be an absolute path"));
        }
        let mut names = HashSet::new();
        for (i, c) in self.credentials.iter().enumerate() {
            c.validate(&format!("egress.credentials[{i}]"))?;
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    &format!("egress.credentials[{i}].name"),
                    "duplicate credential name",
                ));
            }
        }
        self.rules("egress.rules", &self.rules)?;
        Ok(())
    }

    /// Parses a list of rules (the global ones, or a tenant's under
    /// `key`), checking names are unique and credentials exist.
    pub fn rules(&self, key: &str, rules: &[RuleConfig]) -> Result<Vec<Rule>, ConfigError> {
        let mut seen = HashSet::new();
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("{key}[{i}]");
                if !crate::ids::is_valid_id(&r.name) {
                    return Err(invalid(
                        &format!("{key}.name"),
                        "must be letters, digits, '-' or '_' (1-64)",
                    ));
                }
                if !seen.insert(r.name.as_str()) {
                    return Err(invalid(&format!("{key}.name"), "duplicate rule name"));
                }
                if let Some(c) = &r.credential {
                    if !self.credentials.iter().any(|d| &d.name == c) {
                        return Err(invalid(
                            &format!("{key}.credential"),
                            format!("no [[egress.credentials]] is named {c:?}"),
                        ));
                    }
                }
                let host = Pattern::parse(&r.host)
                    .map_err(|e| invalid(&format!("{key}.host"), e.to_string()))?;
                Rule::new(&r.name, host, &r.methods, &r.paths, r.credential.clone())
                    .map_err(|e| invalid(&key, e.to_string()))
            })
            .collect()
    }
}

impl CredentialConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.secret.is_some() || self.password.is_some() || self.token.is_some() {
            return Err(invalid(
                key,
                "a secret never goes in the config file: use secret_env or secret_file",
            ));
        }
        if !crate::ids::is_valid_id(&self.name) {
            return Err(invalid(
                &format!("{key}.name"),
                "must be letters, digits, '-' or '_' (1-64)",
            ));
        }
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err() {
            return Err(invalid(&format!("{key}.header"), "must be a header name"));
        }
        match (self.format, &self.user) {
            (CredentialFormat::Basic, None) => {
                return Err(invalid(
                    &format!("{key}.user"),
                    "a basic credential needs a user",
                ))
            }
            (CredentialFormat::Basic, Some(u)) if u.contains(':') || u.is_empty() => {
                return Err(invalid(
                    &format!("{key}.user"),
                    "must be non-empty, without ':'",
                ))
            }
            (CredentialFormat::Bearer | CredentialFormat::Raw, Some(_)) => {
                return Err(invalid(
                    &format!("{key}.user"),
                    "only a basic credential has a user",
                ))
            }
            _ => {}
        }
        match (&self.secret_env, &self.secret_file) {
            (Some(v), None) if !v.is_empty() && !v.contains('=') => Ok(()),
            (None, Some(f)) if f.is_absolute() => Ok(()),
            (None, Some(_)) => Err(invalid(
                &format!("{key}.secret_file"),
                "must be an absolute path",
            )),
            _ => Err(invalid(
                key,
                "needs exactly one of secret_env (a variable name) or secret_file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EgressConfig, String> {
        let cfg: EgressConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    const GOOD: &str = r#"
        [[credentials]]
        name = "git"
        format = "basic"
        user = "agent"
        secret_env = "GIT_TOKEN"

        [[rules]]
        name = "repo"
        host = "git.example.com"
        methods = ["GET", "post"]
        paths = ["/org/repo.git/**"]
        credential = "git"

        [[rules]]
        name = "pypi"
        host = "*.pythonhosted.org"
    "#;

    #[test]
    fn a_good_section_builds_rules() {
        let cfg = parse(GOOD).unwrap();
        let rules = cfg.rules("egress.rules", &cfg.rules).unwrap();
        assert_eq!(rules[0].methods, ["GET", "POST"]);
        assert!(rules[0].inspects());
        assert!(!rules[1].inspects());
        assert_eq!(cfg.credentials[0].header, "authorization");
    }

    #[test]
    fn inline_secrets_are_refused() {
        for field in ["secret", "password", "token"] {
            let text = format!(
                "[[credentials]]\nname = \"c\"\nformat = \"bearer\"\n{field} = \"s3cr3t\"\n"
            );
            let err = parse(&text).unwrap_err();
            assert!(err.contains("never goes in the config file"), "{err}");
            assert!(!err.contains("s3cr3t"), "the error never echoes it: {err}");
        }
    }

    #[test]
    fn bad_sections_are_refused_with_their_key() {
        for (text, key) in [
            (
                "[[credentials]]\nname=\"c\"\nformat=\"bearer\"\n",
                "egress.credentials[0]",
            ),
            (
                "[[credentials]]\nname=\"c\"\nformat=\"basic\"\nsecret_env=\"X\"\n",
                "egress.credentials[0].user",
            ),
            (
                "[[credentials]]\nname=\"c\"\nformat=\"bearer\"\nsecret_file=\"rel\"\n",
                "egress.credentials[0].secret_file",
            ),
            (
                "[[rules]]\nname=\"r\"\nhost=\"x.test\"\ncredential=\"nope\"\n",
                "egress.rules[0].credential",
            ),
            (
                "[[rules]]\nname=\"r\"\nhost=\"127.1\"\n",
                "egress.rules[0].host",
            ),
            (
                "[[rules]]\nname=\"r\"\nhost=\"x.test\"\npaths=[\"/a/../b\"]\n",
                "egress.rules[0]",
            ),
            (
                "[[rules]]\nname=\"r\"\nhost=\"x.test\"\n[[rules]]\nname=\"r\"\nhost=\"y.test\"\n",
                "egress.rules[1].name",
            ),
            ("ca_dir = \"rel\"\n", "egress.ca_dir"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
