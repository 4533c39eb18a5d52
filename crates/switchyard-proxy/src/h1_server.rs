//! The gateway's own HTTP/1.1 server for client connections, as [`crate::h1`] is its own
//! client for providers. hyper's server kept an 8 KiB buffer for writing heads and one or
//! two 8 KiB read buffers per connection for as long as an answer streamed; here a
//! connection between two events of a stream holds its socket, its framing state and
//! nothing else:
//! - a request head is read into a stack buffer and copied out at its size; its header
//!   values and the body's first bytes are slices of that copy;
//! - the request body reads the socket itself ([`crate::client_body`]) and hands the read
//!   side back at its end;
//! - the answer's head is written from a buffer made for it, and each piece of its body
//!   straight from the piece (`writev` with the chunk's framing around it).
//!
//! Kept from hyper's: heads over `max_header_bytes` or with more than `max_headers` fields
//! get 431; malformed heads 400; a head half-sent on a kept-alive connection is cut after
//! `header_read_timeout`; Content-Length together with Transfer-Encoding is flagged for
//! admission to refuse (chunked wins, then the connection closes); Content-Length and
//! chunked bodies; `Expect: 100-continue` (answered before the body is read); answers with
//! Content-Length when their size is known, chunked otherwise (close-delimited to
//! HTTP/1.0); none for HEAD, 1xx, 204 and 304; a `date`; keep-alive both ways and
//! pipelined requests in order; a client that hangs up while its answer is awaited or
//! streamed drops the answer (which is how the provider and the records learn of it); a
//! body that fails half-way ends the connection without its last chunk, so the client
//! sees it cut. The first head's deadline and idle keep-alive connections are the
//! listener's ([`crate::server`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use switchyard_core::ErrorKind;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::admission::new_request_id;
use crate::client_body::{ClientBody, H1RequestBody, Hand, ReadSide, Returned};
use crate::conn::ConnInfo;
use crate::drain::Drain;
use crate::errors::{error_response, GATEWAY_ITSELF};
use crate::h1_answer::{answer_head, chunk_size_line, Out};
use crate::h1_framing::{poll_read_piece, Wire};
pub use crate::h1_request::HeadLimits;
use crate::h1_request::{ends_head, parse_head, Head, Refused, TOO_LARGE};
use crate::response_body::GatewayBody;
use crate::service::{GatewayService, OwnIn};

/// The write side of a client connection.
pub(crate) type WriteSide = Box<dyn AsyncWrite + Send + Unpin>;

/// Serves HTTP/1.1 on any byte stream (tests use an in-memory one).
pub async fn serve_connection<T>(
    io: T,
    svc: GatewayService,
    info: Arc<ConnInfo>,
    limits: &HeadLimits,
    drain: Drain,
) -> io::Result<()>
where
    T: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    serve(Box::new(rd), Box::new(wr), svc, info, limits, drain).await
}

