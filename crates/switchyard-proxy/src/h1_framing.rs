//! HTTP/1.1 body framing, both ways: how much of a body is still to come (Content-Length,
//! chunked, or until the close) and the decoder that strips chunk framing as bytes come.
//! The provider's answers ([`crate::h1_body`]) and the client's requests
//! ([`crate::client_body`]) are read with it.

use std::io;

use bytes::Bytes;

/// Bytes of chunk extensions and trailers read and dropped before the answer is refused.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;
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
    EndLf,
}

/// The next piece of body data in `pending`, consuming the framing around it (`whose`
/// body it is, for the error).
pub(crate) fn decode(
    framing: &mut Framing,
    pending: &mut Bytes,
    whose: &str,
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
            let (data, next) = decode_chunked(*state, pending, whose)?;
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
    whose: &str,
) -> io::Result<(Option<Bytes>, Option<Chunk>)> {
    let bad = |what: &str| invalid_data(format!("{whose} chunked body is malformed: {what}"));
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
                match decode_chunked(state, &mut buf, "the") {
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
