//! The request path, top to bottom. [`stack`] builds it per connection; every request
//! passes these layers in this order (outermost first):
//!
//! 1. **snapshot** (`map_request`): load the current [`Snapshot`] once and carry it in the
//!    request's extensions; it serves this request to its end, so reloads and phase
//!    changes never change a request half-way. First, because every later step reads it.
//! 2. **request id** (tower-http `SetRequestId`): keep the client's `x-request-id` or make
//!    a UUID; it goes upstream and is the routing key when no sticky header is set.
//! 3. **request id out** (tower-http `PropagateRequestId`): copy it onto every response,
//!    including the refusals below — which is why it wraps them.
//! 4. **framing** (`ValidateRequestHeader`): a request that came with both `Content-Length`
//!    and `Transfer-Encoding` (seen by the connection's [`crate::server::FramingGuard`]) is
//!    refused with 400 and the connection closed: that pair is how requests are smuggled.
//! 5. **client auth** (`ValidateRequestHeader`): when client keys are configured, a missing
//!    or unknown key is 401 (compared in constant time). Before the body limit, so strangers
//!    cost nothing.
//! 6. **declared body limit** (`ValidateRequestHeader`): a `Content-Length` over the limit
//!    is 413 at once. A chunked body is counted as it streams ([`RequestBody`]) and cut
//!    at the limit inside step 7.
//! 7. **forward** ([`Forward`]): route (hash the sticky key into a bucket, pick `from` or
//!    `to`), rewrite (hop-by-hop headers out, `Host` and `Authorization` set to the
//!    provider's, path mapped onto its `base_url`), send through the provider's pooled
//!    client under its first-byte `timeout` (504), fail over once on a connect error with
//!    nothing sent (`x-switchyard-failover`), then respond: hop-by-hop headers out,
//!    `x-switchyard-provider` in, the body streamed through [`ResponseBody`] (idle timeout,
//!    metrics and access log at its end, however it ends). Timeouts and metrics live here
//!    and not in layers of their own because both depend on the provider chosen here.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use switchyard_core::router::Side;
use switchyard_core::ErrorKind;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::validate_request::ValidateRequestHeaderLayer;

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

/// The service stack for one connection; see the module docs for the order and why.
// tower-http's validators answer `Result<(), Response>`: the large Err is its API.
#[allow(clippy::result_large_err)]
pub fn stack(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<GatewayBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(gw.load());
            req
        })
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), Uuids))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(ValidateRequestHeaderLayer::custom(
            move |req: &mut Request<Incoming>| {
                if conn.framing_violation.load(Ordering::Relaxed) {
                    let mut r = reject(
                        req,
                        ErrorKind::BadRequest,
                        "Content-Length together with Transfer-Encoding is not allowed",
                        "framing",
                    );
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Err(r);
                }
                Ok(())
            },
        ))
        .layer(ValidateRequestHeaderLayer::custom(
            |req: &mut Request<Incoming>| match snapshot(req).client_keys.as_deref() {
                Some(keys) if !authorized(req.headers(), keys) => Err(reject(
                    req,
                    ErrorKind::Unauthorized,
                    "missing or unknown API key for this gateway",
                    "auth",
                )),
                _ => Ok(()),
            },
        ))
        .layer(ValidateRequestHeaderLayer::custom(
            |req: &mut Request<Incoming>| {
                let limit = snapshot(req).config.server.max_body_bytes;
                if req.body().size_hint().lower() > limit {
                    let msg = format!("request body is larger than the limit of {limit} bytes");
                    return Err(reject(req, ErrorKind::BodyTooLarge, &msg, "body_too_large"));
                }
                Ok(())
            },
        ))
        .service(Forward)
}

/// Makes `x-request-id` values: random UUIDs (v4), formatted without a heap string.
#[derive(Clone, Copy)]
struct Uuids;

impl MakeRequestId for Uuids {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_str(s).ok().map(RequestId::new)
    }
}

/// The snapshot layer 1 put on the request.
fn snapshot<B>(req: &Request<B>) -> &Arc<Snapshot> {
    req.extensions()
        .get::<Arc<Snapshot>>()
        .expect("the snapshot layer runs first")
}

fn request_id_of<B>(req: &Request<B>) -> HeaderValue {
    match req.extensions().get::<RequestId>() {
        Some(id) => id.header_value().clone(),
        None => req
            .headers()
            .get(&X_REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("-")),
    }
}

/// The innermost service: route, rewrite, send, respond.
#[derive(Clone, Copy)]
pub struct Forward;

impl Service<Request<Incoming>> for Forward {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        Box::pin(async move { Ok(forward(req).await) })
    }
}

async fn forward(req: Request<Incoming>) -> Response<GatewayBody> {
    let start = Instant::now();
    let snap = snapshot(&req).clone();
    let request_id = request_id_of(&req);
    let limit = snap.config.server.max_body_bytes;

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
                    return gateway_error(
                        up,
                        &request_id,
                        start,
                        ErrorKind::BodyTooLarge,
                        &msg,
                        &snap,
                        &method,
                        &client_uri,
                    );
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

/// A refusal before any provider was chosen: counted by reason, and access-logged.
fn reject<B>(
    req: &Request<B>,
    kind: ErrorKind,
    message: &str,
    reason: &'static str,
) -> Response<GatewayBody> {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
    let request_id = request_id_of(req);
    if req
        .extensions()
        .get::<Arc<Snapshot>>()
        .is_none_or(|s| s.config.server.access_log)
    {
        let outcome = Outcome::from_status(kind.status());
        access_log(
            &request_id,
            req.method(),
            req.uri(),
            "-",
            kind.status(),
            outcome,
            End::Complete,
            std::time::Duration::ZERO,
            0,
        );
    }
    let mut r = error_response(kind, message, &request_id);
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
