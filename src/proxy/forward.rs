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
use super::reach::{closed_when, connect_checked, strip_hop_by_hop, CONNECT_OK};
use super::refusal::Refusal;
use super::{ContainerProxy, Gateway, ProxyBody};
use bytes::Bytes;
use egress_policy::Access;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Tunnel copy buffers: larger than tokio's 8 KiB default, for throughput.
const TUNNEL_BUF: usize = 64 * 1024;

/// Serves a CONNECT: `early` is true when bytes followed the head in the
/// first read. A host whose rules must see inside is intercepted; any
/// other gets a blind tunnel.
pub(super) async fn tunnel<S>(
    proxy: &Arc<Gateway>,
    c: &Arc<ContainerProxy>,
    client: &mut S,
    early: bool,
    method: &str,
    host: &str,
    port: u16,
) -> Decision
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opened = async {
        if early {
            return Err((Refusal::EarlyData, None));
        }
        let policy = proxy.policy_for(&c.ctx);
        let dest = policy
            .check_target(host, port)
            .map_err(|d| (d.into(), None))?;
        let (rule, inspect) = match policy.access(&dest) {
            Access::Blind(rule) => (rule.to_owned(), false),
            Access::Inspect(rules) => (
                rules
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                true,
            ),
        };
        let upstream = connect_checked(proxy, &policy, &dest, port)
            .await
            .map_err(|why| (why, Some(rule.clone())))?;
        if has_pending_input(client) {
            return Err((Refusal::EarlyData, Some(rule)));
        }
        Ok((dest, upstream, rule, inspect))
    }
    .await;
    let (dest, mut upstream, rule, inspect) = match opened {
        Ok(v) => v,
        Err((why, rule)) => {
            let _ = client.write_all(&why.raw_response()).await;
            let _ = client.shutdown().await;
            let d = Decision::blocked(Route::Tunnel, method, host, port, why);
            return match rule {
                Some(r) => d.with_rule(r),
                None => d,
            };
        }
    };
    if inspect {
        // The upstream's certificate is checked before the container is
        // told the tunnel stands: an invalid one refuses the CONNECT.
        return match super::intercept::handshake(proxy, &dest, upstream).await {
            Ok(sender) => super::intercept::serve(proxy, c, client, dest, port, rule, sender).await,
            Err(why) => {
                let _ = client.write_all(&why.raw_response()).await;
                let _ = client.shutdown().await;
                Decision::blocked(Route::Tunnel, method, host, port, why).with_rule(rule)
            }
        };
    }
    let mut decision =
        Decision::allowed(Route::Tunnel, method, &dest.host(), port, "egress_rule").with_rule(rule);
    decision.outcome = Ok(legacy_reason(&decision));
    decision.status = Some(200);
    if client.write_all(CONNECT_OK).await.is_ok() {
        let copy =
            tokio::io::copy_bidirectional_with_sizes(client, &mut upstream, TUNNEL_BUF, TUNNEL_BUF);
        // A blind tunnel stays only while the rules would still open it
        // blind: a reload that refuses the host, or wants to see inside
        // it, closes the tunnel.
        let host = dest.host();
        let still_blind = |p: &Policy| {
            p.check_target(&host, port)
                .is_ok_and(|d| matches!(p.access(&d), Access::Blind(_)))
        };
        tokio::select! {
            _ = copy => {}
            () = closed_when(proxy, c, still_blind) => {
                let d = Decision::blocked(Route::Tunnel, method, &host, port, Refusal::ClosedByReload);
                return match decision.rule.take() {
                    Some(r) => d.with_rule(r),
                    None => d,
                };
            }
        }
    }
    decision
}

/// The audit reason of a blind decision: the allowlist's own names stay
/// what they were before rules existed; a domain-only rule is `egress_rule`.
fn legacy_reason(d: &Decision) -> &'static str {
    match d.rule.as_deref() {
        Some("allowed_domain") => "allowed_domain",
        Some("allowed_ip") => "allowed_ip",
        _ => "egress_rule",
    }
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
        Ok((resp, dest, rule)) => {
            let mut d =
                Decision::allowed(Route::Forward, &method, &dest.host(), port, "egress_rule")
                    .with_rule(rule);
            d.outcome = Ok(legacy_reason(&d));
            d.status = Some(resp.status().as_u16());
            (resp, d)
        }
        Err((why, rule)) => {
            let d = Decision::blocked(Route::Forward, &method, host, port, why);
            (
                super::refusal_response(why),
                match rule {
                    Some(r) => d.with_rule(r),
                    None => d,
                },
            )
        }
    }
}

async fn forward_http(
    proxy: &Gateway,
    c: &ContainerProxy,
    req: Request<Incoming>,
    host: &str,
    port: u16,
    path_and_query: &str,
) -> Result<(Response<ProxyBody>, Destination, String), (Refusal, Option<String>)> {
    let policy = proxy.policy_for(&c.ctx);
    let dest = policy
        .check_target(host, port)
        .map_err(|d| (d.into(), None))?;
    // Plain HTTP is visible as it is: a host's method and path rules
    // apply without interception. A brokered credential never goes out
    // in clear text.
    let (rule, path_and_query) = match policy.access(&dest) {
        Access::Blind(rule) => (rule.to_owned(), path_and_query.to_owned()),
        Access::Inspect(rules) => {
            let names = rules
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let method = req.method().as_str();
            let rule = egress_policy::rules::decide(&rules, method, path_and_query)
                .map_err(|d| (Refusal::from(d), Some(names.clone())))?;
            if rule.credential.is_some() {
                return Err((Refusal::CredentialNeedsTls, Some(rule.name.clone())));
            }
            let (path, query) = egress_policy::rules::split_target(path_and_query)
                .map_err(|_| (Refusal::PathAmbiguous, Some(names)))?;
            (rule.name.clone(), format!("{path}{query}"))
        }
    };
    let path_and_query = path_and_query.as_str();
    let r = rule.clone();
    let fail = move |why: Refusal| (why, Some(r.clone()));
    let stream = connect_checked(proxy, &policy, &dest, port)
        .await
        .map_err(&fail)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| fail(Refusal::ConnectFailed))?;
    tokio::spawn(conn);

    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query
        .parse::<Uri>()
        .map_err(|_| fail(Refusal::Malformed))?;
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
        HeaderValue::from_str(&authority).map_err(|_| fail(Refusal::Malformed))?,
    );
    // Streamed with no size limit (an upload may be large), but under the
    // same deadline and idle timeout as a gateway body.
    let verdict = Verdict::default();
    let body = Guarded::new(body, proxy.forward_limits, verdict.clone());
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|_| fail(verdict.get().unwrap_or(Refusal::ConnectFailed)))?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok((Response::from_parts(parts, body.boxed()), dest, rule))
}

/// A body from static text, for answers the proxy writes itself.
pub(super) fn text_body(text: String) -> ProxyBody {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}
