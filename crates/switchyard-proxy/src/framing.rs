//! The HTTP/1 framing guard: request smuggling by a head with both `Content-Length` and
//! `Transfer-Encoding` is seen as the bytes are read, before hyper resolves it silently.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::ConnInfo;

/// Watches HTTP/1 request heads as they are read and flags a head that carries both
/// `Content-Length` and `Transfer-Encoding`. hyper resolves that pair safely (chunked wins)
/// but silently; we want such requests refused. It follows `Content-Length` bodies to find
/// the next head on a keep-alive connection, and stops looking after a chunked body or an
/// HTTP/2 preface (neither can carry the ambiguity further). No allocation.
pub struct FramingGuard<T> {
    inner: T,
    info: Arc<ConnInfo>,
    state: GuardState,
    line: [u8; 24],
    line_len: usize,
    first_line: bool,
    has_cl: bool,
    has_te: bool,
    cl: u64,
    cl_digits: bool,
    /// The line being read is a Content-Length header.
    cl_line: bool,
    /// The line being read names a header that cannot matter.
    skip_line: bool,
}

const CONTENT_LENGTH: &[u8] = b"content-length:";

/// Whether a header line starting with `first` can be one that matters: only
/// Content-Length and Transfer-Encoding do.
fn may_matter(first: u8) -> bool {
    matches!(first | 0x20, b'c' | b't')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GuardState {
    Head,
    Skip(u64),
    Off,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T, info: Arc<ConnInfo>) -> Self {
        FramingGuard {
            inner,
            info,
            state: GuardState::Head,
            line: [0; 24],
            line_len: 0,
            first_line: true,
            has_cl: false,
            has_te: false,
            cl: 0,
            cl_digits: false,
            cl_line: false,
            skip_line: false,
        }
    }

    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                GuardState::Off => return,
                GuardState::Skip(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        GuardState::Head
                    } else {
                        GuardState::Skip(n - take)
                    };
                }
                GuardState::Head => {
                    // Line by line: only a line's first bytes (its name) and a
                    // Content-Length's digits are looked at.
                    match memchr::memchr(b'\n', data) {
                        Some(i) if self.line_len == 0 && !self.skip_line => {
                            self.whole_line(&data[..i]);
                            data = &data[i + 1..];
                        }
                        Some(i) => {
                            self.push_line(&data[..i]);
                            data = &data[i + 1..];
                            self.end_line();
                        }
                        None => {
                            self.push_line(data);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A line that arrived whole in one read (the usual case): no byte-by-byte carry.
    fn whole_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !self.first_line && line.first().is_some_and(|&b| !may_matter(b)) {
            return;
        }
        let kept = line.len().min(self.line.len());
        for (to, from) in self.line[..kept].iter_mut().zip(line) {
            *to = from.to_ascii_lowercase();
        }
        self.line_len = line.len();
        if self.line[..kept].starts_with(CONTENT_LENGTH) {
            line[CONTENT_LENGTH.len()..]
                .iter()
                .for_each(|&b| self.cl_digit(b));
        }
        self.end_line();
    }

    fn push_line(&mut self, part: &[u8]) {
        if self.skip_line {
            return;
        }
        let mut rest = part;
        while self.line_len < self.line.len() {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            rest = tail;
            if b == b'\r' {
                continue;
            }
            if self.line_len == 0 && !self.first_line && !may_matter(b) {
                self.skip_line = true;
                return;
            }
            self.line[self.line_len] = b.to_ascii_lowercase();
            self.line_len += 1;
            if self.line_len == CONTENT_LENGTH.len() {
                self.cl_line = self.line.starts_with(CONTENT_LENGTH);
            } else if self.cl_line {
                self.cl_digit(b);
            }
        }
        if self.cl_line {
            rest.iter().for_each(|&b| self.cl_digit(b));
        }
        self.line_len += rest.len();
    }

    fn cl_digit(&mut self, b: u8) {
        if b.is_ascii_digit() {
            self.cl = self
                .cl
                .saturating_mul(10)
                .saturating_add(u64::from(b - b'0'));
            self.cl_digits = true;
        }
    }

    fn end_line(&mut self) {
        if self.skip_line {
            self.skip_line = false;
            return;
        }
        let len = self.line_len.min(self.line.len());
        let line = &self.line[..len];
        self.line_len = 0;
        self.cl_line = false;
        if self.first_line {
            if line.is_empty() {
                return; // tolerated leading CRLF
            }
            self.first_line = false;
            if line.starts_with(b"pri * http/2") {
                self.state = GuardState::Off;
            }
            return;
        }
        if line.is_empty() {
            // End of the head.
            if self.has_cl && self.has_te {
                self.info.framing_violation.store(true, Ordering::Relaxed);
                self.state = GuardState::Off;
            } else if self.has_te {
                self.state = GuardState::Off;
            } else {
                self.state = if self.cl_digits && self.cl > 0 {
                    GuardState::Skip(self.cl)
                } else {
                    GuardState::Head
                };
            }
            self.first_line = true;
            self.has_cl = false;
            self.has_te = false;
            self.cl = 0;
            self.cl_digits = false;
            return;
        }
        if line.starts_with(CONTENT_LENGTH) {
            self.has_cl = true;
        } else if line.starts_with(b"transfer-encoding:") {
            self.has_te = true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if self.state != GuardState::Off {
                let filled = &buf.filled()[before..];
                // Copy-free: scan borrows the read buffer, not self.
                let this = &mut *self;
                this.scan(filled);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let info = Arc::new(ConnInfo::default());
        let mut g = FramingGuard::new((), info.clone());
        for c in chunks {
            g.scan(c);
        }
        info.framing_violation.load(Ordering::Relaxed)
    }

    #[test]
    fn flags_cl_with_te() {
        assert!(flagged(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]));
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 4\r\n\r\n"
        ]));
    }

    #[test]
    fn split_across_reads_and_second_request() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Len",
            b"gth: 5\r\nTransf",
            b"er-Encoding: chunked\r\n",
            b"\r\n"
        ]));
        // first request has a body of 5 bytes containing a fake header line; second is bad
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }

    #[test]
    fn only_the_two_headers_count_wherever_reads_split() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nUser-Agent: content-length: 9\r\nContent-Length: 4\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(flagged(&[head]));
        for cut in 1..head.len() {
            assert!(flagged(&[&head[..cut], &head[cut..]]), "cut at {cut}");
        }
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nUser-Agent: x\r\nX-Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
        ]));
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nCookie: transfer-encoding: chunked\r\nContent-Length: 0\r\n\r\n"
        ]));
    }

    #[test]
    fn clean_requests_pass() {
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n\r\nContent-Length: 1\r\n\r\n"
        ]));
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ]));
        assert!(!flagged(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00content-length:1\r\ntransfer-encoding:x\r\n\r\n"]));
    }
}
