//! The provider side of HTTP/1.1, driven by the request's own task: the request is written
//! from the task that forwards it, and the answer's body reads the socket from the task
//! that writes it to the client. Nothing else runs per connection.
//!
//! hyper's client connection keeps, per open exchange, a task of its own, a dispatch
//! channel (a 32-slot block), an 8 KiB head-writing buffer and a read buffer: about 20 KB
//! of heap per open SSE stream, for one answer at a time. Here an exchange holds its
//! socket and a few words of framing state; bytes are read into a stack buffer and copied
//! out at their size, so a stream waiting for its next event holds no buffer at all. This
//! is how nginx holds a stream in one small buffer, and what issue 27 measured the gateway
//! against.
//!
//! What it speaks: one request at a time per connection (no pipelining), the answer's head
//! read while the request is written (an early answer ends the upload), `Content-Length`,
//! chunked and close-delimited answers, 1xx heads skipped,
//! trailers read and dropped. A connection goes back to its pool only when its answer was
//! read exactly to its end and neither side asked to close it.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;

use crate::connect::Io;
use crate::errors::BoxError;
use crate::h1_body::{H1Body, Home};
use crate::h1_framing::{
    ends_chunked, invalid_data, parse_len, poll_read_piece, Chunk, Framing, Wire,
};
use crate::header_names;
use crate::request_body::BoxedBody;

/// A response head longer than this is refused (hyper's default limit is about 400 KB;
/// providers send well under 4 KB).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Request body pieces are gathered behind the head up to this many bytes; a piece at
/// least this large is written as it is, not copied.
const COALESCE: usize = 16 * 1024;

/// Sends `req` on `io` and reads the answer's head; the body reads the rest from `io`.
/// An error from the request body (the client's) comes back as it was raised. The request's
/// headers come back with the answer when `keep_headers` asks for them.
///
/// Not an `async fn`: the request is taken apart and its head written out before the
/// future is made, so the future holds what the exchange needs (the upload, the headers
/// kept) and not the request itself beside them, dead, for as long as it runs.
pub(crate) fn send(
    mut io: Io,
    req: Request<BoxedBody>,
    home: Home,
    keep_headers: bool,
) -> impl Future<Output = Result<(Response<H1Body>, Option<HeaderMap>), BoxError>> + Send {
    let started = start_upload(req, keep_headers);
    async move {
        let (mut upload, kept, head_only, close) = started?;
        let mut head = HeadReader::default();
        let (parts, rest) = poll_fn(|cx| loop {
            // The head is read while the request is written: a provider may answer (413, 401)
            // before it has read the whole upload, and stop reading it.
            if let Poll::Ready(read) = head.poll(&mut io, cx) {
                return Poll::Ready(match (read, upload.failed.take()) {
                    (Ok(h), _) => Ok(h),
                    // Nothing readable after a failed write: the write's error says more.
                    (Err(_), Some(wrote)) => Err(Box::new(wrote) as BoxError),
                    (Err(e), None) => Err(e.into()),
                });
            }
            if upload.done || upload.failed.is_some() {
                return Poll::Pending;
            }
            match upload.poll(&mut io, cx) {
                Poll::Ready(Err(Written::Body(e))) => return Poll::Ready(Err(e)),
                // What the provider said before it closed, if anything, is read next.
                Poll::Ready(Err(Written::Socket(e))) => upload.failed = Some(e),
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Pending,
            }
        })
        .await?;
        // An answer before the whole request: the rest is not sent, and the connection is in
        // no state to carry another exchange.
        let whole = upload.done;
        drop(upload);
        Ok((
            answer(io, parts, rest, head_only, close || !whole, home)?,
            kept,
        ))
    }
}

