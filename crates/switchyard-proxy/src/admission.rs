//! Admission: what a request must pass before a provider is chosen, in this order, each a
//! plain function answering a [`Refusal`] (made into a response in one place,
//! [`Refusal::respond`]):
//!
//! 0. **request id**: the client's `x-request-id` is kept, or a UUID made; it goes
//!    upstream, is the routing key when no sticky header is set, and every answer carries
//!    it, the refusals below too.
//! 1. **framing**: a request head with both `Content-Length` and `Transfer-Encoding` (seen
//!    as the HTTP/1.1 server parsed the head) is refused with 400 and the connection closed:
//!    that pair is how requests are smuggled.
//! 2. **escapes**: paths with `.`/`..` segments (raw or percent-encoded: nothing above
//!    `base_url`'s path may be reached with the provider's key) are 400, `CONNECT` is 405.
//! 3. **client key**: when client keys are configured, a missing or unknown key is 401
//!    (compared in constant time), a key over its limits 429. Before the body limit, so
//!    strangers cost nothing.
//! 4. **declared body**: a `Content-Length` over the limit is 413 at once (a chunked body
//!    is counted as it streams, and cut at the limit).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::client_body::ClientBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use subtle::ConstantTimeEq;
use switchyard_core::ErrorKind;

use crate::access::{access_log, Detail, Finished};
use crate::conn::ConnInfo;
use crate::errors::{error_response, BodyTooLarge, GATEWAY_ITSELF};
use crate::headers::X_REQUEST_ID;
use crate::limits::{OverLimit, Permit};
use crate::metrics::{Outcome, REJECTED_TOTAL};
use crate::response_body::GatewayBody;
use crate::snapshot::Snapshot;

/// What admission learned of a request it let in.
pub(crate) struct Admitted {
    /// The client's `x-request-id`, or the one made for it.
    pub(crate) request_id: HeaderValue,
    pub(crate) client: Client,
}

/// The client key that sent a request, when keys are configured.
pub(crate) struct Client {
    /// The client key's in-flight slot, when it has limits.
    pub(crate) permit: Option<Arc<Permit>>,
    /// Which configured client key sent it.
    pub(crate) client_key: Option<u16>,
}

/// A request refused before a provider was chosen: counted by `reason`, access-logged,
/// answered OpenAI-shaped.
pub(crate) struct Refusal {
    kind: ErrorKind,
    message: Cow<'static, str>,
    /// `switchyard_rejected_total{reason}`.
    reason: &'static str,
    /// Close the connection after answering (a smuggling attempt).
    close: bool,
    /// Set by [`admit`] (step 0 comes first, so every refusal has one).
    request_id: HeaderValue,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>, reason: &'static str) -> Self {
        Refusal {
            kind,
            message: message.into(),
            reason,
            close: false,
            retry_after: None,
            request_id: HeaderValue::from_static("-"),
        }
    }

    /// The answer, counted and logged.
    pub(crate) fn respond(
        self,
        req: &Request<ClientBody>,
        snap: &Snapshot,
        client: Option<SocketAddr>,
    ) -> Response<GatewayBody> {
        metrics::counter!(REJECTED_TOTAL, "reason" => self.reason).increment(1);
        let request_id = &self.request_id;
        let status = self.kind.status();
        if snap.config.server.access_log {
            access_log(&Finished {
                client,
                ttfb: None,
                failover: None,
                request_id,
                method: req.method(),
                uri: req.uri(),
                provider: "-",
                migration: None,
                phase: "-",
                status,
                outcome: Outcome::of(self.kind.class(), status),
                class: self.kind.class(),
                elapsed: std::time::Duration::ZERO,
                bytes: 0,
                model: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost: None,
                detail: Detail::default(),
            });
        }
        let mut r = error_response(self.kind, &self.message, request_id, &GATEWAY_ITSELF);
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// Runs the steps of the module docs in order.
pub(crate) fn admit(
    req: &mut Request<ClientBody>,
    snap: &Snapshot,
    conn: &ConnInfo,
) -> Result<Admitted, Refusal> {
    let request_id = ensure_request_id(req);
    let checked = refuse_smuggling(conn)
        .and_then(|()| refuse_escapes(req))
        .and_then(|()| admit_client(req, snap))
        .and_then(|client| refuse_declared_body(req, snap).map(|()| client));
    match checked {
        Ok(client) => Ok(Admitted { request_id, client }),
        Err(refusal) => Err(Refusal {
            request_id,
            ..refusal
        }),
    }
}

/// Step 1: a request head with both `Content-Length` and `Transfer-Encoding`.
fn refuse_smuggling(conn: &ConnInfo) -> Result<(), Refusal> {
    if conn.framing_violation.load(Ordering::Relaxed) {
        return Err(Refusal {
            close: true,
            ..Refusal::new(
                ErrorKind::BadRequest,
                "Content-Length together with Transfer-Encoding is not allowed",
                "framing",
            )
        });
    }
    Ok(())
}

/// Step 2: nothing above `base_url`'s path may be reached through the provider's key, even
/// on a provider that normalises paths; nothing is tunnelled.
fn refuse_escapes(req: &Request<ClientBody>) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        let msg = "CONNECT is not forwarded by this gateway";
        return Err(Refusal::new(ErrorKind::MethodNotAllowed, msg, "method"));
    }
    if has_dot_segment(req.uri().path()) {
        let msg = "paths with `.` or `..` segments are not forwarded";
        return Err(Refusal::new(ErrorKind::BadRequest, msg, "dot_segment"));
    }
    Ok(())
}

