//! TLS interception for a CONNECT to a host whose rules must see inside
//! (methods, paths or a credential): the proxy answers the CONNECT,
//! terminates the container's TLS with a certificate from the local CA
//! (ALPN http/1.1 only), parses each request with hyper, judges it by the
//! host's rules, adds the brokered credential, and forwards it over its
//! own verified TLS connection to the checked address.
//!
//! Every request on the connection is judged on its own (keep-alive is
//! fine: hyper frames each one, and what goes upstream is hyper's own
//! serialisation of the request that was judged, never the client's
//! bytes). The `Host` (or absolute-form authority) and the TLS SNI must
//! name the CONNECT target.

use super::body::{Guarded, Verdict};
use super::brokered;
use super::decision::{Decision, Route};
use super::policy::{Destination, Policy};
use super::reach::{self, strip_hop_by_hop};
use super::refusal::Refusal;
use super::{ContainerProxy, Gateway, ProxyBody};
use egress_policy::hostmatch::normalize;
use egress_policy::rules::{decide, split_target, Rule};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The container's TLS handshake, and each request head after it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The upstream's answer must begin within this long.
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(300);

type Upstream = SendRequest<Guarded<Incoming>>;

/// Where one intercepted connection goes. Its requests are judged by the
/// rules as they stand at each request (a SIGHUP applies at once).
struct Target {
    dest: Destination,
    port: u16,
}

/// How the rules now treat requests to a target.
enum Judge {
    /// The host's rules, in order.
    Rules(Vec<Rule>),
    /// Allowed as a whole (the host is now only domain-allowed).
    Whole(String),
}

/// The target's treatment under the container's current policy, with
/// that policy (for connecting again).
fn current(
    proxy: &Gateway,
    c: &ContainerProxy,
    t: &Target,
) -> Result<(Arc<Policy>, Judge), Refusal> {
    let policy = proxy.policy_for(&c.ctx);
    let dest = policy.check_target(&t.dest.host(), t.port)?;
    let judge = match policy.access(&dest) {
        egress_policy::Access::Inspect(rules) => Judge::Rules(rules.into_iter().cloned().collect()),
        egress_policy::Access::Blind(rule) => Judge::Whole(rule.to_owned()),
    };
    Ok((policy, judge))
}

