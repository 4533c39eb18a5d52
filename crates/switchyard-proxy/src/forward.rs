//! Forwarding an admitted request, top to bottom:
//!
//! 1. **route**: hash the routing key (the sticky header, or the request id) into a bucket;
//!    [`Router::side_of`] picks `from` or `to` (the other side is the fallback; a provider
//!    that asked for a pause with a 429's `Retry-After` gets no first attempts).
//! 2. **rewrite the head**: hop-by-hop headers out, bodies asked for uncompressed (usage is
//!    read as they pass), the trace continued; the request's [`Exchange`] starts here, and
//!    accounts for it from now on however it ends.
//! 3. **prepare the body**: read whole only to ask a stream for its usage on the client's
//!    behalf (`inject_stream_usage`); its model read ahead when a side renames models
//!    ([`crate::models`]: the body's start only); a mirror's tee ([`crate::mirror`]: a
//!    shadow of `from`'s traffic, or the live control of `to`'s at the last phase); refused
//!    when the API takes JSON and it is not JSON; a replay copy when refusals fail over
//!    ([`crate::failover`]); then addressed to the first provider
//!    ([`Upstream::prepare`]: its path, `Host` and key).
//! 4. **the attempts**, one loop as pingora's `process_request`: send on the worker's
//!    pooled connection under the first-byte timeout ([`crate::timeout`], counted from the
//!    end of the upload) → classify: an answer goes to the client ([`Exchange::respond`]; a
//!    model list is renamed first), a refusal or a connect error may go once to the other
//!    side ([`crate::failover`]), a timeout or a broken exchange is the gateway's error
//!    answer. Each attempt is accounted by the exchange.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use switchyard_core::router::{Router, Side};
use switchyard_core::ErrorKind;
use tower::{Layer, Service, ServiceExt};

use crate::admission::Admitted;
use crate::answer::is_json;
use crate::errors::{BodyTooLarge, ClientBodyError};
use crate::exchange::{Exchange, Start};
use crate::failover;
use crate::headers::strip_hop_by_hop;
use crate::mirror;
use crate::models;
use crate::openai;
use crate::pool::Lease;
use crate::request_body::{BoxedBody, RequestBody, RequestShared};
use crate::response_body::GatewayBody;
use crate::snapshot::Snapshot;
use crate::timeout::{Deadline, FirstByteTimeoutLayer, Since, Started, TimeoutError};
use crate::trace::{TraceCtx, TRACEPARENT};
use crate::upstream::{SendError, Upstream, Worker};

/// Forwards `req` (admitted) on `worker`'s provider connections.
pub(crate) async fn forward(
    req: Request<Incoming>,
    snap: Arc<Snapshot>,
    admitted: Admitted,
    worker: Worker,
    client: Option<SocketAddr>,
) -> Response<GatewayBody> {
    let Admitted {
        request_id,
        client: who,
    } = admitted;
    let m = &snap.config.migration;
    // 1. route
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
    if m.failover.honor_retry_after && first != other && snap.upstreams[first].paused() {
        std::mem::swap(&mut first, &mut other);
    }
    // 2. rewrite the head
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // Traces on: the client's trace goes on, with the gateway's span as the provider's
    // parent. Off: a client's `traceparent` passes through as it is.
    let trace = snap.spans.as_ref().map(|_| {
        let ctx = TraceCtx::start(parts.headers.get(&TRACEPARENT));
        parts.headers.insert(TRACEPARENT.clone(), ctx.header());
        ctx
    });
    let ex = Exchange::new(Start {
        snap,
        request_id,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        provider: first,
        fallback: (other != first).then_some(other),
        bucket,
        client_key: who.client_key,
        client,
        trace,
        permit: who.permit,
    });
    // 3. prepare the body
    let (mut ex, body) = match prepare(ex, &mut parts, body, side, worker).await {
        Ok(prepared) => prepared,
        Err(refused) => return refused,
    };
    let body = failover::keep_replay(&mut ex, body, &parts.headers);
    let req = Request::from_parts(parts, Box::new(body));
    let req = match ex.upstream().prepare(req, &ex.uri) {
        Ok(r) => r,
        Err(e) => return ex.unforwardable(&e),
    };
    // 4. the attempts
    attempts(ex, req, worker).await
}

