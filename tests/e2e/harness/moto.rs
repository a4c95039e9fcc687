//! A moto S3 server on loopback for the sync tests: started (and installed
//! when missing) by `tests/setup/ensure-moto.sh`, never skipped.

use std::process::Command;
use std::sync::OnceLock;

/// Dummy credentials: moto accepts any, and with keys set the AWS
/// credential chain never falls back to the instance metadata service.
pub const ACCESS_KEY: &str = "agentbox-test";
pub const SECRET_KEY: &str = "agentbox-test-secret";
pub const REGION: &str = "us-east-1";

/// What [`endpoint`] puts into this process's environment.
pub const PROCESS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", REGION),
    ("AWS_DEFAULT_REGION", REGION),
];

/// The moto endpoint, e.g. `http://127.0.0.1:9560`; starts it once per
/// suite. Also puts the dummy credentials into this process's
/// environment, where object_store's `from_env` reads them.
pub fn endpoint() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let script = super::prereq::repo_root().join("tests/setup/ensure-moto.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for (key, value) in PROCESS_ENV {
            std::env::set_var(key, value);
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
    .clone()
}

/// Creates a bucket with a unique name and returns it.
pub async fn bucket(endpoint: &str) -> String {
    let name = format!("ab-{}", uuid::Uuid::new_v4().simple());
    let r = crate::harness::client()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .expect("create bucket");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    name
}

/// Environment for a daemon that syncs to `s3://{bucket}/{prefix}` on moto.
pub fn daemon_env(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("AGENTBOX_STORAGE_URL", format!("s3://{bucket}/{prefix}")),
        ("AGENTBOX_STORAGE_ENDPOINT", endpoint.to_owned()),
        ("AGENTBOX_STORAGE_ALLOW_HTTP", "true".to_owned()),
        ("AGENTBOX_STORAGE_PATH_STYLE", "true".to_owned()),
        ("AGENTBOX_STORAGE_REGION", REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
