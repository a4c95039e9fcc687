//! The egress proxy end to end: real dockerd, the real image, the real
//! Claude Code CLI. From inside a container (the CLI's `Bash` tool and
//! `docker exec` as the agent user): allowed names work over CONNECT and
//! plain HTTP, with curl and with Node's `fetch` and `https.get`; every
//! bypass family is refused. The gateway swaps keys (Anthropic) or signs
//! (Bedrock, checked by the mock's own SigV4 verifier), and a killed proxy
//! task comes back mid-conversation.

use crate::harness::*;
use mock_model::sigv4::AwsKey;
use mock_model::MockModel;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REAL_KEY: &str = "sk-ant-proxy-e2e-canary-41c7";
const AWS_KEY_ID: &str = "AKIDAGENTBOXE2E";
const AWS_SECRET: &str = "aws-secret-canary-9d2f1e";
const AWS_TOKEN: &str = "aws-session-canary-77ab";
const AWS_REGION: &str = "eu-west-3";

async fn start_daemon(
    model_url: String,
    api_key: &str,
    extra_config: String,
    env: Vec<(&'static str, String)>,
) -> Daemon {
    // The daemon takes its AWS variables (and test hooks) from its own
    // process environment.
    let opts = DaemonOptions {
        pool_min: 1,
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        model_url,
        api_key: api_key.to_owned(),
        extra_config,
    };
    tokio::task::spawn_blocking(move || Daemon::start(opts))
        .await
        .expect("daemon start")
}

/// Runs a conversation turn and asserts it succeeded.
async fn run_ok(daemon: &Daemon, conversation: &str, prompt: &str) -> Vec<SseEvent> {
    let (status, body) =
        post_message(daemon, Some(TOKEN), conversation, json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    let events = parse_sse(&body);
    let result = events
        .iter()
        .find(|e| e.event == "result")
        .unwrap_or_else(|| panic!("no result: {events:#?}"));
    assert_eq!(result.data["is_error"], false, "{events:#?}");
    events
}

fn assert_never_logged(daemon: &Daemon, secrets: &[&str]) {
    for line in daemon.logs() {
        for s in secrets {
            assert!(!line.contains(s), "a credential reached a log line: {line}");
        }
    }
}

/// `sh -c CMD` inside the container as the agent user.
fn exec(container: &str, cmd: &str) -> (i32, String) {
    let out = docker(&["exec", "--user", "1000:1000", container, "sh", "-c", cmd]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A self-signed certificate for `allowed.test` (also its own CA), made
/// with the openssl CLI: (cert PEM, cert DER, PKCS#8 key DER).
fn test_cert(dir: &Path) -> (String, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=allowed.test",
        "-addext",
        "subjectAltName=DNS:allowed.test",
        "-days",
        "2",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ]);
    run(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
    ]);
    (
        read_file(&dir.join("cert.pem")),
        std::fs::read(dir.join("cert.der")).unwrap(),
        std::fs::read(dir.join("key.der")).unwrap(),
    )
}

/// An HTTPS server on loopback answering `hello-tls` to any request.
async fn https_server(cert: Vec<u8>, key: Vec<u8>) -> u16 {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                answer(&mut tls, "hello-tls").await;
            });
        }
    });
    port
}

/// A plain-HTTP server on loopback answering `hello-plain`; keeps the
/// request heads it saw.
async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Some(head) = answer(&mut tcp, "hello-plain").await {
                    seen.lock().unwrap().push(head);
                }
            });
        }
    });
    (port, heads)
}

