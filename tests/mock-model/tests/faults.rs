//! The mock's realistic side over a real socket: HTTPS with its test CA,
//! injected failures (status, headers, error bodies, a broken stream) and
//! a paced stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_model::{MockModel, Options};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A scripted request for `prompt` (tools offered, so the script runs).
fn request(prompt: &str) -> String {
    let body = json!({
        "model": "m", "stream": true, "tools": [{"name": "Bash"}],
        "messages": [{"role": "user", "content": prompt}]
    })
    .to_string();
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `raw`, reads to EOF; a cut connection still yields what came.
async fn exchange(mut io: impl AsyncRead + AsyncWrite + Unpin, raw: &str) -> (String, bool) {
    io.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let clean = io.read_to_end(&mut out).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), clean)
}

async fn plain(mock: &MockModel, prompt: &str) -> (String, bool) {
    let addr = mock.url().trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(tcp, &request(prompt)).await
}

fn status(reply: &str) -> u16 {
    reply.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn serves_https_that_only_its_ca_verifies() {
    let mock = MockModel::start_tls("127.0.0.1:0").await.unwrap();
    assert!(mock.url().starts_with("https://127.0.0.1:"));
    let pem = mock.ca_pem().expect("a TLS mock has a CA");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = mock.url().trim_start_matches("https://").to_string();
    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let server = ServerName::try_from(name.to_string()).unwrap();
        let tls = connector.connect(server, tcp).await.unwrap();
        let (reply, _) = exchange(tls, &request("!text over tls")).await;
        assert_eq!(status(&reply), 200, "{reply}");
        assert!(reply.contains("text_delta"), "{reply}");
    }
    // Another CA's client refuses the certificate.
    let other = MockModel::start_tls("127.0.0.1:0").await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(other.ca_pem().unwrap().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn error_faults_answer_like_the_api() {
    let mock = MockModel::start("127.0.0.1:0").await.unwrap();
    let cases = [
        ("429 retry_after=7", 429, "rate_limit_error", Some("7")),
        ("529", 529, "overloaded_error", Some("1")),
        ("500", 500, "api_error", None),
        ("401", 401, "authentication_error", None),
        ("too_long", 400, "prompt is too long", None),
    ];
    for (fault, code, marker, retry_after) in cases {
        let (reply, _) = plain(&mock, &format!("!fault {fault}\n!text x")).await;
        assert_eq!(status(&reply), code, "{fault}: {reply}");
        assert!(reply.contains(marker), "{fault}: {reply}");
        let header = reply
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .map(str::trim);
        assert_eq!(header, retry_after, "{fault}");
    }
}

#[tokio::test]
async fn times_fails_only_the_first_requests() {
    let mock = MockModel::start("127.0.0.1:0").await.unwrap();
    let prompt = "!fault 529 times=2\n!text finally";
    let statuses: Vec<u16> = [
        plain(&mock, prompt).await,
        plain(&mock, prompt).await,
        plain(&mock, prompt).await,
    ]
    .iter()
    .map(|(r, _)| status(r))
    .collect();
    assert_eq!(statuses, [529, 529, 200]);
}

#[tokio::test]
async fn broken_streams_break_after_part_of_an_answer() {
    let mock = MockModel::start("127.0.0.1:0").await.unwrap();
    let (reply, _) = plain(&mock, "!fault midstream\n!text a long answer").await;
    assert_eq!(status(&reply), 200);
    assert!(reply.contains("event: message_start"), "{reply}");
    assert!(reply.contains("event: error"));
    assert!(reply.contains("overloaded_error"));
    assert!(!reply.contains("message_stop"));

    let (reply, _) = plain(&mock, "!fault reset\n!text a long answer").await;
    assert!(reply.contains("event: message_start"));
    assert!(!reply.contains("message_stop"));
    // A chunked body that ends without its last chunk: the cut is visible.
    assert!(!reply.ends_with("0\r\n\r\n"), "{reply}");
}

#[tokio::test]
async fn stall_and_pace_delay_the_bytes() {
    let mock = MockModel::start_opts(
        "127.0.0.1:0",
        Options {
            pace: Duration::from_millis(20),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (reply, _) = plain(&mock, "!fault stall ms=300\n!text late").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(reply.contains("message_stop"), "{reply}");
    // message_start, block start, ping, 3 deltas, stop, delta, stop: 8 gaps.
    let started = Instant::now();
    plain(&mock, "!pace 50\n!text paced").await;
    assert!(started.elapsed() >= Duration::from_millis(8 * 50));
}
