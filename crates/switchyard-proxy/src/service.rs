//! The request path, top to bottom. [`stack`] builds it per connection; every request
//! passes these layers in this order (outermost first):
//!
//! 1. **snapshot** (`map_request`): load the current [`Snapshot`] once and carry it in the
//!    request's extensions; it serves this request to its end, so reloads and phase
//!    changes never change a request half-way. First, because every later step reads it.
//! 2. **request id** (same `map_request`): keep the client's `x-request-id` or make a
//!    UUID; it goes upstream and is the routing key when no sticky header is set.
//! 3. **request id out**: every response carries it — the refusals below and the
//!    provider's answers alike set it where they are made ([`error_response`], the
//!    exchange's response head). (tower-http's `SetRequestId` and `PropagateRequestId` did
//!    this as two layers: ~4% of a request's instructions, in moving futures and an
//!    extension.)
//! 4. **framing** (steps 4 to 6 are one `ValidateRequestHeader` layer calling a function
//!    each, in order: as four nested layers they cost ~1% of a request's instructions in
//!    moving their futures): a request that came with both `Content-Length` and
//!    `Transfer-Encoding` (seen by the connection's [`crate::server::FramingGuard`]) is
//!    refused with 400 and the connection closed: that pair is how requests are smuggled.
//!    Then paths with `.`/`..` segments (400) and `CONNECT` (405) are refused.
//! 5. **client auth**: when client keys are configured, a missing
//!    or unknown key is 401 (compared in constant time). Before the body limit, so strangers
//!    cost nothing.
//! 6. **declared body limit**: a `Content-Length` over the limit
//!    is 413 at once. A chunked body is counted as it streams ([`RequestBody`]) and cut
//!    at the limit inside step 7.
//! 7. **forward** ([`Forward`]): route (hash the sticky key into a bucket;
//!    [`Router::side_of`] picks `from` or `to`), rewrite (hop-by-hop headers out, `Host` and
//!    `Authorization` set to the provider's, path mapped onto its `base_url`; for
//!    `inject_stream_usage`, [`crate::openai`] asks streams for their usage), start the
//!    shadow copy when the request falls in the shadow cohort ([`crate::shadow`]: its body
//!    is teed as it streams, the copy goes from its own task), then hand the request to
//!    the provider stack ([`crate::provider`]): failover, accounting, first-byte timeout,
//!    the worker's pooled connection, each a tower service of its own.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use switchyard_core::answer::Endpoint;
use switchyard_core::config::ModelRoute;
use switchyard_core::event::{Class, ShadowEvent};
use switchyard_core::router::{Router, Side};
use switchyard_core::ErrorKind;
use tower::{Service, ServiceBuilder};
use tower_http::validate_request::ValidateRequestHeaderLayer;

use crate::body::{BoxedBody, ClientBodyError, GatewayBody, RequestBody, RequestShared, Tee};
use crate::exchange::{access_log, AccessRecord, Exchange};
use crate::headers::strip_hop_by_hop;
use crate::limits::{Permit, Refusal};
use crate::metrics::{Outcome, REJECTED_TOTAL};
use crate::openai;
use crate::provider::{provider_stack, Call};
use crate::shadow::{self, Mirror, MirrorTo, Pair};
use crate::snapshot::{Gateway, Snapshot};
use crate::upstream::{Upstream, Worker};

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
    /// A request head has been read on this connection (see [`crate::server`]'s
    /// first-request deadline).
    pub started: AtomicBool,
    /// The proxy worker serving the connection: its requests use that worker's pools.
    pub worker: Worker,
    /// The client's address, for the access log.
    pub remote: Option<std::net::SocketAddr>,
    /// Answers being sent on this connection (see [`Active`]).
    pub active: AtomicUsize,
    /// When the connection last started or finished an answer, in ms since `opened`.
    pub last_active_ms: AtomicU64,
    pub opened: Option<Instant>,
}

