//! The whole proxy in process: a real Unix socket, real loopback upstreams,
//! raw bytes on the wire. (The container-side tests are in
//! `tests/e2e_proxy.rs`.)

use super::*;
use axum::http::HeaderMap;
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// An upstream that records request headers and answers `hello`.
async fn http_upstream() -> (u16, Arc<StdMutex<Vec<HeaderMap>>>) {
    let seen: Arc<StdMutex<Vec<HeaderMap>>> = Arc::default();
    let rec = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let rec = rec.clone();
        async move {
            rec.lock().unwrap().push(headers);
            "hello"
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    (port, seen)
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
    echo: u16,
    http: u16,
    seen: Arc<StdMutex<Vec<HeaderMap>>>,
}

async fn fixture(max_connections: usize) -> Fixture {
    let echo = echo_upstream().await;
    let (http, seen) = http_upstream().await;
    let text = format!(
        r#"
[model]
anthropic_base_url = "http://127.0.0.1:{http}"
[proxy]
allowed_domains = ["allowed.test", "*.wild.test", "meta.test", "private.test"]
allowed_ports = [{echo}, {http}]
allow_private_cidrs = ["127.0.0.0/8"]
max_connections_per_container = {max_connections}
[proxy.resolve]
"allowed.test" = "127.0.0.1"
"a.wild.test" = "127.0.0.1"
"meta.test" = "169.254.169.254"
"private.test" = "10.0.0.1"
"#
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
    registry.ensure(gw, dir.path(), ctx).unwrap();
    Fixture {
        socket: dir.path().join(PROXY_SOCKET),
        _dir: dir,
        registry,
        echo,
        http,
        seen,
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
