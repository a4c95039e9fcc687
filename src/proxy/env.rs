//! The environment a workspace container gets: how its CLI reaches the
//! model gateway, how every other program reaches the forward proxy, and
//! nothing secret.

use crate::config::{Config, Provider};
use agent_protocol::{GATEWAY_ADDR, SOCKET_DIR};

/// The variables that point each TLS client at the CA bundle the proxy
/// places in the socket directory (`ca::BUNDLE_FILE`): OpenSSL's default
/// (Python's `ssl`/`urllib`), curl, git, Node (added to its own roots),
/// npm, Python requests, pip.
const TRUST_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "NPM_CONFIG_CAFILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
];

/// The key the CLI sends to the gateway; the proxy replaces it.
pub(super) const PLACEHOLDER_API_KEY: &str = "agentbox-placeholder-key";

pub fn container_env(cfg: &Config) -> Vec<(String, String)> {
    let gateway = format!("http://{GATEWAY_ADDR}");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_owned(), v.to_owned()));
    match cfg.model.provider {
        Provider::Anthropic => {
            set("ANTHROPIC_BASE_URL", &gateway);
            set("ANTHROPIC_API_KEY", PLACEHOLDER_API_KEY);
        }
        Provider::Bedrock => {
            set("CLAUDE_CODE_USE_BEDROCK", "1");
            set("ANTHROPIC_BEDROCK_BASE_URL", &gateway);
            // The gateway signs; the CLI must not look for AWS credentials.
            set("CLAUDE_CODE_SKIP_BEDROCK_AUTH", "1");
            set("AWS_REGION", &cfg.model.region);
            set("ANTHROPIC_MODEL", &cfg.model.bedrock_model);
            set(
                "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                &cfg.model.bedrock_small_model,
            );
        }
    }
    // Everything else goes through the forward proxy on the same port.
    // curl reads only the lowercase http_proxy, most others either case.
    for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        set(key, &gateway);
    }
    // The gateway itself is reached directly, not through the proxy.
    set("NO_PROXY", "127.0.0.1,localhost");
    set("no_proxy", "127.0.0.1,localhost");
    for key in [
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "CLAUDE_CODE_DISABLE_TERMINAL_TITLE",
    ] {
        set(key, "1");
    }
    set(
        "CLAUDE_CODE_MAX_RETRIES",
        &cfg.model.max_retries.to_string(),
    );
    // The daemon always has its egress CA (made at first start), so the
    // bundle is always there; intercepted hosts verify without flags.
    let bundle = format!("{SOCKET_DIR}/{}", super::ca::BUNDLE_FILE);
    for key in TRUST_VARS {
        set(key, &bundle);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn anthropic_and_bedrock_modes() {
        let mut cfg = Config::default();
        let env = container_env(&cfg);
        assert_eq!(get(&env, "ANTHROPIC_API_KEY"), Some(PLACEHOLDER_API_KEY));
        assert_eq!(get(&env, "https_proxy"), Some("http://127.0.0.1:8080"));
        assert_eq!(get(&env, "NO_PROXY"), Some("127.0.0.1,localhost"));
        assert_eq!(get(&env, "CLAUDE_CODE_USE_BEDROCK"), None);
        for var in TRUST_VARS {
            assert_eq!(get(&env, var), Some("/run/agentbox/ca-bundle.pem"), "{var}");
        }

        cfg.model.provider = Provider::Bedrock;
        cfg.model.region = "eu-central-1".into();
        let env = container_env(&cfg);
        assert_eq!(get(&env, "CLAUDE_CODE_USE_BEDROCK"), Some("1"));
        assert_eq!(get(&env, "CLAUDE_CODE_SKIP_BEDROCK_AUTH"), Some("1"));
        assert_eq!(
            get(&env, "ANTHROPIC_BEDROCK_BASE_URL"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(get(&env, "AWS_REGION"), Some("eu-central-1"));
        assert!(get(&env, "ANTHROPIC_MODEL").is_some_and(|m| m.contains("anthropic")));
        assert!(get(&env, "ANTHROPIC_DEFAULT_HAIKU_MODEL").is_some());
        assert_eq!(get(&env, "ANTHROPIC_API_KEY"), None);
        assert!(env
            .iter()
            .all(|(k, _)| !k.starts_with("AWS_SECRET") && k != "AWS_ACCESS_KEY_ID"));
    }
}