/// Serves an intercepted CONNECT whose verified upstream connection (to
/// a checked address, see [`handshake`]) already stands. Returns the decision for the
/// CONNECT itself; each request inside gets its own.
pub(super) async fn serve<S>(
    proxy: &Arc<Gateway>,
    c: &Arc<ContainerProxy>,
    client: &mut S,
    dest: Destination,
    port: u16,
    names: String,
    upstream: Upstream,
) -> Decision
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let host = dest.host();
    let refused = |why: Refusal| {
        Decision::blocked(Route::Tunnel, "CONNECT", &host, port, why).with_rule(names.clone())
    };
    let Some(ca) = proxy.ca() else {
        let why = Refusal::InterceptFailed;
        let _ = client.write_all(&why.raw_response()).await;
        return refused(why);
    };
    let server_cfg = match ca.server_config(&host) {
        Ok(cfg) => cfg,
        Err(error) => {
            tracing::warn!(message = "Cannot issue a certificate.", %error, host = %host);
            let why = Refusal::InterceptFailed;
            let _ = client.write_all(&why.raw_response()).await;
            return refused(why);
        }
    };
    if client.write_all(reach::CONNECT_OK).await.is_err() {
        return refused(Refusal::Malformed);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let mut tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(tls)) => tls,
        _ => return refused(Refusal::InterceptFailed),
    };
    // A client that asks for another name than its CONNECT named is
    // trying to reach past the rules (or is confused): refused either way.
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    if sni.is_some_and(|s| !same_host(&s, &dest)) {
        let _ = tls.write_all(&Refusal::HostMismatch.raw_response()).await;
        let _ = tls.shutdown().await;
        return refused(Refusal::HostMismatch);
    }
    let target = Arc::new(Target { dest, port });
    let upstream = Arc::new(Mutex::new(Some(upstream)));
    let svc = {
        let (proxy, c, target, upstream) =
            (proxy.clone(), c.clone(), target.clone(), upstream.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (proxy, c, target, upstream) =
                (proxy.clone(), c.clone(), target.clone(), upstream.clone());
            async move {
                let started = Instant::now();
                let (resp, decision) = one_request(&proxy, &c, &target, &upstream, req).await;
                decision.emit(&c.ctx, &c.audit_gate, (0, 0), started);
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc);
    // A reload that no longer allows the host at all closes the connection.
    let host = target.dest.host();
    let revoked = reach::revoked(proxy, c, &host, port);
    tokio::select! {
        _ = served => {}
        () = revoked => {
            return refused(Refusal::ClosedByReload);
        }
    }
    let mut d = Decision::allowed(
        Route::Tunnel,
        "CONNECT",
        &target.dest.host(),
        port,
        "intercepted",
    );
    d.status = Some(200);
    d.with_rule(names)
}

fn rules_names(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// True when `host` (from SNI or a Host header, without port) names the
/// destination.
fn same_host(host: &str, dest: &Destination) -> bool {
    match dest {
        Destination::Name(n) => normalize(host).is_ok_and(|h| &h == n),
        Destination::Ip(ip) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            bare.parse::<std::net::IpAddr>().is_ok_and(|h| h == *ip)
        }
    }
}

/// Judges, rewrites and forwards one request from the container.
async fn one_request(
    proxy: &Gateway,
    c: &ContainerProxy,
    target: &Target,
    upstream: &Mutex<Option<Upstream>>,
    req: Request<Incoming>,
) -> (Response<ProxyBody>, Decision) {
    let method = req.method().as_str().to_owned();
    let host = target.dest.host();
    let port = target.port;
    let refuse = |why: Refusal, names: Option<String>| {
        let d = Decision::blocked(Route::Intercept, &method, &host, port, why);
        (
            super::refusal_response(why),
            match names {
                Some(n) => d.with_rule(n),
                None => d,
            },
        )
    };
    let (policy, judged) = match current(proxy, c, target) {
        Ok(v) => v,
        Err(why) => return refuse(why, None),
    };
    let (names, brokered_host, rules) = match &judged {
        Judge::Rules(rules) => (
            rules_names(rules),
            rules.iter().any(|r| r.credential.is_some()),
            Some(rules),
        ),
        Judge::Whole(rule) => (rule.clone(), false, None),
    };
    let refuse = |why: Refusal| refuse(why, Some(names.clone()));
    match judge(target, rules.map(Vec::as_slice), &req) {
        Err(why) => refuse(why),
        Ok((rule, path_and_query)) => {
            let rule_name = rule.map_or_else(|| names.clone(), |r| r.name.clone());
            let credential = match rule.and_then(|r| r.credential.as_ref()) {
                None => None,
                Some(name) => match proxy.brokered(name) {
                    Some(b) => Some(b),
                    None => return refuse(Refusal::BrokeredCredentialUnavailable),
                },
            };
            let (mut parts, body) = req.into_parts();
            parts.version = Version::HTTP_11;
            parts.uri = match path_and_query.parse::<Uri>() {
                Ok(u) => u,
                Err(_) => return refuse(Refusal::Malformed),
            };
            strip_hop_by_hop(&mut parts.headers);
            if brokered_host {
                brokered::strip(&mut parts.headers);
            }
            if let Some(b) = &credential {
                if b.apply(&mut parts.headers).is_err() {
                    return refuse(Refusal::BrokeredCredentialUnavailable);
                }
            }
            let authority = match (&target.dest, port) {
                (Destination::Ip(std::net::IpAddr::V6(v6)), 443) => format!("[{v6}]"),
                (Destination::Ip(std::net::IpAddr::V6(v6)), p) => format!("[{v6}]:{p}"),
                (d, 443) => d.host(),
                (d, p) => format!("{}:{p}", d.host()),
            };
            match HeaderValue::from_str(&authority) {
                Ok(v) => parts.headers.insert(HOST, v),
                Err(_) => return refuse(Refusal::Malformed),
            };
            let verdict = Verdict::default();
            let body = Guarded::new(body, proxy.forward_limits, verdict.clone());
            let sent = send(
                proxy,
                &policy,
                target,
                upstream,
                Request::from_parts(parts, body),
            )
            .await;
            match sent {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let mut d =
                        Decision::allowed(Route::Intercept, &method, &host, port, "egress_rule")
                            .with_rule(rule_name);
                    d.status = Some(parts.status.as_u16());
                    d.credential = credential.map(|b| b.name().to_owned());
                    (Response::from_parts(parts, body.boxed()), d)
                }
                Err(why) => refuse(verdict.get().unwrap_or(why)),
            }
        }
    }
}

