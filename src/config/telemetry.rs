//! The `[telemetry]` config section: where the audit log goes and how it
//! rotates. Documented in `docs/configuration.md`.

use super::{invalid, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The append-only audit log (one JSON line per event).
    pub audit_path: PathBuf,
    /// Size at which the audit log is rotated.
    pub audit_max_bytes: u64,
    /// Rotated audit logs kept besides the live one.
    pub audit_max_files: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            audit_path: "/var/log/agentbox/audit.log".into(),
            audit_max_bytes: 100 * 1024 * 1024,
            audit_max_files: 10,
        }
    }
}

/// Smallest rotation size: a few audit lines.
const MIN_AUDIT_BYTES: u64 = 4096;

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.audit_path.is_absolute() {
            return Err(invalid("telemetry.audit_path", "must be an absolute path"));
        }
        if self.audit_max_bytes < MIN_AUDIT_BYTES {
            return Err(invalid(
                "telemetry.audit_max_bytes",
                format!("must be at least {MIN_AUDIT_BYTES}"),
            ));
        }
        if !(1..=1000).contains(&self.audit_max_files) {
            return Err(invalid("telemetry.audit_max_files", "must be in 1..=1000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::from_toml("", Vec::new()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.telemetry.audit_max_files, 10);
        for (text, key) in [
            (
                "[telemetry]\naudit_path = \"rel/audit.log\"",
                "telemetry.audit_path",
            ),
            (
                "[telemetry]\naudit_max_bytes = 10",
                "telemetry.audit_max_bytes",
            ),
            (
                "[telemetry]\naudit_max_files = 0",
                "telemetry.audit_max_files",
            ),
        ] {
            let err = Config::from_toml(text, Vec::new())
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn env_overrides_reach_the_section() {
        let env = vec![(
            "AGENTBOX_TELEMETRY_AUDIT_PATH".to_owned(),
            "/tmp/x/audit.log".to_owned(),
        )];
        let c = Config::from_toml("", env).unwrap();
        assert_eq!(c.telemetry.audit_path.to_str(), Some("/tmp/x/audit.log"));
    }
}
