//! AWS credentials for the Bedrock gateway, from the standard chain:
//! environment variables, then the shared credentials/config files with a
//! profile, then EC2 instance metadata (IMDSv2). Cached, and fetched again
//! when they are within [`REFRESH_BEFORE`] of expiring.
//!
//! Hand-written rather than `aws-config`: that crate and the SDK clients it
//! pulls (STS, SSO, ...) took 57 s and 146 crates in a cold debug build
//! here against 8 s and 50 crates for `aws-sigv4` + `aws-credential-types`;
//! this chain is the part of it agentbox needs. Not supported (say so in
//! errors, see docs/configuration.md): `role_arn` / `source_profile`
//! assume-role, SSO and `credential_process` profiles, ECS task roles.
//!
//! **Invariant:** secret parts live in [`Secret`]s and are revealed only to
//! the signer; nothing here logs them.

use crate::secrets::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Credentials this close to expiry are fetched again before use.
pub(super) const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Static credentials from files are read again this often (rotation).
const FILE_REREAD: Duration = Duration::from_secs(15 * 60);
const IMDS_DEFAULT: &str = "http://169.254.169.254";
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
const IMDS_TOKEN_TTL: &str = "21600";

#[derive(Clone)]
pub(super) struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub expires: Option<SystemTime>,
    /// Where they came from (`env`, `profile:NAME`, `imds`), for audit.
    pub source: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("source", &self.source)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| e > now + REFRESH_BEFORE)
    }

    fn valid_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CredentialsError {
    #[error("no AWS credentials found (tried environment, profile {profile:?}, instance metadata: {imds})")]
    NotFound { profile: String, imds: String },
    #[error("AWS profile {profile:?} in {file}: {message}")]
    Profile {
        profile: String,
        file: String,
        message: String,
    },
}

/// The environment variables the chain reads, captured once.
#[derive(Clone, Debug, Default)]
pub struct AwsEnv(HashMap<String, String>);

