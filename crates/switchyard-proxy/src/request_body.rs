//! The client's request body on its way to a provider, streamed, never held whole (but
//! for `inject_stream_usage`, which rewrites it, see [`crate::forward`]): as it
//! passes it is counted against the size limit, read for its model and `max_tokens` (and
//! refused when it must be JSON and is not), and copied where a feature asked for a copy
//! (a mirror's, the failover's replay). It is first polled once a connection is up, so a
//! request whose connect failed still holds all of it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use crate::client_body::ClientBody;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use switchyard_core::features::Asked;

use crate::answer::{RequestRead, RequestScan};
use crate::errors::{BodyTooLarge, BoxError, ClientBodyError};

/// What the request path learns from the body as it streams upstream (it is polled by the
/// provider connection's writer): read when the exchange is accounted.
#[derive(Debug, Default)]
pub struct RequestShared {
    pub model: OnceLock<Box<str>>,
    /// What the body asked, once it was read whole (one cell, not one per fact: each set
    /// is an atomic step).
    asks: OnceLock<Asks>,
    /// When the whole body had been handed to the provider's connection: the provider's
    /// first-byte timeout counts from here, so a slow upload is not the provider's delay.
    /// On tokio's clock, so that tests with paused time see the same clock as the timer.
    sent: OnceLock<tokio::time::Instant>,
    /// The whole body as sent, when a replay copy was asked for and it fit (see
    /// [`RequestBody::keep_replay`]). Set once, at the body's end.
    replay: Mutex<Option<Bytes>>,
}

/// What a request body asked, read whole.
#[derive(Debug)]
struct Asks {
    /// The request's own `max_tokens` (or `max_completion_tokens`, `max_output_tokens`):
    /// an answer cut at it is what the client asked for.
    max_tokens: Option<u64>,
    /// What it asked of its answer beyond text.
    asked: Asked,
}

impl RequestShared {
    /// A fresh one whose model is already known.
    pub fn with_model(model: Option<&str>) -> Arc<RequestShared> {
        let shared = RequestShared::default();
        if let Some(m) = model {
            let _ = shared.model.set(m.into());
        }
        Arc::new(shared)
    }

    /// A fresh one for a body already read whole: what it asked is known.
    pub fn of_read(read: RequestRead) -> Arc<RequestShared> {
        let shared = RequestShared::with_model(read.model.as_deref());
        shared.read_whole(&read);
        shared
    }

    fn read_whole(&self, read: &RequestRead) {
        let _ = self.asks.set(Asks {
            max_tokens: read.max_tokens,
            asked: crate::features::asked_of(read),
        });
    }

    pub fn model(&self) -> Option<&str> {
        self.model.get().map(|m| &**m)
    }

    pub fn max_tokens(&self) -> Option<u64> {
        self.asks.get().and_then(|a| a.max_tokens)
    }

    pub fn asked(&self) -> Option<&Asked> {
        self.asks.get().map(|a| &a.asked)
    }

    pub fn sent_at(&self) -> Option<tokio::time::Instant> {
        self.sent.get().copied()
    }

    /// The whole body as it was sent, when a copy was kept and the body ended.
    pub fn replay(&self) -> Option<Bytes> {
        self.replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// No attempt will need the copy any more.
    pub(crate) fn drop_replay(&self) {
        *self.replay.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn set_replay(&self, body: Bytes) {
        *self.replay.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
    }

    pub(crate) fn mark_sent(&self) {
        let _ = self.sent.set(tokio::time::Instant::now());
    }
}

/// A bounded copy of a body as it streams: its frames (shared, not copied) until it ends,
/// then one piece. Over its limit it is given up.
#[derive(Debug)]
struct BodyCopy {
    frames: Vec<Bytes>,
    len: u64,
    max: u64,
    over: bool,
}

impl BodyCopy {
    fn new(max: u64) -> BodyCopy {
        BodyCopy {
            frames: Vec::new(),
            len: 0,
            max,
            over: false,
        }
    }

    fn push(&mut self, data: &Bytes) {
        self.len += data.len() as u64;
        if self.len > self.max {
            self.over = true;
            self.frames = Vec::new();
        } else if !self.over {
            self.frames.push(data.clone());
        }
    }

    /// The copy, whole; `None` when it went over its limit.
    fn whole(mut self) -> Option<Bytes> {
        if self.over {
            return None;
        }
        // Most bodies arrive in one frame: no copy then.
        Some(match self.frames.len() {
            1 => self.frames.pop().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len as usize);
                self.frames.iter().for_each(|f| b.extend_from_slice(f));
                b.freeze()
            }
        })
    }
}

