//! The forward-proxy route: CONNECT tunnels and absolute-form plain HTTP,
//! only to allowed names and ports, only to checked addresses.
//!
//! Order, for both: decide on the name and port; resolve once; check every
//! address; connect to a checked address (never resolving again). A tunnel
//! is answered only once the upstream connection stands, and refused if
//! the client sent data before that answer.

use super::body::{Guarded, Verdict};
use super::decision::{Decision, Route};
use super::io::has_pending_input;
use super::policy::{Destination, Policy};
use super::refusal::Refusal;
use super::{ContainerProxy, Gateway, ProxyBody};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tunnel copy buffers: larger than tokio's 8 KiB default, for throughput.
const TUNNEL_BUF: usize = 64 * 1024;
const CONNECT_OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

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

/// Why a destination was allowed, for the audit event.
fn rule(dest: &Destination) -> &'static str {
    match dest {
        Destination::Name(_) => "allowed_domain",
        Destination::Ip(_) => "allowed_ip",
    }
}

/// Resolves (once) and checks, then connects to a checked address.
async fn connect_checked(
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

/// Serves a CONNECT: `early` is true when bytes followed the head in the
/// first read.
pub(super) async fn tunnel<S>(
    proxy: &Gateway,
    c: &ContainerProxy,
    client: &mut S,
    early: bool,
    method: &str,
    host: &str,
    port: u16,
) -> Decision
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opened = async {
        if early {
            return Err(Refusal::EarlyData);
        }
        let policy = proxy.policy(&c.ctx.tenant_id);
        let dest = policy.check_target(host, port)?;
        let upstream = connect_checked(proxy, &policy, &dest, port).await?;
        if has_pending_input(client) {
            return Err(Refusal::EarlyData);
        }
        Ok((dest, upstream))
    }
    .await;
    let (dest, mut upstream) = match opened {
        Ok(v) => v,
        Err(why) => {
            let _ = client.write_all(&why.raw_response()).await;
            let _ = client.shutdown().await;
            return Decision::blocked(Route::Tunnel, method, host, port, why);
        }
    };
    let mut decision = Decision::allowed(Route::Tunnel, method, &dest.host(), port, rule(&dest));
    decision.status = Some(200);
    if client.write_all(CONNECT_OK).await.is_ok() {
        let _ =
            tokio::io::copy_bidirectional_with_sizes(client, &mut upstream, TUNNEL_BUF, TUNNEL_BUF)
                .await;
    }
    decision
}

/// Forwards one absolute-form plain-HTTP request.
pub(super) async fn http(
    proxy: &Gateway,
    c: &ContainerProxy,
    req: Request<Incoming>,
    host: &str,
    port: u16,
    path_and_query: &str,
) -> (Response<ProxyBody>, Decision) {
    let method = req.method().as_str().to_owned();
    match forward_http(proxy, c, req, host, port, path_and_query).await {
        Ok((resp, dest)) => {
            let mut d = Decision::allowed(Route::Forward, &method, &dest.host(), port, rule(&dest));
            d.status = Some(resp.status().as_u16());
            (resp, d)
        }
        Err(why) => (
            super::refusal_response(why),
            Decision::blocked(Route::Forward, &method, host, port, why),
        ),
    }
}

async fn forward_http(
    proxy: &Gateway,
    c: &ContainerProxy,
    req: Request<Incoming>,
    host: &str,
    port: u16,
    path_and_query: &str,
) -> Result<(Response<ProxyBody>, Destination), Refusal> {
    let policy = proxy.policy(&c.ctx.tenant_id);
    let dest = policy.check_target(host, port)?;
    let stream = connect_checked(proxy, &policy, &dest, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Refusal::ConnectFailed)?;
    tokio::spawn(conn);

    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query
        .parse::<Uri>()
        .map_err(|_| Refusal::Malformed)?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The destination decided above is the only host this request goes to;
    // the Host header follows it, whatever the client wrote there.
    let authority = match (&dest, port) {
        (Destination::Ip(std::net::IpAddr::V6(v6)), 80) => format!("[{v6}]"),
        (Destination::Ip(std::net::IpAddr::V6(v6)), p) => format!("[{v6}]:{p}"),
        (d, 80) => d.host(),
        (d, p) => format!("{}:{p}", d.host()),
    };
    parts.headers.insert(
        HOST,
        HeaderValue::from_str(&authority).map_err(|_| Refusal::Malformed)?,
    );
    // Streamed with no size limit (an upload may be large), but under the
    // same deadline and idle timeout as a gateway body.
    let verdict = Verdict::default();
    let body = Guarded::new(body, proxy.forward_limits, verdict.clone());
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|_| verdict.get().unwrap_or(Refusal::ConnectFailed))?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok((Response::from_parts(parts, body.boxed()), dest))
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

/// A body from static text, for answers the proxy writes itself.
pub(super) fn text_body(text: String) -> ProxyBody {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

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