impl AwsEnv {
    pub fn from_process() -> Self {
        Self(
            std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_") || k == "HOME")
                .collect(),
        )
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

pub(super) struct CredentialChain {
    env: AwsEnv,
    profile: String,
    imds: Client<HttpConnector, Empty<Bytes>>,
    cached: tokio::sync::Mutex<Option<AwsCredentials>>,
}

impl CredentialChain {
    /// `profile` empty means `AWS_PROFILE`, else `default`.
    pub(super) fn new(env: AwsEnv, profile: &str) -> Self {
        let profile = if profile.is_empty() {
            env.get("AWS_PROFILE").unwrap_or("default").to_owned()
        } else {
            profile.to_owned()
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(IMDS_TIMEOUT));
        Self {
            env,
            profile,
            imds: Client::builder(TokioExecutor::new()).build(http),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Current credentials, loaded again when missing or near expiry. If a
    /// reload fails while the cached ones are still valid, those are used.
    pub(super) async fn credentials(&self) -> Result<AwsCredentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.clone());
        }
        match self.load().await {
            Ok(c) => {
                tracing::info!(message = "AWS credentials loaded.", source = %c.source,
                    expires_in_secs = c.expires.and_then(|e| e.duration_since(now).ok()).map(|d| d.as_secs()));
                *cached = Some(c.clone());
                Ok(c)
            }
            Err(error) => match cached.as_ref().filter(|c| c.valid_at(now)) {
                Some(c) => {
                    tracing::warn!(message = "AWS credential refresh failed; using the current ones until they expire.", %error);
                    Ok(c.clone())
                }
                None => Err(error),
            },
        }
    }

    async fn load(&self) -> Result<AwsCredentials, CredentialsError> {
        if let Some(c) = self.load_env() {
            return Ok(c);
        }
        if let Some(c) = self.load_profile()? {
            return Ok(c);
        }
        match self.load_imds().await {
            Ok(c) => Ok(c),
            Err(imds) => Err(CredentialsError::NotFound {
                profile: self.profile.clone(),
                imds,
            }),
        }
    }

    fn load_env(&self) -> Option<AwsCredentials> {
        let id = self.env.get("AWS_ACCESS_KEY_ID")?;
        let secret = self.env.get("AWS_SECRET_ACCESS_KEY")?;
        Some(AwsCredentials {
            access_key_id: id.to_owned(),
            secret_access_key: Secret::new(secret),
            session_token: self.env.get("AWS_SESSION_TOKEN").map(Secret::new),
            expires: None,
            source: "env".to_owned(),
        })
    }

    fn home_file(&self, var: &str, rel: &str) -> Option<PathBuf> {
        match self.env.get(var) {
            Some(p) => Some(PathBuf::from(p)),
            None => self.env.get("HOME").map(|h| PathBuf::from(h).join(rel)),
        }
    }

    fn load_profile(&self) -> Result<Option<AwsCredentials>, CredentialsError> {
        let files = [
            (
                self.home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
                self.profile.clone(),
            ),
            (
                self.home_file("AWS_CONFIG_FILE", ".aws/config"),
                if self.profile == "default" {
                    "default".to_owned()
                } else {
                    format!("profile {}", self.profile)
                },
            ),
        ];
        for (path, section) in files {
            let Some(path) = path else { continue };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Some(keys) = ini_section(&text, &section) else {
                continue;
            };
            let err = |message: &str| CredentialsError::Profile {
                profile: self.profile.clone(),
                file: path.display().to_string(),
                message: message.to_owned(),
            };
            match (keys.get("aws_access_key_id"), keys.get("aws_secret_access_key")) {
                (Some(id), Some(secret)) => {
                    return Ok(Some(AwsCredentials {
                        access_key_id: id.clone(),
                        secret_access_key: Secret::new(secret.clone()),
                        session_token: keys.get("aws_session_token").map(|t| Secret::new(t.clone())),
                        expires: Some(SystemTime::now() + FILE_REREAD),
                        source: format!("profile:{}", self.profile),
                    }))
                }
                _ if ["role_arn", "sso_session", "sso_start_url", "credential_process"]
                    .iter()
                    .any(|k| keys.contains_key(*k)) =>
                {
                    return Err(err(
                        "assume-role, SSO and credential_process profiles are not supported; use static keys, environment variables or an instance role",
                    ))
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    async fn load_imds(&self) -> Result<AwsCredentials, String> {
        if self
            .env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err("disabled by AWS_EC2_METADATA_DISABLED".to_owned());
        }
        let base = self
            .env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or(IMDS_DEFAULT)
            .trim_end_matches('/')
            .to_owned();
        let token = self
            .imds_call(Method::PUT, &format!("{base}/latest/api/token"), None)
            .await?;
        let token = token.trim().to_owned();
        let roles_url = format!("{base}/latest/meta-data/iam/security-credentials/");
        let roles = self
            .imds_call(Method::GET, &roles_url, Some(&token))
            .await?;
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or("no instance role")?
            .to_owned();
        if role.contains(['/', '?', '#', '%']) {
            return Err("bad instance role name".to_owned());
        }
        let body = self
            .imds_call(Method::GET, &format!("{roles_url}{role}"), Some(&token))
            .await?;
        parse_imds_credentials(&body)
    }

    async fn imds_call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
    ) -> Result<String, String> {
        let mut req = Request::builder().method(method).uri(url);
        req = match token {
            Some(t) => req.header("x-aws-ec2-metadata-token", t),
            None => req.header("x-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL),
        };
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let call = async {
            let resp = self
                .imds
                .request(req)
                .await
                .map_err(|e| format!("instance metadata: {e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("instance metadata: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("instance metadata answered {status}"));
            }
            String::from_utf8(body.to_vec()).map_err(|_| "instance metadata: not UTF-8".to_owned())
        };
        tokio::time::timeout(IMDS_TIMEOUT, call)
            .await
            .map_err(|_| "instance metadata timed out".to_owned())?
    }
}

fn parse_imds_credentials(body: &str) -> Result<AwsCredentials, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Imds {
        code: Option<String>,
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let v: Imds = serde_json::from_str(body)
        .map_err(|_| "instance metadata: bad credentials document".to_owned())?;
    if v.code.as_deref().is_some_and(|c| c != "Success") {
        return Err("instance metadata: credentials not available".to_owned());
    }
    let expires = match v.expiration {
        Some(e) => Some(parse_rfc3339_utc(&e).ok_or("instance metadata: bad Expiration")?),
        None => None,
    };
    Ok(AwsCredentials {
        access_key_id: v.access_key_id,
        secret_access_key: Secret::new(v.secret_access_key),
        session_token: v.token.map(Secret::new),
        expires,
        source: "imds".to_owned(),
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC (`Z` or `+00:00`, any case, fractional
/// seconds allowed), as IMDS writes it.
pub(super) fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    // humantime takes only the upper-case `T` and `Z`; RFC 3339 allows both cases.
    humantime::parse_rfc3339(&s.to_ascii_uppercase()).ok()
}

/// The keys of `[section]` in an INI-style AWS file (lowercased keys).
fn ini_section(text: &str, section: &str) -> Option<HashMap<String, String>> {
    let mut found = None;
    let mut current: Option<HashMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some(done) = current.take() {
                found = Some(done);
            }
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            if name == section {
                current = Some(HashMap::new());
            }
            continue;
        }
        if let (Some(map), Some((k, v))) = (current.as_mut(), line.split_once('=')) {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    current.or(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339_utc("2024-02-29T12:34:56Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_210_096
        );
        assert!(parse_rfc3339_utc("1970-01-01T00:00:00.123Z").is_some());
        for bad in [
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "x",
            "2024-01-01T00:00:00+02:00",
        ] {
            assert!(parse_rfc3339_utc(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn environment_first() {
        let chain = CredentialChain::new(
            AwsEnv::from_pairs([
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_SESSION_TOKEN", "tok"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]),
            "",
        );
        let c = chain.credentials().await.unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("AKIDENV", "env")
        );
        assert_eq!(c.session_token.unwrap().expose(), "tok");
        assert!(!format!("{:?}", chain.credentials().await.unwrap()).contains("envsecret"));
    }

    #[tokio::test]
    async fn profiles_from_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[work]\n# comment\naws_access_key_id=AKIDWORK\naws_secret_access_key=s2\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile cfgonly]\naws_access_key_id = AKIDCFG\naws_secret_access_key = s3\n[profile role]\nrole_arn = arn:aws:iam::1:role/x\n",
        )
        .unwrap();
        let env = |profile: &'static str| {
            AwsEnv::from_pairs([
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_PROFILE", profile),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ])
        };
        let id = |chain: CredentialChain| async move {
            chain
                .credentials()
                .await
                .map(|c| (c.access_key_id, c.source))
        };
        assert_eq!(
            id(CredentialChain::new(env(""), "")).await.unwrap().0,
            "AKIDDEFAULT"
        );
        assert_eq!(
            id(CredentialChain::new(env("work"), "")).await.unwrap(),
            ("AKIDWORK".to_owned(), "profile:work".to_owned())
        );
        assert_eq!(
            id(CredentialChain::new(env("work"), "cfgonly"))
                .await
                .unwrap()
                .0,
            "AKIDCFG"
        );
        let err = id(CredentialChain::new(env("role"), ""))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
        let err = id(CredentialChain::new(env("missing"), ""))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no AWS credentials"), "{err}");
    }

    /// A loopback IMDSv2 that hands out credentials expiring in `ttl`.
    async fn fake_imds(ttl: Duration) -> (String, Arc<AtomicUsize>) {
        use axum::routing::{get, put};
        let fetches = Arc::new(AtomicUsize::new(0));
        let count = fetches.clone();
        let app = axum::Router::new()
            .route("/latest/api/token", put(|| async { "tok-123" }))
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(|h: axum::http::HeaderMap| async move {
                    if h.get("x-aws-ec2-metadata-token")
                        .is_some_and(|v| v == "tok-123")
                    {
                        Ok("agentbox-role\n")
                    } else {
                        Err(axum::http::StatusCode::UNAUTHORIZED)
                    }
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/agentbox-role",
                get(move || {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let exp = SystemTime::now() + ttl;
                        let expiration = humantime::format_rfc3339_seconds(exp).to_string();
                        axum::Json(serde_json::json!({
                            "Code": "Success", "AccessKeyId": format!("ASIAIMDS{n}"),
                            "SecretAccessKey": "imds-secret", "Token": "imds-token",
                            "Expiration": expiration,
                        }))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (format!("http://{addr}"), fetches)
    }

    #[tokio::test]
    async fn instance_metadata_is_refreshed_before_expiry() {
        let (url, fetches) = fake_imds(Duration::from_secs(3600)).await;
        let chain = CredentialChain::new(
            AwsEnv::from_pairs([
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", url.as_str()),
                ("HOME", "/nonexistent"),
            ]),
            "",
        );
        let c = chain.credentials().await.unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("ASIAIMDS0", "imds")
        );
        chain.credentials().await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "an hour left: cached");

        // Credentials inside the refresh window are fetched again at use.
        let (url, fetches) = fake_imds(Duration::from_secs(120)).await;
        let chain = CredentialChain::new(
            AwsEnv::from_pairs([
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", url.as_str()),
                ("HOME", "/nonexistent"),
            ]),
            "",
        );
        assert_eq!(
            chain.credentials().await.unwrap().access_key_id,
            "ASIAIMDS0"
        );
        assert_eq!(
            chain.credentials().await.unwrap().access_key_id,
            "ASIAIMDS1"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
