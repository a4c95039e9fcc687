//! Configuration of the model gateway (`[model]`) and of the egress proxy
//! (`[proxy]`).

use crate::config::{invalid, ConfigError};
use serde::Deserialize;

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
    /// Retries the CLI makes on a failed model call (the CLI's default is 10).
    pub max_retries: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            provider: Provider::Anthropic,
            anthropic_base_url: "https://api.anthropic.com".to_owned(),
            max_retries: 10,
        }
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.anthropic_base_url;
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.parse::<hyper::Uri>().is_err()
        {
            return Err(invalid(
                "model.anthropic_base_url",
                "must be an http(s) URL",
            ));
        }
        if self.provider == Provider::Bedrock {
            return Err(invalid("model.provider", "bedrock is not supported yet"));
        }
        Ok(())
    }
}

/// The forward-proxy route (everything but the model gateway).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