/// Serves requests on one client connection until it closes, fails, or `drain` turns true
/// (between requests; an answer under way is finished first).
pub(crate) async fn serve(
    rd: ReadSide,
    wr: WriteSide,
    svc: GatewayService,
    info: Arc<ConnInfo>,
    limits: &HeadLimits,
    drain: Drain,
) -> io::Result<()> {
    // One wait for the connection's life (see `crate::drain`).
    let mut drained = std::pin::pin!(drain.wait());
    let mut conn = Conn {
        rd: Some(rd),
        wr,
        pending: Bytes::new(),
        ahead: BytesMut::new(),
        reusable: true,
        hand: Arc::new(Hand::default()),
    };
    let mut first = true;
    loop {
        let head = tokio::select! {
            biased;
            () = &mut drained => return conn.close().await,
            h = conn.read_head(limits, first) => h,
        };
        let head = match head {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err((status, why)) => {
                // Boxed: rare, and inline its send under a timeout made this future
                // larger than the state an open stream holds (see the size test).
                Box::pin(conn.refuse(status, why)).await;
                return Ok(());
            }
        };
        first = false;
        // Taken apart at once: what a field still holds would be kept in this future for
        // as long as the answer streams.
        let Head {
            method,
            uri,
            version,
            headers,
            body,
            keep_alive,
            expect_continue,
            violation,
        } = head;
        if violation {
            info.framing_violation.store(true, Ordering::Relaxed);
        }
        let mut keep_alive = keep_alive && !violation && method != Method::CONNECT;
        let body = match body {
            None => ClientBody::Empty,
            Some(framing) => {
                let rd = conn
                    .rd
                    .take()
                    .expect("the read side is home between requests");
                let pending = std::mem::take(&mut conn.pending);
                let hand = conn.hand.clone();
                let body = H1RequestBody::new(rd, pending, framing, hand, expect_continue);
                ClientBody::H1(body)
            }
        };
        let is_head = method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        let mut answer = svc.answer_with(req, OwnIn::Body);
        // `100 Continue` goes out when the request path first reads the body (so a
        // request refused before that gets its answer instead).
        let (hand, mut expects) = (conn.hand.clone(), expect_continue);
        let resp = loop {
            tokio::select! {
                biased;
                r = &mut answer => break match r { Ok(r) => r, Err(never) => match never {} },
                () = hand.go_on.notified(), if expects => {
                    expects = false;
                    conn.write(&mut [IoSlice::new(b"HTTP/1.1 100 Continue\r\n\r\n")]).await?;
                }
                () = conn.hung_up() => return Ok(()),
            }
        };
        drop((hand, answer));
        // Draining: the client is told the connection closes after this answer, so it
        // sends no request the close would lose.
        keep_alive &= !drain.is_draining();
        let (head, body, out, keep_alive) = framed(resp, version, is_head, keep_alive);
        let whole = match out {
            Out::None => {
                drop(body);
                conn.write(&mut [IoSlice::new(&head)]).await?;
                true
            }
            _ => {
                let body = std::pin::pin!(body);
                conn.send_body(body, head, out).await?
            }
        };
        if !(whole && keep_alive) {
            return conn.close().await;
        }
        if conn.rd.is_none() {
            match conn.hand.take() {
                Some(r) => conn.take_back(r),
                // The body is still held (by the request path, past its answer): the
                // socket cannot be read for the next request.
                None => return conn.close().await,
            }
        }
        if !conn.reusable {
            return conn.close().await;
        }
        if !conn.ahead.is_empty() {
            let ahead = std::mem::take(&mut conn.ahead).freeze();
            conn.pending = concat(&conn.pending, &ahead);
        }
    }
}

struct Conn {
    /// `None` while a request body reads the socket.
    rd: Option<ReadSide>,
    wr: WriteSide,
    /// Bytes read and not yet used: the start of the next head, or of a body.
    pending: Bytes,
    /// Bytes read while an answer was awaited or sent: a pipelined next request.
    ahead: BytesMut,
    /// The socket's next bytes are a request head (false once a body was left unread).
    reusable: bool,
    hand: Arc<Hand>,
}