/// The request taken apart: its head written out ahead of its body (the upload), the
/// headers kept when asked, whether it is a HEAD and whether it closes the connection.
fn start_upload(
    req: Request<BoxedBody>,
    keep_headers: bool,
) -> Result<(Upload, Option<HeaderMap>, bool, bool), BoxError> {
    let (mut parts, body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let close = Wire::of(&parts.headers).close;
    let framing = request_framing(&parts, &body)?;
    let out = request_head(&parts, &framing);
    // Nothing of the request is held longer than needed: its header values and its body's
    // first bytes are slices of the client's head as it was read. The headers are kept
    // only when a refusal may send the request again, and only until the answer's head.
    let kept = keep_headers.then(|| std::mem::take(&mut parts.headers));
    drop(parts);
    let upload = Upload::new(out, body, framing).map_err(Written::into_error)?;
    Ok((upload, kept, head_only, close))
}

/// The answer with its body framed as its head says.
fn answer(
    io: Io,
    mut parts: http::response::Parts,
    rest: Bytes,
    head_only: bool,
    close: bool,
    home: Home,
) -> io::Result<Response<H1Body>> {
    let wire = Wire::of(&parts.headers);
    let framing = response_framing(&parts, &wire, head_only)?;
    // Both framings at once (RFC 9112 §6.3): the transfer coding wins, the length is not
    // passed on, and the connection is not trusted with another exchange.
    let both = wire.transfer_encoding.is_some() && wire.content_length.is_some();
    let reusable = !close
        && !both
        && !wire.close
        && (parts.version == Version::HTTP_11 || wire.keep_alive)
        && !matches!(framing, Framing::Close);
    if both {
        parts.headers.remove(CONTENT_LENGTH);
    }
    Ok(Response::from_parts(
        parts,
        H1Body::new(io, rest, framing, reusable, home),
    ))
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// `Content-Length` (the client's, or the body's exact size).
    Length {
        declared: bool,
        len: u64,
    },
    Chunked,
}

fn request_framing(parts: &http::request::Parts, body: &BoxedBody) -> io::Result<ReqFraming> {
    if let Some(v) = parts.headers.get(CONTENT_LENGTH) {
        let len = parse_len(v.as_bytes())
            .ok_or_else(|| invalid_input("the request's content-length is not a number"))?;
        return Ok(ReqFraming::Length {
            declared: true,
            len,
        });
    }
    if body.is_end_stream() {
        return Ok(ReqFraming::Length {
            declared: false,
            len: 0,
        });
    }
    Ok(match body.size_hint().exact() {
        Some(len) => ReqFraming::Length {
            declared: false,
            len,
        },
        None => ReqFraming::Chunked,
    })
}

/// Methods whose empty body goes without a `Content-Length: 0`, as hyper sends them.
fn bodiless(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

fn request_head(parts: &http::request::Parts, framing: &ReqFraming) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let size = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + parts.method.as_str().len()
        + target.len()
        + 64;
    // Room for the body too, when it is small enough to go out with the head.
    let body = match *framing {
        ReqFraming::Length { len, .. } if len < COALESCE as u64 => len as usize,
        _ => 0,
    };
    let mut out = Vec::with_capacity(size + body);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // The framing is this connection's to choose.
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match *framing {
        ReqFraming::Length {
            declared: false,
            len,
        } if len > 0 || !bodiless(&parts.method) => {
            out.extend_from_slice(b"content-length: ");
            push_number(&mut out, len, 10);
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ReqFraming::Length { .. } => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Why writing the request stopped.
enum Written {
    /// The client's body failed (too large, malformed, abandoned), or did not match its
    /// length.
    Body(BoxError),
    /// The socket failed.
    Socket(io::Error),
}

impl Written {
    fn into_error(self) -> BoxError {
        match self {
            Written::Body(e) => e,
            Written::Socket(e) => Box::new(e),
        }
    }
}

/// The request on its way: its head and the body's pieces gathered while they come at
/// once (the head goes out with the first piece), written whenever the body has to wait,
/// so a slow upload reaches the provider as it comes.
struct Upload {
    out: Vec<u8>,
    /// How much of `out` is written.
    pos: usize,
    /// A large piece, written after `out` as it is rather than copied.
    big: Bytes,
    /// `None` once it ended (and was dropped).
    body: Option<BoxedBody>,
    framing: ReqFraming,
    sent: u64,
    /// Bytes written since the last flush (TLS holds records back until flushed).
    unflushed: bool,
    /// All of the request is written and flushed.
    done: bool,
    /// The socket failed while writing.
    failed: Option<io::Error>,
}

impl Upload {
    fn new(out: Vec<u8>, body: BoxedBody, framing: ReqFraming) -> Result<Upload, Written> {
        let empty = body.is_end_stream();
        let mut upload = Upload {
            out,
            pos: 0,
            big: Bytes::new(),
            body: Some(body),
            framing,
            sent: 0,
            unflushed: false,
            done: false,
            failed: None,
        };
        if empty {
            upload.end()?;
        }
        Ok(upload)
    }

    fn poll(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Written>> {
        loop {
            let mut waiting = false;
            while self.big.is_empty() && self.out.len() - self.pos < COALESCE {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(&mut **body).poll_frame(cx) {
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                    Poll::Ready(None) => self.end()?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Written::Body(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers cannot follow a body of known length; they are dropped.
                        if let Ok(d) = frame.into_data() {
                            self.piece(d)?;
                        }
                        // A body of known length says when it is whole; it is not polled
                        // again.
                        if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                            self.end()?;
                        }
                    }
                }
            }
            ready!(self.poll_write(io, cx))?;
            if self.body.is_none() {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Written::Socket)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if waiting {
                // The client's next piece is not there yet: what was written goes out now.
                if self.unflushed {
                    ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Written::Socket)?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
        }
    }

    /// Writes `out`, then `big`.
    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Written>> {
        while self.pos < self.out.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.pos..]))
                .map_err(Written::Socket)?;
            if n == 0 {
                return Poll::Ready(Err(Written::Socket(io::ErrorKind::WriteZero.into())));
            }
            self.pos += n;
            self.unflushed = true;
        }
        self.out.clear();
        self.pos = 0;
        while !self.big.is_empty() {
            let n =
                ready!(Pin::new(&mut *io).poll_write(cx, &self.big)).map_err(Written::Socket)?;
            if n == 0 {
                return Poll::Ready(Err(Written::Socket(io::ErrorKind::WriteZero.into())));
            }
            self.big = self.big.slice(n..);
            self.unflushed = true;
        }
        Poll::Ready(Ok(()))
    }

    fn piece(&mut self, d: Bytes) -> Result<(), Written> {
        self.sent += d.len() as u64;
        if let ReqFraming::Length { len, .. } = self.framing {
            if self.sent > len {
                return Err(Written::Body(Box::new(invalid_input(
                    "the request body is longer than its content-length",
                ))));
            }
        }
        if d.is_empty() {
            return Ok(());
        }
        match self.framing {
            ReqFraming::Chunked => {
                push_number(&mut self.out, d.len() as u64, 16);
                self.out.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&d);
                self.out.extend_from_slice(b"\r\n");
            }
            ReqFraming::Length { .. } if d.len() >= COALESCE => self.big = d,
            ReqFraming::Length { .. } => self.out.extend_from_slice(&d),
        }
        Ok(())
    }

    /// The body ended: it is dropped, and its framing closed.
    fn end(&mut self) -> Result<(), Written> {
        self.body = None;
        match self.framing {
            ReqFraming::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            ReqFraming::Length { len, .. } if self.sent != len => {
                return Err(Written::Body(Box::new(invalid_input(
                    "the request body ended before its content-length",
                ))))
            }
            ReqFraming::Length { .. } => {}
        }
        Ok(())
    }
}

