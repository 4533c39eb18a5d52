//! Bodies that stream through the gateway without being buffered.
//!
//! [`RequestBody`] carries the client's body upstream and enforces the size limit as bytes
//! pass. It is first polled once a connection is up, so a request whose connect failed
//! still holds all of it (for failover).
//! [`ResponseBody`] carries the provider's body to the client, aborts a stream that goes
//! silent for `idle_timeout`, and reports how the exchange ended exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::answer::{JsonAnswer, RequestScan};
use crate::sniff::{text_of_json, SseScan, MAX_TEXT};
use crate::upstream::Lease;
use bytes::BytesMut;
use switchyard_core::answer::AnswerFacts;

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

/// Reading the client's request body failed: the upload was malformed, or the client went
/// away part-way. The client's doing, never the provider's.
#[derive(Debug)]
pub struct ClientBodyError {
    /// The client hung up (or its connection broke) rather than sending a bad body.
    pub gone: bool,
    source: BoxError,
}

impl ClientBodyError {
    /// A body that must be JSON and is not.
    pub fn not_json() -> Self {
        ClientBodyError {
            gone: false,
            source: "it is not valid JSON (the API requires a JSON body)".into(),
        }
    }

    pub fn of(e: BoxError) -> Self {
        // hyper reports a malformed chunked body as InvalidInput/InvalidData; an upload cut
        // short as UnexpectedEof or an incomplete message.
        let mut malformed = false;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                malformed = matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                );
            }
            cur = err.source();
        }
        ClientBodyError {
            gone: !malformed,
            source: e,
        }
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gone {
            write!(
                f,
                "the client stopped sending its request body: {}",
                self.source
            )
        } else {
            write!(f, "the client's request body is malformed: {}", self.source)
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// What the request path learns from the body as it streams upstream (it is polled in
/// hyper's connection task): read when the exchange is accounted.
#[derive(Debug, Default)]
pub struct RequestShared {
    pub model: OnceLock<Box<str>>,
    /// The request's own `max_tokens` (or `max_completion_tokens`, `max_output_tokens`):
    /// an answer cut at it is what the client asked for.
    pub max_tokens: OnceLock<u64>,
    /// When the whole body had been handed to the provider's connection: the provider's
    /// first-byte timeout counts from here, so a slow upload is not the provider's delay.
    /// On tokio's clock, so that tests with paused time see the same clock as the timer.
    sent: OnceLock<tokio::time::Instant>,
    /// A copy of the body as sent, kept (up to a limit) to send it again elsewhere when
    /// the provider refuses it before answering anything.
    replay: std::sync::Mutex<Replay>,
}

/// The replay copy of a request body.
#[derive(Debug, Default)]
pub enum Replay {
    /// Not kept (no other side to try).
    #[default]
    Off,
    /// Being kept as it streams (the frames themselves, shared, not copied), up to `max`
    /// bytes.
    Copying {
        frames: Vec<Bytes>,
        len: u64,
        max: u64,
    },
    /// The whole body.
    Whole(Bytes),
    /// Larger than the limit: not retried.
    TooLarge,
}

impl RequestShared {
    pub fn model(&self) -> Option<&str> {
        self.model.get().map(|m| &**m)
    }

    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens.get().copied()
    }

    pub fn sent_at(&self) -> Option<tokio::time::Instant> {
        self.sent.get().copied()
    }

    /// Starts keeping a replay copy of up to `max` bytes (before the body is polled).
    pub fn keep_replay(&self, max: u64) {
        *self.replay.lock().unwrap_or_else(|e| e.into_inner()) = Replay::Copying {
            frames: Vec::new(),
            len: 0,
            max,
        };
    }

    /// The whole body as it was sent, when a copy was kept and the body ended.
    pub fn replay(&self) -> Option<Bytes> {
        match &*self.replay.lock().unwrap_or_else(|e| e.into_inner()) {
            Replay::Whole(b) => Some(b.clone()),
            // An empty body never streams: it was sent whole at once.
            Replay::Copying { frames, .. } if frames.is_empty() && self.sent.get().is_some() => {
                Some(Bytes::new())
            }
            _ => None,
        }
    }

    /// The answer is on its way to the client: no attempt will need the copy.
    pub(crate) fn drop_replay(&self) {
        *self.replay.lock().unwrap_or_else(|e| e.into_inner()) = Replay::Off;
    }

    fn copy(&self, data: &Bytes) {
        let mut r = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if let Replay::Copying { frames, len, max } = &mut *r {
            *len += data.len() as u64;
            if *len > *max {
                *r = Replay::TooLarge;
            } else {
                frames.push(data.clone());
            }
        }
    }

    fn copied_whole(&self) {
        let mut r = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if let Replay::Copying { frames, .. } = &mut *r {
            // Most bodies arrive in one frame: no copy then.
            let whole = match frames.len() {
                1 => frames.pop().unwrap_or_default(),
                _ => {
                    let mut b = BytesMut::new();
                    frames.iter().for_each(|f| b.extend_from_slice(f));
                    b.freeze()
                }
            };
            *r = Replay::Whole(whole);
        }
    }

    /// A body the gateway holds whole is its own replay copy.
    pub(crate) fn whole(&self, body: &Bytes) {
        let mut r = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if let Replay::Copying { max, .. } = &*r {
            *r = if body.len() as u64 <= *max {
                Replay::Whole(body.clone())
            } else {
                Replay::TooLarge
            };
        }
    }

    pub(crate) fn mark_sent(&self) {
        let _ = self.sent.set(tokio::time::Instant::now());
    }
}

