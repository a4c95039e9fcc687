//! Loopback benchmark of the egress proxy against squid, tinyproxy and no
//! proxy at all. Run by `just bench-proxy` (tests/bench/bench-proxy.sh),
//! which installs and starts squid and tinyproxy; prints figures only.
//!
//! ```text
//! bench_proxy serve PORT MODEL_PORT           # agentbox's proxy on 127.0.0.1:PORT,
//!                                             # its model gateway to a model stand-in
//! bench_proxy run NAME=ADDR... [--mib N] [--requests N] [--gateway ADDR --model ADDR] [--out FILE]
//! ```
//!
//! `run` measures, for each proxy: CONNECT-tunnel download throughput (one
//! tunnel, N MiB), and the latency of small requests each on a new
//! connection, through a CONNECT tunnel and as absolute-form plain HTTP.
//! `direct` (no proxy) is the baseline for the added latency. With
//! `--gateway`, also the model gateway's latency: `POST /v1/messages` with
//! a 4 KiB body, through agentbox's gateway and directly to the stand-in
//! (which reads the whole body, as the model API does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

// Shared with the suite; this bench does not use every helper.
#[allow(dead_code)]
mod record;

use agentbox::config::Config;
use agentbox::proxy::{AwsEnv, Gateway, ProxyContext};
use record::summarize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let port = args.get(1).ok_or("serve PORT MODEL_PORT")?.parse()?;
            let model = args.get(2).ok_or("serve PORT MODEL_PORT")?.parse()?;
            serve(port, model).await
        }
        Some("run") => run(&args[1..]).await,
        _ => {
            Err("usage: bench_proxy serve PORT | run NAME=ADDR... [--mib N] [--requests N]".into())
        }
    }
}

/// agentbox's proxy on TCP, allowing `bench.test` (-> 127.0.0.1) on any
/// port, its model gateway forwarding to a stand-in on `model_port`.
async fn serve(port: u16, model_port: u16) -> Res<()> {
    model_server(model_port).await?;
    let text = format!(
        r#"
[model]
anthropic_base_url = "http://127.0.0.1:{model_port}"
[proxy]
allowed_domains = ["bench.test"]
allowed_ports = []
allow_private_cidrs = ["127.0.0.0/8"]
max_connections_per_container = 1024
[proxy.resolve]
"bench.test" = "127.0.0.1"
"#
    );
    let mut cfg = Config::from_toml(&text, Vec::new())?;
    // Every port: the upstreams listen on ephemeral ones.
    cfg.proxy.allowed_ports = (1..=u16::MAX).collect();
    cfg.validate()?;
    let gw = Arc::new(Gateway::new(&cfg, None, AwsEnv::default())?);
    let c = gw.container(ProxyContext {
        container_id: "bench".into(),
        tenant_id: "bench".into(),
        conversation_id: "bench".into(),
    });
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("agentbox proxy listening on 127.0.0.1:{port}");
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        gw.accept(&c, s);
    }
}

struct Opts {
    proxies: Vec<(String, String)>,
    mib: usize,
    requests: usize,
}

async fn run(args: &[String]) -> Res<()> {
    let mut o = Opts {
        proxies: vec![("direct".into(), String::new())],
        mib: 1024,
        requests: 2000,
    };
    let started = record::start();
    let (mut gateway, mut model, mut out) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = Some(it.next().ok_or("--out FILE")?.clone()),
            "--mib" => o.mib = it.next().ok_or("--mib N")?.parse()?,
            "--requests" => o.requests = it.next().ok_or("--requests N")?.parse()?,
            "--gateway" => gateway = Some(it.next().ok_or("--gateway ADDR")?.clone()),
            "--model" => model = Some(it.next().ok_or("--model ADDR")?.clone()),
            pair => {
                let (n, addr) = pair.split_once('=').ok_or("NAME=ADDR")?;
                o.proxies.push((n.into(), addr.into()));
            }
        }
    }
    let blast = blast_server(o.mib).await?;
    let http = http_server().await?;
    println!(
        "{:<10} {:>12} {:>11} {:>11} {:>12} {:>12} {:>11} {:>11}",
        "proxy",
        "tunnel MiB/s",
        "CONNECT p50",
        "CONNECT p99",
        "+p50 vs dir",
        "+p99 vs dir",
        "HTTP p50",
        "HTTP p99"
    );
    let mut base: Option<(Duration, Duration)> = None;
    for (name, addr) in &o.proxies {
        let proxy = (!addr.is_empty()).then_some(addr.as_str());
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(throughput(proxy, blast, o.mib).await?);
        }
        let mibps = runs.iter().copied().fold(0.0f64, f64::max);
        let tunnel = latencies(o.requests, || small_request(proxy, http, Mode::Tunnel)).await?;
        let plain = latencies(o.requests, || small_request(proxy, http, Mode::Plain)).await?;
        record::set_table(&format!("tunnel download of {} MiB, 3 runs (MiB/s)", o.mib));
        record::record(name, &summarize(runs));
        record::set_table("CONNECT, then one small request, each on a new connection (us)");
        record::record(name, &micros(&tunnel));
        record::set_table("absolute-form plain HTTP, each on a new connection (us)");
        record::record(name, &micros(&plain));
        let (p50, p99) = (pct(&tunnel, 50), pct(&tunnel, 99));
        let b = *base.get_or_insert((p50, p99));
        println!(
            "{name:<10} {mibps:>12.0} {:>11} {:>11} {:>12} {:>12} {:>11} {:>11}",
            us(p50),
            us(p99),
            us(p50.saturating_sub(b.0)),
            us(p99.saturating_sub(b.1)),
            us(pct(&plain, 50)),
            us(pct(&plain, 99)),
        );
    }
    if let (Some(gateway), Some(model)) = (gateway, model) {
        println!(
            "\n{:<22} {:>11} {:>11} {:>12} {:>12}",
            "model call (4 KiB)", "p50", "p99", "+p50 vs dir", "+p99 vs dir"
        );
        let direct = latencies(o.requests, || model_call(&model)).await?;
        let through = latencies(o.requests, || model_call(&gateway)).await?;
        let (d50, d99) = (pct(&direct, 50), pct(&direct, 99));
        record::set_table("model call: POST /v1/messages with a 4 KiB body (us)");
        for (name, v) in [("direct", &direct), ("agentbox gateway", &through)] {
            record::record(name, &micros(v));
            let (p50, p99) = (pct(v, 50), pct(v, 99));
            println!(
                "{name:<22} {:>11} {:>11} {:>12} {:>12}",
                us(p50),
                us(p99),
                us(p50.saturating_sub(d50)),
                us(p99.saturating_sub(d99)),
            );
        }
    }
    record::save("proxy", started, out.as_deref());
    Ok(())
}