/// Reads up to the end of the answer's final head (1xx heads skipped): the head, and the
/// bytes that came after it. The bytes are read into the stack; only a head longer than
/// one read is gathered on the heap.
#[derive(Default)]
struct HeadReader {
    gathered: Vec<u8>,
}

impl HeadReader {
    fn poll(
        &mut self,
        io: &mut Io,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(http::response::Parts, Bytes)>> {
        loop {
            if let Some(head) = ready!(poll_read_piece(io, cx, |got| self.take(got)))?? {
                return Poll::Ready(Ok(head));
            }
        }
    }

    /// What was just read: the head if it is complete, else kept for the next read.
    fn take(&mut self, got: &[u8]) -> io::Result<Option<(http::response::Parts, Bytes)>> {
        if got.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the provider closed the connection before its response head",
            ));
        }
        let mut bytes: &[u8] = if self.gathered.is_empty() {
            got
        } else {
            self.gathered.extend_from_slice(got);
            &self.gathered
        };
        loop {
            match parse_head(bytes)? {
                Parsed::Final(parts, len, read) => return Ok(Some((parts, read.slice(len..)))),
                Parsed::Interim(len) => bytes = &bytes[len..],
                Parsed::Partial => break,
            }
        }
        if bytes.len() > MAX_HEAD {
            return Err(invalid_data("the provider's response head is too long"));
        }
        self.gathered = bytes.to_vec();
        Ok(None)
    }
}

enum Parsed {
    /// A final head, its length, and all that was read with it (the head's values are
    /// slices of it, and the body's first bytes follow the head in it: one copy for both).
    Final(http::response::Parts, usize, Bytes),
    /// A 1xx head of this length, to skip.
    Interim(usize),
    Partial,
}

