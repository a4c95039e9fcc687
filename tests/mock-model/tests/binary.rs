//! The `mock-model` binary: announces its URL on stdout and serves the
//! recorded-request listing for out-of-process users.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

async fn get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .expect("response body")
}

#[tokio::test]
async fn binary_prints_url_and_lists_requests() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-model"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mock-model");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
        .await
        .expect("listening line in time")
        .expect("read stdout")
        .expect("a line");
    let url = line
        .strip_prefix("mock-model listening on ")
        .expect("announce line");
    let addr = url.strip_prefix("http://").expect("plain http url");

    get(addr, "/api/hello").await;
    let listed: Vec<Value> =
        serde_json::from_str(&get(addr, "/_mock/requests").await).expect("JSON list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["method"], "GET");
    assert_eq!(listed[0]["path"], "/api/hello");
}