impl Conn {
    /// The next request head. `Ok(None)`: the client closed, or a head begun on a
    /// kept-alive connection did not complete within `header_read_timeout`.
    async fn read_head(
        &mut self,
        limits: &HeadLimits,
        first: bool,
    ) -> Result<Option<Head>, Refused> {
        let mut acc = BytesMut::new();
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            match parse_head(&pending, limits)? {
                Some((head, len)) => {
                    self.pending = pending.slice(len..);
                    return Ok(Some(head));
                }
                None => acc.extend_from_slice(&pending),
            }
        }
        // The first head's deadline is the listener's, counted from the accept.
        let mut deadline = (!first && !acc.is_empty())
            .then(|| tokio::time::Instant::now() + limits.header_read_timeout);
        loop {
            let Some(rd) = self.rd.as_mut() else {
                return Ok(None);
            };
            let read = std::future::poll_fn(|cx| poll_read_piece(rd, cx, Bytes::copy_from_slice));
            let piece = match deadline {
                None => read.await,
                Some(d) => match tokio::time::timeout_at(d, read).await {
                    Ok(r) => r,
                    Err(_) => return Ok(None),
                },
            };
            let piece = match piece {
                Ok(p) if !p.is_empty() => p,
                _ => return Ok(None),
            };
            let from = acc.len().saturating_sub(3);
            // Most heads come whole in one read: that read's copy is the head's storage.
            let data = if acc.is_empty() {
                piece
            } else {
                acc.extend_from_slice(&piece);
                std::mem::take(&mut acc).freeze()
            };
            if ends_head(&data[from..]) {
                if let Some((head, len)) = parse_head(&data, limits)? {
                    self.pending = data.slice(len..);
                    return Ok(Some(head));
                }
            }
            if data.len() > limits.max_header_bytes {
                return Err(TOO_LARGE);
            }
            // A head begun and not complete: from now it must be within the deadline (not
            // set before, so a head read whole costs no clock read).
            if !first && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + limits.header_read_timeout);
            }
            acc = data
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        }
    }

    /// Resolves when the client hangs up while its answer is awaited or sent (never while
    /// a request body holds the read side). What it reads meanwhile is kept, up to a
    /// head's worth, as a pipelined next request; past that, or after a body left unread,
    /// it is dropped and the connection closes after the answer.
    async fn hung_up(&mut self) {
        const KEEP: usize = 64 * 1024;
        loop {
            let Some(rd) = self.rd.as_mut() else {
                let hand = self.hand.clone();
                let notified = hand.back.notified();
                match hand.take() {
                    Some(r) => self.take_back(r),
                    None => notified.await,
                }
                continue;
            };
            match std::future::poll_fn(|cx| poll_read_piece(rd, cx, Bytes::copy_from_slice)).await {
                Ok(p) if !p.is_empty() => {
                    if self.reusable && self.ahead.len() + p.len() <= KEEP {
                        self.ahead.extend_from_slice(&p);
                    } else {
                        self.reusable = false;
                        self.ahead = BytesMut::new();
                    }
                }
                _ => return,
            }
        }
    }

    fn take_back(&mut self, r: Returned) {
        self.rd = Some(r.rd);
        if r.whole {
            self.pending = r.leftover;
        } else {
            self.reusable = false;
        }
    }

    /// Writes the body with the head (with the first piece when it is ready at once).
    /// Whether it was sent whole.
    async fn send_body(
        &mut self,
        mut body: Pin<&mut GatewayBody>,
        head: Vec<u8>,
        out: Out,
    ) -> io::Result<bool> {
        let mut head = Some(head);
        let mut left = match out {
            Out::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            let frame = if head.is_some() {
                let now = std::future::poll_fn(|cx| {
                    Poll::Ready(match body.as_mut().poll_frame(cx) {
                        Poll::Ready(f) => Some(f),
                        Poll::Pending => None,
                    })
                })
                .await;
                match now {
                    Some(f) => f,
                    None => {
                        let h = head.take().unwrap_or_default();
                        self.write(&mut [IoSlice::new(&h)]).await?;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    f = body.frame() => f,
                    () = self.hung_up() => return Ok(false),
                }
            };
            let h = head.take().unwrap_or_default();
            let data = match frame {
                None => {
                    let end: &[u8] = if out == Out::Chunked {
                        b"0\r\n\r\n"
                    } else {
                        b""
                    };
                    self.write(&mut [IoSlice::new(&h), IoSlice::new(end)])
                        .await?;
                    return Ok(out != Out::Close && (out == Out::Chunked || left == 0));
                }
                Some(Err(e)) => {
                    // Cut: no last chunk, and the connection closes, so the client sees
                    // an incomplete answer rather than a complete short one.
                    if !h.is_empty() {
                        self.write(&mut [IoSlice::new(&h)]).await?;
                    }
                    tracing::debug!(error = %e, "the answer's body failed half-way");
                    return Ok(false);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    // Trailers are not sent over HTTP/1.1.
                    Err(_) => {
                        if !h.is_empty() {
                            self.write(&mut [IoSlice::new(&h)]).await?;
                        }
                        continue;
                    }
                },
            };
            if data.is_empty() && h.is_empty() {
                continue;
            }
            match out {
                Out::Chunked => {
                    let mut size = [0u8; 18];
                    let size = chunk_size_line(&mut size, data.len());
                    // The last chunk goes with the last piece when the body knows it is done.
                    let end: &[u8] = if body.is_end_stream() {
                        b"\r\n0\r\n\r\n"
                    } else {
                        b"\r\n"
                    };
                    if data.is_empty() {
                        self.write(&mut [IoSlice::new(&h)]).await?;
                        continue;
                    }
                    self.write(&mut [
                        IoSlice::new(&h),
                        IoSlice::new(size),
                        IoSlice::new(&data),
                        IoSlice::new(end),
                    ])
                    .await?;
                    if end.len() > 2 {
                        return Ok(true);
                    }
                }
                Out::Length(_) => {
                    let n = (data.len() as u64).min(left) as usize;
                    self.write(&mut [IoSlice::new(&h), IoSlice::new(&data[..n])])
                        .await?;
                    left -= n as u64;
                    if n < data.len() {
                        // More than it declared: cut rather than send a corrupt stream.
                        return Ok(false);
                    }
                }
                Out::Close => {
                    self.write(&mut [IoSlice::new(&h), IoSlice::new(&data)])
                        .await?
                }
                Out::None => {}
            }
        }
    }

    /// Writes all of `parts`, in as few writes as the socket takes.
    async fn write(&mut self, parts: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut parts = parts;
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            let n = self.wr.write_vectored(parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        self.wr.flush().await
    }

    /// Answers a head the gateway cannot read, then closes. Like every answer it names
    /// the gateway as its provider and carries a request id (a new one: the head's own
    /// could not be read).
    async fn refuse(&mut self, status: StatusCode, why: &str) {
        let mut resp: Response<GatewayBody> = error_response(
            ErrorKind::BadRequest,
            why,
            &new_request_id(),
            &GATEWAY_ITSELF,
        );
        *resp.status_mut() = status;
        let (head, body, out, _) = framed(resp, Version::HTTP_11, false, false);
        let body = std::pin::pin!(body);
        let send = self.send_body(body, head, out);
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        let _ = self.close().await;
    }

    async fn close(&mut self) -> io::Result<()> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
        Ok(())
    }
}

