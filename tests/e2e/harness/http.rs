//! The tenant API as a client calls it: post a message and read its whole
//! SSE stream, in the foreground or in the background.

use super::daemon::Daemon;
use serde_json::Value;
use std::time::Duration;

/// An HTTP client for the tests. reqwest is the daemon's (object_store's)
/// build, with rustls but no crypto provider: ring is installed process-wide
/// first, as the daemon does.
pub fn client() -> reqwest::Client {
    // Err only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Posts a message and reads the whole SSE stream (bounded by `timeout`).
pub async fn post_message(
    daemon: &Daemon,
    token: Option<&str>,
    conversation: &str,
    body: Value,
) -> (u16, String) {
    let client = client();
    let mut req = client
        .post(daemon.url(&format!("/v1/conversations/{conversation}/messages")))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = tokio::time::timeout(Duration::from_secs(180), async {
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
    .await
    .expect("the run did not finish within 180 s");
    resp
}

/// `GET /readyz`: its status and, on a refusal, the error code.
pub async fn readiness(daemon: &Daemon) -> (u16, Option<String>) {
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client().get(daemon.url("/readyz")).send(),
    )
    .await
    .expect("readyz in time")
    .expect("readyz");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

/// Starts a run in the background and returns its whole SSE body when it
/// ends (for tests that act while a run is in progress).
pub fn spawn_run(
    d: &Daemon,
    token: &'static str,
    conversation: &str,
    prompt: &str,
) -> tokio::task::JoinHandle<String> {
    let url = d.url(&format!("/v1/conversations/{conversation}/messages"));
    let body = serde_json::json!({ "prompt": prompt });
    tokio::spawn(async move {
        client()
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("body")
    })
}
