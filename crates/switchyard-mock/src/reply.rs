//! How the mock answers: JSON and SSE responses, and what a request asked for.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{Channel, Either, Full};
use hyper::Response;
use serde_json::Value;

use crate::features::Ignore;
use crate::state::State;

pub(crate) type MockBody = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

impl Ask<'_> {
    /// The request asks for a streamed answer.
    pub(crate) fn stream(&self) -> bool {
        self.json
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Content chunks to send: `x-mock-chunks`, else the mock's own.
    pub(crate) fn chunks(&self) -> usize {
        header_num(self.headers, "x-mock-chunks").map_or(self.st.cfg.chunks, |v| v as usize)
    }

    /// What to leave unanswered: the mock's switches and `x-mock-ignore`.
    pub(crate) fn ignore(&self) -> Ignore {
        let own = *self.st.ignore.lock().unwrap_or_else(|e| e.into_inner());
        let asked = self
            .headers
            .get("x-mock-ignore")
            .and_then(|v| v.to_str().ok()?.parse::<Ignore>().ok())
            .unwrap_or_default();
        own.or(asked)
    }

    /// The pause before each chunk: `x-mock-chunk-delay-ms`, else the mock's own.
    pub(crate) fn chunk_delay(&self) -> Duration {
        header_num(self.headers, "x-mock-chunk-delay-ms")
            .map_or(self.st.cfg.chunk_delay, Duration::from_millis)
    }
}

/// One request as the answering code needs it.
pub(crate) struct Ask<'a> {
    pub(crate) st: &'a Arc<State>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) json: &'a Value,
    /// The request's sequence number (answer ids, the error-rate sequence).
    pub(crate) n: u64,
    pub(crate) model: String,
    pub(crate) prompt_tokens: u64,
}

pub(crate) fn header_num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A streamed answer: `text/event-stream` from `rx`, as the chat and Responses APIs send.
pub(crate) fn sse_response(rx: Channel<Bytes, std::io::Error>, name: &str) -> Response<MockBody> {
    let mut r = Response::new(Either::Right(rx));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-mock-provider", v);
    }
    r
}

pub(crate) fn json_response(status: StatusCode, body: &Value, name: &str) -> Response<MockBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-mock-provider", v);
    }
    r
}