/// Why a mirrored copy of the body could not be made.
pub type TeeResult = Result<Bytes, &'static str>;

/// Copies the body for a mirrored request as it streams upstream (bounded); the copy is
/// handed over when the body ends. Dropped before the end: the mirror is aborted.
pub struct Tee {
    copy: BodyCopy,
    tx: tokio::sync::oneshot::Sender<TeeResult>,
}

impl Tee {
    pub fn new(max: u64) -> (Tee, tokio::sync::oneshot::Receiver<TeeResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Tee {
                copy: BodyCopy::new(max),
                tx,
            },
            rx,
        )
    }

    /// Hands over a body the gateway already holds whole.
    pub fn complete_with(mut self, bytes: Bytes) {
        self.copy.push(&bytes);
        self.finish();
    }

    fn finish(self) {
        let _ = self.tx.send(self.copy.whole().ok_or("too_large"));
    }
}

enum Source {
    Live(ClientBody),
    Buffered(Option<Bytes>),
    Done,
}

/// A request body as the provider path carries it. Boxed: hyper queues requests to each
/// provider connection in a channel whose first block holds 32 of them, allocated with the
/// connection (16 KB per HTTP/1.1 provider connection with the body inline, one per open
/// stream).
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
    replay: Option<BodyCopy>,
}

impl RequestBody {
    fn new(shared: Arc<RequestShared>, prefix: Option<Bytes>, source: Source) -> Self {
        RequestBody {
            shared,
            prefix,
            source,
            hint: SizeHint::default(),
            limit: u64::MAX,
            seen: 0,
            scan: None,
            json_required: false,
            tee: None,
            replay: None,
        }
    }

    /// The client's body, streamed; its model is read from it as it passes.
    /// Boxed at once, where the provider path keeps it: the steps after it set it up in
    /// place rather than move its 560 bytes from one step to the next.
    pub fn streaming(incoming: ClientBody, limit: u64) -> (BoxedBody, Arc<RequestShared>) {
        let shared = Arc::new(RequestShared::default());
        let hint = incoming.size_hint();
        let source = if incoming.is_end_stream() {
            shared.mark_sent();
            Source::Done
        } else {
            Source::Live(incoming)
        };
        let mut body = Box::new(RequestBody {
            hint,
            limit,
            ..RequestBody::new(shared.clone(), None, source)
        });
        body.start_reading();
        (body, shared)
    }

    /// The client's body of which `prefix` was read ahead (and perhaps rewritten): the
    /// prefix goes first, then the rest streams. The model is already known (`model`); the
    /// length is the client's Content-Length, adjusted by the caller.
    pub fn after_prefix(
        prefix: Bytes,
        rest: Option<ClientBody>,
        limit: u64,
        model: Option<&str>,
    ) -> (BoxedBody, Arc<RequestShared>) {
        let shared = RequestShared::with_model(model);
        let mut body = Box::new(match rest {
            Some(i) if !i.is_end_stream() => RequestBody {
                limit,
                ..RequestBody::new(shared.clone(), Some(prefix), Source::Live(i))
            },
            _ => RequestBody::buffered(prefix, shared.clone()),
        });
        body.start_reading();
        (body, shared)
    }