/// Reads one request head, answers `body`, returns the head.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    body: &str,
) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Sends raw request heads to the proxy from inside the container and
/// prints each status line: what curl would normalise away first.
const RAW_PROBE: &str = r#"
import socket, sys
for target in sys.argv[1:]:
    s = socket.create_connection(("127.0.0.1", 8080))
    method = "CONNECT" if not target.startswith("http") else "GET"
    s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    print(target, s.recv(200).split(b"\r\n")[0].decode())
    s.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn forward_proxy_allows_listed_names_and_refuses_every_bypass() {
    let _engine = serial::shared().await;
    let certs = tempfile::tempdir().unwrap();
    let (cert_pem, cert_der, key_der) = test_cert(certs.path());
    let tls_port = https_server(cert_der, key_der).await;
    let (http_port, heads) = http_server().await;
    let mock = MockModel::start("127.0.0.1:0").await.expect("mock model");
    let extra = format!(
        r#"
[proxy]
allowed_domains = ["allowed.test", "meta.test", "meta6.test", "private.test"]
allowed_ports = [{tls_port}, {http_port}, 443, 80]
allow_private_cidrs = ["127.0.0.0/8"]

[proxy.resolve]
"allowed.test" = "127.0.0.1"
"evil.test" = "127.0.0.1"
"meta.test" = "169.254.169.254"
"meta6.test" = "fd00:ec2::254"
"private.test" = "10.0.0.1"
"#
    );
    let daemon = start_daemon(
        mock.url(),
        REAL_KEY,
        extra,
        vec![("AGENTBOX_TEST_HOOKS", "1".into())],
    )
    .await;

    // A first turn starts the container; the test CA goes into its
    // workspace from inside (the only place the container can read).
    run_ok(&daemon, "egress", "!text hello").await;
    let container = only_container(&daemon);
    let (code, out) = exec(
        &container,
        &format!("printf '%s' '{cert_pem}' > /workspace/ca.pem"),
    );
    assert_eq!(code, 0, "{out}");
    let ws = daemon.workspace(TENANT, "egress");

    // Through the real CLI's Bash tool: CONNECT to an allowed name, and a
    // credential the container tries to send to the gateway.
    let prompt = format!(
        "!bash curl -sS --cacert /workspace/ca.pem https://allowed.test:{tls_port}/x > tls.txt 2>&1\n\
         !bash curl -sS -H 'x-api-key: container-key' -H 'Authorization: Bearer container-token' -d '{{}}' http://127.0.0.1:8080/v1/messages/count_tokens > gw.txt\n\
         !text done"
    );
    let events = run_ok(&daemon, "egress", &prompt).await;
    assert_eq!(read_file(&ws.join("tls.txt")), "hello-tls", "{events:#?}");
    assert!(read_file(&ws.join("gw.txt")).contains("input_tokens"));
    let counted: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("count_tokens"))
        .collect();
    assert_eq!(counted.len(), 1);
    assert_eq!(
        counted[0].header("x-api-key"),
        Some(REAL_KEY),
        "the gateway injects the real key"
    );
    assert_eq!(
        counted[0].header("authorization"),
        None,
        "the container's token is dropped"
    );
    for r in mock.requests() {
        for (_, v) in &r.headers {
            assert!(
                !v.contains("container-key") && !v.contains("container-token"),
                "{r:?}"
            );
        }
    }

    let curl = |args: &str| {
        exec(
            &container,
            &format!(
                "curl -s -o /dev/null -w '%{{http_code}} %{{http_connect}}' {args} 2>/dev/null"
            ),
        )
    };

    // Allowed: CONNECT + TLS, and absolute-form plain HTTP.
    let (code, out) = exec(
        &container,
        &format!("curl -sS --cacert /workspace/ca.pem https://allowed.test:{tls_port}/"),
    );
    assert_eq!((code, out.as_str()), (0, "hello-tls"));
    let (code, out) = exec(
        &container,
        &format!("curl -sS http://ALLOWED.test.:{http_port}/"),
    );
    assert_eq!((code, out.as_str()), (0, "hello-plain"));

    // Refused: names not listed, forbidden ports, IP literals, names that
    // resolve to metadata or private addresses (CONNECT shows 403 in
    // %{http_connect}, plain HTTP in %{http_code}).
    for (args, want) in [
        (format!("https://evil.test:{tls_port}/"), "000 403"),
        (format!("http://evil.test:{http_port}/"), "403 000"),
        (
            format!("http://allowed.test.evil.test:{http_port}/"),
            "403 000",
        ),
        ("http://allowed.test:22/".to_owned(), "403 000"),
        (
            format!("--noproxy '' http://127.0.0.1:{http_port}/"),
            "403 000",
        ),
        (
            format!("--noproxy '' https://127.0.0.1:{tls_port}/"),
            "000 403",
        ),
        (
            "--noproxy '' http://169.254.169.254/latest/meta-data/".to_owned(),
            "403 000",
        ),
        (
            "--noproxy '' 'http://[fd00:ec2::254]/latest/meta-data/'".to_owned(),
            "403 000",
        ),
        ("http://meta.test/latest/meta-data/".to_owned(), "403 000"),
        ("http://meta6.test/latest/meta-data/".to_owned(), "403 000"),
        ("https://private.test/".to_owned(), "000 403"),
    ] {
        let (_, out) = curl(&args);
        assert_eq!(out, want, "curl {args}");
    }
    // Raw spellings curl would normalise before asking the proxy.
    let (_, out) = exec(
        &container,
        &format!(
            "python3 -c '{RAW_PROBE}' 2130706433:{tls_port} 0x7f.1:{tls_port} 0177.0.0.1:{tls_port} 127.1:{tls_port} '[::ffff:127.0.0.1]:{tls_port}' http://2130706433:{http_port}/ http://0x7f000001:{http_port}/ 169.254.169.254.:80"
        ),
    );
    assert_eq!(out.lines().count(), 8, "{out}");
    for line in out.lines() {
        assert!(line.ends_with("HTTP/1.1 403 Forbidden"), "{out}");
    }
    // npm and git take the proxy from the environment too (the server is
    // on the host's loopback: reaching it at all means through the proxy).
    exec(
        &container,
        &format!(
            "npm ping --registry http://allowed.test:{http_port}/ >/dev/null 2>&1; \
             git ls-remote http://allowed.test:{http_port}/r.git >/dev/null 2>&1; true"
        ),
    );
    let seen = heads.lock().unwrap().join("\n---\n").to_ascii_lowercase();
    assert!(seen.contains("user-agent: npm/"), "{seen}");
    assert!(seen.contains("user-agent: git/"), "{seen}");

    // Without the proxy there is no way out at all.
    let (code, _) = exec(
        &container,
        &format!("curl -sS --max-time 5 --noproxy '*' http://allowed.test:{http_port}/"),
    );
    assert_ne!(code, 0);

    // Node.js programs: fetch and https.get both go through the proxy.
    let node = |script: &str| {
        exec(
            &container,
            &format!("NODE_EXTRA_CA_CERTS=/workspace/ca.pem node -e \"{script}\""),
        )
    };
    let fetch = |host: &str| {
        format!("fetch('https://{host}:{tls_port}/').then(r => r.text()).then(t => console.log('OK', t), e => console.log('ERR', e.cause && e.cause.message))")
    };
    let get = |host: &str| {
        format!("require('https').get('https://{host}:{tls_port}/', r => {{ let b = ''; r.on('data', d => b += d); r.on('end', () => console.log('OK', b)); }}).on('error', e => console.log('ERR', e.message))")
    };
    assert_eq!(node(&fetch("allowed.test")).1.trim(), "OK hello-tls");
    assert_eq!(node(&get("allowed.test")).1.trim(), "OK hello-tls");
    let (_, out) = node(&fetch("evil.test"));
    assert!(out.starts_with("ERR"), "{out}");
    let (_, out) = node(&get("evil.test"));
    assert!(out.starts_with("ERR"), "{out}");

    // One audit event per decision, with who, where, why and bytes.
    let blocked = daemon.logged_audit("proxy_request_blocked");
    let evil = blocked
        .iter()
        .find(|a| a["host"] == "evil.test" && a["route"] == "connect")
        .unwrap_or_else(|| panic!("{blocked:#?}"));
    assert_eq!(evil["reason"], "domain_not_allowed");
    assert_eq!(evil["tenant_id"], TENANT);
    assert_eq!(evil["conversation_id"], "egress");
    let name = inspect(&container)["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();
    assert_eq!(evil["container_id"], name.as_str());
    assert!(
        blocked.iter().any(|a| a["reason"] == "metadata_address"),
        "{blocked:#?}"
    );
    assert!(
        blocked.iter().any(|a| a["reason"] == "private_address"),
        "{blocked:#?}"
    );
    assert!(
        blocked
            .iter()
            .any(|a| a["reason"] == "ip_literal_not_allowed"),
        "{blocked:#?}"
    );
    let allowed = daemon.logged_audit("proxy_request_allowed");
    let tunnel = allowed
        .iter()
        .find(|a| a["host"] == "allowed.test" && a["route"] == "connect")
        .unwrap_or_else(|| panic!("{allowed:#?}"));
    assert!(
        tunnel["bytes_from_container"].as_u64().unwrap() > 100,
        "{tunnel}"
    );
    assert!(
        tunnel["bytes_to_container"].as_u64().unwrap() > 100,
        "{tunnel}"
    );
    assert!(tunnel.get("duration_ms").is_some());
    let gw = allowed
        .iter()
        .find(|a| a["route"] == "model_gateway")
        .unwrap_or_else(|| panic!("{allowed:#?}"));
    assert_eq!(gw["credential"], "anthropic_api_key");
    assert_never_logged(&daemon, &[REAL_KEY]);

    // Kill the proxy task mid-conversation: it restarts at once and the
    // CLI's next model request (and the one after) go through.
    let prompt = format!(
        "!bash curl -sS -X POST http://127.0.0.1:8080{}\n!write after-kill.txt proxy came back\n!text ok",
        agentbox::proxy::KILL_HOOK_PATH
    );
    run_ok(&daemon, "egress", &prompt).await;
    assert_eq!(read_file(&ws.join("after-kill.txt")), "proxy came back");
    let restarts = daemon.logged_audit("proxy_task_restarted");
    assert!(
        restarts
            .iter()
            .any(|a| a["container_id"] == name.as_str() && a["cause"] == "killed"),
        "{restarts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_mode_completes_a_write_through_the_signing_gateway() {
    let _engine = serial::shared().await;
    let key = AwsKey {
        access_key_id: AWS_KEY_ID.into(),
        secret_access_key: AWS_SECRET.into(),
        session_token: Some(AWS_TOKEN.into()),
        region: AWS_REGION.into(),
        service: "bedrock".into(),
    };
    let mock = MockModel::start_bedrock("127.0.0.1:0", key)
        .await
        .expect("mock bedrock");
    // The mock refuses what the gateway did not sign.
    let unsigned = crate::harness::client()
        .post(format!("{}/model/x/invoke", mock.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    assert_eq!(mock.bedrock_rejections().len(), 1);

    let env = vec![
        ("AGENTBOX_MODEL_PROVIDER", "bedrock".to_owned()),
        ("AGENTBOX_MODEL_BEDROCK_BASE_URL", mock.url()),
        ("AGENTBOX_MODEL_BEDROCK_CONTROL_URL", mock.url()),
        ("AGENTBOX_MODEL_REGION", AWS_REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", AWS_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.to_owned()),
        ("AWS_SESSION_TOKEN", AWS_TOKEN.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    let daemon = start_daemon("http://127.0.0.1:9".into(), "", String::new(), env).await;
    let events = run_ok(
        &daemon,
        "bedrock-1",
        "Use Bedrock.\n!write bedrock.txt Hello from Bedrock",
    )
    .await;
    assert!(
        events
            .iter()
            .any(|e| e.event == "tool_use" && e.data["name"] == "Write"),
        "{events:#?}"
    );
    assert_eq!(
        read_file(&daemon.workspace(TENANT, "bedrock-1").join("bedrock.txt")),
        "Hello from Bedrock"
    );

    assert_eq!(
        mock.bedrock_rejections().len(),
        1,
        "every gateway request was correctly signed: {:?}",
        mock.bedrock_rejections()
    );
    let streamed: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/invoke-with-response-stream"))
        .collect();
    assert!(
        streamed.len() >= 2,
        "a tool turn and a final turn: {streamed:#?}"
    );
    for r in &streamed {
        let auth = r.header("authorization").unwrap();
        assert!(
            auth.contains(&format!("Credential={AWS_KEY_ID}/")),
            "{auth}"
        );
        assert!(
            auth.contains(&format!("/{AWS_REGION}/bedrock/aws4_request")),
            "{auth}"
        );
        assert_eq!(
            r.body["anthropic_version"], "bedrock-2023-05-31",
            "{:?}",
            r.body
        );
    }

    // The gateway read the usage from Bedrock's event-stream answers.
    let status = daemon.status();
    let spend = status["spend"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["tenant_id"] == TENANT))
        .cloned()
        .unwrap_or_default();
    assert!(
        spend["tokens_today"].as_u64().unwrap_or(0) > 0
            && spend["cost_usd_today"].as_f64().unwrap_or(0.0) > 0.0,
        "{spend}"
    );

    // The container knows nothing of AWS but the region.
    let container = only_container(&daemon);
    let env = inspect(&container)["Config"]["Env"].to_string();
    assert!(
        env.contains("CLAUDE_CODE_USE_BEDROCK=1")
            && env.contains("CLAUDE_CODE_SKIP_BEDROCK_AUTH=1"),
        "{env}"
    );
    for secret in [AWS_KEY_ID, AWS_SECRET, AWS_TOKEN] {
        assert!(!env.contains(secret), "{env}");
    }
    let gw = daemon.logged_audit("proxy_request_allowed");
    assert!(
        gw.iter().any(|a| a["credential"] == "aws_sigv4:env"),
        "{gw:#?}"
    );
    assert_never_logged(&daemon, &[AWS_SECRET, AWS_TOKEN]);
}

/// The one container a conversation of this daemon has claimed (the warm
/// pool's unclaimed containers run beside it).
fn only_container(daemon: &Daemon) -> String {
    let status = daemon.status();
    let claimed: Vec<String> = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "claimed")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    claimed[0].clone()
}
