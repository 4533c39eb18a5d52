//! Request heads on the gateway's HTTP/1.1 server ([`crate::h1_server`]): parsed from the
//! bytes read, with their header values as slices of those bytes, and the body's framing
//! decided as RFC 9112 says (section 6.3), with Content-Length together with
//! Transfer-Encoding flagged for admission to refuse.

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use crate::h1_framing::{ends_chunked, parse_len, Chunk, Framing, Wire};
use crate::header_names;

/// Limits on request heads.
#[derive(Debug, Clone)]
pub struct HeadLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// Fields parsed on the stack; more (up to `max_headers`) go to the heap.
const STACK_HEADERS: usize = 128;

/// A request head, parsed.
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// `None`: no body.
    pub(crate) body: Option<Framing>,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// Content-Length together with Transfer-Encoding.
    pub(crate) violation: bool,
}

pub(crate) type Refused = (StatusCode, &'static str);

pub(crate) const TOO_LARGE: Refused = (
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "the request head is over server.max_header_bytes or has more fields than server.max_headers",
);

/// Whether `tail` (the bytes just read, and the three before them) completes a head.
pub(crate) fn ends_head(tail: &[u8]) -> bool {
    memchr::memmem::find(tail, b"\n\r\n").is_some() || memchr::memmem::find(tail, b"\n\n").is_some()
}

/// Parses a request head at the start of `data`: the head and its length, or `None` when
/// it is not complete yet.
pub(crate) fn parse_head(
    data: &Bytes,
    limits: &HeadLimits,
) -> Result<Option<(Head, usize)>, Refused> {
    const BAD: Refused = (StatusCode::BAD_REQUEST, "the request head is malformed");
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_HEADERS];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); limits.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(data, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) => return Err(BAD),
    };
    if len > limits.max_header_bytes {
        return Err(TOO_LARGE);
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| BAD)?;
    let path = req.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(data.slice_ref(path.as_bytes())).map_err(|_| BAD)?;
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut expect_continue = false;
    let mut wire = Wire::default();
    for h in req.headers.iter() {
        let name = header_names::read(h.name.as_bytes()).map_err(|_| BAD)?;
        let value = HeaderValue::from_maybe_shared(data.slice_ref(h.value)).map_err(|_| BAD)?;
        if name == header::CONTENT_LENGTH {
            let n = parse_len(value.as_bytes())
                .ok_or((StatusCode::BAD_REQUEST, "Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Content-Length is given twice, differently",
                ));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            chunked = Some(ends_chunked(value.as_bytes()));
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::CONNECTION {
            wire.connection(value.as_bytes());
        }
        headers.append(name, value);
    }
    let Wire {
        close, keep_alive, ..
    } = wire;
    let body = match (chunked, length) {
        (Some(false), _) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding must end with chunked",
            ))
        }
        // RFC 9112 section 6.1: HTTP/1.0 has no chunked framing to trust.
        (Some(true), _) if version == Version::HTTP_10 => {
            return Err((
                StatusCode::BAD_REQUEST,
                "HTTP/1.0 requests cannot have Transfer-Encoding",
            ))
        }
        (Some(true), _) => Some(Framing::Chunked(Chunk::Size { n: 0, digits: 0 })),
        (None, Some(n)) if n > 0 => Some(Framing::Length(n)),
        (None, _) => None,
    };
    let head = Head {
        method,
        uri,
        version,
        headers,
        body,
        keep_alive: if version == Version::HTTP_10 {
            keep_alive && !close
        } else {
            !close
        },
        expect_continue: expect_continue && version == Version::HTTP_11,
        violation: chunked.is_some() && length.is_some(),
    };
    Ok(Some((head, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            header_read_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_headers: 4,
        }
    }

    fn parse(s: &'static str) -> Result<Option<(Head, usize)>, Refused> {
        parse_head(&Bytes::from_static(s.as_bytes()), &limits())
    }

    #[test]
    fn heads_are_parsed_with_their_framing() {
        let (h, len) = parse("POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(len, 51);
        assert_eq!(h.body, Some(Framing::Length(5)));
        assert!(h.keep_alive && !h.violation);
        assert_eq!(h.headers["host"], "a");
        assert!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none(),
            "partial"
        );
        let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive && h.body.is_none());
        let (h, _) = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse("GET http://x.example/v1/models HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.uri.path(), "/v1/models");
    }

    #[test]
    fn ambiguous_or_bad_framing_is_flagged_or_refused() {
        let (h, _) =
            parse("POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.violation, "both: admission refuses it");
        assert!(matches!(h.body, Some(Framing::Chunked(_))), "chunked wins");
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).err().map(|e| e.0),
                Some(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        assert_eq!(
            parse(many).err().map(|e| e.0),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
