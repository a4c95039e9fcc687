//! Request bodies from a container, bounded in size and time: a body that
//! grows past its limit, stalls between reads or takes longer than its
//! deadline ends with an error and the reason is kept for the answer.
//! Where a body must be held whole (SigV4 signs its hash), the bytes are
//! drawn from one daemon-wide [`Budget`] and the container's share of it,
//! so that no number of containers can buffer more than the budget.

use super::refusal::Refusal;
use crate::config::BodyLimits;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a guarded body records why it stopped, for the caller that only
/// sees the HTTP client's opaque error.
#[derive(Clone, Default, Debug)]
pub(super) struct Verdict(Arc<Mutex<Option<Refusal>>>);

impl Verdict {
    pub(super) fn get(&self) -> Option<Refusal> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, why: Refusal) -> BoxError {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        Box::new(why)
    }
}

/// A body passed through frame by frame under [`BodyLimits`].
pub(super) struct Guarded<B> {
    inner: B,
    limits: BodyLimits,
    seen: u64,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    verdict: Verdict,
}

impl<B> Guarded<B> {
    pub(super) fn new(inner: B, limits: BodyLimits, verdict: Verdict) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            seen: 0,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.deadline)),
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            verdict,
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limits.max_bytes {
                        return Poll::Ready(Some(Err(this.verdict.set(Refusal::BodyTooLarge))));
                    }
                }
                let next = Instant::now() + this.limits.idle;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.verdict.set(Refusal::Malformed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready()
                    || this.idle.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(this.verdict.set(Refusal::BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes the daemon may hold in buffered request bodies at once.
#[derive(Clone, Debug)]
pub(super) struct Budget {
    total: Arc<Semaphore>,
    share: usize,
}

impl Budget {
    /// `total` bytes for the whole daemon, at most `share` of them for
    /// any one container.
    pub(super) fn new(total: usize, share: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            share: share.min(total),
        }
    }

    /// A container's share: its own semaphore, drawn on alongside the total.
    pub(super) fn share(&self) -> Share {
        Share {
            total: self.total.clone(),
            own: Arc::new(Semaphore::new(self.share)),
        }
    }

    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.total.available_permits()
    }
}

/// One container's claim on the [`Budget`].
#[derive(Clone, Debug)]
pub struct Share {
    total: Arc<Semaphore>,
    own: Arc<Semaphore>,
}

/// Bytes held from the budget; given back when dropped.
#[derive(Debug, Default)]
pub(super) struct Held(Vec<OwnedSemaphorePermit>);

impl Share {
    /// Takes `n` more bytes, or refuses at once: waiting for budget would
    /// let a flood of slow bodies queue up behind each other.
    fn take(&self, n: usize, held: &mut Held) -> Result<(), Refusal> {
        let n = u32::try_from(n).map_err(|_| Refusal::BufferBudgetExhausted)?;
        let own = self
            .own
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::BufferBudgetExhausted)?;
        let total = self
            .total
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::BufferBudgetExhausted)?;
        held.0.push(own);
        held.0.push(total);
        Ok(())
    }
}

/// Reads a guarded body whole, every chunk paid for from `share` first.
/// The bytes stay paid for until the returned [`Held`] is dropped.
pub(super) async fn collect<B>(
    mut body: Guarded<B>,
    share: &Share,
) -> Result<(Bytes, Held), Refusal>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let mut held = Held::default();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| body.verdict.get().unwrap_or(Refusal::Malformed))?;
        if let Ok(data) = frame.into_data() {
            share.take(data.len(), &mut held)?;
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use std::time::Duration;

    fn limits(max: u64) -> BodyLimits {
        BodyLimits {
            max_bytes: max,
            deadline: Duration::from_secs(10),
            idle: Duration::from_secs(2),
        }
    }

    fn chunks(
        n: usize,
        size: usize,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        let items: Vec<Result<Frame<Bytes>, Infallible>> = (0..n)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn a_body_within_its_limit_passes_whole() {
        let v = Verdict::default();
        let body = Guarded::new(chunks(4, 1000), limits(4000), v.clone());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 4000);
        assert_eq!(v.get(), None);
    }

    #[tokio::test]
    async fn a_body_over_its_limit_stops_at_the_first_chunk_past_it() {
        let v = Verdict::default();
        let body = Guarded::new(chunks(1000, 1000), limits(4000), v.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(v.get(), Some(Refusal::BodyTooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let v = Verdict::default();
        use futures_util::StreamExt;
        let head: Result<Frame<Bytes>, Infallible> = Ok(Frame::data(Bytes::from_static(b"head")));
        let stream = futures_util::stream::iter([head]).chain(futures_util::stream::pending());
        let body = Guarded::new(StreamBody::new(stream), limits(4000), v.clone());
        let r = body.collect().await;
        assert!(r.is_err());
        assert_eq!(v.get(), Some(Refusal::BodyTimeout));
    }

    #[tokio::test]
    async fn buffering_draws_on_the_share_and_the_total() {
        let budget = Budget::new(3000, 2000);
        let (a, b) = (budget.share(), budget.share());
        let body = |n| Guarded::new(chunks(n, 1000), limits(1 << 20), Verdict::default());
        let (bytes, held_a) = collect(body(2), &a).await.unwrap();
        assert_eq!(bytes.len(), 2000);
        // `a` has used its share.
        assert_eq!(
            collect(body(1), &a).await.unwrap_err(),
            Refusal::BufferBudgetExhausted
        );
        // `b` gets what is left of the total, and no more.
        assert_eq!(
            collect(body(2), &b).await.unwrap_err(),
            Refusal::BufferBudgetExhausted
        );
        let (_, held_b) = collect(body(1), &b).await.unwrap();
        assert_eq!(budget.available(), 0);
        drop((held_a, held_b));
        assert_eq!(budget.available(), 3000);
    }
}