impl ConnInfo {
    pub fn new(worker: Worker, remote: SocketAddr) -> ConnInfo {
        ConnInfo {
            worker,
            remote: Some(remote),
            opened: Some(Instant::now()),
            ..ConnInfo::default()
        }
    }

    pub(crate) fn touch(&self) {
        if let Some(t) = self.opened {
            self.last_active_ms
                .store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// How long the connection has had no answer in progress (zero while it has one).
    pub fn idle_for(&self) -> std::time::Duration {
        if self.active.load(Ordering::Relaxed) > 0 {
            return std::time::Duration::ZERO;
        }
        let Some(t) = self.opened else {
            return std::time::Duration::ZERO;
        };
        let last = self.last_active_ms.load(Ordering::Relaxed);
        t.elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }
}

/// One answer in progress on a connection, from the request reaching [`Forward`] until
/// its body is dropped: what tells an idle keep-alive or HTTP/2 connection from a busy one.
pub struct Active(Arc<ConnInfo>);

impl Active {
    /// (The snapshot step has just touched the connection's clock.)
    fn start(conn: &Arc<ConnInfo>) -> Active {
        conn.active.fetch_add(1, Ordering::Relaxed);
        Active(conn.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
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
    let this_conn = conn.clone();
    let forward_conn = conn.clone();
    ServiceBuilder::new()
        .map_request(move |mut req: Request<Incoming>| {
            this_conn.started.store(true, Ordering::Relaxed);
            this_conn.touch();
            req.extensions_mut().insert(gw.load());
            if !req.headers().contains_key(&X_REQUEST_ID) {
                req.headers_mut()
                    .insert(X_REQUEST_ID.clone(), new_request_id());
            }
            req
        })
        // One layer for every refusal, in this order; each is a plain function below.
        .layer(ValidateRequestHeaderLayer::custom(
            move |req: &mut Request<Incoming>| {
                let client = conn.remote;
                refuse_smuggling(req, &conn)?;
                refuse_escapes(req, client)?;
                admit_client(req, client)?;
                refuse_declared_body(req, client)
            },
        ))
        .service(Forward { conn: forward_conn })
}

/// Step 4: a request head with both `Content-Length` and `Transfer-Encoding`.
#[allow(clippy::result_large_err)]
fn refuse_smuggling(req: &Request<Incoming>, conn: &ConnInfo) -> Result<(), Response<GatewayBody>> {
    if conn.framing_violation.load(Ordering::Relaxed) {
        let mut r = reject(
            req,
            conn.remote,
            ErrorKind::BadRequest,
            "Content-Length together with Transfer-Encoding is not allowed",
            "framing",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(r);
    }
    Ok(())
}

/// Nothing above `base_url`'s path may be reached through the provider's key, even on a
/// provider that normalises paths; nothing is tunnelled.
#[allow(clippy::result_large_err)]
fn refuse_escapes(
    req: &Request<Incoming>,
    client: Option<SocketAddr>,
) -> Result<(), Response<GatewayBody>> {
    if req.method() == Method::CONNECT {
        let msg = "CONNECT is not forwarded by this gateway";
        return Err(reject(
            req,
            client,
            ErrorKind::MethodNotAllowed,
            msg,
            "method",
        ));
    }
    if has_dot_segment(req.uri().path()) {
        let msg = "paths with `.` or `..` segments are not forwarded";
        return Err(reject(
            req,
            client,
            ErrorKind::BadRequest,
            msg,
            "dot_segment",
        ));
    }
    Ok(())
}

/// Step 5: the client's key, when keys are configured, and its rate limits; the permit
/// travels with the request to its end.
#[allow(clippy::result_large_err)]
fn admit_client(
    req: &mut Request<Incoming>,
    client: Option<SocketAddr>,
) -> Result<(), Response<GatewayBody>> {
    let Some(keys) = snapshot(req).client_keys.as_deref() else {
        return Ok(());
    };
    let Some(key) = key_index(req.headers(), keys) else {
        return Err(reject(
            req,
            client,
            ErrorKind::Unauthorized,
            "missing or unknown API key for this gateway",
            "auth",
        ));
    };
    // The judge counts evidence per client too: one client cannot decide a verdict.
    req.extensions_mut()
        .insert(ClientKey(u16::try_from(key).unwrap_or(u16::MAX)));
    let Some(limiter) = snapshot(req).limiter.clone() else {
        return Ok(());
    };
    match limiter.admit(key, std::time::Instant::now()) {
        Ok(permit) => {
            req.extensions_mut().insert(Arc::new(permit));
            Ok(())
        }
        Err(refusal) => Err(rate_limited(req, client, refusal)),
    }
}

/// Step 6: a declared body over the limit.
#[allow(clippy::result_large_err)]
fn refuse_declared_body(
    req: &Request<Incoming>,
    client: Option<SocketAddr>,
) -> Result<(), Response<GatewayBody>> {
    let limit = snapshot(req).config.server.max_body_bytes;
    if req.body().size_hint().lower() > limit {
        let msg = format!("request body is larger than the limit of {limit} bytes");
        return Err(reject(
            req,
            client,
            ErrorKind::BodyTooLarge,
            &msg,
            "body_too_large",
        ));
    }
    Ok(())
}

/// Which configured client key a request came with (its index).
#[derive(Clone, Copy)]
struct ClientKey(u16);

/// A random UUID (v4) for a request that came without an `x-request-id`, formatted
/// without a heap string.
fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

/// The snapshot layer 1 put on the request.
fn snapshot<B>(req: &Request<B>) -> &Arc<Snapshot> {
    req.extensions()
        .get::<Arc<Snapshot>>()
        .expect("the snapshot layer runs first")
}

fn request_id_of<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(&X_REQUEST_ID)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// The innermost service: route, rewrite, send, respond, on the connection's worker's
/// provider connections.
#[derive(Clone)]
pub struct Forward {
    conn: Arc<ConnInfo>,
}

impl Service<Request<Incoming>> for Forward {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (worker, remote) = (self.conn.worker, self.conn.remote);
        let active = Active::start(&self.conn);
        Box::pin(async move {
            let mut resp = forward(req, worker, remote).await;
            resp.body_mut().hold(active);
            Ok(resp)
        })
    }
}

async fn forward(
    mut req: Request<Incoming>,
    worker: Worker,
    remote: Option<std::net::SocketAddr>,
) -> Response<GatewayBody> {
    // Taken, not cloned: every count change of the shared snapshot crosses cores.
    let snap = req
        .extensions_mut()
        .remove::<Arc<Snapshot>>()
        .expect("the snapshot layer runs first");
    let request_id = request_id_of(&req);
    let permit = req.extensions_mut().remove::<Arc<Permit>>();
    let client_key = req.extensions().get::<ClientKey>().map(|k| k.0);
    let limit = snap.config.server.max_body_bytes;

    let m = &snap.config.migration;
    let bucket = {
        let key = match req.headers().get(&snap.sticky_header) {
            Some(v) if !v.is_empty() => v.as_bytes(),
            _ => request_id.as_bytes(),
        };
        m.router.bucket(key)
    };
    let side = Router::side_of(bucket, snap.to_buckets);
    let (mut first, mut other) = match side {
        Side::To => (m.to, m.from),
        Side::From => (m.from, m.to),
    };
    // A provider that asked for a pause (429 with Retry-After) gets no first attempts.
    if m.failover.honor_retry_after && first != other && snap.upstreams[first].paused() {
        std::mem::swap(&mut first, &mut other);
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // We read `usage` from response bodies as they pass: ask for them uncompressed.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // Traces on: the client's trace goes on, with the gateway's span as the provider's
    // parent. Off: a client's `traceparent` passes through as it is.
    let trace = snap.spans.as_ref().map(|_| {
        let ctx = crate::trace::TraceCtx::start(parts.headers.get(&crate::trace::TRACEPARENT));
        parts
            .headers
            .insert(crate::trace::TRACEPARENT.clone(), ctx.header());
        ctx
    });

    // The exchange holds the request's only reference to the snapshot; `snap` borrows it.
    let mut ex = Box::new(Exchange {
        snap,
        request_id,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        start: Instant::now(),
        endpoint: Endpoint::of(parts.method == Method::POST, parts.uri.path()),
        provider: first,
        answered: AtomicBool::new(false),
        bucket,
        client_key,
        shared: None,
        strip_usage: false,
        shadow: None,
        model_prefix: None,
        replay_headers: None,
        client: remote,
        failed_attempt: std::sync::Mutex::new(None),
        trace,
        _permit: permit,
    });
    let snap = &ex.snap;
    let m = &snap.config.migration;

    // Providers may name models differently: learn the client's model before choosing
    // what to send (only the body's start is read; the rest streams untouched).
    let rename = parts.method == Method::POST
        && (snap.config.providers[first].rewrites_models()
            || snap.config.providers[other].rewrites_models());
    let mut body = Some(body);
    let mut ahead: Option<(openai::ModelPrefix, bool)> = None;
    if rename {
        let mut incoming = body.take().expect("the body is there");
        let mut search = openai::ModelSearch::default();
        let (prefix, complete) = loop {
            match incoming.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if let Some(p) = search.feed(&d) {
                            break (p, false);
                        }
                    }
                }
                Some(Err(e)) => {
                    let e = ClientBodyError::of(Box::new(e));
                    return ex.client_broke(&snap.upstreams[first], first, &e);
                }
                None => break (search.finish(), true),
            }
        };
        if prefix.held.len() as u64 > limit {
            let msg = format!("request body is larger than the limit of {limit} bytes");
            return ex.fail(&snap.upstreams[first], first, ErrorKind::BodyTooLarge, &msg);
        }
        if let (Some(model), Some(ModelRoute::Refuse)) = (
            prefix.client_model(),
            prefix
                .client_model()
                .map(|m| snap.config.providers[first].model_for(m)),
        ) {
            let msg = format!(
                "model `{model}` is not served through provider `{}` (providers.{}.models)",
                snap.upstreams[first].name, snap.upstreams[first].name
            );
            return ex.fail(&snap.upstreams[first], first, ErrorKind::BadRequest, &msg);
        }
        if !complete {
            body = Some(incoming);
        }
        ahead = Some((prefix, complete));
    }

    // A stable share of what `from` serves is mirrored to `to` (a shadow test); at the last
    // phase, a stable share of what `to` serves to `from` (the judge's live control).
    let mut tee = None;
    let shadowed = side == Side::From
        && m.from != m.to
        && shadow::mirrored(bucket, snap.to_buckets, m.shadow_buckets);
    let controlled = side == Side::To && shadow::controlled(bucket, snap.control_buckets);
    if shadowed || controlled {
        if let Some(rt) = &snap.shadow {
            match rt.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (t, rx) = Tee::new(snap.config.shadow.max_body_bytes);
                    let mirror = Mirror {
                        method: parts.method.clone(),
                        uri: parts.uri.clone(),
                        headers: parts.headers.clone(),
                        model: ahead
                            .as_ref()
                            .and_then(|(p, _)| p.client_model())
                            .map(Box::from),
                    };
                    let dest = if shadowed {
                        let pair = Pair::new(rt.clone());
                        ex.shadow = Some(pair.clone());
                        MirrorTo::Shadow(pair)
                    } else {
                        MirrorTo::Control { key: bucket }
                    };
                    tokio::spawn(shadow::run(snap.clone(), mirror, rx, dest, permit, worker));
                    tee = Some(t);
                }
                Err(_) if shadowed => rt.report(ShadowEvent {
                    result: "dropped",
                    comparison: None,
                }),
                Err(_) => {}
            }
        }
    }

