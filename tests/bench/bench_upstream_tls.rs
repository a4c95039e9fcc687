//! What the model gateway's pooled upstream saves: sequential model calls
//! through agentbox's gateway to the HTTPS mock model, with one gateway
//! for all calls (pooled, as in the daemon) and with a new gateway per
//! call (every call pays the TCP + TLS handshake). Prints figures and the
//! handshakes the mock counted; run by `just bench-upstream-tls`.
//!
//! ```text
//! bench_upstream_tls [--requests N] [--out FILE]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

// Shared with the suite; this bench does not use every helper.
#[allow(dead_code)]
mod record;

use agentbox::config::Config;
use agentbox::proxy::{AwsEnv, Gateway, ProxyContext};
use mock_model::MockModel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let started = record::start();
    let (mut requests, mut out) = (200, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => requests = args.next().ok_or("--requests N")?.parse()?,
            "--out" => out = Some(args.next().ok_or("--out FILE")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mock = MockModel::start_tls("127.0.0.1:0").await?;

    let pooled = gateway(&mock).await?;
    let before = mock.tls_handshakes();
    let mut first = None;
    let mut later = Vec::with_capacity(requests);
    for i in 0..requests {
        let t = Instant::now();
        model_call(&pooled).await?;
        if i == 0 {
            first = Some(t.elapsed());
        } else {
            later.push(t.elapsed());
        }
    }
    let pooled_handshakes = mock.tls_handshakes() - before;
    later.sort();

    let before = mock.tls_handshakes();
    let mut fresh = Vec::with_capacity(requests);
    for _ in 0..requests {
        // Built outside the timing: only the call (and its handshake) counts.
        let addr = gateway(&mock).await?;
        let t = Instant::now();
        model_call(&addr).await?;
        fresh.push(t.elapsed());
    }
    let fresh_handshakes = mock.tls_handshakes() - before;
    fresh.sort();

    println!(
        "| model call through the gateway (HTTPS upstream) | n | p50 | p90 | TLS handshakes |"
    );
    println!("|---|---|---|---|---|");
    let first = first.ok_or("no requests")?;
    println!(
        "| pooled: first call of a gateway | 1 | {} | - | {pooled_handshakes} (all {requests} calls) |",
        ms(first)
    );
    println!(
        "| pooled: later calls | {} | {} | {} | 0 more |",
        later.len(),
        ms(pct(&later, 50)),
        ms(pct(&later, 90))
    );
    println!(
        "| new gateway per call (no pool) | {requests} | {} | {} | {fresh_handshakes} |",
        ms(pct(&fresh, 50)),
        ms(pct(&fresh, 90))
    );
    let millis =
        |v: &[Duration]| record::summarize(v.iter().map(|d| d.as_secs_f64() * 1e3).collect());
    record::set_table("model call through the gateway (HTTPS upstream), ms");
    record::record("pooled: first call of a gateway", &millis(&[first]));
    record::record("pooled: later calls", &millis(&later));
    record::record("new gateway per call (no pool)", &millis(&fresh));
    record::note(&format!(
        "TLS handshakes the mock counted: {pooled_handshakes} for all {requests} pooled calls, \
         {fresh_handshakes} for {requests} calls with a new gateway each"
    ));
    record::save("upstream-tls", started, out.as_deref());
    Ok(())
}

/// A gateway to the mock on a loopback port; its accept loop runs until
/// the process ends.
async fn gateway(mock: &MockModel) -> Res<String> {
    let text = format!("[model]\nanthropic_base_url = \"{}\"\n", mock.url());
    let mut cfg = Config::from_toml(&text, Vec::new())?;
    cfg.model.extra_ca_file = mock
        .ca_file()
        .ok_or("the mock has no CA file")?
        .display()
        .to_string();
    cfg.validate()?;
    let gw = Arc::new(Gateway::new(&cfg, None, AwsEnv::default())?);
    let c = gw.container(ProxyContext {
        container_id: "bench".into(),
        tenant_id: "bench".into(),
        conversation_id: "bench".into(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            gw.accept(&c, s);
        }
    });
    Ok(addr)
}

/// One streamed `POST /v1/messages` on a new client connection, read to
/// its end.
async fn model_call(addr: &str) -> Res<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let body =
        r#"{"model":"claude-bench","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    s.write_all(
        format!(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    if !out.starts_with(b"HTTP/1.1 200") || !out.ends_with(b"\n\n") {
        return Err(format!("bad answer: {}", String::from_utf8_lossy(&out)).into());
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
