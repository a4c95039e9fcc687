//! The listener against raw TCP clients, with limits in milliseconds.

use super::*;
use axum::routing::get;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const STREAM: &[u8] = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n";

fn limits(head_ms: u64, idle_ms: u64, max: usize) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(head_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections: max,
    }
}

/// `/` answers at once; `/stream` sends ten chunks 100 ms apart, a second
/// in all, longer than any timeout used here.
fn app() -> axum::Router {
    let stream = || async {
        let chunks = futures_util::stream::unfold(0u8, |i| async move {
            if i == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(format!("chunk{i};")), i + 1))
        });
        axum::body::Body::from_stream(chunks)
    };
    axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/stream", get(stream))
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start(limits: Limits) -> Server {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve("test", listener, app(), limits, None, rx));
    Server { addr, stop, task }
}

/// Reads until the peer closes or `within` passes; true if it closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// Reads one response, until its body holds `end`.
async fn response(s: &mut TcpStream, end: &str, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text
                .split_once("\r\n\r\n")
                .is_some_and(|(_, body)| body.contains(end))
            {
                return Some(text.into_owned());
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

#[tokio::test]
async fn a_half_open_connection_is_closed_by_the_header_timeout() {
    let srv = start(limits(300, 10_000, 16)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A byte now and then does not reset the head's clock.
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.write_all(b"X-Slow: 1\r\n").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(280), "closed after {took:?}");
    // A connection that sends nothing at all goes the same way.
    let mut quiet = TcpStream::connect(srv.addr).await.unwrap();
    assert!(closed_within(&mut quiet, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_kept_alive_connection_gets_the_idle_timeout_not_the_head_timeout() {
    let srv = start(limits(200, 1_000, 16)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    assert!(response(&mut s, "ok", Duration::from_secs(2))
        .await
        .is_some());
    // Idle for longer than the head timeout: still open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(GET).await.unwrap();
    assert!(response(&mut s, "ok", Duration::from_secs(2))
        .await
        .is_some());
    // Idle past the idle timeout: closed.
    let idle = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(idle.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_long_response_outlives_both_timeouts() {
    let srv = start(limits(150, 150, 16)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(STREAM).await.unwrap();
    let body = response(&mut s, "chunk9;", Duration::from_secs(5)).await;
    assert!(body.is_some_and(|b| b.contains("chunk0;")));
}

#[tokio::test]
async fn at_the_cap_new_connections_wait_for_a_free_slot() {
    let srv = start(limits(10_000, 10_000, 2)).await;
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET / HT").await.unwrap();
        held.push(s);
    }
    // The kernel completes the handshake; the daemon does not serve it.
    let mut third = TcpStream::connect(srv.addr).await.unwrap();
    third.write_all(GET).await.unwrap();
    assert!(response(&mut third, "ok", Duration::from_millis(400))
        .await
        .is_none());
    drop(held.pop());
    assert!(response(&mut third, "ok", Duration::from_secs(2))
        .await
        .is_some());
}

#[tokio::test]
async fn stop_drains_streams_in_flight_and_refuses_new_connections() {
    let srv = start(limits(5_000, 5_000, 16)).await;
    let mut streaming = TcpStream::connect(srv.addr).await.unwrap();
    streaming.write_all(STREAM).await.unwrap();
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert!(response(&mut idle, "ok", Duration::from_secs(2))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    srv.stop.send(true).unwrap();
    // The idle connection closes at once, the stream runs to its end.
    assert!(closed_within(&mut idle, Duration::from_millis(500)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(srv.addr).await.is_err());
    assert!(!srv.task.is_finished());
    let body = response(&mut streaming, "chunk9;", Duration::from_secs(5)).await;
    assert!(body.is_some(), "the stream was cut");
    tokio::time::timeout(Duration::from_secs(2), srv.task)
        .await
        .expect("serve returns once the last connection closed")
        .unwrap();
}

#[test]
fn connection_errors_are_told_from_resource_errors() {
    use std::io::{Error, ErrorKind};
    assert!(is_connection_error(&Error::from(
        ErrorKind::ConnectionAborted
    )));
    assert!(is_connection_error(&Error::from_raw_os_error(libc::EPROTO)));
    assert!(!is_connection_error(&Error::from_raw_os_error(
        libc::EMFILE
    )));
    assert!(!is_connection_error(&Error::from_raw_os_error(
        libc::ENFILE
    )));
}
