//! Interception in process: a real Unix socket, a real HTTPS upstream with
//! its own test CA (trusted through `egress.extra_ca_file`), a client that
//! trusts only the proxy's local CA, as a container would.

use super::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Mutex as StdMutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// What the upstream saw: method, target, `authorization`, `cookie`.
type Seen = Arc<StdMutex<Vec<(String, String, Option<String>, Option<String>)>>>;

/// A CA and an HTTPS upstream for `names` signed by it.
async fn https_upstream(names: &[&str]) -> (u16, String, Seen) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "upstream test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, rec) = (acceptor.clone(), rec.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers().get(n).map(|v| v.to_str().unwrap().to_owned())
                            };
                            rec.lock().unwrap().push((
                                req.method().to_string(),
                                req.uri().to_string(),
                                h("authorization"),
                                h("cookie"),
                            ));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from("from upstream"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca.pem(), seen)
}

struct Fx {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    _registry: ProxyRegistry,
    gw: Arc<Gateway>,
    port: u16,
    bad_port: u16,
    seen: Seen,
}

fn config(dir: &Path, port: u16, bad_port: u16, echo: u16) -> Config {
    config_edited(dir, port, bad_port, echo, |t| t)
}

/// The fixture's config with its text edited first.
fn config_edited(
    dir: &Path,
    port: u16,
    bad_port: u16,
    echo: u16,
    edit: impl Fn(String) -> String,
) -> Config {
    let text = format!(
        r#"
[proxy]
allowed_ports = [{port}, {bad_port}, {echo}]
allow_private_cidrs = ["127.0.0.0/8"]
[proxy.resolve]
"git.test" = "127.0.0.1"
"bad.test" = "127.0.0.1"
"blind.test" = "127.0.0.1"

[egress]
ca_dir = "{dir}/ca"
extra_ca_file = "{dir}/upstream-ca.pem"

[[egress.credentials]]
name = "git"
format = "basic"
user = "agent"
secret_file = "{dir}/git-secret"

[[egress.rules]]
name = "bad"
host = "bad.test"
paths = ["/**"]

[[egress.rules]]
name = "blind"
host = "blind.test"

[[tenants]]
id = "t1"
token_sha256 = "{hash}"

[[tenants.egress_rules]]
name = "repo-a"
host = "git.test"
methods = ["GET", "POST"]
paths = ["/org/a.git/**"]
credential = "git"
"#,
        dir = dir.display(),
        hash = "0".repeat(64)
    );
    let cfg = Config::from_toml(&edit(text), Vec::new()).unwrap();
    cfg.validate().unwrap();
    cfg
}

async fn fx() -> Fx {
    let (port, ca_pem, seen) = https_upstream(&["git.test"]).await;
    // Signed by a CA the proxy does not trust.
    let (bad_port, _, _) = https_upstream(&["bad.test"]).await;
    let echo = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        p
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("git-secret"), "s3cr3t\n").unwrap();
    let cfg = config(dir.path(), port, bad_port, echo);
    let gw = Arc::new(Gateway::new(&cfg, None, AwsEnv::default()).unwrap());
    let registry = ProxyRegistry::default();
    let sockets = dir.path().join("sock");
    std::fs::create_dir(&sockets).unwrap();
    let ctx = ProxyContext {
        container_id: "c1".into(),
        tenant_id: "t1".into(),
        conversation_id: "conv".into(),
    };
    registry.ensure(gw.clone(), &sockets, ctx).unwrap();
    std::fs::write(dir.path().join("echo-port"), echo.to_string()).unwrap();
    Fx {
        socket: sockets.join(PROXY_SOCKET),
        dir,
        _registry: registry,
        gw,
        port,
        bad_port,
        seen,
    }
}