    let inject = snap.upstreams[first].config.inject_stream_usage
        && openai::is_chat_completion(&parts.method, &parts.uri);
    // The OpenAI APIs take JSON: a body the gateway can see is not JSON is the client's
    // fault, answered 400 here (`client_fault`), never a provider's 4xx for the judge.
    let json_required = ex.endpoint.requires_json();
    let not_json = |ex: Box<Exchange>| {
        let up = &ex.snap.upstreams[first];
        ex.client_broke(up, first, &ClientBodyError::not_json())
    };
    if json_required
        && match (&body, &ahead) {
            (_, Some((prefix, true))) => !crate::answer::is_json(&prefix.held),
            (Some(b), None) => b.is_end_stream(),
            _ => false,
        }
    {
        return not_json(ex);
    }
    let body = if let Some((prefix, _)) = ahead {
        let model = prefix.client_model().map(str::to_string);
        let held = renamed_for(&prefix, &snap.config.providers[first]);
        set_length(&mut parts.headers, prefix.held.len(), held.len());
        let (b, shared) = RequestBody::after_prefix(held, body.take(), limit, model.as_deref());
        ex.shared = Some(shared);
        ex.model_prefix = Some(prefix);
        let b = b.requiring_json(json_required);
        match tee.take() {
            Some(t) => b.with_tee(t),
            None => b,
        }
    } else if inject {
        let body = body.take().expect("the body is there");
        let bytes = match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let up = &snap.upstreams[first];
                return if e.is::<LengthLimitError>() {
                    ex.fail(
                        up,
                        first,
                        ErrorKind::BodyTooLarge,
                        &format!("request body is larger than the limit of {limit} bytes"),
                    )
                } else {
                    ex.client_broke(up, first, &ClientBodyError::of(e))
                };
            }
        };
        if json_required && !crate::answer::is_json(&bytes) {
            return not_json(ex);
        }
        let (bytes, model, injected) = openai::inject_stream_usage(bytes);
        ex.strip_usage = injected;
        if injected {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        let shared = Arc::new(RequestShared::default());
        if let Some(m) = model {
            let _ = shared.model.set(m.into());
        }
        ex.shared = Some(shared.clone());
        if let Some(t) = tee.take() {
            t.complete_with(bytes.clone());
        }
        RequestBody::buffered(bytes, shared).reading()
    } else {
        let body = body.take().expect("the body is there");
        let (body, shared) = RequestBody::streaming(body, limit);
        let body = body.requiring_json(json_required);
        ex.shared = Some(shared);
        match tee.take() {
            Some(t) => body.with_tee(t),
            None => body,
        }
    };

    let refusals_fail_over = other != first && !m.failover.on_status.is_empty();
    if refusals_fail_over {
        if let Some(shared) = &ex.shared {
            shared.keep_replay(m.failover.replay_max_body);
            ex.replay_headers = Some(parts.headers.clone());
        }
    }
    let req = match upstream_request(parts, &snap.upstreams[first], body) {
        Ok(r) => r,
        Err(e) => return ex.unforwardable(first, &e),
    };
    let call = Call {
        ex,
        index: first,
        fallback: (other != first).then_some(other),
        failed_over_from: None,
        req,
        worker,
    };
    match provider_stack().call(call).await {
        Ok(answer) => answer,
        Err(never) => match never {},
    }
}

