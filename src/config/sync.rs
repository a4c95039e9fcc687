//! Configuration of workspace sync: where and how (`[storage]`) and what
//! may be synced (`[sync]`).

use super::{invalid, ConfigError};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `file:///dir` or `s3://bucket[/prefix]`.
    pub url: String,
    /// S3 endpoint for MinIO and other S3 servers; empty means AWS (or
    /// `AWS_ENDPOINT` from the environment).
    pub endpoint: String,
    /// S3 region; empty means `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which MinIO needs.
    pub path_style: bool,
    /// Allows a plain-HTTP endpoint (loopback MinIO, test servers).
    pub allow_http: bool,
    /// Quiet time after a file-changing tool result before the checkpoint
    /// sync starts; later tool results push the start back.
    pub debounce_ms: u64,
    /// Files at or above this size travel as multipart uploads.
    pub multipart_threshold_mb: u64,
    /// Uploads and downloads in flight at once, per sync.
    pub transfer_concurrency: usize,
    /// How long the `result` event may wait for the end-of-run sync.
    pub final_sync_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/lib/agentbox/objects".to_owned(),
            endpoint: String::new(),
            region: String::new(),
            path_style: false,
            allow_http: false,
            debounce_ms: 2000,
            multipart_threshold_mb: 16,
            transfer_concurrency: 16,
            final_sync_timeout_secs: 30,
        }
    }
}

/// S3 refuses multipart parts below 5 MiB (except the last one).
pub(super) const MIN_MULTIPART_MB: u64 = 5;

impl StorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dir) = self.url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(invalid("storage.url", "file:// needs an absolute path"));
            }
        } else if let Some(rest) = self.url.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or("");
            if bucket.is_empty() {
                return Err(invalid("storage.url", "s3:// needs a bucket name"));
            }
            if rest.split('/').skip(1).any(|c| c == "." || c == "..") {
                return Err(invalid(
                    "storage.url",
                    "the prefix must not contain . or ..",
                ));
            }
        } else {
            return Err(invalid("storage.url", "must start with file:// or s3://"));
        }
        let http = self.endpoint.starts_with("http://");
        if !(self.endpoint.is_empty() || http || self.endpoint.starts_with("https://")) {
            return Err(invalid("storage.endpoint", "must be an http(s):// URL"));
        }
        if http && !self.allow_http {
            return Err(invalid(
                "storage.endpoint",
                "plain http needs storage.allow_http = true",
            ));
        }
        if self.multipart_threshold_mb < MIN_MULTIPART_MB {
            return Err(invalid(
                "storage.multipart_threshold_mb",
                format!("must be at least {MIN_MULTIPART_MB} (the S3 minimum part size)"),
            ));
        }
        if !(1..=256).contains(&self.transfer_concurrency) {
            return Err(invalid(
                "storage.transfer_concurrency",
                "must be in 1..=256",
            ));
        }
        if self.final_sync_timeout_secs == 0 {
            return Err(invalid(
                "storage.final_sync_timeout_secs",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// What a sync may store (`[sync]`). A hostile agent can make a file
/// that costs no quota (`truncate -s 16T`: all holes) yet would take the
/// daemon hours to hash and the store terabytes to hold; these limits cap
/// what any workspace can cost the daemon and the store.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// A file whose apparent size (`st_size`) is above this is not synced.
    pub max_file_bytes: u64,
    /// The apparent sizes of all files one sync stores add up to at most
    /// this; files past it (in path order) are not synced.
    pub max_workspace_bytes: u64,
}

const GIB: u64 = 1024 * 1024 * 1024;

impl Default for SyncConfig {
    fn default() -> Self {
        // The default workspace quota (1 GiB) cannot hold a larger dense
        // file; a few times the quota leaves room for legitimately sparse
        // files while keeping one push's work bounded.
        Self {
            max_file_bytes: GIB,
            max_workspace_bytes: 4 * GIB,
        }
    }
}

/// S3's largest object: nothing above it could be stored anyway.
pub(super) const MAX_OBJECT_BYTES: u64 = 5 * 1024 * GIB;

impl SyncConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_OBJECT_BYTES).contains(&self.max_file_bytes) {
            return Err(invalid(
                "sync.max_file_bytes",
                format!("must be in 1..={MAX_OBJECT_BYTES} (5 TiB, the S3 object limit)"),
            ));
        }
        if self.max_workspace_bytes < self.max_file_bytes {
            return Err(invalid(
                "sync.max_workspace_bytes",
                "must be at least sync.max_file_bytes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut StorageConfig)) -> Result<(), ConfigError> {
        let mut c = StorageConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn urls_and_keys_are_checked() {
        assert!(check(|_| {}).is_ok());
        assert!(check(|c| c.url = "s3://bucket/some/prefix".into()).is_ok());
        for bad in ["s3://", "s3:///x", "file://rel", "gs://b", "s3://b/../x"] {
            let err = check(|c| c.url = bad.into()).unwrap_err().to_string();
            assert!(err.contains("storage.url"), "{bad}: {err}");
        }
        let err = check(|c| c.endpoint = "http://127.0.0.1:9000".into()).unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");
        assert!(check(|c| {
            c.endpoint = "http://127.0.0.1:9000".into();
            c.allow_http = true;
        })
        .is_ok());
        let err = check(|c| c.multipart_threshold_mb = 1).unwrap_err();
        assert!(err.to_string().contains("multipart_threshold_mb"), "{err}");
    }

    #[test]
    fn sync_limits_are_checked() {
        let ok = SyncConfig::default();
        assert!(ok.validate().is_ok());
        for (bad, key) in [
            (
                SyncConfig {
                    max_file_bytes: 0,
                    ..ok
                },
                "sync.max_file_bytes",
            ),
            (
                SyncConfig {
                    max_file_bytes: MAX_OBJECT_BYTES + 1,
                    max_workspace_bytes: u64::MAX,
                },
                "sync.max_file_bytes",
            ),
            (
                SyncConfig {
                    max_workspace_bytes: ok.max_file_bytes - 1,
                    ..ok
                },
                "sync.max_workspace_bytes",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad:?}: {err}");
        }
    }
}
