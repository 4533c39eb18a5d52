//! The request path, top to bottom. Every request runs these steps in this order:
//!
//! 1. **snapshot**: load the current [`Snapshot`] once; it serves this request to its end,
//!    so reloads and phase changes never change a request half-way.
//! 2. **framing**: a request that came with both `Content-Length` and `Transfer-Encoding`
//!    (seen by the connection's [`crate::server`] guard) is refused with 400 and the
//!    connection closed: that pair is how requests are smuggled.
//! 3. **request id**: keep the client's `x-request-id` or make one; it goes upstream, into
//!    the response and the access log, and is the routing key when no sticky header is set.
//!    It comes before auth so that even a refused request can be traced.
//! 4. **client auth**: when client keys are configured, a missing or unknown key is 401
//!    (compared in constant time). Before the body limit, so strangers cost nothing.
//! 5. **body limit**: a declared `Content-Length` over the limit is 413 at once; a chunked
//!    body is counted as it streams and cut at the limit ([`RequestBody`]).
//! 6. **route**: hash the sticky key into a bucket, pick `from` or `to` by the phase.
//! 7. **rewrite**: hop-by-hop headers out, `Host` and `Authorization` set to the provider's,
//!    path mapped onto its `base_url`.
//! 8. **send** through the provider's pooled client under its first-byte `timeout` (504).
//!    A connect failure with nothing sent goes once to the other provider
//!    (`x-switchyard-failover`); after that nothing is retried.
//! 9. **respond**: hop-by-hop headers out, `x-switchyard-provider` and `x-request-id` in,
//!    the body streamed through [`ResponseBody`] (idle timeout, metrics and access log at
//!    its end, however it ends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use switchyard_core::router::Side;
use switchyard_core::ErrorKind;

use crate::body::{BodyTooLarge, End, GatewayBody, OnEnd, RequestBody, ResponseBody};
use crate::headers::{strip_hop_by_hop, upstream_path};
use crate::metrics::{Outcome, REJECTED_TOTAL};
use crate::snapshot::{Gateway, Snapshot};
use crate::upstream::Upstream;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SWITCHYARD_PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
pub static X_SWITCHYARD_FAILOVER: HeaderName = HeaderName::from_static("x-switchyard-failover");
/// `x-switchyard-provider` on answers the gateway gave before choosing a provider.
static GATEWAY_ITSELF: HeaderValue = HeaderValue::from_static("switchyard");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Per-connection facts the request path needs.
#[derive(Default)]
pub struct ConnInfo {
    /// Set by the connection's framing guard when a request head carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub framing_violation: AtomicBool,
}

