//! Bodies that stream through the gateway without being buffered.
//!
//! [`RequestBody`] carries the client's body upstream, enforces the size limit as bytes pass,
//! and can be handed back untouched when the connect attempt failed (for failover).
//! [`ResponseBody`] carries the provider's body to the client, aborts a stream that goes
//! silent for `idle_timeout`, and reports how the exchange ended exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went over `server.max_body_size`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

/// The provider's stream went silent for longer than `idle_timeout`.
#[derive(Debug)]
pub struct StreamIdle(pub Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

/// Where the client's body waits until the upstream connection takes it. If the connect
/// fails, it is still here and the request can go to the other provider: nothing was sent.
pub type BodySlot = Arc<Mutex<Option<Incoming>>>;

pub struct RequestBody {
    slot: Option<BodySlot>,
    inner: Option<Incoming>,
    hint: SizeHint,
    limit: u64,
    seen: u64,
}

impl RequestBody {
    /// Returns the body and, when it is not empty, the slot to reclaim it from.
    pub fn new(incoming: Incoming, limit: u64) -> (Self, Option<BodySlot>) {
        let hint = incoming.size_hint();
        if incoming.is_end_stream() {
            // Nothing to send, nothing to reclaim: failover is always possible.
            return (
                RequestBody {
                    slot: None,
                    inner: None,
                    hint,
                    limit,
                    seen: 0,
                },
                None,
            );
        }
        let slot: BodySlot = Arc::new(Mutex::new(Some(incoming)));
        (
            RequestBody {
                slot: Some(slot.clone()),
                inner: None,
                hint,
                limit,
                seen: 0,
            },
            Some(slot),
        )
    }

    /// A body for a retry: the reclaimed original, or nothing.
    pub fn from_slot(slot: Option<BodySlot>, hint: SizeHint, limit: u64) -> Self {
        RequestBody {
            slot,
            inner: None,
            hint,
            limit,
            seen: 0,
        }
    }

    pub fn hint(&self) -> SizeHint {
        self.hint
    }

    pub fn empty() -> Self {
        RequestBody {
            slot: None,
            inner: None,
            hint: SizeHint::with_exact(0),
            limit: 0,
            seen: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            match this.slot.take() {
                Some(slot) => this.inner = slot.lock().unwrap_or_else(|e| e.into_inner()).take(),
                None => return Poll::Ready(None),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(i) => i.is_end_stream(),
            None => self.slot.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// How a proxied exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The whole body reached the client.
    Complete,
    /// The provider broke the stream part-way.
    Broken,
    /// The provider's stream went silent for `idle_timeout`.
    Idle,
    /// The client went away first; not the provider's fault.
    ClientGone,
}

/// Called once when a response body ends, however it ends.
pub trait OnEnd: Send + 'static {
    fn on_end(self: Box<Self>, end: End, body_bytes: u64);
}

pin_project! {
    pub struct ResponseBody {
        #[pin]
        inner: Incoming,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        bytes: u64,
        on_end: Option<Box<dyn OnEnd>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cb) = this.on_end.take() {
                cb.on_end(End::ClientGone, *this.bytes);
            }
        }
    }
}

impl ResponseBody {
    pub fn new(inner: Incoming, idle_timeout: Duration, on_end: Box<dyn OnEnd>) -> Self {
        let mut on_end = Some(on_end);
        if inner.is_end_stream() {
            // Empty bodies are never polled: account for them now.
            if let Some(cb) = on_end.take() {
                cb.on_end(End::Complete, 0);
            }
        }
        ResponseBody {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            bytes: 0,
            on_end,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    if let Some(cb) = this.on_end.take() {
                        cb.on_end(End::Complete, *this.bytes);
                    }
                } else {
                    let deadline = tokio::time::Instant::now() + *this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(cb) = this.on_end.take() {
                    cb.on_end(End::Broken, *this.bytes);
                }
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                if let Some(cb) = this.on_end.take() {
                    cb.on_end(End::Complete, *this.bytes);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle.poll(cx));
                if let Some(cb) = this.on_end.take() {
                    cb.on_end(End::Idle, *this.bytes);
                }
                Poll::Ready(Some(Err(Box::new(StreamIdle(*this.idle_timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// What the gateway answers with: a provider's stream, or a small body of its own.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Full { data: Option<Bytes> },
        Upstream { #[pin] body: ResponseBody },
    }
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        GatewayBody::Full {
            data: Some(data.into()),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Upstream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full { data } => data.is_none(),
            GatewayBody::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Upstream { body } => body.size_hint(),
        }
    }
}