enum Source {
    Live(Incoming),
    Buffered(Option<Bytes>),
    Done,
}

/// A request body as the provider path carries it. Boxed: the request moves through every
/// provider layer, and hyper queues requests to each provider connection in a channel
/// whose first block holds 32 of them, allocated with the connection (16 KB per HTTP/1.1
/// provider connection with the body inline, one per open stream).
pub type BoxedBody = Box<RequestBody>;

pub struct RequestBody {
    shared: Arc<RequestShared>,
    /// Bytes read ahead of the client's stream (to learn its model), sent first.
    prefix: Option<Bytes>,
    source: Source,
    hint: SizeHint,
    limit: u64,
    seen: u64,
    /// Reads the model (unless known) and `max_tokens` as the body passes, until it is
    /// seen not to be JSON.
    scan: Option<RequestScan>,
    /// The body must be JSON: one seen not to be is refused, the frame that shows it held
    /// back (so a provider never gets a whole request the gateway knows is malformed).
    json_required: bool,
    tee: Option<Tee>,
}

/// Why a mirrored copy of the body could not be made.
pub type TeeResult = Result<Bytes, &'static str>;

/// Copies the body for a shadow request as it streams upstream (bounded); the copy is
/// handed over when the body ends. Dropped before the end: the shadow is aborted.
pub struct Tee {
    buf: BytesMut,
    max: u64,
    tx: tokio::sync::oneshot::Sender<TeeResult>,
}

impl Tee {
    pub fn new(max: u64) -> (Tee, tokio::sync::oneshot::Receiver<TeeResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Tee {
                buf: BytesMut::new(),
                max,
                tx,
            },
            rx,
        )
    }

    /// Hands over a body the gateway already holds whole.
    pub fn complete_with(self, bytes: Bytes) {
        let r = if bytes.len() as u64 > self.max {
            Err("too_large")
        } else {
            Ok(bytes)
        };
        let _ = self.tx.send(r);
    }

    /// Copies `data`; false when the copy went over its limit (and was given up).
    fn push(&mut self, data: &[u8]) -> bool {
        if self.buf.len() as u64 + data.len() as u64 > self.max {
            return false;
        }
        self.buf.extend_from_slice(data);
        true
    }
}

impl RequestBody {
    /// The client's body, streamed; `model` is read from it as it passes.
    pub fn streaming(incoming: Incoming, limit: u64) -> (Self, Arc<RequestShared>) {
        let hint = incoming.size_hint();
        let source = if incoming.is_end_stream() {
            Source::Done
        } else {
            Source::Live(incoming)
        };
        let shared = Arc::new(RequestShared::default());
        if matches!(source, Source::Done) {
            shared.mark_sent();
        }
        let body = RequestBody {
            shared: shared.clone(),
            prefix: None,
            source,
            hint,
            limit,
            seen: 0,
            scan: Some(RequestScan::default()),
            json_required: false,
            tee: None,
        };
        (body, shared)
    }

    /// Also reads the model and `max_tokens` of a body the gateway holds whole.
    pub fn reading(mut self) -> Self {
        self.scan = Some(RequestScan::default());
        self
    }

    /// Refuses the body (as the client's malformed upload) once it is seen not to be JSON.
    pub fn requiring_json(mut self, required: bool) -> Self {
        self.json_required = required;
        if required && self.scan.is_none() {
            self.scan = Some(RequestScan::default());
        }
        self
    }