/// The read-ahead body start as provider `p` must get it: the model renamed when `p` maps
/// it (a model it would refuse goes as it is: only the first provider's refusal answers
/// the client).
pub(crate) fn renamed_for(
    prefix: &openai::ModelPrefix,
    p: &switchyard_core::config::ProviderConfig,
) -> Bytes {
    match prefix.client_model().map(|m| p.model_for(m)) {
        Some(ModelRoute::Rename(name)) => prefix.renamed(name),
        _ => prefix.held.clone(),
    }
}

/// A declared `Content-Length` follows a body start that changed length.
pub(crate) fn set_length(headers: &mut http::HeaderMap, was: usize, now: usize) {
    if was == now {
        return;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(n - was.min(n) + now),
        );
    }
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

/// A client key over its limits: 429 with `Retry-After`, OpenAI-shaped.
fn rate_limited<B>(
    req: &Request<B>,
    client: Option<SocketAddr>,
    refusal: Refusal,
) -> Response<GatewayBody> {
    let (message, reason) = match refusal {
        Refusal::Rate { .. } => (
            "this key is over its request rate on this gateway (clients.limits)",
            "rate_limit",
        ),
        Refusal::Concurrency => (
            "this key has too many requests in flight on this gateway (clients.limits)",
            "concurrency_limit",
        ),
    };
    let mut r = reject(req, client, ErrorKind::RateLimited, message, reason);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(refusal.retry_after_secs()),
    );
    r
}

