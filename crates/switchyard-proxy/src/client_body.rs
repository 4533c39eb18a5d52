//! The client's request body, whichever server read its head: the gateway's own HTTP/1.1
//! server ([`crate::h1_server`]) hands the body the connection's read side, and the body
//! reads it from the socket as the request path asks and hands the read side back at its
//! end; HTTP/2 bodies are hyper's.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncRead;
use tokio::sync::Notify;

use crate::errors::BoxError;
use crate::h1_framing::{decode, invalid_data, poll_read_piece, Framing, Peer};

/// The read side of a client connection.
pub(crate) type ReadSide = Box<dyn AsyncRead + Send + Unpin>;

/// A request's body as the request path reads it.
pub enum ClientBody {
    /// The request has none.
    Empty,
    H1(H1RequestBody),
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.framing.is_done(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => match b.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                Framing::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// What a request body hands back to its connection when it ends or is dropped.
pub(crate) struct Returned {
    pub(crate) rd: ReadSide,
    /// Bytes read past the body's end: the start of the next request.
    pub(crate) leftover: Bytes,
    /// The body was read to its exact end: the next bytes on the socket are a request head.
    pub(crate) whole: bool,
}

/// Where a request body hands the read side back; one per connection.
#[derive(Default)]
pub(crate) struct Hand {
    slot: Mutex<Option<Returned>>,
    /// Raised when the read side is back.
    pub(crate) back: Notify,
    /// Raised when a body asked for `100 Continue` is first read: the connection sends it.
    pub(crate) go_on: Notify,
}

impl Hand {
    fn give(&self, r: Returned) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.back.notify_one();
    }

    pub(crate) fn take(&self) -> Option<Returned> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// An HTTP/1.1 request body (Content-Length or chunked), read from the client's socket in
/// the task that reads it, with no buffer of its own between reads.
pub struct H1RequestBody {
    rd: Option<ReadSide>,
    /// Bytes read and not yet handed on (the head's read brought the first of them).
    pending: Bytes,
    framing: Framing,
    hand: Arc<Hand>,
    /// The size of the read `pending` is a slice of.
    piece: usize,
    /// The client asked for `100 Continue` and it is not asked for yet.
    expects: bool,
    /// Its framing failed: whatever follows on the socket is not a request head.
    broken: bool,
}

impl H1RequestBody {
    pub(crate) fn new(
        rd: ReadSide,
        pending: Bytes,
        framing: Framing,
        hand: Arc<Hand>,
        expects: bool,
    ) -> Self {
        H1RequestBody {
            rd: Some(rd),
            piece: pending.len(),
            expects: expects && pending.is_empty(),
            pending,
            framing,
            hand,
            broken: false,
        }
    }

    /// Gives the read side back to the connection (once).
    fn give_back(&mut self) {
        // A body left unread that came whole with its head (a small one refused by
        // admission) still leaves the connection at the next head: consume it here.
        while !self.broken && !self.framing.is_done() && !self.pending.is_empty() {
            if decode(&mut self.framing, &mut self.pending, Peer::Client).is_err() {
                self.broken = true;
            }
        }
        if let Some(rd) = self.rd.take() {
            let whole = self.framing.is_done() && !self.broken;
            let leftover = if whole {
                std::mem::take(&mut self.pending)
            } else {
                Bytes::new()
            };
            self.hand.give(Returned {
                rd,
                leftover,
                whole,
            });
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.broken = true;
        self.give_back();
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for H1RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Ready(Some(Err(invalid_data("the client's body failed before"))));
        }
        if std::mem::take(&mut this.expects) {
            this.hand.go_on.notify_one();
        }
        loop {
            if this.framing.is_done() {
                this.give_back();
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                match decode(&mut this.framing, &mut this.pending, Peer::Client) {
                    Ok(Some(mut d)) if !d.is_empty() => {
                        if this.framing.is_done() {
                            this.give_back();
                        }
                        // A small piece of a large read is copied out rather than keep
                        // the whole read alive (tiny chunks with long extensions).
                        if d.len() * 8 < this.piece {
                            d = Bytes::copy_from_slice(&d);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    Ok(_) => continue,
                    Err(e) => return this.fail(e),
                }
            }
            let Some(rd) = this.rd.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(poll_read_piece(rd, cx, Bytes::copy_from_slice)) {
                Ok(got) if got.is_empty() => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed its connection before the body's end",
                    ))
                }
                Ok(got) => {
                    this.piece = got.len();
                    this.pending = got;
                }
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }
}

impl Drop for H1RequestBody {
    fn drop(&mut self) {
        self.give_back();
    }
}
