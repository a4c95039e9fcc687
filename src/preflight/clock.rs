//! Clock skew. SigV4 signatures are refused by AWS when the signer's clock
//! is more than five minutes off, so the host clock is compared with the
//! `Date` header of an HTTPS endpoint the operator configured, trusted as
//! the gateway trusts the upstream (system roots plus
//! `model.extra_ca_file`).

use super::Check;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, SystemTime};

const NAME: &str = "clock";
/// Skew that already deserves a look (NTP keeps hosts within milliseconds).
const WARN_SKEW: Duration = Duration::from_secs(30);
/// SigV4's tolerance: past it, every signed request fails.
const FAIL_SKEW: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Compares the host clock with `url`'s `Date` header; without an HTTPS
/// endpoint it warns that the clock cannot be checked. `extra_ca_file` is
/// `model.extra_ca_file` (empty: the system roots alone).
pub(crate) async fn skew(url: Option<&str>, extra_ca_file: &str) -> Check {
    let Some(url) = url.filter(|u| u.starts_with("https://")) else {
        return Check::warn(
            NAME,
            "cannot be checked: no HTTPS endpoint configured",
            "run doctor with --clock-url https://<an endpoint you reach>, and keep NTP \
             (systemd-timesyncd or chrony) running",
        );
    };
    // A file the daemon would refuse to start with fails here too.
    let tls = match crate::upstream_tls::client_config(extra_ca_file) {
        Ok(tls) => tls,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot be checked: {e}"),
                "fix model.extra_ca_file: the daemon does not start with it either",
            )
        }
    };
    match fetch_date(url, tls).await {
        Ok(date) => assess(url, &date, SystemTime::now()),
        Err(e) => Check::warn(
            NAME,
            format!("cannot be checked: {url} did not answer ({e})"),
            "pass a reachable HTTPS endpoint with --clock-url, and keep NTP running",
        ),
    }
}

async fn fetch_date(url: &str, tls: rustls::ClientConfig) -> Result<String, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = hyper::Request::head(url)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    resp.headers()
        .get(hyper::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "no Date header".to_owned())
}

/// Pure: the check for one `Date` header seen at `now`.
pub(crate) fn assess(url: &str, date: &str, now: SystemTime) -> Check {
    let Ok(theirs) = httpdate::parse_http_date(date) else {
        return Check::warn(
            NAME,
            format!("cannot be checked: {url} sent an unreadable Date ({date})"),
            "pass another endpoint with --clock-url",
        );
    };
    let (skew, sign) = match now.duration_since(theirs) {
        Ok(d) => (d, "ahead of"),
        Err(e) => (e.duration(), "behind"),
    };
    let detail = format!("host clock is {}s {sign} {url}", skew.as_secs());
    let fix = "enable NTP: timedatectl set-ntp true (or run chrony)";
    if skew > FAIL_SKEW {
        Check::fail(NAME, format!("{detail}: SigV4 requests will fail"), fix)
    } else if skew > WARN_SKEW {
        Check::warn(NAME, detail, fix)
    } else {
        Check::pass(NAME, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Level;

    #[test]
    fn skew_levels() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = |offset: i64| {
            let t = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs((-offset) as u64)
            };
            httpdate::fmt_http_date(t)
        };
        assert_eq!(assess("u", &date(2), now).level, Level::Pass);
        assert_eq!(assess("u", &date(-90), now).level, Level::Warn);
        let far = assess("u", &date(600), now);
        assert_eq!(far.level, Level::Fail);
        assert!(far.detail.contains("behind"), "{far:?}");
        assert_eq!(assess("u", "garbage", now).level, Level::Warn);
    }

    #[tokio::test]
    async fn plain_http_cannot_be_checked() {
        let c = skew(Some("http://127.0.0.1:1"), "").await;
        assert_eq!(c.level, Level::Warn);
        assert!(c.detail.contains("cannot be checked"));
    }

    /// An upstream whose certificate only `model.extra_ca_file` vouches
    /// for (the mock model's test CA): checked with the file, not without.
    #[tokio::test]
    async fn the_upstream_is_trusted_through_model_extra_ca_file() {
        let mock = mock_model::MockModel::start_tls("127.0.0.1:0")
            .await
            .unwrap();
        let url = mock.url();
        let ca = mock.ca_file().unwrap().to_str().unwrap().to_owned();
        let without = skew(Some(&url), "").await;
        assert_eq!(without.level, Level::Warn, "{without:?}");
        assert!(without.detail.contains("did not answer"), "{without:?}");
        let with = skew(Some(&url), &ca).await;
        assert_eq!(with.level, Level::Pass, "{with:?}");
        let bad = skew(Some(&url), "/nonexistent/ca.pem").await;
        assert_eq!(bad.level, Level::Fail, "{bad:?}");
        assert!(bad.detail.contains("/nonexistent/ca.pem"), "{bad:?}");
    }
}