pub async fn handle(
    gw: &Gateway,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let snap = gw.load();
    let start = Instant::now();

    if conn.framing_violation.load(Ordering::Relaxed) {
        let id = request_id(&req);
        let mut r = reject(
            ErrorKind::BadRequest,
            "Content-Length together with Transfer-Encoding is not allowed",
            &id,
            "framing",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }

    let request_id = request_id(&req);

    if let Some(keys) = &snap.client_keys {
        if !authorized(req.headers(), keys) {
            return reject(
                ErrorKind::Unauthorized,
                "missing or unknown API key for this gateway",
                &request_id,
                "auth",
            );
        }
    }

    let limit = snap.config.server.max_body_bytes;
    if req.body().size_hint().lower() > limit {
        let msg = format!("request body is larger than the limit of {limit} bytes");
        return reject(ErrorKind::BodyTooLarge, &msg, &request_id, "body_too_large");
    }

    let side = {
        let key = match req.headers().get(&snap.sticky_header) {
            Some(v) if !v.is_empty() => v.as_bytes(),
            _ => request_id.as_bytes(),
        };
        snap.config.migration.router.side(key, snap.to_buckets)
    };
    let m = &snap.config.migration;
    let (first, other) = match side {
        Side::To => (m.to, m.from),
        Side::From => (m.from, m.to),
    };

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::AUTHORIZATION);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let method = parts.method.clone();
    let client_uri = parts.uri.clone();

    let (body, slot) = RequestBody::new(body, limit);
    let hint = body.hint();
    let mut body = Some(body);
    let mut failed_over_from: Option<&Arc<Upstream>> = None;
    let mut index = first;
    loop {
        let up = &snap.upstreams[index];
        let upstream_req = match build_upstream_request(
            &parts,
            up,
            body.take().unwrap_or_else(RequestBody::empty),
        ) {
            Ok(r) => r,
            Err(e) => {
                return gateway_error(
                    up,
                    &request_id,
                    start,
                    ErrorKind::BadRequest,
                    &format!("cannot forward this request: {e}"),
                    &snap,
                    &method,
                    &client_uri,
                );
            }
        };
        let sent = tokio::time::timeout(up.config.timeout, up.client.request(upstream_req)).await;
        match sent {
            Ok(Ok(resp)) => {
                return respond(
                    resp,
                    up,
                    &snap,
                    request_id,
                    start,
                    failed_over_from,
                    method,
                    client_uri,
                );
            }
            Err(_elapsed) => {
                let msg = format!(
                    "provider `{}` sent no response within {:?}",
                    up.name, up.config.timeout
                );
                return gateway_error(
                    up,
                    &request_id,
                    start,
                    ErrorKind::UpstreamTimeout,
                    &msg,
                    &snap,
                    &method,
                    &client_uri,
                );
            }
            Ok(Err(e)) => {
                if has_source::<BodyTooLarge>(&e) {
                    let msg = format!("request body is larger than the limit of {limit} bytes");
                    up.metrics.count(Outcome::S4xx);
                    let mut r =
                        reject(ErrorKind::BodyTooLarge, &msg, &request_id, "body_too_large");
                    r.headers_mut()
                        .insert(X_SWITCHYARD_PROVIDER.clone(), up.name_header.clone());
                    return r;
                }
                if e.is_connect() && failed_over_from.is_none() && other != index {
                    // Nothing left the gateway if the body is still in its slot (or there was none).
                    let untouched = match &slot {
                        Some(s) => s.lock().unwrap_or_else(|p| p.into_inner()).is_some(),
                        None => true,
                    };
                    if untouched {
                        tracing::warn!(request_id = ?request_id, provider = %up.name, error = %ErrorChain(&e), "cannot connect; failing over");
                        up.metrics.count(Outcome::Error);
                        up.metrics.failovers.increment(1);
                        failed_over_from = Some(up);
                        body = Some(RequestBody::from_slot(slot.clone(), hint, limit));
                        index = other;
                        continue;
                    }
                }
                let (kind, what) = if e.is_connect() {
                    (ErrorKind::UpstreamConnect, "cannot connect to")
                } else {
                    (ErrorKind::UpstreamBroken, "broke the exchange with")
                };
                let msg = format!("gateway {what} provider `{}`", up.name);
                tracing::warn!(request_id = ?request_id, provider = %up.name, error = %ErrorChain(&e), "{msg}");
                return gateway_error(
                    up,
                    &request_id,
                    start,
                    kind,
                    &msg,
                    &snap,
                    &method,
                    &client_uri,
                );
            }
        }
    }
}

fn request_id<B>(req: &Request<B>) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 256 => v.clone(),
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(s).expect("uuid is a valid header value")
        }
    }
}

/// `Authorization: Bearer <key>` against the configured keys, in constant time.
fn authorized(headers: &http::HeaderMap, keys: &[Box<[u8]>]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_ref().ct_eq(given);
    }
    ok.into()
}