fn parse_head(bytes: &[u8]) -> io::Result<Parsed> {
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        bytes,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(invalid_data(format!(
                "the provider's response head is malformed: {e}"
            )))
        }
    };
    let code = resp.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        return Ok(Parsed::Interim(len));
    }
    if code == 101 {
        return Err(invalid_data("the provider switched protocols"));
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| invalid_data("the provider's status code is invalid"))?;
    // The values share one copy of the head rather than one allocation each.
    let head = Bytes::copy_from_slice(bytes);
    let base = bytes.as_ptr() as usize;
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = header_names::read(h.name.as_bytes())
            .map_err(|_| invalid_data("the provider sent an invalid header name"))?;
        let start = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + h.value.len()))
            .map_err(|_| invalid_data("the provider sent an invalid header value"))?;
        map.append(name, value);
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = map;
    Ok(Parsed::Final(parts, len, head))
}

fn response_framing(
    parts: &http::response::Parts,
    wire: &Wire<'_>,
    head_only: bool,
) -> io::Result<Framing> {
    let s = parts.status.as_u16();
    if head_only || s == 204 || s == 304 {
        return Ok(Framing::Done);
    }
    if let Some(te) = wire.transfer_encoding {
        if parts.version == Version::HTTP_10 {
            return Err(invalid_data(
                "the provider sent a transfer coding in an HTTP/1.0 answer",
            ));
        }
        return Ok(if ends_chunked(te.as_bytes()) {
            Framing::Chunked(Chunk::Size { n: 0, digits: 0 })
        } else {
            Framing::Close
        });
    }
    if wire.content_length.is_none() {
        return Ok(Framing::Close);
    }
    let mut len = None;
    // Repeated, or as a list of the same value, it is one length (RFC 9110 §8.6).
    let values = parts.headers.get_all(CONTENT_LENGTH).into_iter();
    for v in values.flat_map(|v| v.as_bytes().split(|&b| b == b',')) {
        let n = parse_len(v)
            .ok_or_else(|| invalid_data("the provider's content-length is not a number"))?;
        if len.is_some_and(|l| l != n) {
            return Err(invalid_data(
                "the provider sent two different content-lengths",
            ));
        }
        len = Some(n);
    }
    Ok(match len {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// `n` in `radix` (10 or 16, lowercase), without a heap string.
fn push_number(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn invalid_input(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A provider that reads one request head (and `body` bytes after it) per answer in
    /// `answers`, each written in the pieces given, on one connection; it returns what it
    /// read.
    async fn provider(
        answers: Vec<Vec<&'static [u8]>>,
        close: bool,
    ) -> (Io, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for pieces in answers {
                let start = seen.len();
                loop {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap();
                    seen.extend_from_slice(&b[..n]);
                    if n == 0 || request_done(&seen[start..]) {
                        break;
                    }
                }
                for p in pieces {
                    s.write_all(p).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if !close {
                // Hold the connection open until the client closes it.
                let mut b = [0u8; 64];
                while s.read(&mut b).await.is_ok_and(|n| n > 0) {}
            }
            seen
        });
        let io = Io::Tcp(TcpStream::connect(addr).await.unwrap());
        (io, server)
    }

    /// A request head, and its body when it says it has one of a given length or ends
    /// a chunked one.
    fn request_done(bytes: &[u8]) -> bool {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
        let body = &bytes[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        body.len() >= len
    }

    fn home() -> (Home, Arc<Pool>) {
        let pool = Arc::new(Pool::default());
        (
            Home {
                pool: pool.clone(),
                max_idle: 8,
            },
            pool,
        )
    }

    fn post(body: &'static str) -> Request<BoxedBody> {
        let shared = Arc::new(crate::request_body::RequestShared::default());
        Request::post("/v1/chat/completions")
            .header("host", "provider")
            .body(Box::new(crate::request_body::RequestBody::buffered(
                Bytes::from_static(body.as_bytes()),
                shared,
            )))
            .unwrap()
    }

    /// A small POST to a provider that answers with `pieces` (and closes after them when
    /// `close`): what came back, and the pool its connection would go back to.
    async fn ask(
        pieces: Vec<&'static [u8]>,
        close: bool,
    ) -> (Result<Response<H1Body>, BoxError>, Arc<Pool>) {
        let (io, _server) = provider(vec![pieces], close).await;
        let (h, pool) = home();
        (send(io, post("{}"), h, false).await.map(|(r, _)| r), pool)
    }

    async fn body_of(resp: Response<H1Body>) -> Result<Bytes, io::Error> {
        resp.into_body().collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn a_sized_answer_is_read_and_its_connection_kept_for_the_next() {
        let (io, server) = provider(
            vec![
                vec![
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-id: a\r\n\r\nhel",
                    b"lo",
                ],
                vec![b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
            ],
            false,
        )
        .await;
        let (h, pool) = home();
        let (resp, sent) = send(io, post("{\"a\":1}"), h, true).await.unwrap();
        assert_eq!(
            sent.expect("kept")["host"],
            "provider",
            "the headers as sent"
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-id"], "a");
        assert_eq!(body_of(resp).await.unwrap(), "hello");
        let io = pool
            .take(Duration::from_secs(60))
            .expect("the connection came back");

        let (h, pool) = home();
        let (resp, sent) = send(io, post(""), h, false).await.unwrap();
        assert!(sent.is_none());
        assert_eq!(resp.status(), 201);
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        let mut io = pool.take(Duration::from_secs(60)).unwrap();
        assert!(!io.is_closed());
        drop(io);

        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert_eq!(
            seen,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: provider\r\ncontent-length: 7\r\n\r\n{\"a\":1}\
             POST /v1/chat/completions HTTP/1.1\r\nhost: provider\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_in_odd_pieces_is_decoded_whole() {
        let (resp, pool) = ask(vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"5;ext=1\r\nda",
                b"ta:\r",
                b"\n1",
                b"1\r\n 1234567890123456\r\n0\r\nx-trailer: t\r\n",
                b"\r\n"], false).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200, "the 100 was skipped");
        assert_eq!(body_of(resp).await.unwrap(), "data: 1234567890123456");
        assert!(pool.take(Duration::from_secs(60)).is_some());
    }

    #[tokio::test]
    async fn an_answer_to_the_close_is_read_and_its_connection_not_kept() {
        let (resp, pool) = ask(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of ",
                b"it",
            ],
            true,
        )
        .await;
        let resp = resp.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "all of it");
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_close_asked_for_is_honoured() {
        let (resp, _) = ask(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
            true,
        )
        .await;
        let resp = resp.unwrap();
        let e = body_of(resp).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let (resp, pool) = ask(
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
            false,
        )
        .await;
        let resp = resp.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_provider_that_closes_before_answering_is_an_error() {
        let (Err(e), _) = ask(vec![], true).await else {
            panic!("answered");
        };
        assert!(e.to_string().contains("before its response head"), "{e}");
    }

    #[tokio::test]
    async fn an_early_answer_is_read_while_the_upload_is_stuck() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                seen.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Reads no more of the upload, and keeps the connection open.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let io = Io::Tcp(TcpStream::connect(addr).await.unwrap());
        let (h, pool) = home();
        let shared = Arc::new(crate::request_body::RequestShared::default());
        let upload = Bytes::from(vec![b'x'; 64 << 20]);
        let req = Request::post("/v1/files")
            .header("content-length", upload.len())
            .body(Box::new(crate::request_body::RequestBody::buffered(
                upload, shared,
            )))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), send(io, req, h, false))
            .await
            .expect("the answer came while the upload was stuck")
            .unwrap()
            .0;
        assert_eq!(resp.status(), 413);
        assert_eq!(body_of(resp).await.unwrap(), "big!");
        assert!(pool.take(Duration::from_secs(60)).is_none(), "not reused");
    }

    #[tokio::test]
    async fn framing_the_provider_got_wrong_is_refused_or_not_trusted_again() {
        // A transfer coding and a length: read by the coding, the length not passed on,
        // the connection not reused.
        let (resp, pool) = ask(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n"], false).await;
        let resp = resp.unwrap();
        assert!(resp.headers().get("content-length").is_none());
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert!(pool.take(Duration::from_secs(60)).is_none());

        // The same length twice, as a list, is one length.
        let (resp, pool) = ask(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"],
            false,
        )
        .await;
        let resp = resp.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert!(pool.take(Duration::from_secs(60)).is_some());

        // HTTP/1.0 has no transfer codings.
        let (Err(e), _) = ask(
            vec![b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"],
            false,
        )
        .await
        else {
            panic!("answered");
        };
        assert!(e.to_string().contains("HTTP/1.0"), "{e}");
    }

    #[test]
    fn numbers_are_written_without_a_heap_string() {
        let mut out = Vec::new();
        push_number(&mut out, 0, 10);
        push_number(&mut out, 1234567, 10);
        push_number(&mut out, 255, 16);
        assert_eq!(out, b"01234567ff");
        assert_eq!(parse_len(b" 42 "), Some(42));
        assert_eq!(parse_len(b"4x"), None);
        assert_eq!(parse_len(b"99999999999999999999"), None);
    }
}
