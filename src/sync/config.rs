//! Configuration of workspace sync (`[storage]`).

use crate::config::{invalid, ConfigError};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/lib/agentbox/objects".to_owned(),
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("file://") || self.url.starts_with("s3://")) {
            return Err(invalid("storage.url", "must start with file:// or s3://"));
        }
        Ok(())
    }
}