    /// The client's body of which `prefix` was read ahead (and perhaps rewritten): the
    /// prefix goes first, then the rest streams. The model is already known (`model`).
    pub fn after_prefix(
        prefix: Bytes,
        rest: Option<Incoming>,
        limit: u64,
        model: Option<&str>,
    ) -> (Self, Arc<RequestShared>) {
        let shared = Arc::new(RequestShared::default());
        if let Some(m) = model {
            let _ = shared.model.set(m.into());
        }
        let source = match rest {
            Some(i) if !i.is_end_stream() => Source::Live(i),
            _ => {
                shared.mark_sent();
                return (Self::buffered(prefix, shared.clone()).reading(), shared);
            }
        };
        let body = RequestBody {
            shared: shared.clone(),
            prefix: Some(prefix),
            source,
            // The length is the client's Content-Length, adjusted by the caller.
            hint: SizeHint::default(),
            limit,
            seen: 0,
            scan: Some(RequestScan::default()),
            json_required: false,
            tee: None,
        };
        (body, shared)
    }

    /// The length of the read-ahead prefix still to be sent (0: none).
    pub fn prefix_len(&self) -> usize {
        match (&self.prefix, &self.source) {
            (Some(p), _) => p.len(),
            (None, Source::Buffered(Some(b))) => b.len(),
            _ => 0,
        }
    }

    /// Replaces the read-ahead prefix (the request goes to another provider, whose model
    /// name differs) before anything was sent. False when there is none to replace.
    pub fn replace_prefix(&mut self, prefix: Bytes) -> bool {
        match (&mut self.prefix, &mut self.source) {
            (Some(p), _) => {
                *p = prefix;
                true
            }
            (None, Source::Buffered(Some(b))) => {
                *b = prefix;
                self.hint = SizeHint::with_exact(b.len() as u64);
                true
            }
            _ => false,
        }
    }

    /// Mirrors the body into `tee` as it streams.
    pub fn with_tee(mut self, tee: Tee) -> Self {
        match &self.source {
            Source::Done => tee.complete_with(Bytes::new()),
            Source::Buffered(Some(b)) => tee.complete_with(b.clone()),
            _ => self.tee = Some(tee),
        }
        self
    }

    /// A body the gateway already holds whole (it rewrote it): nothing to wait for, so the
    /// provider's timeout runs from now.
    pub fn buffered(bytes: Bytes, shared: Arc<RequestShared>) -> Self {
        shared.mark_sent();
        let hint = SizeHint::with_exact(bytes.len() as u64);
        RequestBody {
            shared,
            prefix: None,
            source: Source::Buffered(Some(bytes)),
            hint,
            limit: u64::MAX,
            seen: 0,
            scan: None,
            json_required: false,
            tee: None,
        }
    }

    pub fn empty() -> Self {
        let shared = Arc::new(RequestShared::default());
        shared.mark_sent();
        RequestBody {
            shared,
            prefix: None,
            source: Source::Done,
            hint: SizeHint::with_exact(0),
            limit: 0,
            seen: 0,
            scan: None,
            json_required: false,
            tee: None,
        }
    }
}

impl RequestBody {
    /// Reads what passes for the model and `max_tokens`, until the body is seen not to be
    /// JSON: an error when it must be.
    fn read(&mut self, data: &[u8]) -> Result<(), BoxError> {
        if let Some(scan) = &mut self.scan {
            scan.feed(data);
            if let Some(m) = scan.read.model.take() {
                let _ = self.shared.model.set(m);
            }
            if scan.invalid() {
                self.scan = None;
                if self.json_required {
                    return Err(Box::new(ClientBodyError::not_json()));
                }
            }
        }
        Ok(())
    }

