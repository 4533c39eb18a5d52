//! The body of a provider's HTTP/1.1 answer ([`H1Body`]): read from the provider's socket
//! by the task that writes it to the client, in pieces copied out at their size, so that
//! a stream waiting for its next event holds its socket and a few words of framing, and no
//! buffer. At its exact end the connection goes back to its worker's pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::connect::Io;
use crate::h1_framing::{decode, poll_read_piece, Framing, Peer};
use crate::pool::Pool;

/// Where a connection goes back once its answer was read to the end.
pub(crate) struct Home {
    pub(crate) pool: Arc<Pool>,
    pub(crate) max_idle: usize,
}

/// The answer's body, read from the provider's socket as the client's side asks for it.
pub struct H1Body {
    io: Option<Io>,
    /// Bytes read and not yet handed on.
    pending: Bytes,
    framing: Framing,
    reusable: bool,
    home: Option<Home>,
}

impl H1Body {
    pub(crate) fn new(io: Io, rest: Bytes, framing: Framing, reusable: bool, home: Home) -> Self {
        let mut body = H1Body {
            io: Some(io),
            pending: rest,
            framing,
            reusable,
            home: Some(home),
        };
        if body.framing.is_done() {
            body.finish();
        }
        body
    }

    /// The body is whole: its connection goes back to the pool if it can carry another
    /// exchange, and is closed otherwise.
    fn finish(&mut self) {
        let io = self.io.take();
        let home = self.home.take();
        if let (Some(io), Some(home)) = (io, home) {
            if self.reusable && self.pending.is_empty() {
                home.pool.park(io, home.max_idle);
            }
        }
        self.pending = Bytes::new();
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let data = match decode(&mut this.framing, &mut this.pending, Peer::Provider) {
                    Ok(d) => d,
                    Err(e) => {
                        this.reusable = false;
                        this.finish();
                        return Poll::Ready(Some(Err(e)));
                    }
                };
                if this.framing.is_done() {
                    // Bytes after the end: the connection is not in a state to reuse.
                    this.finish();
                }
                match data {
                    Some(d) if !d.is_empty() => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    _ => continue,
                }
            }
            if this.framing.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            let got = match ready!(poll_read_piece(io, cx, Bytes::copy_from_slice)) {
                Ok(got) => got,
                Err(e) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if got.is_empty() {
                this.reusable = false;
                if matches!(this.framing, Framing::Close) {
                    this.framing = Framing::Done;
                    this.finish();
                    return Poll::Ready(None);
                }
                this.finish();
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the provider closed the connection before the body's end",
                ))));
            }
            this.pending = got;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done() && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
