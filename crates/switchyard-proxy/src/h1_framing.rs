//! HTTP/1.1 body framing, both ways: how much of a body is still to come (Content-Length,
//! chunked, or until the close), the decoder that strips chunk framing as bytes come, and
//! the read that takes bytes off a socket with no buffer outliving it. The provider's
//! answers ([`crate::h1_body`], [`crate::h1`]) and the client's requests
//! ([`crate::client_body`], [`crate::h1_server`]) are read with it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read at once from a socket, into the stack.
const READ_PIECE: usize = 8192;

/// Reads what has come into a stack buffer and hands it to `f` (empty: the peer closed its
/// side), so that no buffer outlives the read: a connection waiting for its next bytes
/// holds none.
pub(crate) fn poll_read_piece<T, R>(
    io: &mut T,
    cx: &mut Context<'_>,
    f: impl FnOnce(&[u8]) -> R,
) -> Poll<io::Result<R>>
where
    T: AsyncRead + Unpin + ?Sized,
{
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_PIECE];
    let mut buf = ReadBuf::uninit(&mut stack);
    match Pin::new(io).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(f(buf.filled()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Bytes of chunk extensions and trailers read and dropped before the answer is refused.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;

/// A Content-Length value: digits only (space around them allowed), at most 19.
pub(crate) fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether a Transfer-Encoding value's last coding is chunked (the only framing it can
/// give a body that does not end with the connection).
pub(crate) fn ends_chunked(te: &[u8]) -> bool {
    let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// What a head's fields say of its body's framing and of its connection, found in one pass
/// over them: a hashed lookup per field costs more than the whole pass.
#[derive(Debug, Default)]
pub(crate) struct Wire<'a> {
    /// The first Content-Length value.
    pub(crate) content_length: Option<&'a HeaderValue>,
    /// The last Transfer-Encoding value (its last coding is the one that frames).
    pub(crate) transfer_encoding: Option<&'a HeaderValue>,
    /// `Connection` lists `close`.
    pub(crate) close: bool,
    /// `Connection` lists `keep-alive`.
    pub(crate) keep_alive: bool,
}

impl<'a> Wire<'a> {
    pub(crate) fn of(headers: &'a HeaderMap) -> Wire<'a> {
        let mut wire = Wire::default();
        for (name, value) in headers {
            if name == CONNECTION {
                wire.connection(value.as_bytes());
            } else if name == TRANSFER_ENCODING {
                wire.transfer_encoding = Some(value);
            } else if name == CONTENT_LENGTH && wire.content_length.is_none() {
                wire.content_length = Some(value);
            }
        }
        wire
    }

    /// One `Connection` value's tokens.
    pub(crate) fn connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
}

/// Whose body is decoded. A client's is read strictly (line ends are CRLF and nothing but
/// `;` follows a chunk size), as hyper's server did: a front proxy that reads a lenient
/// framing differently could otherwise hide a second request in the body. A provider's is
/// read as leniently as hyper's client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Provider,
    Client,
}

impl Peer {
    fn whose(self) -> &'static str {
        match self {
            Peer::Provider => "the provider's",
            Peer::Client => "the client's",
        }
    }
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
    pub(crate) fn is_done(&self) -> bool {
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
    /// A trailer line's CR was read (strict reading only).
    TrailerLf {
        extra: usize,
    },
    EndLf,
}

/// The next piece of body data in `pending`, consuming the framing around it.
pub(crate) fn decode(
    framing: &mut Framing,
    pending: &mut Bytes,
    peer: Peer,
) -> io::Result<Option<Bytes>> {
    match framing {
        Framing::Done => Ok(None),
        Framing::Close => Ok(Some(std::mem::take(pending))),
        Framing::Length(rem) => {
            let take = (*rem).min(pending.len() as u64) as usize;
            *rem -= take as u64;
            let data = pending.split_to(take);
            if *rem == 0 {
                *framing = Framing::Done;
            }
            Ok(Some(data))
        }
        Framing::Chunked(state) => {
            let (data, next) = decode_chunked(*state, pending, peer)?;
            *framing = match next {
                Some(s) => Framing::Chunked(s),
                None => Framing::Done,
            };
            Ok(data)
        }
    }
}

/// Consumes chunk framing from `buf` until a piece of data (returned) or the end of `buf`.
/// The next state; `None`: the body is complete.
fn decode_chunked(
    mut state: Chunk,
    buf: &mut Bytes,
    peer: Peer,
) -> io::Result<(Option<Bytes>, Option<Chunk>)> {
    let whose = peer.whose();
    let bad = |what: &str| invalid_data(format!("{whose} chunked body is malformed: {what}"));
    let strict = peer == Peer::Client;
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
                b';' => Chunk::Extension { n, extra: 0 },
                b' ' | b'\t' if !strict => Chunk::Extension { n, extra: 0 },
                b'\r' => Chunk::SizeLf { n },
                b'\n' if !strict => after_size(n),
                _ => return Err(bad("invalid chunk size")),
            },
            Chunk::Extension { n, extra } => match b {
                b'\r' => Chunk::SizeLf { n },
                b'\n' if strict => return Err(bad("a line feed in a chunk extension")),
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
                b'\n' if !strict => Chunk::Size { n: 0, digits: 0 },
                _ => return Err(bad("no line end after chunk data")),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { n: 0, digits: 0 },
                _ => return Err(bad("no line end after chunk data")),
            },
            Chunk::Trailer { extra } => match b {
                b'\r' => Chunk::EndLf,
                b'\n' if strict => return Err(bad("a bare line feed at the end")),
                b'\n' => return Ok((None, None)),
                _ => Chunk::TrailerLine { extra: extra + 1 },
            },
            Chunk::TrailerLine { extra } if strict => match b {
                b'\r' => Chunk::TrailerLf { extra },
                b'\n' => return Err(bad("a bare line feed in the trailers")),
                _ if extra >= MAX_CHUNK_EXTRA => return Err(bad("trailers too long")),
                _ => Chunk::TrailerLine { extra: extra + 1 },
            },
            Chunk::TrailerLf { extra } => match b {
                b'\n' => Chunk::Trailer { extra },
                _ => return Err(bad("no line feed after a trailer")),
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
            assert!(
                decoded(bad, Peer::Provider).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The data of a whole chunked body, or the error.
    fn decoded(body: &'static [u8], peer: Peer) -> io::Result<Vec<u8>> {
        let mut buf = Bytes::from_static(body);
        let mut state = Chunk::Size { n: 0, digits: 0 };
        let mut data = Vec::new();
        loop {
            let (d, next) = decode_chunked(state, &mut buf, peer)?;
            data.extend_from_slice(&d.unwrap_or_default());
            match next {
                Some(s) if !buf.is_empty() => state = s,
                Some(_) => return Err(invalid_data("incomplete")),
                None => return Ok(data),
            }
        }
    }

    #[test]
    fn a_clients_chunks_end_their_lines_with_crlf_only() {
        let good: &[u8] = b"2;ext=1\r\nxx\r\n1\r\ny\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(decoded(good, Peer::Client).unwrap(), b"xxy");
        for lax in [
            &b"2;\nxx\r\n0\r\n\r\n"[..],
            b"2\nxx\r\n0\r\n\r\n",
            b"2 junk\r\nxx\r\n0\r\n\r\n",
            b"2\r\nxx\n0\r\n\r\n",
            b"2\r\nxx\r\n0\r\n\n",
            b"2\r\nxx\r\n0\r\nx-t: 1\n\r\n",
        ] {
            let text = String::from_utf8_lossy(lax);
            assert!(decoded(lax, Peer::Client).is_err(), "a client's {text:?}");
            assert!(
                decoded(lax, Peer::Provider).is_ok(),
                "a provider's {text:?}"
            );
        }
    }
}
