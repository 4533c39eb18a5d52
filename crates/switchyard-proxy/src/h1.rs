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
//! What it speaks: one request at a time per connection (no pipelining), the request body
//! written whole before the answer is read (an early answer to a failed upload is still
//! read), `Content-Length`, chunked and close-delimited answers, 1xx heads skipped,
//! trailers read and dropped. A connection goes back to its pool only when its answer was
//! read exactly to its end and neither side asked to close it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::connect::Io;
use crate::errors::BoxError;
use crate::h1_body::{Chunk, Framing, H1Body, Home};
use crate::request_body::BoxedBody;

/// One read from the socket: the largest piece an answer's head is read in.
pub(crate) const READ_BUF: usize = 8192;
/// A response head longer than this is refused (hyper's default limit is about 400 KB;
/// providers send well under 4 KB).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Request bodies pieces at least this large are written on their own, not copied after
/// the head.
const COALESCE: usize = 16 * 1024;

/// Sends `req` on `io` and reads the answer's head; the body reads the rest from `io`.
/// An error from the request body (the client's) comes back as it was raised.
pub(crate) async fn send(
    mut io: Io,
    req: Request<BoxedBody>,
    home: Home,
) -> Result<Response<H1Body>, BoxError> {
    let (parts, mut body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let close = asks_close(&parts.headers);
    let framing = request_framing(&parts, &body)?;
    let head = request_head(&parts, &framing);
    match write_request(&mut io, head, &mut body, framing).await {
        Ok(()) => {}
        Err(Written::Body(e)) => return Err(e),
        // A provider may answer (413, 401) and close before the whole upload is read: its
        // answer is what the client should see. Nothing readable: the write's error.
        Err(Written::Socket(e)) => {
            return match read_head(&mut io).await {
                Ok((parts, rest)) => Ok(answer(io, parts, rest, head_only, true, home)?),
                Err(_) => Err(Box::new(e)),
            }
        }
    }
    // Nothing of the request is held while the answer is awaited: its head and body are
    // slices of the client connection's read buffer, which hyper cannot reuse while they
    // live (it allocates another 8 KiB for its next read instead).
    drop((parts, body));
    let (parts, rest) = read_head(&mut io).await?;
    Ok(answer(io, parts, rest, head_only, close, home)?)
}

/// The answer with its body framed as its head says.
fn answer(
    io: Io,
    parts: http::response::Parts,
    rest: Bytes,
    head_only: bool,
    close: bool,
    home: Home,
) -> io::Result<Response<H1Body>> {
    let framing = response_framing(&parts, head_only)?;
    let reusable = !close
        && !asks_close(&parts.headers)
        && (parts.version == Version::HTTP_11 || keeps_alive(&parts.headers))
        && !matches!(framing, Framing::Close);
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
    let mut out = Vec::with_capacity(size);
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
    /// The client's body failed (too large, malformed, abandoned).
    Body(BoxError),
    /// The socket failed.
    Socket(io::Error),
}

/// One step of the request body: a piece, its end, or (with bytes waiting) a pause.
enum Step {
    Data(Bytes),
    End,
    Flush,
    Failed(BoxError),
}

/// Writes the head and the body: the head together with the first piece when it is
/// there at once, and whatever is held whenever the body has to wait, so a slow upload
/// reaches the provider as it comes.
async fn write_request(
    io: &mut Io,
    mut out: Vec<u8>,
    body: &mut BoxedBody,
    framing: ReqFraming,
) -> Result<(), Written> {
    let mut sent: u64 = 0;
    let mut ended = body.is_end_stream();
    while !ended {
        let step = poll_fn(|cx| {
            let mut body = Pin::new(&mut **body);
            match body.as_mut().poll_frame(cx) {
                Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(Step::End),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Failed(e)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => Poll::Ready(Step::Data(d)),
                    // Trailers cannot follow a body of known length; they are dropped.
                    Err(_) => Poll::Ready(Step::Data(Bytes::new())),
                },
            }
        })
        .await;
        match step {
            Step::Flush => {
                io.write_all(&out).await.map_err(Written::Socket)?;
                io.flush().await.map_err(Written::Socket)?;
                out.clear();
            }
            Step::Failed(e) => return Err(Written::Body(e)),
            Step::End => ended = true,
            Step::Data(d) => {
                sent += d.len() as u64;
                if let ReqFraming::Length { len, .. } = framing {
                    if sent > len {
                        return Err(Written::Body(Box::new(invalid_input(
                            "the request body is longer than its content-length",
                        ))));
                    }
                }
                if !d.is_empty() {
                    if framing == ReqFraming::Chunked {
                        push_number(&mut out, d.len() as u64, 16);
                        out.extend_from_slice(b"\r\n");
                    }
                    if d.len() >= COALESCE {
                        io.write_all(&out).await.map_err(Written::Socket)?;
                        out.clear();
                        io.write_all(&d).await.map_err(Written::Socket)?;
                    } else {
                        out.extend_from_slice(&d);
                    }
                    if framing == ReqFraming::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                // A body of known length says when it is whole; it is not polled again.
                ended = body.is_end_stream();
            }
        }
    }
    match framing {
        ReqFraming::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        ReqFraming::Length { len, .. } if sent != len => {
            return Err(Written::Body(Box::new(invalid_input(
                "the request body ended before its content-length",
            ))))
        }
        ReqFraming::Length { .. } => {}
    }
    io.write_all(&out).await.map_err(Written::Socket)?;
    io.flush().await.map_err(Written::Socket)
}

/// Reads up to the end of the answer's final head (1xx heads skipped): the head, and the
/// bytes that came after it. The bytes are read into the stack; only a head longer than
/// one read is gathered on the heap.
async fn read_head(io: &mut Io) -> io::Result<(http::response::Parts, Bytes)> {
    let mut gathered: Vec<u8> = Vec::new();
    poll_fn(|cx| loop {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_BUF];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        let got = buf.filled();
        if got.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the provider closed the connection before its response head",
            )));
        }
        let mut bytes: &[u8] = if gathered.is_empty() {
            got
        } else {
            gathered.extend_from_slice(got);
            &gathered
        };
        loop {
            match parse_head(bytes)? {
                Parsed::Final(parts, len) => {
                    return Poll::Ready(Ok((parts, Bytes::copy_from_slice(&bytes[len..]))))
                }
                Parsed::Interim(len) => bytes = &bytes[len..],
                Parsed::Partial => break,
            }
        }
        if bytes.len() > MAX_HEAD {
            return Poll::Ready(Err(invalid_data(
                "the provider's response head is too long",
            )));
        }
        let keep = bytes.to_vec();
        gathered = keep;
    })
    .await
}

