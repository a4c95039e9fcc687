//! The model-gateway bridge: a loopback TCP port inside the container whose
//! connections are spliced onto the host proxy's Unix socket.
//!
//! The container has no network; this is its only way out, and everything
//! on it goes through the host proxy's policy.

use std::path::PathBuf;
use tokio::net::{TcpListener, UnixStream};

/// Accepts connections until the listener fails. A connection whose proxy
/// socket is unreachable is closed at once, so the client sees an error
/// instead of a hang.
pub async fn serve(listener: TcpListener, proxy_socket: PathBuf) -> std::io::Result<()> {
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let path = proxy_socket.clone();
        tokio::spawn(async move {
            let Ok(mut unix) = UnixStream::connect(&path).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn bytes_flow_both_ways() {
        let dir = std::env::temp_dir().join(format!("bridge-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("proxy.sock");
        let _ = std::fs::remove_file(&sock);
        let upstream = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(serve(tcp, sock));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut out = [0u8; 4];
        c.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"PING");
        let _ = std::fs::remove_dir_all(dir);
    }
}