/// CONNECTs; the answer's head, and the stream when it was 200.
async fn connect(f: &Fx, host: &str, port: u16) -> (String, UnixStream) {
    let mut s = UnixStream::connect(&f.socket).await.unwrap();
    s.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap() == 1 {
        head.push(b[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

/// TLS over the tunnel, trusting only the proxy's CA, as `sni`.
async fn client(f: &Fx, s: UnixStream, sni: &str) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = f.gw.ca().unwrap();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), s)
        .await?;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "never h2"
    );
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    c: &mut SendRequest<Full<Bytes>>,
    method: &str,
    target: &str,
    host: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", host)
        .header("cookie", "session=container");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = c
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn rules_judge_each_request_and_the_credential_is_brokered() {
    let f = fx().await;
    let (head, s) = connect(&f, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut c = client(&f, s, "git.test").await.unwrap();
    let host = format!("git.test:{}", f.port);

    // Allowed, on one kept-alive connection: the container's own
    // credential and cookie are replaced by the brokered one.
    let (status, body) = send(
        &mut c,
        "GET",
        "/org/a.git/info/refs?service=git-receive-pack",
        &host,
        Some("Basic Y29udGFpbmVyOmd1ZXNz"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "from upstream"));
    let (status, _) = send(&mut c, "POST", "//org/a.git//git-receive-pack", &host, None).await;
    assert_eq!(status, 200);
    {
        let seen = f.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, "/org/a.git/info/refs?service=git-receive-pack");
        // base64("agent:s3cr3t")
        assert_eq!(seen[0].2.as_deref(), Some("Basic YWdlbnQ6czNjcjN0"));
        assert_eq!(seen[0].3, None, "the container's cookie is dropped");
        assert_eq!(
            seen[1].1, "/org/a.git/git-receive-pack",
            "sent in normal form"
        );
    }

    // Refused, each with a body the agent can read; nothing goes upstream.
    for (method, target, want, text) in [
        (
            "POST",
            "/org/b.git/git-receive-pack",
            403,
            "path not allowed",
        ),
        ("DELETE", "/org/a.git/x", 403, "method not allowed"),
        (
            "GET",
            "/org/a.git/%2e%2e/b.git/info/refs",
            400,
            "ambiguous request path",
        ),
        (
            "GET",
            "/org/a.git/../b.git/info/refs",
            400,
            "ambiguous request path",
        ),
    ] {
        let (status, body) = send(&mut c, method, target, &host, None).await;
        assert_eq!(status, want, "{method} {target}: {body}");
        assert!(body.contains(text), "{method} {target}: {body}");
    }
    // Another Host than the CONNECT's.
    let (status, body) = send(&mut c, "GET", "/org/a.git/info/refs", "bad.test", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another host"), "{body}");
    assert_eq!(
        f.seen.lock().unwrap().len(),
        2,
        "refusals never reached the upstream"
    );
}

#[tokio::test]
async fn a_forged_sni_an_untrusted_upstream_and_a_revoked_credential_are_refused() {
    let f = fx().await;
    // SNI for another name than the CONNECT's: the proxy's certificate is
    // the CONNECT host's, so the client cannot even verify it.
    let (_, s) = connect(&f, "git.test", f.port).await;
    assert!(client(&f, s, "bad.test").await.is_err());

    // An upstream whose certificate the proxy cannot verify.
    let (head, _) = connect(&f, "bad.test", f.bad_port).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    // A domain-only rule stays a blind tunnel (the echo server answers
    // bytes, no TLS from the proxy).
    let echo: u16 = std::fs::read_to_string(f.dir.path().join("echo-port"))
        .unwrap()
        .parse()
        .unwrap();
    let (head, mut s) = connect(&f, "blind.test", echo).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"raw").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"raw");

    // Revoked: the secret file is emptied and the config reloaded.
    std::fs::write(f.dir.path().join("git-secret"), "").unwrap();
    let cfg = config(f.dir.path(), f.port, f.bad_port, echo);
    f.gw.reload_egress(&cfg).unwrap();
    let (_, s) = connect(&f, "git.test", f.port).await;
    let mut c = client(&f, s, "git.test").await.unwrap();
    let host = format!("git.test:{}", f.port);
    let (status, body) = send(&mut c, "GET", "/org/a.git/info/refs", &host, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("brokered credential unavailable"), "{body}");
    assert!(f.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_run_narrows_its_tenants_rules_and_never_widens_them() {
    let f = fx().await;
    assert_eq!(
        f.gw.unknown_egress_rule("t1", &["repo-a".into(), "blind".into()]),
        None
    );
    assert_eq!(
        f.gw.unknown_egress_rule("t1", &["repo-a".into(), "nope".into()]),
        Some("nope".into())
    );
    // Another tenant's rule is not this tenant's to keep.
    assert_eq!(
        f.gw.unknown_egress_rule("t2", &["repo-a".into()]),
        Some("repo-a".into())
    );

    f.gw.narrow_conversation("t1", "conv", Some(vec!["bad".into()]));
    let (head, _) = connect(&f, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    f.gw.narrow_conversation("t1", "other-conv", None);
    let (head, _) = connect(&f, "git.test", f.port).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "another conversation's clear is not this one's"
    );
    f.gw.narrow_conversation("t1", "conv", None);
    let (head, _) = connect(&f, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_reload_applies_to_open_connections_and_closes_what_it_no_longer_allows() {
    let f = fx().await;
    let echo: u16 = std::fs::read_to_string(f.dir.path().join("echo-port"))
        .unwrap()
        .parse()
        .unwrap();
    let host = format!("git.test:{}", f.port);
    let (_, s) = connect(&f, "git.test", f.port).await;
    let mut c = client(&f, s, "git.test").await.unwrap();
    assert_eq!(
        send(&mut c, "GET", "/org/a.git/info/refs", &host, None)
            .await
            .0,
        200
    );
    let (head, mut blind) = connect(&f, "blind.test", echo).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Repository a is swapped for b, and the domain-only rule goes.
    let cfg = config_edited(f.dir.path(), f.port, f.bad_port, echo, |t| {
        t.replace("/org/a.git/**", "/org/b.git/**").replace(
            "name = \"blind\"\nhost = \"blind.test\"",
            "name = \"blind\"\nhost = \"elsewhere.test\"",
        )
    });
    f.gw.reload_egress(&cfg).unwrap();
    let (status, body) = send(&mut c, "GET", "/org/a.git/info/refs", &host, None).await;
    assert_eq!(
        status, 403,
        "the open connection follows the new rules: {body}"
    );
    assert_eq!(
        send(&mut c, "GET", "/org/b.git/info/refs", &host, None)
            .await
            .0,
        200
    );
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), blind.read(&mut buf))
        .await
        .expect("the blind tunnel was not closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // The git host's rule goes too: its open connection is closed.
    let cfg = config_edited(f.dir.path(), f.port, f.bad_port, echo, |t| {
        t.replace("host = \"git.test\"", "host = \"gone.test\"")
    });
    f.gw.reload_egress(&cfg).unwrap();
    let req = hyper::Request::builder()
        .uri("/org/a.git/info/refs")
        .header("host", &host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        // The close may race the send: either fails, or the answer is a refusal.
        match c.send_request(req).await {
            Err(_) => true,
            Ok(resp) => resp.status() == 403,
        }
    })
    .await
    .expect("the intercepted connection was neither closed nor refused");
    assert!(gone);
}

#[tokio::test]
async fn a_claim_keeps_the_socket_and_bundle_and_serves_the_new_context() {
    use std::os::unix::fs::MetadataExt;
    let f = fx().await;
    let sockets = f.dir.path().join("pool-sock");
    std::fs::create_dir(&sockets).unwrap();
    let registry = ProxyRegistry::default();
    let ctx = |tenant: &str, conversation: &str| ProxyContext {
        container_id: "c9".into(),
        tenant_id: tenant.into(),
        conversation_id: conversation.into(),
    };
    // A pool container: no tenant, so no tenant rule reaches git.test.
    registry
        .ensure(f.gw.clone(), &sockets, ctx("", ""))
        .unwrap();
    let pool = Fx {
        socket: sockets.join(PROXY_SOCKET),
        ..fx().await
    };
    let inode = |name: &str| std::fs::metadata(sockets.join(name)).unwrap().ino();
    let (socket, bundle) = (inode(PROXY_SOCKET), inode(ca::BUNDLE_FILE));
    let (head, _) = connect(&pool, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let echo: u16 = std::fs::read_to_string(f.dir.path().join("echo-port"))
        .unwrap()
        .parse()
        .unwrap();
    let (head, mut open) = connect(&pool, "blind.test", echo).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The claim: the same socket and bundle, the tenant's rules from the
    // next connection on, and the pool's connection ended.
    registry
        .ensure(f.gw.clone(), &sockets, ctx("t1", "conv"))
        .unwrap();
    assert_eq!(inode(PROXY_SOCKET), socket, "the socket is not bound again");
    assert_eq!(
        inode(ca::BUNDLE_FILE),
        bundle,
        "the bundle is not rewritten"
    );
    let (head, _) = connect(&pool, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut b))
        .await
        .expect("the pool's connection ends at the claim");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A socket lost with its task is bound again.
    registry.stop("c9");
    std::fs::remove_file(sockets.join(PROXY_SOCKET)).unwrap();
    registry
        .ensure(f.gw.clone(), &sockets, ctx("t1", "conv2"))
        .unwrap();
    let (head, _) = connect(&pool, "git.test", f.port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_replaced_container_state_hands_on_to_the_last_successor() {
    let f = fx().await;
    let ctx = |c: &str| ProxyContext {
        container_id: c.into(),
        tenant_id: "t1".into(),
        conversation_id: "conv".into(),
    };
    let (a, b, c) = (
        f.gw.container(ctx("a")),
        f.gw.container(ctx("b")),
        f.gw.container(ctx("c")),
    );
    assert_eq!(a.current().ctx.container_id, "a");
    a.successor.set(b.clone()).ok().unwrap();
    b.successor.set(c.clone()).ok().unwrap();
    assert_eq!(a.current().ctx.container_id, "c");
    assert_eq!(b.current().ctx.container_id, "c");
}
