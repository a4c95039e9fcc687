//! Brokered credentials (`[[egress.credentials]]`): the header the proxy
//! adds to the requests a rule allows, its secret read from the daemon's
//! environment or a file when the config is loaded (and again on SIGHUP).
//! A credential whose secret is missing stays listed as unavailable, so
//! its requests fail (503) instead of going out without it.
//!
//! **Invariant:** the value lives here and in the outgoing request only;
//! the header is marked sensitive, and nothing logs it.

use crate::config::{CredentialConfig, CredentialFormat, EgressConfig};
use crate::secrets::Secret;
use base64::Engine;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;

/// Headers that carry credentials, dropped from a container's requests
/// to a host with a brokered credential, whatever the credential's own
/// header is: the container must not be able to add its own.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "private-token",
    "x-auth-token",
];

pub(super) struct Brokered {
    name: String,
    header: HeaderName,
    /// `None` when the secret could not be read (the reason is logged
    /// once, at load).
    value: Option<Secret>,
}

impl Brokered {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the container's credential headers with this one.
    pub(super) fn apply(&self, headers: &mut HeaderMap) -> Result<(), ()> {
        let secret = self.value.as_ref().ok_or(())?;
        let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| ())?;
        value.set_sensitive(true);
        strip(headers);
        headers.remove(&self.header);
        headers.insert(self.header.clone(), value);
        Ok(())
    }
}

/// Drops every credential header a container sent.
pub(super) fn strip(headers: &mut HeaderMap) {
    for h in CREDENTIAL_HEADERS {
        headers.remove(*h);
    }
}

/// The credentials by name, as loaded from one config.
#[derive(Default)]
pub(super) struct Credentials(HashMap<String, Arc<Brokered>>);

impl Credentials {
    pub(super) fn load(cfg: &EgressConfig) -> Self {
        Self(
            cfg.credentials
                .iter()
                .map(|c| (c.name.clone(), Arc::new(load_one(c))))
                .collect(),
        )
    }

    pub(super) fn get(&self, name: &str) -> Option<Arc<Brokered>> {
        self.0.get(name).cloned()
    }
}

fn load_one(c: &CredentialConfig) -> Brokered {
    let secret = match (&c.secret_env, &c.secret_file) {
        (Some(var), _) => std::env::var(var).map_err(|e| e.to_string()),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| e.to_string()),
        (None, None) => Err("no source".to_owned()),
    };
    let secret = secret.map(|s| s.strip_suffix('\n').unwrap_or(&s).to_owned());
    let value = match secret {
        Ok(s) if !s.is_empty() => Some(Secret::new(match c.format {
            CredentialFormat::Bearer => format!("Bearer {s}"),
            CredentialFormat::Raw => s,
            CredentialFormat::Basic => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{s}", c.user.as_deref().unwrap_or_default()))
            ),
        })),
        Ok(_) => {
            tracing::warn!(message = "Brokered credential is empty; its requests fail.", credential = %c.name);
            None
        }
        Err(error) => {
            tracing::warn!(message = "Brokered credential unavailable; its requests fail.", credential = %c.name, %error);
            None
        }
    };
    Brokered {
        name: c.name.clone(),
        // Validated with the config.
        header: HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes())
            .unwrap_or(hyper::header::AUTHORIZATION),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> EgressConfig {
        let c: EgressConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn formats_and_stripping() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let text = format!(
            r#"
            [[credentials]]
            name = "basic"
            format = "basic"
            user = "agent"
            secret_file = "{0}"
            [[credentials]]
            name = "bearer"
            format = "bearer"
            secret_file = "{0}"
            [[credentials]]
            name = "raw"
            format = "raw"
            header = "Private-Token"
            secret_file = "{0}"
            [[credentials]]
            name = "gone"
            format = "raw"
            secret_file = "{0}.missing"
            "#,
            file.display()
        );
        let creds = Credentials::load(&cfg(&text));
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic Y29udGFpbmVyOmd1ZXNz"),
        );
        h.insert("cookie", HeaderValue::from_static("session=container"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        creds.get("basic").unwrap().apply(&mut h).unwrap();
        // base64("agent:s3cr3t")
        assert_eq!(h["authorization"], "Basic YWdlbnQ6czNjcjN0");
        assert!(h["authorization"].is_sensitive());
        assert!(!h.contains_key("cookie"));
        assert_eq!(h.len(), 2);

        creds.get("bearer").unwrap().apply(&mut h).unwrap();
        assert_eq!(h["authorization"], "Bearer s3cr3t");
        creds.get("raw").unwrap().apply(&mut h).unwrap();
        assert_eq!(h["private-token"], "s3cr3t");
        assert!(!h.contains_key("authorization"), "the container's is gone");

        assert!(creds.get("gone").unwrap().apply(&mut h).is_err());
        assert!(creds.get("nope").is_none());
        assert!(!format!("{:?}", creds.get("basic").unwrap().value).contains("s3cr3t"));
    }
}
