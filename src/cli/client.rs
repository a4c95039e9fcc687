//! A small HTTP client for the running daemon's admin listener.

use super::{AdminArgs, CliError};
use crate::config::Config;
use crate::secrets::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// A sweep may remove many containers; everything else answers at once.
const TIMEOUT: Duration = Duration::from_secs(120);

pub struct AdminClient {
    addr: String,
    token: Option<Secret>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// Finds the listener from `--admin`, else the config's
    /// `server.admin_listen` (an unspecified address means this host).
    pub fn new(cfg: &Config, args: &AdminArgs) -> Result<Self, CliError> {
        let addr = match &args.admin {
            Some(a) => a.clone(),
            None => {
                let mut a: SocketAddr = cfg.server.admin_listen;
                if a.port() == 0 {
                    return Err(CliError::Usage(
                        "server.admin_listen has port 0 (chosen at start); pass --admin ADDR \
                         from the daemon's \"Listening.\" log line"
                            .to_owned(),
                    ));
                }
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a.to_string()
            }
        };
        Ok(Self {
            addr,
            token: args.admin_token.clone().map(Secret::new),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, CliError> {
        self.call(Method::POST, path).await
    }

    /// Whether a daemon answers on the listener at all.
    pub async fn alive(&self) -> bool {
        let req = Request::get(format!("http://{}/healthz", self.addr)).body(Full::default());
        let Ok(req) = req else { return false };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    async fn call(&self, method: Method, path: &str) -> Result<Value, CliError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            // The admin token goes only to the admin listener it was given for.
            req = req.header("authorization", format!("Bearer {}", t.expose()));
        }
        let req = req
            .body(Full::default())
            .map_err(|e| CliError::Usage(format!("bad admin address {}: {e}", self.addr)))?;
        let unreachable = |reason: String| CliError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable("timed out".to_owned()))?
            .map_err(|e| unreachable(connect_reason(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::BadResponse(e.to_string()))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body)
            .map_err(|e| CliError::BadResponse(format!("{e} (HTTP {status})")))?;
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(CliError::Http {
                status: status.as_u16(),
                message,
            });
        }
        Ok(json)
    }
}

/// hyper's connect errors hide the OS reason in their source chain.
fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}