/// The client's request, rewritten for provider `up`: its path mapped onto `base_url`
/// (origin-form: the connection already goes to the provider), its `Host` and key.
/// The client's headers move over; nothing is copied.
pub(crate) fn upstream_request(
    parts: http::request::Parts,
    up: &Upstream,
    body: RequestBody,
) -> Result<Request<BoxedBody>, http::Error> {
    let uri = up.uri_for(&parts.uri)?;
    let mut req = Request::from_parts(parts, Box::new(body));
    *req.uri_mut() = uri;
    // Whatever the client spoke (HTTP/1.0, h2c), providers get keep-alive HTTP/1.1.
    *req.version_mut() = http::Version::HTTP_11;
    set_provider_headers(req.headers_mut(), up);
    Ok(req)
}

/// A request that could not reach one provider, pointed at another.
pub(crate) fn retarget(
    mut req: Request<BoxedBody>,
    client_uri: &Uri,
    up: &Upstream,
) -> Result<Request<BoxedBody>, http::Error> {
    *req.uri_mut() = up.uri_for(client_uri)?;
    set_provider_headers(req.headers_mut(), up);
    Ok(req)
}

pub(crate) fn set_provider_headers(headers: &mut http::HeaderMap, up: &Upstream) {
    headers.insert(header::HOST, up.host.clone());
    match &up.auth {
        Some(auth) => headers.insert(header::AUTHORIZATION, auth.clone()),
        None => headers.remove(header::AUTHORIZATION),
    };
}