    /// The body ended: what was read is final; an error when it must be JSON and was not
    /// whole (cut short, say).
    fn read_to_end(&mut self) -> Result<(), BoxError> {
        if let Some(mut scan) = self.scan.take() {
            let json = scan.finish();
            if let Some(n) = scan.read.max_tokens {
                let _ = self.shared.max_tokens.set(n);
            }
            if self.json_required && !json {
                return Err(Box::new(ClientBodyError::not_json()));
            }
        }
        Ok(())
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
        if let Some(p) = this.prefix.take() {
            this.shared.copy(&p);
            if let Err(e) = this.read(&p) {
                return Poll::Ready(Some(Err(e)));
            }
            this.seen += p.len() as u64;
            if this.seen > this.limit {
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
            }
            if let Some(tee) = &mut this.tee {
                if !tee.push(&p) {
                    if let Some(t) = this.tee.take() {
                        let _ = t.tx.send(Err("too_large"));
                    }
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        let inner = match &mut this.source {
            Source::Live(i) => i,
            Source::Buffered(b) => {
                if let Some(b) = b.take() {
                    this.shared.whole(&b);
                    if let Err(e) = this.read(&b).and_then(|()| this.read_to_end()) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                return Poll::Ready(None);
            }
            Source::Done => return Poll::Ready(None),
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.shared.copy(d);
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    if let Some(tee) = &mut this.tee {
                        if !tee.push(d) {
                            if let Some(t) = this.tee.take() {
                                let _ = t.tx.send(Err("too_large"));
                            }
                        }
                    }
                    if let Err(e) = this.read(d) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                // hyper stops polling once a sized body is complete: hand the copy over now.
                if matches!(&this.source, Source::Live(i) if i.is_end_stream()) {
                    if let Err(e) = this.read_to_end() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.shared.mark_sent();
                    this.shared.copied_whole();
                    if let Some(t) = this.tee.take() {
                        let _ = t.tx.send(Ok(t.buf.freeze()));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyError::of(Box::new(e)))))),
            None => {
                if let Err(e) = this.read_to_end() {
                    return Poll::Ready(Some(Err(e)));
                }
                this.shared.mark_sent();
                this.shared.copied_whole();
                this.source = Source::Done;
                if let Some(t) = this.tee.take() {
                    let _ = t.tx.send(Ok(t.buf.freeze()));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.prefix.is_some() {
            return false;
        }
        match &self.source {
            Source::Live(i) => i.is_end_stream(),
            Source::Buffered(b) => b.is_none(),
            Source::Done => true,
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
    /// The answer's text, when it was captured (shadowed requests).
    pub content: Option<String>,
}

/// Called once when a response body ends, however it ends.
pub trait OnEnd: Send + 'static {
    fn on_end(self: Box<Self>, end: End, summary: BodySummary);
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
    /// `capture`: also keep the answer's text, for a shadow comparison.
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
                content: copy.as_ref().and_then(|c| text_of_json(c)),
                ..BodySummary::default()
            },
            Sniff::Sse(s) => BodySummary {
                bytes,
                facts: s.facts(),
                usage: s.usage(),
                first_token: s.first_token.or(s.first_event),
                stream: true,
                content: s.content.clone(),
            },
        }
    }
}

pin_project! {
    pub struct ResponseBody {
        #[pin]
        inner: Incoming,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        bytes: u64,
        sniff: Sniff,
        upstream_done: bool,
        on_end: Option<Box<dyn OnEnd>>,
        // The connection the body comes on: back to its pool once the body is read whole.
        lease: Option<Lease>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(cb) = this.on_end.take() {
                cb.on_end(End::ClientGone, this.sniff.summary(*this.bytes));
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
        inner: Incoming,
        lease: Lease,
        idle_timeout: Duration,
        sniff: Sniff,
        on_end: Box<dyn OnEnd>,
    ) -> Self {
        let mut on_end = Some(on_end);
        let mut lease = Some(lease);
        let mut sniff = sniff;
        if inner.is_end_stream() {
            // Empty bodies are never polled: account for them now.
            if let Some(cb) = on_end.take() {
                cb.on_end(End::Complete, sniff.summary(0));
            }
            give_back(&mut lease);
        }
        ResponseBody {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            bytes: 0,
            sniff,
            upstream_done: false,
            on_end,
            lease,
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
                    cb.on_end(End::Complete, this.sniff.summary(*this.bytes));
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
                            cb.on_end(End::Complete, this.sniff.summary(*this.bytes));
                        }
                    } else {
                        let deadline = tokio::time::Instant::now() + *this.idle_timeout;
                        this.idle.as_mut().reset(deadline);
                    }
                    // An SSE rewrite may hold a frame back until its event is complete.
                    if frame.data_ref().is_some_and(Bytes::is_empty) {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(cb) = this.on_end.take() {
                        cb.on_end(End::Broken, this.sniff.summary(*this.bytes));
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => {
                    *this.upstream_done = true;
                    give_back(this.lease);
                }
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    if let Some(cb) = this.on_end.take() {
                        cb.on_end(End::Idle, this.sniff.summary(*this.bytes));
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

pin_project! {
    /// What the gateway answers with: a provider's stream, or a small body of its own.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Full { data: Option<Bytes>, active: Option<crate::service::Active> },
        Upstream { #[pin] body: ResponseBody, active: Option<crate::service::Active> },
    }
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        GatewayBody::Full {
            data: Some(data.into()),
            active: None,
        }
    }

    pub fn upstream(body: ResponseBody) -> Self {
        GatewayBody::Upstream { body, active: None }
    }

    /// The connection counts this answer as active until the body is dropped.
    pub fn hold(&mut self, guard: crate::service::Active) {
        match self {
            GatewayBody::Full { active, .. } | GatewayBody::Upstream { active, .. } => {
                *active = Some(guard)
            }
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
            GatewayBodyProj::Full { data, .. } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            GatewayBodyProj::Upstream { body, .. } => body.poll_frame(cx),
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