/// The rule that allows a request (none when the host is allowed whole),
/// and the normalised target to send.
fn judge<'r>(
    target: &Target,
    rules: Option<&'r [Rule]>,
    req: &Request<Incoming>,
) -> Result<(Option<&'r Rule>, String), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::RuleMethod);
    }
    // The request may name its host in absolute form or in `Host`; either
    // must be the CONNECT target, so the rules judged are that host's.
    let named = match req.uri().authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => req
            .headers()
            .get(HOST)
            .map(|h| {
                h.to_str()
                    .map(str::to_owned)
                    .map_err(|_| Refusal::HostMismatch)
            })
            .transpose()?,
    };
    if let Some(authority) = named {
        let (h, p) = split_authority(&authority).ok_or(Refusal::HostMismatch)?;
        if !same_host(h, &target.dest) || p.is_some_and(|p| p != target.port) {
            return Err(Refusal::HostMismatch);
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let (path, query) = split_target(pq).map_err(|_| Refusal::PathAmbiguous)?;
    let rule = match rules {
        Some(rules) => {
            let rules: Vec<&Rule> = rules.iter().collect();
            Some(decide(&rules, req.method().as_str(), pq)?)
        }
        None => None,
    };
    Ok((rule, format!("{path}{query}")))
}

/// `host[:port]` or `[v6][:port]`; `None` when malformed.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        return match tail.strip_prefix(':') {
            Some(p) => Some((h, Some(p.parse().ok()?))),
            None if tail.is_empty() => Some((h, None)),
            None => None,
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((a, None)),
    }
}

/// Sends on the connection's upstream, opening it (again) when it is not
/// open or was closed by the upstream.
async fn send(
    proxy: &Gateway,
    policy: &Policy,
    target: &Target,
    upstream: &Mutex<Option<Upstream>>,
    req: Request<Guarded<Incoming>>,
) -> Result<Response<Incoming>, Refusal> {
    let mut slot = upstream.lock().await;
    let reuse = slot.as_ref().is_some_and(|s| !s.is_closed());
    if !reuse {
        *slot = Some(connect(proxy, policy, target).await?);
    }
    let Some(sender) = slot.as_mut() else {
        return Err(Refusal::ConnectFailed);
    };
    if sender.ready().await.is_err() {
        *slot = Some(connect(proxy, policy, target).await?);
    }
    let Some(sender) = slot.as_mut() else {
        return Err(Refusal::ConnectFailed);
    };
    match tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, sender.send_request(req)).await {
        Ok(Ok(resp)) => {
            // An upstream that closes after this answer gets a new
            // connection for the next request, not a write into a closing
            // one (which would fail the request).
            let closing = resp.version() < Version::HTTP_11
                || resp
                    .headers()
                    .get(hyper::header::CONNECTION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
            if closing {
                *slot = None;
            }
            Ok(resp)
        }
        Ok(Err(_)) => Err(Refusal::UpstreamFailed),
        Err(_) => Err(Refusal::UpstreamTimeout),
    }
}

/// A verified TLS connection to a checked address of the destination.
async fn connect(proxy: &Gateway, policy: &Policy, target: &Target) -> Result<Upstream, Refusal> {
    let tcp = reach::connect_checked(proxy, policy, &target.dest, target.port).await?;
    handshake(proxy, &target.dest, tcp).await
}

/// The proxy's own TLS to the destination: system roots plus
/// `egress.extra_ca_file`, the name checked, ALPN http/1.1.
pub(super) async fn handshake(
    proxy: &Gateway,
    dest: &Destination,
    tcp: TcpStream,
) -> Result<Upstream, Refusal> {
    let name = match dest {
        Destination::Name(n) => {
            ServerName::try_from(n.as_str().to_owned()).map_err(|_| Refusal::Malformed)?
        }
        Destination::Ip(ip) => ServerName::IpAddress((*ip).into()),
    };
    let connector = tokio_rustls::TlsConnector::from(proxy.egress_tls.clone());
    let tls = tokio::time::timeout(proxy.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Refusal::ConnectFailed)?
        .map_err(|_| Refusal::UpstreamTls)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|_| Refusal::ConnectFailed)?;
    tokio::spawn(conn);
    Ok(sender)
}
