//! The provider's answer on its way to the client, streamed as it comes: read as it passes
//! (usage, the first token's time, whether it carried an answer: [`Sniff`]), aborted when a
//! stream goes silent for `idle_timeout`, and accounted exactly once however it ends
//! ([`OnEnd`]). [`GatewayBody`] is what the client gets: such a stream, or a small body of
//! the gateway's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::answer::AnswerFacts;
use switchyard_core::event::BodyEnd;
use tokio::time::Sleep;

use crate::answer::JsonAnswer;
use crate::conn::Active;
use crate::errors::{BoxError, StreamIdle};
use crate::features::{AnswerDetails, MAX_TEXT};
use crate::headers::OwnHeaders;
use crate::pool::Lease;
use crate::sniff::SseScan;
use crate::upstream::UpstreamBody;

/// What was learned from a response body by the time it ended.
#[derive(Debug, Clone, Default)]
pub struct BodySummary {
    pub bytes: u64,
    /// Whether it carried an answer and how it ended, when it was read (a JSON or SSE body).
    pub facts: Option<AnswerFacts>,
    /// `(prompt_tokens, completion_tokens)` when the provider reported usage.
    pub usage: Option<(u64, u64)>,
    /// SSE: when the first token (or, failing that, the first event) arrived.
    pub first_token: Option<Instant>,
    pub stream: bool,
    /// The answer's text and tool calls, when they were read (see [`Sniff::for_content_type`]).
    pub details: Option<Box<AnswerDetails>>,
}

/// Called once when a response body ends, however it ends.
pub trait OnEnd: Send + 'static {
    fn on_end(self: Box<Self>, end: BodyEnd, summary: BodySummary);
}

/// How the response body is read as it passes.
pub enum Sniff {
    None,
    /// A JSON body: read its usage and whether it carried an answer (and, for a comparison,
    /// keep a bounded copy). Boxed, as the SSE scan is: an open stream's body stays small.
    Json(Box<JsonAnswer>, Option<BytesMut>),
    /// An SSE stream (optionally stripping the usage chunk the gateway asked for).
    Sse(Box<SseScan>),
}

impl Sniff {
    /// Chooses by the response's content type.
    /// `capture`: also read the answer's text and tool calls (a request whose features
    /// need them, a shadow comparison).
    pub fn for_content_type(
        content_type: Option<&[u8]>,
        strip_usage: bool,
        capture: bool,
    ) -> Sniff {
        let ct = content_type.unwrap_or_default();
        if ct.starts_with(b"text/event-stream") {
            let scan = SseScan::new(strip_usage);
            Sniff::Sse(Box::new(if capture { scan.capturing() } else { scan }))
        } else if ct.starts_with(b"application/json") {
            Sniff::Json(Box::default(), capture.then(BytesMut::new))
        } else {
            Sniff::None
        }
    }

    fn summary(&mut self, bytes: u64) -> BodySummary {
        match self {
            Sniff::None => BodySummary {
                bytes,
                ..BodySummary::default()
            },
            Sniff::Json(j, copy) => BodySummary {
                bytes,
                facts: Some(j.facts()),
                usage: j.usage(),
                details: copy
                    .as_ref()
                    .and_then(|c| AnswerDetails::of_json(c))
                    .map(Box::new),
                ..BodySummary::default()
            },
            Sniff::Sse(s) => BodySummary {
                bytes,
                facts: s.facts(),
                usage: s.usage(),
                first_token: s.first_token.or(s.first_event),
                stream: true,
                details: s.details.take(),
            },
        }
    }
}

pin_project! {
    pub struct ResponseBody {
        #[pin]
        inner: UpstreamBody,
        // Armed at the first read that waits: most JSON answers end within the read
        // that brought their head, and never need it.
        #[pin]
        idle: Option<Sleep>,
        idle_timeout: Duration,
        bytes: u64,
        sniff: Sniff,
        upstream_done: bool,
        on_end: Option<Box<dyn OnEnd>>,
        // The connection the body comes on: back to its pool once the body is read whole.
        lease: Option<Lease>,
        // Written with the head by the server that writes it (taken then).
        own: Option<OwnHeaders>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cb) = this.on_end.take() {
                cb.on_end(BodyEnd::ClientGone, this.sniff.summary(*this.bytes));
            }
        }
    }
}

/// The body was read to its end: its connection can carry the next request.
fn give_back(lease: &mut Option<Lease>) {
    if let Some(l) = lease.take() {
        l.release();
    }
}