enum Parsed {
    /// A final head, and its length.
    Final(http::response::Parts, usize),
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
    let head = Bytes::copy_from_slice(&bytes[..len]);
    let base = bytes.as_ptr() as usize;
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
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
    Ok(Parsed::Final(parts, len))
}

fn response_framing(parts: &http::response::Parts, head_only: bool) -> io::Result<Framing> {
    let s = parts.status.as_u16();
    if head_only || s == 204 || s == 304 {
        return Ok(Framing::Done);
    }
    if let Some(te) = parts.headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let last = te.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Chunk::Size { n: 0, digits: 0 })
        } else {
            Framing::Close
        });
    }
    let mut len = None;
    for v in parts.headers.get_all(CONTENT_LENGTH) {
        let n = parse_len(v.as_bytes())
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

fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn has_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

fn asks_close(headers: &HeaderMap) -> bool {
    has_token(headers, b"close")
}

fn keeps_alive(headers: &HeaderMap) -> bool {
    has_token(headers, b"keep-alive")
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

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
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
        let resp = send(io, post("{\"a\":1}"), h).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-id"], "a");
        assert_eq!(body_of(resp).await.unwrap(), "hello");
        let io = pool
            .take(Duration::from_secs(60))
            .expect("the connection came back");

        let (h, pool) = home();
        let resp = send(io, post(""), h).await.unwrap();
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
        let (io, _server) = provider(
            vec![vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"5;ext=1\r\nda",
                b"ta:\r",
                b"\n1",
                b"1\r\n 1234567890123456\r\n0\r\nx-trailer: t\r\n",
                b"\r\n",
            ]],
            false,
        )
        .await;
        let (h, pool) = home();
        let resp = send(io, post("{}"), h).await.unwrap();
        assert_eq!(resp.status(), 200, "the 100 was skipped");
        assert_eq!(body_of(resp).await.unwrap(), "data: 1234567890123456");
        assert!(pool.take(Duration::from_secs(60)).is_some());
    }

    #[tokio::test]
    async fn an_answer_to_the_close_is_read_and_its_connection_not_kept() {
        let (io, _server) = provider(
            vec![vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of ",
                b"it",
            ]],
            true,
        )
        .await;
        let (h, pool) = home();
        let resp = send(io, post("{}"), h).await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "all of it");
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_close_asked_for_is_honoured() {
        let (io, _server) = provider(
            vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"]],
            true,
        )
        .await;
        let (h, _) = home();
        let resp = send(io, post("{}"), h).await.unwrap();
        let e = body_of(resp).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let (io, _server) = provider(
            vec![vec![
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            ]],
            false,
        )
        .await;
        let (h, pool) = home();
        let resp = send(io, post("{}"), h).await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert!(pool.take(Duration::from_secs(60)).is_none());
    }

    #[tokio::test]
    async fn a_provider_that_closes_before_answering_is_an_error() {
        let (io, _server) = provider(vec![vec![]], true).await;
        let (h, _) = home();
        let Err(e) = send(io, post("{}"), h).await else {
            panic!("answered");
        };
        assert!(e.to_string().contains("before its response head"), "{e}");
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