/// A refusal before any provider was chosen: counted by reason, and access-logged.
fn reject<B>(
    req: &Request<B>,
    client: Option<SocketAddr>,
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
        access_log(&AccessRecord {
            client,
            ttfb: None,
            failover_from: None,
            failover_status: None,
            request_id: &request_id,
            method: req.method(),
            uri: req.uri(),
            provider: "-",
            status: kind.status(),
            outcome,
            class: Class::ClientFault,
            elapsed: std::time::Duration::ZERO,
            bytes: 0,
            model: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            detail: Default::default(),
        });
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

pub(crate) fn has_source<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    source_of::<T>(e).is_some()
}

pub(crate) fn source_of<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Prints an error with its causes: the top-level message alone says little.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

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

    #[test]
    fn a_broken_upload_is_the_clients_and_says_how() {
        let io = |kind| -> crate::body::BoxError { Box::new(std::io::Error::new(kind, "x")) };
        assert!(!ClientBodyError::of(io(std::io::ErrorKind::InvalidInput)).gone);
        assert!(!ClientBodyError::of(io(std::io::ErrorKind::InvalidData)).gone);
        assert!(ClientBodyError::of(io(std::io::ErrorKind::UnexpectedEof)).gone);
        assert!(ClientBodyError::of("connection error".into()).gone);
        let wrapped: crate::body::BoxError =
            Box::new(ClientBodyError::of(io(std::io::ErrorKind::InvalidInput)));
        let found = source_of::<ClientBodyError>(&*wrapped).unwrap();
        assert!(found.to_string().contains("malformed"));
    }
}
