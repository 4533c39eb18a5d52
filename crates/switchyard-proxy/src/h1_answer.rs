//! Answer heads on the gateway's HTTP/1.1 server ([`crate::h1_server`]): the status line,
//! the answer's own headers, a `date`, and the framing and connection headers the server
//! decides.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Version};

use crate::headers::OwnHeaders;

/// How the answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 without a known length).
    Close,
}

/// The answer's head: status line, the answer's headers (framing and connection headers
/// are the server's) and the gateway's own (`own`, in place of the answer's of the same
/// names), `date`, framing, connection.
pub(crate) fn answer_head(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    own: Option<&OwnHeaders>,
    out: Out,
    head_length: Option<u64>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    h.extend_from_slice(status.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    h.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == "keep-alive"
            || own.is_some_and(|o| o.replaces(name))
        {
            continue;
        }
        dated |= name == header::DATE;
        line(&mut h, name, value);
    }
    for (name, value) in own.into_iter().flat_map(OwnHeaders::each) {
        line(&mut h, name, value);
    }
    if !dated {
        h.extend_from_slice(b"date: ");
        h.extend_from_slice(&http_date());
        h.extend_from_slice(b"\r\n");
    }
    let length = match out {
        Out::Length(n) => Some(n),
        _ => head_length,
    };
    if let Some(n) = length {
        h.extend_from_slice(b"content-length: ");
        h.extend_from_slice(itoa_u64(&mut [0u8; 20], n));
        h.extend_from_slice(b"\r\n");
    } else if out == Out::Chunked {
        h.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        h.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        h.extend_from_slice(b"connection: keep-alive\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn line(h: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    h.extend_from_slice(name.as_str().as_bytes());
    h.extend_from_slice(b": ");
    h.extend_from_slice(value.as_bytes());
    h.extend_from_slice(b"\r\n");
}

fn itoa_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `len` in hex and CRLF: a chunk's size line.
pub(crate) fn chunk_size_line(buf: &mut [u8; 18], mut len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    buf[16] = b'\r';
    buf[17] = b'\n';
    loop {
        i -= 1;
        buf[i] = HEX[len & 0xf];
        len >>= 4;
        if len == 0 {
            return &buf[i..];
        }
    }
}

/// The `date` header's value, made once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let (at, text) = d.get();
        if at == secs {
            return text;
        }
        let mut text = [b' '; 29];
        let made = httpdate::fmt_http_date(now);
        let n = made.len().min(29);
        text[..n].copy_from_slice(&made.as_bytes()[..n]);
        d.set((secs, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_gateways_own_headers_replace_the_answers_of_the_same_names() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-request-id", HeaderValue::from_static("provider-id"));
        headers.insert(
            "x-switchyard-provider",
            HeaderValue::from_static("upstream"),
        );
        headers.insert("x-switchyard-migration", HeaderValue::from_static("theirs"));
        headers.insert("x-other", HeaderValue::from_static("kept"));
        let own = OwnHeaders {
            provider: HeaderValue::from_static("new"),
            request_id: HeaderValue::from_static("client-id"),
            migration: None,
            failover: Some(HeaderValue::from_static("old")),
        };
        let h = answer_head(
            StatusCode::OK,
            Version::HTTP_11,
            &headers,
            Some(&own),
            Out::Length(2),
            None,
            true,
        );
        let h = String::from_utf8(h).unwrap();
        for line in [
            "content-type: application/json\r\n",
            "x-other: kept\r\n",
            "x-switchyard-provider: new\r\n",
            "x-request-id: client-id\r\n",
            "x-switchyard-failover: old\r\n",
            // Not the gateway's to set here: the answer's passes on.
            "x-switchyard-migration: theirs\r\n",
        ] {
            assert_eq!(h.matches(line).count(), 1, "{line:?} once in {h}");
        }
        assert!(!h.contains("provider-id") && !h.contains("upstream"), "{h}");
        // The same for a server that writes heads from the map.
        own.insert_into(&mut headers);
        assert_eq!(headers["x-request-id"], "client-id");
        assert_eq!(headers["x-switchyard-provider"], "new");
        assert_eq!(headers["x-switchyard-failover"], "old");
        assert_eq!(headers["x-switchyard-migration"], "theirs");
    }

    #[test]
    fn answer_heads_carry_framing_date_and_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let h = answer_head(
            StatusCode::OK,
            Version::HTTP_11,
            &headers,
            None,
            Out::Chunked,
            None,
            true,
        );
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: "),
            "{h}"
        );
        assert!(
            h.ends_with(" GMT\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{h}"
        );
        assert_eq!(h.matches("transfer-encoding").count(), 1);
        let h = answer_head(
            StatusCode::OK,
            Version::HTTP_10,
            &HeaderMap::new(),
            None,
            Out::Length(12),
            None,
            false,
        );
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("HTTP/1.0 200 OK\r\n")
                && h.ends_with("content-length: 12\r\nconnection: close\r\n\r\n"),
            "{h}"
        );
        let mut size = [0u8; 18];
        assert_eq!(chunk_size_line(&mut size, 0x1a2f), b"1a2f\r\n");
        assert_eq!(itoa_u64(&mut [0; 20], 0), b"0");
        assert_eq!(
            itoa_u64(&mut [0; 20], 18_446_744_073_709_551_615),
            b"18446744073709551615"
        );
    }
}
