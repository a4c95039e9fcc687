//! The first request head on a proxy connection: parsed with `httparse`,
//! checked for one unambiguous framing, and classified into a route.
//!
//! Pure functions only (no I/O), so the fuzz target under `tests/fuzz`
//! drives exactly what the proxy runs.

/// Why a request head is refused; the proxy answers each with its own
/// `Refusal` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request")]
    Malformed,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("ambiguous request framing")]
    AmbiguousFraming,
    #[error("protocol upgrades are not allowed")]
    UpgradeNotAllowed,
    #[error("only http:// (absolute form) and CONNECT are proxied")]
    SchemeNotAllowed,
}

/// Longest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// Where a request wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`: a tunnel.
    Tunnel { host: String, port: u16 },
    /// `GET http://host[:port]/path`: plain HTTP through the forward proxy.
    Forward {
        host: String,
        port: u16,
        path_and_query: String,
    },
    /// `POST /v1/messages`: the model gateway.
    Gateway { path_and_query: String },
}

/// A parsed and checked request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: Target,
    /// Bytes of the head, so the rest of the buffer is body or early data.
    pub len: usize,
}

impl Head {
    /// Host and port for logs (the gateway's are filled in by the caller).
    pub fn host_port(&self) -> (&str, u16) {
        match &self.target {
            Target::Tunnel { host, port } | Target::Forward { host, port, .. } => (host, *port),
            Target::Gateway { .. } => ("", 0),
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(HeadError::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(_version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    check_headers(req.headers, method)?;
    let target = classify(method, path)?;
    Ok(Some(Head {
        method: method.to_owned(),
        target,
        len,
    }))
}

/// One framing only, no protocol switch, no body on CONNECT.
fn check_headers(headers: &[httparse::Header<'_>], method: &str) -> Result<(), HeadError> {
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    for h in headers {
        let name = h.name;
        let value = trim(h.value);
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::AmbiguousFraming);
            }
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
                return Err(HeadError::Malformed);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a single `chunked`: anything else is a framing a
            // downstream parser might read differently.
            if transfer_encoding || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::AmbiguousFraming);
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("http2-settings")
            || (name.eq_ignore_ascii_case("connection") && has_token(value, b"upgrade"))
        {
            return Err(HeadError::UpgradeNotAllowed);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if content_length.is_some() && transfer_encoding {
        return Err(HeadError::AmbiguousFraming);
    }
    if hosts > 1 {
        return Err(HeadError::AmbiguousFraming);
    }
    if method == "CONNECT" && (transfer_encoding || content_length.is_some_and(|v| v != b"0")) {
        return Err(HeadError::AmbiguousFraming);
    }
    Ok(())
}

fn classify(method: &str, path: &str) -> Result<Target, HeadError> {
    if method == "PRI" {
        return Err(HeadError::UpgradeNotAllowed);
    }
    if method == "CONNECT" {
        let (host, port) = split_authority(path)?;
        return Ok(Target::Tunnel { host, port });
    }
    if path.starts_with('/') {
        return Ok(Target::Gateway {
            path_and_query: path.to_owned(),
        });
    }
    let Some((scheme, rest)) = path.split_once("://") else {
        return Err(HeadError::SchemeNotAllowed);
    };
    // TLS goes through CONNECT (`https://` in absolute form would have the
    // proxy open TLS for the client), and no other scheme is proxied.
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(HeadError::SchemeNotAllowed);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.starts_with('#') || tail.contains('#') {
        return Err(HeadError::Malformed);
    }
    let (host, port) = split_authority_default(authority, 80)?;
    let path_and_query = match tail {
        "" => "/".to_owned(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_owned(),
    };
    Ok(Target::Forward {
        host,
        port,
        path_and_query,
    })
}

/// `host:port` with a required port (CONNECT's authority-form).
fn split_authority(a: &str) -> Result<(String, u16), HeadError> {
    let (host, port) = split_host_port(a)?;
    let port = port.ok_or(HeadError::Malformed)?;
    Ok((host, port))
}

fn split_authority_default(a: &str, default: u16) -> Result<(String, u16), HeadError> {
    let (host, port) = split_host_port(a)?;
    Ok((host, port.unwrap_or(default)))
}

/// Splits an authority without userinfo; IPv6 stays in brackets.
fn split_host_port(a: &str) -> Result<(String, Option<u16>), HeadError> {
    if a.is_empty() || a.contains('@') {
        // Userinfo (`good.com@evil.com`) is where parsers disagree.
        return Err(HeadError::Malformed);
    }
    let (host, port) = if a.starts_with('[') {
        let close = a.find(']').ok_or(HeadError::Malformed)?;
        let (h, rest) = a.split_at(close + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':').ok_or(HeadError::Malformed)?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return Err(HeadError::Malformed);
    }
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((host.to_owned(), port))
}

fn parse_port(p: &str) -> Result<u16, HeadError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Malformed);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HeadError::Malformed),
        Ok(n) => Ok(n),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Head>, HeadError> {
        parse_head(s.as_bytes())
    }

    fn target(s: &str) -> Target {
        parse(s).unwrap().unwrap().target
    }

    #[test]
    fn routes() {
        assert_eq!(
            target("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
            Target::Tunnel {
                host: "example.com".into(),
                port: 443
            }
        );
        assert_eq!(
            target("GET http://Example.com/a?b HTTP/1.1\r\n\r\n"),
            Target::Forward {
                host: "Example.com".into(),
                port: 80,
                path_and_query: "/a?b".into()
            }
        );
        assert_eq!(
            target("GET http://[::1]:8080?q HTTP/1.1\r\n\r\n"),
            Target::Forward {
                host: "[::1]".into(),
                port: 8080,
                path_and_query: "/?q".into()
            }
        );
        assert_eq!(
            target("POST /v1/messages?beta=true HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            Target::Gateway {
                path_and_query: "/v1/messages?beta=true".into()
            }
        );
        let head = parse("GET / HTTP/1.1\r\n\r\nrest").unwrap().unwrap();
        assert_eq!(head.len, 18);
    }

    #[test]
    fn incomplete_then_complete() {
        assert_eq!(parse("CONNECT a:1 HTTP/1.1\r\n"), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&big), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn refusals() {
        use HeadError::*;
        let cases: &[(&str, HeadError)] = &[
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", AmbiguousFraming),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", AmbiguousFraming),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", AmbiguousFraming),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", AmbiguousFraming),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", AmbiguousFraming),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", Malformed),
            ("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", Malformed),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", AmbiguousFraming),
            ("GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n", UpgradeNotAllowed),
            ("GET / HTTP/1.1\r\nConnection: keep-alive, upgrade\r\n\r\n", UpgradeNotAllowed),
            ("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", UpgradeNotAllowed),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Malformed),
            ("CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n", AmbiguousFraming),
            ("CONNECT a HTTP/1.1\r\n\r\n", Malformed),
            ("CONNECT a:0 HTTP/1.1\r\n\r\n", Malformed),
            ("CONNECT a:65536 HTTP/1.1\r\n\r\n", Malformed),
            ("CONNECT a:+443 HTTP/1.1\r\n\r\n", Malformed),
            ("CONNECT user@a:443 HTTP/1.1\r\n\r\n", Malformed),
            ("GET http://good.com@evil.com/ HTTP/1.1\r\n\r\n", Malformed),
            ("GET http://good.com:/ HTTP/1.1\r\n\r\n", Malformed),
            ("GET https://good.com/ HTTP/1.1\r\n\r\n", SchemeNotAllowed),
            ("GET ftp://good.com/ HTTP/1.1\r\n\r\n", SchemeNotAllowed),
            ("GET * HTTP/1.1\r\n\r\n", SchemeNotAllowed),
            ("GET http:///x HTTP/1.1\r\n\r\n", Malformed),
            ("GET http://[::1/ HTTP/1.1\r\n\r\n", Malformed),
            ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", Malformed),
            ("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03", Malformed),
        ];
        for (req, want) in cases {
            assert_eq!(parse(req), Err(*want), "{req:?}");
        }
    }
}