/// A latency sample in microseconds, for the raw results.
fn micros(v: &[Duration]) -> record::Summary {
    summarize(v.iter().map(|d| d.as_secs_f64() * 1e6).collect())
}

/// The model API's stand-in: reads the whole request body (by its
/// `Content-Length`), then answers a 100-byte body.
async fn model_server(port: u16) -> Res<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(head) = read_head(&mut s).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let end = text.find("\r\n\r\n").map_or(text.len(), |p| p + 4);
                let want: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut have = head.len() - end;
                let mut b = vec![0u8; 16 * 1024];
                while have < want {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let body = "x".repeat(100);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{body}"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// One `POST /v1/messages` with a 4 KiB body on a new connection to `addr`.
async fn model_call(addr: &str) -> Res<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let body = format!("{{\"messages\":\"{}\"}}", "y".repeat(4096 - 16));
    s.write_all(
        format!(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    drain_response(&mut s).await
}

fn us(d: Duration) -> String {
    format!("{} us", d.as_micros())
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn latencies<F, Fut>(n: usize, mut f: F) -> Res<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    for _ in 0..n / 10 {
        f().await?; // warm-up
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v)
}

/// Upstream that sends `mib` MiB on every connection, then closes.
async fn blast_server(mib: usize) -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        let chunk = vec![0x5au8; 256 * 1024];
        while let Ok((mut s, _)) = l.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                for _ in 0..mib * 4 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Upstream HTTP server: one small answer per connection.
async fn http_server() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if read_head(&mut s).await.is_ok() {
                    let body = "x".repeat(100);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{body}"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    Ok(port)
}

/// Reads a head; returns it and whatever came after it in the same reads.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Res<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut b = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err("eof before end of head".into());
        }
        buf.extend_from_slice(&b[..n]);
    }
    Ok(buf)
}

/// Opens a tunnel to `bench.test:port` (squid and tinyproxy get the
/// address; agentbox refuses IP literals, and resolves the name from its
/// fixed table, so neither side does a DNS lookup).
/// Returns the stream and any tunnel bytes read along with the answer.
async fn connect_via(proxy: Option<&str>, port: u16) -> Res<(TcpStream, usize)> {
    let Some(proxy) = proxy else {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        return Ok((s, 0));
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let host = target_host(proxy);
    s.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await?;
    let head = read_head(&mut s).await?;
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
    }
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    Ok((s, head.len() - end))
}

fn target_host(proxy: &str) -> &'static str {
    if std::env::var("AGENTBOX_BENCH_ADDR").is_ok_and(|a| a == proxy) {
        "bench.test"
    } else {
        "127.0.0.1"
    }
}

async fn throughput(proxy: Option<&str>, port: u16, mib: usize) -> Res<f64> {
    let t = Instant::now();
    let (mut s, mut total) = connect_via(proxy, port).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    if total != mib * 1024 * 1024 {
        return Err(format!("short read: {total}").into());
    }
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

enum Mode {
    Tunnel,
    Plain,
}

async fn small_request(proxy: Option<&str>, port: u16, mode: Mode) -> Res<()> {
    let (mut s, target) = match (mode, proxy) {
        (Mode::Plain, Some(p)) => {
            let s = TcpStream::connect(p).await?;
            s.set_nodelay(true)?;
            (s, format!("http://{}:{port}/", target_host(p)))
        }
        (_, proxy) => (connect_via(proxy, port).await?.0, "/".to_owned()),
    };
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    drain_response(&mut s).await
}

async fn drain_response<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Res<()> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    if !buf.ends_with(&[b'x'; 100]) {
        return Err(format!("bad answer: {}", String::from_utf8_lossy(&buf)).into());
    }
    Ok(())
}
