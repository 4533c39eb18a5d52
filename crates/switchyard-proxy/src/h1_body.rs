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
use crate::pool::Pool;

/// Bytes of chunk extensions and trailers read and dropped before the answer is refused.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;

/// Where a connection goes back once its answer was read to the end.
pub(crate) struct Home {
    pub(crate) pool: Arc<Pool>,
    pub(crate) max_idle: usize,
}

/// How much of the answer's body is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
    Done,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size {
        n: u64,
        digits: u8,
    },
    /// A chunk extension, to the end of the size line (`extra` bytes of it so far).
    Extension {
        n: u64,
        extra: usize,
    },
    SizeLf {
        n: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    Trailer {
        extra: usize,
    },
    TrailerLine {
        extra: usize,
    },
    EndLf,
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

    /// The next piece of body data in `pending`, consuming the framing around it.
    fn decode(&mut self) -> io::Result<Option<Bytes>> {
        match &mut self.framing {
            Framing::Done => Ok(None),
            Framing::Close => Ok(Some(std::mem::take(&mut self.pending))),
            Framing::Length(rem) => {
                let take = (*rem).min(self.pending.len() as u64) as usize;
                *rem -= take as u64;
                let data = self.pending.split_to(take);
                if *rem == 0 {
                    self.framing = Framing::Done;
                }
                Ok(Some(data))
            }
            Framing::Chunked(state) => {
                let (data, next) = decode_chunked(*state, &mut self.pending)?;
                self.framing = match next {
                    Some(s) => Framing::Chunked(s),
                    None => Framing::Done,
                };
                Ok(data)
            }
        }
    }
}

/// Consumes chunk framing from `buf` until a piece of data (returned) or the end of `buf`.
/// The next state; `None`: the body is complete.
fn decode_chunked(mut state: Chunk, buf: &mut Bytes) -> io::Result<(Option<Bytes>, Option<Chunk>)> {
    let bad =
        |what: &str| invalid_data(format!("the provider's chunked body is malformed: {what}"));
    while !buf.is_empty() {
        if let Chunk::Data(rem) = state {
            let take = rem.min(buf.len() as u64) as usize;
            let data = buf.split_to(take);
            let rem = rem - take as u64;
            state = if rem == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(rem)
            };
            return Ok((Some(data), Some(state)));
        }
        let b = buf[0];
        *buf = buf.slice(1..);
        state = match state {
            Chunk::Size { n, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err(bad("chunk size too large"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        n: n * 16 + d,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(bad("no chunk size")),
                b';' | b' ' | b'\t' => Chunk::Extension { n, extra: 0 },
                b'\r' => Chunk::SizeLf { n },
                b'\n' => after_size(n),
                _ => return Err(bad("invalid chunk size")),
            },
            Chunk::Extension { n, extra } => match b {
                b'\r' => Chunk::SizeLf { n },
                b'\n' => after_size(n),
                _ if extra >= MAX_CHUNK_EXTRA => return Err(bad("chunk extension too long")),
                _ => Chunk::Extension {
                    n,
                    extra: extra + 1,
                },
            },
            Chunk::SizeLf { n } => match b {
                b'\n' => after_size(n),
                _ => return Err(bad("no line feed after the chunk size")),
            },
            Chunk::Data(_) => unreachable!("handled above"),
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size { n: 0, digits: 0 },
                _ => return Err(bad("no line end after chunk data")),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { n: 0, digits: 0 },
                _ => return Err(bad("no line end after chunk data")),
            },
            Chunk::Trailer { extra } => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return Ok((None, None)),
                _ => Chunk::TrailerLine { extra: extra + 1 },
            },
            Chunk::TrailerLine { extra } => match b {
                b'\n' => Chunk::Trailer { extra },
                _ if extra >= MAX_CHUNK_EXTRA => return Err(bad("trailers too long")),
                _ => Chunk::TrailerLine { extra: extra + 1 },
            },
            Chunk::EndLf => match b {
                b'\n' => return Ok((None, None)),
                _ => return Err(bad("no line feed at the end")),
            },
        };
    }
    Ok((None, Some(state)))
}

fn after_size(n: u64) -> Chunk {
    if n == 0 {
        Chunk::Trailer { extra: 0 }
    } else {
        Chunk::Data(n)
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
                let data = match this.decode() {
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
            let got = match ready!(io.poll_read_piece(cx, Bytes::copy_from_slice)) {
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

pub(crate) fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_chunk_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"12345678901234567\r\n",
        ] {
            let mut buf = Bytes::from_static(bad);
            let mut state = Chunk::Size { n: 0, digits: 0 };
            let mut failed = false;
            while !buf.is_empty() {
                match decode_chunked(state, &mut buf) {
                    Ok((_, Some(s))) => state = s,
                    Ok((_, None)) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