/// Step 3: the body as the first provider gets it, or the gateway's answer refusing it.
async fn prepare(
    mut ex: Box<Exchange>,
    parts: &mut http::request::Parts,
    body: Incoming,
    side: Side,
    worker: Worker,
) -> Result<(Box<Exchange>, RequestBody), Response<GatewayBody>> {
    let limit = ex.snap.config.server.max_body_bytes;
    let json_required = ex.endpoint.requires_json();
    let mut body = Some(body);
    // Asking a stream for its usage on the client's behalf rewrites the body: it is read
    // whole (the one case that buffers a request).
    let mut whole = None;
    if ex.upstream().config.inject_stream_usage
        && openai::is_chat_completion(&parts.method, &parts.uri)
    {
        let incoming = body.take().expect("the body is there");
        let bytes = match Limited::new(incoming, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(ex.fail(ErrorKind::BodyTooLarge, &BodyTooLarge::message(limit)))
            }
            Err(e) => return Err(ex.client_broke(&ClientBodyError::of(e))),
        };
        if json_required && !is_json(&bytes) {
            return Err(ex.client_broke(&ClientBodyError::not_json()));
        }
        let (bytes, model, injected) = openai::inject_stream_usage(bytes);
        ex.strip_usage = injected;
        if injected {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        whole = Some((bytes, model));
    }
    let json_checked = whole.is_some();
    // Providers may name models differently: learn the client's model before choosing what
    // to send (only the body's start is read; the rest streams untouched).
    let mut ahead = None;
    if models::must_read_ahead(&ex, &parts.method) {
        let (e, read) = match whole.take() {
            Some((bytes, _)) => models::read_whole(ex, bytes)?,
            None => {
                let incoming = body.take().expect("the body is there");
                models::read_ahead(ex, incoming).await?
            }
        };
        ex = e;
        ahead = Some(read);
    }
    let model = ahead.as_ref().and_then(|r| r.prefix.client_model());
    let (tee, pair) = mirror::start(&ex.snap, side, ex.bucket, parts, model, worker);
    ex.shadow = pair;
    // The OpenAI APIs take JSON: a body the gateway can see is not JSON is the client's
    // fault, answered 400 here (`client_fault`), never a provider's 4xx for the judge.
    let seen_not_json = match (&body, &ahead) {
        (_, Some(read)) => !json_checked && read.rest.is_none() && !is_json(&read.prefix.held),
        (Some(b), None) => b.is_end_stream(),
        _ => false,
    };
    if json_required && seen_not_json {
        return Err(ex.client_broke(&ClientBodyError::not_json()));
    }
    let b = if let Some(read) = ahead {
        models::first_body(&mut ex, read, &mut parts.headers, limit).requiring_json(json_required)
    } else if let Some((bytes, model)) = whole {
        let shared = RequestShared::with_model(model.as_deref());
        ex.shared = Some(shared.clone());
        RequestBody::buffered(bytes, shared).reading()
    } else {
        let incoming = body.take().expect("the body is there");
        let (b, shared) = RequestBody::streaming(incoming, limit);
        ex.shared = Some(shared);
        b.requiring_json(json_required)
    };
    Ok((
        ex,
        match tee {
            Some(t) => b.with_tee(t),
            None => b,
        },
    ))
}

/// Step 4: attempt → classify → retarget → respond.
async fn attempts(
    mut ex: Box<Exchange>,
    mut req: Request<BoxedBody>,
    worker: Worker,
) -> Response<GatewayBody> {
    loop {
        let sent = {
            let attempt = Attempt {
                upstream: ex.upstream(),
                req,
                worker,
                body: ex.shared.as_deref(),
            };
            FirstByteTimeoutLayer.layer(Pooled).oneshot(attempt).await
        };
        let next = match sent {
            Ok((resp, lease)) => match failover::after_refusal(&mut ex, &resp) {
                Some(next) => next,
                None if models::lists_models(&ex, &resp) => {
                    return models::respond_list(ex, resp, lease).await
                }
                None => return ex.respond(resp, lease),
            },
            Err(TimeoutError::Elapsed) => return ex.timed_out(),
            Err(TimeoutError::Inner(SendError::Connect(e, back))) => {
                match failover::after_connect_error(&mut ex, &*e, *back) {
                    Some(next) => next,
                    None => return ex.not_connected(&*e),
                }
            }
            Err(TimeoutError::Inner(SendError::Exchange(e))) => return ex.broken(&e),
        };
        req = match next {
            Ok(r) => r,
            Err(e) => return ex.unforwardable(&e),
        };
    }
}

/// One attempt at one provider, on the worker's pooled connection. It borrows from the
/// exchange: no reference counts change on objects the workers share.
struct Attempt<'a> {
    upstream: &'a Upstream,
    req: Request<BoxedBody>,
    worker: Worker,
    /// The client's request body as it streams (tells when it was fully sent).
    body: Option<&'a RequestShared>,
}

impl Started for Option<&RequestShared> {
    fn since(&self) -> Since {
        match self {
            Some(body) => body.sent_at().map_or(Since::NotYet, Since::At),
            None => Since::Call,
        }
    }
}

impl<'a> Deadline for Attempt<'a> {
    type Start = Option<&'a RequestShared>;

    fn limit(&self) -> Duration {
        self.upstream.config.timeout
    }

    fn start(&self) -> Self::Start {
        self.body
    }
}

/// The worker's pooled connection to the attempt's provider.
#[derive(Clone, Copy, Default)]
struct Pooled;

type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a>>;

impl<'a> Service<Attempt<'a>> for Pooled {
    type Response = (Response<Incoming>, Lease);
    type Error = SendError;
    type Future = Sending<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, a: Attempt<'a>) -> Self::Future {
        Box::pin(async move { a.upstream.send(a.worker, a.req).await })
    }
}