/// The answer's head, its body, how the body is framed, and whether the connection may
/// carry another request after it.
fn framed(
    resp: Response<GatewayBody>,
    version: Version,
    is_head: bool,
    mut keep_alive: bool,
) -> (Vec<u8>, GatewayBody, Out, bool) {
    let (parts, mut body) = resp.into_parts();
    let own = body.take_own_headers();
    let status = parts.status;
    let no_body = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let wire = Wire::of(&parts.headers);
    let declared = wire
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if wire.close {
        keep_alive = false;
    }
    let out = if no_body {
        Out::None
    } else if let Some(n) = declared.or(body.size_hint().exact()) {
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Close
    };
    let head = answer_head(
        status,
        version,
        &parts.headers,
        own.as_ref(),
        out,
        is_head.then_some(declared).flatten(),
        keep_alive,
    );
    (head, body, out, keep_alive)
}

fn concat(a: &Bytes, b: &Bytes) -> Bytes {
    if a.is_empty() {
        return b.clone();
    }
    let mut m = BytesMut::with_capacity(a.len() + b.len());
    m.extend_from_slice(a);
    m.extend_from_slice(b);
    m.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    /// The size of what `F` returns, without calling it (futures' sizes, `forward`'s too).
    pub(crate) fn size_of_output<F: FnOnce() -> T, T>(_: &F) -> usize {
        std::mem::size_of::<T>()
    }

    /// Stands in for an argument whose type alone is needed (the closure is never called).
    pub(crate) fn never<T>() -> T {
        unreachable!("only the type is asked for")
    }

    /// A connection's future is most of what an open stream holds: every value it keeps
    /// across an await is in it, once per place the value passed through (4 KB when the
    /// answer's body was moved inline; the body is boxed now).
    #[test]
    fn a_connection_holds_little_while_it_streams() {
        let limits = super::HeadLimits {
            header_read_timeout: std::time::Duration::ZERO,
            max_header_bytes: 0,
            max_headers: 0,
        };
        let serve = || super::serve(never(), never(), never(), never(), &limits, never());
        let size = size_of_output(&serve);
        // 2 KiB, and the connection's one wait for the drain (`crate::drain::Wait`, about
        // 100 bytes), kept for its life rather than made and registered at every request.
        assert!(
            size <= 2048 + 128,
            "the connection's future is {size} bytes"
        );
        let body = std::mem::size_of::<crate::response_body::GatewayBody>();
        assert!(body <= 64, "the answer's body is {body} bytes inline");
    }
}
