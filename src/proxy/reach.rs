//! What the proxy's two ways to a remote host share, the blind tunnel
//! (`forward`) and TLS interception (`intercept`): the checked connect,
//! the CONNECT answer, hop-by-hop headers, and the close of a connection
//! a reload no longer allows. Kept apart so that neither imports the other.

use super::policy::{Destination, Policy};
use super::refusal::Refusal;
use super::{ContainerProxy, Gateway};
use hyper::header::{HeaderMap, HeaderName};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;

pub(super) const CONNECT_OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Headers that describe one hop; never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Resolves (once) and checks, then connects to a checked address.
pub(super) async fn connect_checked(
    proxy: &Gateway,
    policy: &Policy,
    dest: &Destination,
    port: u16,
) -> Result<TcpStream, Refusal> {
    let ips: Vec<IpAddr> = match dest {
        Destination::Ip(ip) => vec![*ip],
        Destination::Name(name) => proxy
            .resolver
            .resolve(name.as_str())
            .await
            .map_err(|_| Refusal::DnsFailed)?,
    };
    policy.check_addrs(&ips)?;
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        if let Ok(Ok(s)) =
            tokio::time::timeout(proxy.connect_timeout, TcpStream::connect(addr)).await
        {
            let _ = s.set_nodelay(true);
            return Ok(s);
        }
    }
    Err(Refusal::ConnectFailed)
}

/// Resolves once a reload leaves the container's policy refusing
/// `host:port` outright.
pub(super) async fn revoked(proxy: &Gateway, c: &ContainerProxy, host: &str, port: u16) {
    closed_when(proxy, c, |p: &Policy| p.check_target(host, port).is_ok()).await
}

/// Resolves once a reload (or a run's narrowing, read at the next reload)
/// makes `still` false for the container's policy; never otherwise.
pub(super) async fn closed_when(
    proxy: &Gateway,
    c: &ContainerProxy,
    still: impl Fn(&Policy) -> bool,
) {
    let mut reloads = proxy.reloads.subscribe();
    while reloads.changed().await.is_ok() {
        if !still(&proxy.policy_for(&c.ctx)) {
            return;
        }
    }
    std::future::pending().await
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eA=="),
        );
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }
}