fn build_upstream_request(
    parts: &http::request::Parts,
    up: &Upstream,
    body: RequestBody,
) -> Result<Request<RequestBody>, http::Error> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(upstream_path(&up.config.base_path, pq))
        .build()?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.clone_from(&parts.headers);
    headers.insert(header::HOST, up.host.clone());
    if let Some(auth) = &up.auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    Ok(req)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    resp: Response<Incoming>,
    up: &Arc<Upstream>,
    snap: &Arc<Snapshot>,
    request_id: HeaderValue,
    start: Instant,
    failed_over_from: Option<&Arc<Upstream>>,
    method: Method,
    client_uri: Uri,
) -> Response<GatewayBody> {
    let first_byte = start.elapsed();
    up.metrics.first_byte.record(first_byte.as_secs_f64());
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_SWITCHYARD_PROVIDER.clone(), up.name_header.clone());
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(failed) = failed_over_from {
        parts
            .headers
            .insert(X_SWITCHYARD_FAILOVER.clone(), failed.name_header.clone());
    }
    let status = parts.status.as_u16();
    let on_end = Box::new(Finish {
        upstream: up.clone(),
        start,
        status,
        request_id,
        method,
        uri: client_uri,
        access_log: snap.config.server.access_log,
    });
    let body = ResponseBody::new(body, up.config.idle_timeout, on_end);
    Response::from_parts(parts, GatewayBody::Upstream { body })
}

/// Accounts for one exchange when its response body ends.
struct Finish {
    upstream: Arc<Upstream>,
    start: Instant,
    status: u16,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    access_log: bool,
}

impl OnEnd for Finish {
    fn on_end(self: Box<Self>, end: End, body_bytes: u64) {
        let elapsed = self.start.elapsed();
        let outcome = match end {
            End::Complete | End::ClientGone => Outcome::from_status(self.status),
            End::Broken => Outcome::Error,
            End::Idle => Outcome::Timeout,
        };
        let m = &self.upstream.metrics;
        m.count(outcome);
        m.duration.record(elapsed.as_secs_f64());
        if self.access_log {
            access_log(
                &self.request_id,
                &self.method,
                &self.uri,
                &self.upstream.name,
                self.status,
                outcome,
                end,
                elapsed,
                body_bytes,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn access_log(
    request_id: &HeaderValue,
    method: &Method,
    uri: &Uri,
    provider: &str,
    status: u16,
    outcome: Outcome,
    end: End,
    elapsed: std::time::Duration,
    bytes: u64,
) {
    // The path only: query strings can carry secrets.
    tracing::info!(
        target: "switchyard::access",
        request_id = request_id.to_str().unwrap_or("-"),
        method = method.as_str(),
        path = uri.path(),
        provider,
        status,
        outcome = outcome.label(),
        end = ?end,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes,
    );
}

/// An error the gateway makes after a provider was chosen: counted against that provider.
#[allow(clippy::too_many_arguments)]
fn gateway_error(
    up: &Upstream,
    request_id: &HeaderValue,
    start: Instant,
    kind: ErrorKind,
    message: &str,
    snap: &Snapshot,
    method: &Method,
    uri: &Uri,
) -> Response<GatewayBody> {
    let outcome = match kind {
        ErrorKind::UpstreamTimeout => Outcome::Timeout,
        ErrorKind::UpstreamConnect | ErrorKind::UpstreamBroken => Outcome::Error,
        k => Outcome::from_status(k.status()),
    };
    let elapsed = start.elapsed();
    up.metrics.count(outcome);
    up.metrics.duration.record(elapsed.as_secs_f64());
    if snap.config.server.access_log {
        access_log(
            request_id,
            method,
            uri,
            &up.name,
            kind.status(),
            outcome,
            End::Complete,
            elapsed,
            0,
        );
    }
    let mut r = error_response(kind, message, request_id);
    r.headers_mut()
        .insert(X_SWITCHYARD_PROVIDER.clone(), up.name_header.clone());
    r
}

/// A refusal before any provider was chosen.
fn reject(
    kind: ErrorKind,
    message: &str,
    request_id: &HeaderValue,
    reason: &'static str,
) -> Response<GatewayBody> {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
    let mut r = error_response(kind, message, request_id);
    r.headers_mut()
        .insert(X_SWITCHYARD_PROVIDER.clone(), GATEWAY_ITSELF.clone());
    r
}

pub fn error_response(
    kind: ErrorKind,
    message: &str,
    request_id: &HeaderValue,
) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(Bytes::from(kind.body(message))));
    *r.status_mut() =
        StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON.clone());
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if kind == ErrorKind::Unauthorized {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Prints an error with its causes: hyper-util's top-level message alone says little.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}