impl ResponseBody {
    pub fn new(
        inner: UpstreamBody,
        lease: Lease,
        idle_timeout: Duration,
        sniff: Sniff,
        on_end: Box<dyn OnEnd>,
        own: OwnHeaders,
    ) -> Self {
        let mut on_end = Some(on_end);
        let mut lease = Some(lease);
        let mut sniff = sniff;
        if inner.is_end_stream() {
            // Empty bodies are never polled: account for them now.
            if let Some(cb) = on_end.take() {
                cb.on_end(BodyEnd::Complete, sniff.summary(0));
            }
            give_back(&mut lease);
        }
        ResponseBody {
            inner,
            idle: None,
            idle_timeout,
            bytes: 0,
            sniff,
            upstream_done: false,
            on_end,
            lease,
            own: Some(own),
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
        loop {
            if *this.upstream_done {
                // A stripped stream may hold a last partial event: hand it over, then end.
                if let (Sniff::Sse(scan), Some(_)) = (&mut *this.sniff, this.on_end.as_ref()) {
                    let rest = scan.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
                if let Some(cb) = this.on_end.take() {
                    cb.on_end(BodyEnd::Complete, this.sniff.summary(*this.bytes));
                }
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let last = this.inner.is_end_stream();
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            *this.bytes += data.len() as u64;
                            let out = match this.sniff {
                                Sniff::None => data,
                                Sniff::Json(j, copy) => {
                                    j.feed(&data);
                                    if let Some(c) = copy {
                                        if c.len() + data.len() <= MAX_TEXT {
                                            c.extend_from_slice(&data);
                                        }
                                    }
                                    data
                                }
                                Sniff::Sse(s) => {
                                    let out = s.feed(data);
                                    if last {
                                        let rest = s.finish();
                                        if rest.is_empty() {
                                            out
                                        } else {
                                            [out, rest].concat().into()
                                        }
                                    } else {
                                        out
                                    }
                                }
                            };
                            Frame::data(out)
                        }
                        Err(frame) => frame,
                    };
                    if last {
                        // hyper stops polling once a body says it ended (e.g. content-length
                        // reached): account now, not on a poll that never comes.
                        *this.upstream_done = true;
                        give_back(this.lease);
                        if let Some(cb) = this.on_end.take() {
                            cb.on_end(BodyEnd::Complete, this.sniff.summary(*this.bytes));
                        }
                    } else if let Some(idle) = this.idle.as_mut().as_pin_mut() {
                        let deadline = tokio::time::Instant::now() + *this.idle_timeout;
                        idle.reset(deadline);
                    }
                    // An SSE rewrite may hold a frame back until its event is complete.
                    if frame.data_ref().is_some_and(Bytes::is_empty) {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(cb) = this.on_end.take() {
                        cb.on_end(BodyEnd::Broken, this.sniff.summary(*this.bytes));
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    *this.upstream_done = true;
                    give_back(this.lease);
                }
                Poll::Pending => {
                    if this.idle.is_none() {
                        this.idle.set(Some(tokio::time::sleep(*this.idle_timeout)));
                    }
                    let idle = this.idle.as_mut().as_pin_mut().expect("armed just above");
                    ready!(idle.poll(cx));
                    if let Some(cb) = this.on_end.take() {
                        cb.on_end(BodyEnd::Idle, this.sniff.summary(*this.bytes));
                    }
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(*this.idle_timeout)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream_done && self.on_end.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.sniff {
            // Stripping changes the length.
            Sniff::Sse(_) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

/// What the gateway answers with: a provider's stream, or a small body of its own. The
/// stream is boxed: the answer is moved several times on its way to the client, and each
/// place it passes through is kept in the connection's future for as long as it streams.
pub enum GatewayBody {
    Full {
        data: Option<Bytes>,
        active: Option<Active>,
    },
    Upstream {
        body: Pin<Box<ResponseBody>>,
        active: Option<Active>,
    },
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        GatewayBody::Full {
            data: Some(data.into()),
            active: None,
        }
    }

    pub fn upstream(body: ResponseBody) -> Self {
        GatewayBody::Upstream {
            body: Box::pin(body),
            active: None,
        }
    }

    /// The gateway's own headers for this answer's head, once: see [`OwnHeaders`].
    pub fn take_own_headers(&mut self) -> Option<OwnHeaders> {
        match self {
            GatewayBody::Full { .. } => None,
            GatewayBody::Upstream { body, .. } => body.as_mut().project().own.take(),
        }
    }

    /// The connection counts this answer as active until the body is dropped.
    pub fn hold(&mut self, guard: Active) {
        match self {
            GatewayBody::Full { active, .. } | GatewayBody::Upstream { active, .. } => {
                *active = Some(guard)
            }
        }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(data: Bytes) -> Self {
        GatewayBody::full(data)
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Full { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBody::Upstream { body, .. } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full { data, .. } => data.is_none(),
            GatewayBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