    /// A body the gateway already holds whole (it rewrote it): nothing to wait for, so the
    /// provider's timeout runs from now.
    pub fn buffered(bytes: Bytes, shared: Arc<RequestShared>) -> Self {
        shared.mark_sent();
        RequestBody {
            hint: SizeHint::with_exact(bytes.len() as u64),
            ..RequestBody::new(shared, None, Source::Buffered(Some(bytes)))
        }
    }

    pub fn empty() -> Self {
        let shared = Arc::new(RequestShared::default());
        shared.mark_sent();
        RequestBody {
            hint: SizeHint::with_exact(0),
            ..RequestBody::new(shared, None, Source::Done)
        }
    }

    /// Also reads the model and `max_tokens` of what passes.
    pub fn start_reading(&mut self) {
        self.scan = Some(RequestScan::default());
    }

    /// Refuses the body (as the client's malformed upload) once it is seen not to be JSON.
    pub fn require_json(&mut self, required: bool) {
        self.json_required = required;
        if required && self.scan.is_none() {
            self.scan = Some(RequestScan::default());
        }
    }

    /// Mirrors the body into `tee` as it streams.
    pub fn tee_into(&mut self, tee: Tee) {
        match &self.source {
            Source::Done => tee.complete_with(Bytes::new()),
            Source::Buffered(Some(b)) if self.prefix.is_none() => tee.complete_with(b.clone()),
            _ => self.tee = Some(tee),
        }
    }

    /// Keeps a copy of up to `max` bytes of the body as sent, in [`RequestShared::replay`]
    /// once it ended (for a failover after a refusal).
    pub fn keep_replay(&mut self, max: u64) {
        match &self.source {
            // An empty body never streams: it was sent whole at once.
            Source::Done if self.prefix.is_none() => self.shared.set_replay(Bytes::new()),
            _ => self.replay = Some(BodyCopy::new(max)),
        }
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

    /// One piece of the body on its way: counted, read, copied where asked.
    fn pass(&mut self, data: &Bytes) -> Result<(), BoxError> {
        self.seen += data.len() as u64;
        if self.seen > self.limit {
            return Err(Box::new(BodyTooLarge(self.limit)));
        }
        if let Some(tee) = &mut self.tee {
            tee.copy.push(data);
            if tee.copy.over {
                // Said at once: the mirror's slot is freed now, not at the body's end.
                if let Some(t) = self.tee.take() {
                    t.finish();
                }
            }
        }
        if let Some(r) = &mut self.replay {
            r.push(data);
        }
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

    /// The body ended: what was read is final (an error when it must be JSON and was not
    /// whole), the copies are handed over, the provider's wait begins.
    fn end(&mut self) -> Result<(), BoxError> {
        if let Some(mut scan) = self.scan.take() {
            let json = scan.finish();
            self.shared.read_whole(&scan.read);
            if self.json_required && !json {
                return Err(Box::new(ClientBodyError::not_json()));
            }
        }
        if let Some(whole) = self.replay.take().and_then(BodyCopy::whole) {
            self.shared.set_replay(whole);
        }
        if let Some(t) = self.tee.take() {
            t.finish();
        }
        self.shared.mark_sent();
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
        let (data, last) = if let Some(p) = this.prefix.take() {
            (p, false)
        } else {
            match &mut this.source {
                Source::Live(i) => match ready!(Pin::new(&mut *i).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        // hyper stops polling once a sized body is complete: end it now.
                        Ok(d) => (d, i.is_end_stream()),
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    },
                    Some(Err(e)) => {
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::of(e)))))
                    }
                    None => {
                        this.source = Source::Done;
                        return Poll::Ready(this.end().err().map(Err));
                    }
                },
                Source::Buffered(b) => match b.take() {
                    Some(b) => (b, true),
                    None => return Poll::Ready(None),
                },
                Source::Done => return Poll::Ready(None),
            }
        };
        if let Err(e) = this
            .pass(&data)
            .and_then(|()| if last { this.end() } else { Ok(()) })
        {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
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