/// Step 3: the client's key, when keys are configured, and its rate limits; the permit
/// travels with the request to its end.
fn admit_client(req: &Request<ClientBody>, snap: &Snapshot) -> Result<Client, Refusal> {
    let Some(keys) = snap.client_keys.as_deref() else {
        return Ok(Client {
            permit: None,
            client_key: None,
        });
    };
    let Some(key) = key_index(req.headers(), keys) else {
        let msg = "missing or unknown API key for this gateway";
        return Err(Refusal::new(ErrorKind::Unauthorized, msg, "auth"));
    };
    // The judge counts evidence per client too: one client cannot decide a verdict.
    let client_key = Some(u16::try_from(key).unwrap_or(u16::MAX));
    let Some(limiter) = &snap.limiter else {
        return Ok(Client {
            permit: None,
            client_key,
        });
    };
    match limiter.admit(key, std::time::Instant::now()) {
        Ok(permit) => Ok(Client {
            permit: Some(Arc::new(permit)),
            client_key,
        }),
        Err(over) => {
            let (message, reason) = match over {
                OverLimit::Rate { .. } => (
                    "this key is over its request rate on this gateway (clients.limits)",
                    "rate_limit",
                ),
                OverLimit::Concurrency => (
                    "this key has too many requests in flight on this gateway (clients.limits)",
                    "concurrency_limit",
                ),
            };
            Err(Refusal {
                retry_after: Some(over.retry_after_secs()),
                ..Refusal::new(ErrorKind::RateLimited, message, reason)
            })
        }
    }
}

/// Step 4: a declared body over the limit.
fn refuse_declared_body(req: &Request<ClientBody>, snap: &Snapshot) -> Result<(), Refusal> {
    let limit = snap.config.server.max_body_bytes;
    if req.body().size_hint().lower() > limit {
        let msg = BodyTooLarge::message(limit);
        return Err(Refusal::new(ErrorKind::BodyTooLarge, msg, "body_too_large"));
    }
    Ok(())
}

/// Step 0: keeps the client's `x-request-id`, or makes one (it goes upstream, is the
/// routing key when no sticky header is set, and every answer carries it, refusals too).
fn ensure_request_id<B>(req: &mut Request<B>) -> HeaderValue {
    if let Some(id) = req.headers().get(&X_REQUEST_ID) {
        return id.clone();
    }
    let id = new_request_id();
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// A random UUID (v4), formatted without a heap string.
pub(crate) fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

/// Whether a path has a `.` or `..` segment, raw or percent-encoded (`%2e`).
pub fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither byte: one SIMD scan instead of a walk over the segments.
    if memchr::memchr2(b'.', b'%', path.as_bytes()).is_none() {
        return false;
    }
    path.split('/').any(|seg| {
        let mut dots = 0;
        let mut rest = seg.as_bytes();
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && rest[2].eq_ignore_ascii_case(&b'e')
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// Which configured key `Authorization: Bearer <key>` is, compared in constant time.
fn key_index(headers: &http::HeaderMap, keys: &[Box<[u8]>]) -> Option<usize> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))?;
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        // Every key is compared, whichever matches.
        if bool::from(k.as_ref().ct_eq(given)) {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_raw_or_encoded() {
        for p in [
            "/v1/../admin",
            "/v1/%2e%2e/x",
            "/v1/%2E./x",
            "/./v1",
            "/v1/.",
            "/v1/%2e",
            "/.%2E/",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/v1/chat/completions",
            "/v1/models/a.b",
            "/v1/...",
            "/v1/..a",
            "/v1/%2e%2e%2e",
            "/",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
