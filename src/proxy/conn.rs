//! One client connection: read and check the first request head, pick the
//! route, serve exactly one request (or one tunnel), write the decision.
//!
//! One request per connection is deliberate: the head that was checked is
//! the only one the connection carries, so no second, unchecked request
//! can ride behind it (pipelining and smuggling have nowhere to go).

use super::decision::{Decision, Route};
use super::io::{Counted, Rewind};
use super::refusal::Refusal;
use super::request::{parse_head, Head, Target, MAX_HEAD};
use super::{forward, ContainerProxy, Gateway};
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the test hook that kills this container's proxy task
/// (only in a build with the `fault-injection` feature, run with
/// `AGENTBOX_TEST_HOOKS=1`).
pub const KILL_HOOK_PATH: &str = "/__agentbox/test/kill-proxy-task";

pub(super) async fn handle<S>(proxy: Arc<Gateway>, c: Arc<ContainerProxy>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let (mut stream, counters) = Counted::new(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(Some(head))) => Ok(head),
        // Closed before sending anything: no request, nothing to record.
        Ok(Ok(None)) => return,
        Ok(Err(why)) => Err(why),
        Err(_) => Err(Refusal::HeadTimeout),
    };
    let decision = match head {
        Err(why) => {
            let _ = stream.write_all(&why.raw_response()).await;
            let _ = stream.shutdown().await;
            Decision::blocked(Route::None, "", "", 0, why)
        }
        Ok(head) => match &head.target {
            Target::Tunnel { host, port } => {
                let early = buf.len() > head.len;
                forward::tunnel(&proxy, &c, &mut stream, early, &head.method, host, *port).await
            }
            _ => serve_http(proxy, c.clone(), stream, buf, head).await,
        },
    };
    decision.emit(&c.ctx, &c.audit_gate, counters.get(), started);
}

/// Reads until one complete head is buffered: `None` on a clean EOF first.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<Head>, Refusal> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf)? {
                return Ok(Some(head));
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(Refusal::HeadTooLarge);
        }
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(Refusal::Malformed),
            Ok(_) => {}
        }
    }
}

/// Hands the connection (head bytes included) to hyper for exactly one
/// request, routed by the head checked above.
async fn serve_http<S>(
    proxy: Arc<Gateway>,
    c: Arc<ContainerProxy>,
    stream: Counted<S>,
    buf: BytesMut,
    head: Head,
) -> Decision
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let decided: Arc<Mutex<Option<Decision>>> = Arc::default();
    let route = match head.target {
        Target::Forward { .. } => Route::Forward,
        _ => Route::Gateway,
    };
    let (method, (host, port)) = (head.method.clone(), head.host_port());
    let fallback = Decision::blocked(route, &method, host, port, Refusal::Malformed);
    // One request per connection, so the slot is held for the whole
    // exchange, the streamed answer included.
    let slot = match route {
        Route::Gateway => Some(c.gateway_slots.clone().try_acquire_owned().ok()),
        _ => None,
    };
    let busy = matches!(slot, Some(None));
    let head = Arc::new(head);
    let svc = {
        let decided = decided.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (proxy, c, head, decided) =
                (proxy.clone(), c.clone(), head.clone(), decided.clone());
            async move {
                let (resp, decision) = match &head.target {
                    Target::Forward {
                        host,
                        port,
                        path_and_query,
                    } => forward::http(&proxy, &c, req, host, *port, path_and_query).await,
                    #[cfg(feature = "fault-injection")]
                    _ if proxy.test_hooks && req.uri().path() == KILL_HOOK_PATH => {
                        c.kill_serve_task();
                        let d =
                            Decision::allowed(Route::Gateway, "POST", "test-hook", 0, "test_hook");
                        (
                            super::text_response(hyper::StatusCode::OK, "killed\n".into()),
                            d,
                        )
                    }
                    _ if busy => proxy
                        .model
                        .refuse(req.method().as_str(), Refusal::GatewayBusy),
                    _ => proxy.model.handle(req, &c.buffer_share, &c.ctx).await,
                };
                *decided.lock().unwrap_or_else(|e| e.into_inner()) = Some(decision);
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let io = TokioIo::new(Rewind::new(buf.freeze(), stream));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, svc)
        .await;
    drop(slot);
    let decision = decided.lock().unwrap_or_else(|e| e.into_inner()).take();
    decision.unwrap_or(fallback)
}
