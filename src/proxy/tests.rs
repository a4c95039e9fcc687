//! The whole proxy in process: a real Unix socket, real loopback upstreams,
//! raw bytes on the wire. (The container-side tests are in
//! `tests/e2e/proxy.rs`.)

use super::*;
use axum::http::{HeaderMap, StatusCode};
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// An upstream that records request headers and answers `hello`; also
/// `/redirect` (a 302 elsewhere) and `/stream` (`first`, then `second`
/// once the returned `Notify` fires).
async fn http_upstream() -> (u16, Arc<StdMutex<Vec<HeaderMap>>>, Arc<tokio::sync::Notify>) {
    use axum::response::IntoResponse;
    let seen: Arc<StdMutex<Vec<HeaderMap>>> = Arc::default();
    let go = Arc::new(tokio::sync::Notify::new());
    let (rec, release) = (seen.clone(), go.clone());
    // Reads the whole request body before answering, as the model API does.
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, _body: Bytes| {
            let (rec, release) = (rec.clone(), release.clone());
            async move {
                let usage = headers
                    .get("x-test-usage")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                rec.lock().unwrap().push(headers);
                if let Some(out) = usage {
                    return sse_answer(&out).into_response();
                }
                match uri.path() {
                    "/redirect" => (
                        StatusCode::FOUND,
                        [("location", "http://elsewhere.test/steal")],
                        "moved",
                    )
                        .into_response(),
                    "/stream" => {
                        let chunks = futures_util::stream::unfold(0, move |n| {
                            let release = release.clone();
                            async move {
                                match n {
                                    0 => Some((Ok::<_, std::io::Error>(Bytes::from("first;")), 1)),
                                    1 => {
                                        release.notified().await;
                                        Some((Ok(Bytes::from("second")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        axum::body::Body::from_stream(chunks).into_response()
                    }
                    _ => "hello".into_response(),
                }
            }
        },
    );
    let app = app.layer(axum::extract::DefaultBodyLimit::disable());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    (port, seen, go)
}

/// A streamed Messages answer from a sonnet model that reports `out`
/// output tokens (and 10 input tokens).
fn sse_answer(out: &str) -> impl axum::response::IntoResponse {
    let body = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"claude-sonnet-4-5\",\"usage\":{{\"input_tokens\":10,\"output_tokens\":1}}}}}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{out}}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    ([("content-type", "text/event-stream")], body)
}

/// An upstream that echoes every byte back.
async fn echo_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

struct Fixture {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    registry: ProxyRegistry,
    gw: Arc<Gateway>,
    echo: u16,
    http: u16,
    seen: Arc<StdMutex<Vec<HeaderMap>>>,
    release: Arc<tokio::sync::Notify>,
}

async fn fixture(max_connections: usize) -> Fixture {
    fixture_with(max_connections, None).await
}

async fn fixture_with(max_connections: usize, model_url: Option<&str>) -> Fixture {
    fixture_extra(max_connections, model_url, "").await
}

/// `model_url` defaults to the recording upstream; `extra` goes into
/// `[proxy]`.
async fn fixture_extra(max_connections: usize, model_url: Option<&str>, extra: &str) -> Fixture {
    let echo = echo_upstream().await;
    let (http, seen, release) = http_upstream().await;
    let model_url = model_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("http://127.0.0.1:{http}"));
    let text = format!(
        r#"
[model]
anthropic_base_url = "{model_url}"
allowed_calls = ["POST /v1/messages", "GET /stream", "GET /redirect"]
max_request_body_mb = 1
[proxy]
allowed_domains = ["allowed.test", "*.wild.test", "meta.test", "private.test"]
allowed_ports = [{echo}, {http}]
allow_private_cidrs = ["127.0.0.0/8"]
max_connections_per_container = {max_connections}
{extra}
[proxy.resolve]
"allowed.test" = "127.0.0.1"
"a.wild.test" = "127.0.0.1"
"tenant.test" = "127.0.0.1"
"meta.test" = "169.254.169.254"
"private.test" = "10.0.0.1"

[[tenants]]
id = "t1"
token_sha256 = "{hash}"
allowed_domains = ["tenant.test"]
"#,
        hash = "0".repeat(64)
    );
    let cfg = Config::from_toml(&text, Vec::new()).unwrap();
    cfg.validate().unwrap();
    let gw =
        Arc::new(Gateway::new(&cfg, Some(Secret::new("real-key")), AwsEnv::default()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let registry = ProxyRegistry::default();
    let ctx = ProxyContext {
        container_id: "c1".into(),
        tenant_id: "t1".into(),
        conversation_id: "conv".into(),
    };
    registry.ensure(gw.clone(), dir.path(), ctx).unwrap();
    Fixture {
        socket: dir.path().join(PROXY_SOCKET),
        _dir: dir,
        registry,
        gw,
        echo,
        http,
        seen,
        release,
    }
}

/// Sends raw bytes and reads until the peer closes (or 2 s pass).
async fn exchange(f: &Fixture, raw: &str) -> String {
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a tunnel and returns the stream after reading the 200 line.
async fn tunnel(f: &Fixture, host: &str, port: u16) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let mut rest = Vec::new();
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        Ok(s)
    } else {
        let _ = s.read_to_end(&mut rest).await;
        Err(format!("{head}{}", String::from_utf8_lossy(&rest)))
    }
}

#[tokio::test]
async fn connect_to_an_allowed_name_tunnels_bytes() {
    let f = fixture(8).await;
    for host in ["allowed.test", "ALLOWED.test.", "a.wild.test"] {
        let mut s = tunnel(&f, host, f.echo).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping", "{host}");
    }
}

#[tokio::test]
async fn connect_refusals() {
    let f = fixture(8).await;
    let cases = [
        ("evil.test", f.echo, "403", "destination not allowed"),
        ("wild.test", f.echo, "403", "destination not allowed"),
        (
            "allowed.test.evil",
            f.echo,
            "403",
            "destination not allowed",
        ),
        ("127.0.0.1", f.echo, "403", "IP address literals"),
        ("2130706433", f.echo, "403", "IP address literals"),
        ("0x7f.1", f.echo, "403", "IP address literals"),
        ("[::1]", f.echo, "403", "IP address literals"),
        ("169.254.169.254", 80, "403", "IP address literals"),
        ("allowed.test", 22, "403", "port not allowed"),
        ("meta.test", f.echo, "403", "metadata_address"),
        ("private.test", f.echo, "403", "private_address"),
    ];
    for (host, port, code, text) in cases {
        let err = tunnel(&f, host, port)
            .await
            .err()
            .unwrap_or_else(|| panic!("{host} was allowed"));
        assert!(
            err.starts_with(&format!("HTTP/1.1 {code}")),
            "{host}: {err}"
        );
        assert!(err.contains(text), "{host}: {err}");
    }
}

#[tokio::test]
async fn data_before_the_connect_answer_is_refused() {
    let f = fixture(8).await;
    let out = exchange(
        &f,
        &format!(
            "CONNECT allowed.test:{} HTTP/1.1\r\n\r\n\x16\x03\x01early",
            f.echo
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.contains("data sent before the CONNECT was answered"),
        "{out}"
    );
}

#[tokio::test]
async fn plain_http_goes_to_the_checked_host_only() {
    let f = fixture(8).await;
    let out = exchange(
        &f,
        &format!(
            "GET http://allowed.test:{}/x HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic Zm9v\r\nConnection: keep-alive\r\n\r\n",
            f.http
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "one request per connection: {out}"
    );
    let seen = f.seen.lock().unwrap().clone();
    let h = seen.last().unwrap();
    assert_eq!(h["host"], format!("allowed.test:{}", f.http).as_str());
    assert!(h.get("proxy-authorization").is_none());

    let out = exchange(
        &f,
        &format!("GET http://evil.test:{}/ HTTP/1.1\r\n\r\n", f.http),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = exchange(
        &f,
        &format!("GET https://allowed.test:{}/ HTTP/1.1\r\n\r\n", f.http),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test]
async fn gateway_swaps_the_key_and_drops_client_credentials() {
    let f = fixture(8).await;
    let out = exchange(
        &f,
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nx-api-key: placeholder\r\nAuthorization: Bearer stolen\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("real-key"));
    let h = f.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(h["x-api-key"], "real-key");
    assert!(h.get("authorization").is_none());
}

#[tokio::test]
async fn ambiguous_framing_and_upgrades_are_refused() {
    let f = fixture(8).await;
    for raw in [
        "POST /v1/messages HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let out = exchange(&f, raw).await;
        assert!(out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 403"), "{raw:?}: {out}");
    }
    assert!(
        f.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_second_request_on_the_connection_is_never_served() {
    let f = fixture(8).await;
    let out = exchange(
        &f,
        &format!(
            "GET http://allowed.test:{p}/a HTTP/1.1\r\n\r\nGET http://evil.test:{p}/b HTTP/1.1\r\n\r\n",
            p = f.http
        ),
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    assert_eq!(f.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_cap_per_container() {
    let f = fixture(1).await;
    let mut hold = UnixStream::connect(&f.socket).await.unwrap();
    hold.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = exchange(&f, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    drop(hold);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = exchange(
        &f,
        "POST /v1/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn a_killed_proxy_task_comes_back_without_losing_connections() {
    let f = fixture(8).await;
    let c = f.registry.container_state("c1").unwrap();
    for _ in 0..3 {
        // What the test hook does: abort the accept loop.
        c.kill_serve_task();
        let out = exchange(
            &f,
            "POST /v1/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    f.registry.stop("c1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        UnixStream::connect(&f.socket).await.is_err(),
        "stopped: the socket no longer accepts"
    );
}

#[tokio::test]
async fn tenants_get_their_own_additions_only() {
    let f = fixture(8).await;
    let s = tunnel(&f, "tenant.test", f.echo).await;
    assert!(s.is_ok(), "t1 lists tenant.test: {:?}", s.err());
    // Another tenant's container on the same gateway.
    let dir = tempfile::tempdir().unwrap();
    let ctx = ProxyContext {
        container_id: "c2".into(),
        tenant_id: "t2".into(),
        conversation_id: "conv".into(),
    };
    f.registry.ensure(f.gw.clone(), dir.path(), ctx).unwrap();
    let other = Fixture {
        socket: dir.path().join(PROXY_SOCKET),
        ..fixture(8).await
    };
    let err = tunnel(&other, "tenant.test", f.echo).await.err().unwrap();
    assert!(err.starts_with("HTTP/1.1 403"), "{err}");
    assert!(tunnel(&other, "allowed.test", f.echo).await.is_ok());
}

#[tokio::test]
async fn gateway_streams_answers_and_never_follows_redirects() {
    let f = fixture(8).await;
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The first chunk arrives while the upstream still holds the second.
    while !String::from_utf8_lossy(&got).contains("first;") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the gateway buffered the answer")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    f.release.notify_one();
    s.read_to_end(&mut got).await.unwrap();
    assert!(String::from_utf8_lossy(&got).contains("second"));

    let before = f.seen.lock().unwrap().len();
    let out = exchange(&f, "GET /redirect HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 302"), "{out}");
    assert!(
        out.contains("location: http://elsewhere.test/steal"),
        "{out}"
    );
    assert_eq!(
        f.seen.lock().unwrap().len(),
        before + 1,
        "the redirect was not followed"
    );
}

/// A `MakeWriter` that keeps everything written.
#[derive(Clone, Default)]
struct Captured(Arc<StdMutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Everything the proxy logs at TRACE, on success and on upstream
/// failure, is free of the key (current-thread runtime: every task logs
/// into this thread's subscriber).
#[tokio::test]
async fn no_credential_in_any_log_line_at_trace() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let ok = fixture(8).await;
    let down = fixture_with(8, Some("http://127.0.0.1:1")).await;
    for f in [&ok, &down] {
        let out = exchange(
            f,
            "POST /v1/messages HTTP/1.1\r\nx-api-key: real-key\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        assert!(!out.contains("real-key"), "{out}");
    }
    // Callsites only this test reaches are captured for sure (tracing
    // caches interest per callsite across threads, so the audit lines that
    // concurrent tests also write may bypass this thread's subscriber; the
    // e2e tests check those in the daemon's own log).
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("Model gateway upstream failed."), "{text}");
    assert!(!text.contains("real-key"), "{text}");
}

#[tokio::test]
async fn a_symlink_at_the_socket_path_is_replaced_never_followed() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("victim");
    std::fs::write(&victim, "host secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = root.path().join("agentbox-x");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("proxy.sock");
    std::os::unix::fs::symlink(&victim, &path).unwrap();

    let _listener = bind_socket(&path, None).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let victim_mode = std::fs::metadata(&victim).unwrap().permissions().mode();
    assert_eq!(
        victim_mode & 0o777,
        0o600,
        "the symlink's target was changed"
    );
    let beside: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().collect();
    assert_eq!(beside.len(), 2, "a staging directory was left: {beside:?}");
    UnixStream::connect(&path).await.expect("connect");
}

#[tokio::test]
async fn gateway_forwards_only_listed_calls_and_answers_the_rest_in_json() {
    let f = fixture(8).await;
    for (req, status) in [
        ("GET /v1/files HTTP/1.1\r\n\r\n", "403"),
        ("GET /v1/models HTTP/1.1\r\n\r\n", "403"),
        ("DELETE /v1/files/file_abc HTTP/1.1\r\n\r\n", "403"),
        ("GET /v1/messages/../../admin HTTP/1.1\r\n\r\n", "403"),
        (
            "POST /v1/messages/..%2F..%2Fv1%2Ffiles HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "403",
        ),
        (
            "POST /v1//messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "403",
        ),
    ] {
        let out = exchange(&f, req).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{req}: {out}"
        );
        assert!(out.contains("application/json"), "{out}");
        assert!(out.contains(r#""type":"permission_error""#), "{out}");
        assert!(
            !out.contains("files"),
            "the answer echoes the request: {out}"
        );
    }
    assert!(
        f.seen.lock().unwrap().is_empty(),
        "a refused call reached the upstream"
    );
    let out = exchange(
        &f,
        "POST /v1/messages?beta=true HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(f.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn gateway_bodies_stream_under_their_limit_and_stop_past_it() {
    let f = fixture(8).await;
    // 1 MiB limit. Announced larger: refused before a byte is read.
    let out = exchange(
        &f,
        "POST /v1/messages HTTP/1.1\r\nContent-Length: 2097152\r\n\r\nxx",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains(r#""type":"request_too_large""#), "{out}");
    assert!(f.seen.lock().unwrap().is_empty(), "forwarded: {out}");
    // Chunked, no length: streamed until it passes the limit, then cut.
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend_from_slice(&[b'x'; 0x10000]);
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..32 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn a_stalled_gateway_body_times_out() {
    let f = fixture_extra(8, None, "read_idle_timeout_secs = 1").await;
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nContent-Length: 1000\r\n\r\nhalf")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the stalled body was never cut")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test]
async fn a_container_gets_its_gateway_slots_and_no_more() {
    let f = fixture_extra(8, None, "max_gateway_requests_per_container = 1").await;
    // One streamed answer in flight holds the only slot.
    let mut held = UnixStream::connect(&f.socket).await.unwrap();
    held.write_all(b"GET /stream HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = held.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let out = exchange(
        &f,
        "POST /v1/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(out.contains("retry-after: 1"), "{out}");
    f.release.notify_one();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    drop(held);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = exchange(
        &f,
        "POST /v1/messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn reloaded_egress_rules_apply_to_the_next_request() {
    let f = fixture(8).await;
    assert!(tunnel(&f, "allowed.test", f.echo).await.is_ok());
    assert!(tunnel(&f, "tenant.test", f.echo).await.is_ok());
    // The operator narrows the rules and sends SIGHUP: what the daemon
    // does with the reloaded config.
    let narrowed = format!(
        r#"
[proxy]
allowed_domains = ["other.test"]
allowed_ports = [{echo}]
allow_private_cidrs = ["127.0.0.0/8"]
[proxy.resolve]
"other.test" = "127.0.0.1"

[[tenants]]
id = "t1"
token_sha256 = "{hash}"
"#,
        echo = f.echo,
        hash = "0".repeat(64)
    );
    let cfg = Config::from_toml(&narrowed, Vec::new()).unwrap();
    cfg.validate().unwrap();
    f.gw.reload_egress(&cfg).unwrap();
    for gone in ["allowed.test", "tenant.test"] {
        let err = tunnel(&f, gone, f.echo).await.err().unwrap();
        assert!(err.starts_with("HTTP/1.1 403"), "{gone}: {err}");
    }
    assert!(tunnel(&f, "other.test", f.echo).await.is_ok());
}

#[tokio::test]
async fn a_stalled_forward_proxy_body_times_out_too() {
    let f = fixture_extra(8, None, "read_idle_timeout_secs = 1").await;
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    let head = format!(
        "POST http://allowed.test:{}/upload HTTP/1.1\r\nContent-Length: 1000\r\n\r\nhalf",
        f.http
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the stalled body was never cut")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
}

#[tokio::test]
async fn a_spent_budget_refuses_the_next_model_request_before_the_upstream() {
    let f = fixture(8).await;
    let ledger = f.gw.spend().clone();
    ledger.begin_run("t1", "conv", Some(0.01)).unwrap();
    let req = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-test-usage: 1000\r\naccept-encoding: gzip, br\r\ncontent-length: 2\r\n\r\n{}";
    let first = exchange(&f, req).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("message_delta"), "{first}");
    // 10 input and 1000 output sonnet tokens: $0.01503, past $0.01.
    assert_eq!(ledger.tenant_today("t1").tokens(), 1010);
    let forwarded = f.seen.lock().unwrap().len();
    // Answers must come uncompressed to be read.
    let asked = f.seen.lock().unwrap()[forwarded - 1].clone();
    assert_eq!(asked["accept-encoding"], "identity");
    let second = exchange(&f, req).await;
    assert!(second.starts_with("HTTP/1.1 403"), "{second}");
    assert!(
        second.contains("permission_error") && second.contains("budget exceeded"),
        "{second}"
    );
    assert_eq!(
        f.seen.lock().unwrap().len(),
        forwarded,
        "reached the upstream"
    );
    let end = ledger.end_run("t1", "conv");
    assert_eq!(end.exceeded.map(|e| e.kind), Some(BudgetKind::Run));
    assert_eq!(end.spend.output_tokens, 1000);
    // Calls that are not billed (here the test's GET) are not held back.
    ledger.begin_run("t1", "conv", Some(0.001)).unwrap();
    ledger.record(
        "t1",
        "conv",
        &usage::Metered {
            model: Some("claude-opus".into()),
            usage: usage::Usage {
                output_tokens: 100,
                ..Default::default()
            },
        },
    );
    let free = exchange(&f, "GET /redirect HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(free.starts_with("HTTP/1.1 302"), "{free}");
}
