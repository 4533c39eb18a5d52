//! Forwarding an admitted request, top to bottom:
//!
//! 1. **route** ([`crate::route`]): the first migration whose `match` the request meets
//!    (its model read ahead of the body first when one matches by model), then that
//!    migration's side for the routing key's bucket (the other side is the fallback); no
//!    migration: `default_provider`.
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
use std::task::{ready, Context, Poll};

use crate::client_body::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use switchyard_core::ErrorKind;

use crate::admission::Admitted;
use crate::answer::{is_json, RequestRead, RequestScan};
use crate::errors::{BodyTooLarge, BoxError, ClientBodyError};
use crate::exchange::{Exchange, Start};
use crate::failover;
use crate::headers::strip_hop_by_hop;
use crate::mirror;
use crate::models::{self, ReadAhead};
use crate::openai;
use crate::request_body::{BoxedBody, RequestBody, RequestShared};
use crate::response_body::GatewayBody;
use crate::route::{self, Route};
use crate::snapshot::Snapshot;
use crate::timeout::{self, Since, Started, TimeoutError};
use crate::trace::{TraceCtx, TRACEPARENT};
use crate::upstream::{SendError, Sent, Worker};

/// Forwards `req` (admitted) on `worker`'s provider connections: steps 1–3, then the
/// attempts.
pub(crate) fn forward(
    req: Request<ClientBody>,
    snap: Arc<Snapshot>,
    admitted: Admitted,
    worker: Worker,
    client: Option<SocketAddr>,
) -> impl Future<Output = Response<GatewayBody>> + Send {
    Forward::Starting {
        start: start(req, snap, admitted, worker, client),
        then: Some(move |ex, req| attempts(ex, req, worker)),
    }
}

pin_project! {
    /// Steps 1–3, then step 4, as two futures one after the other in the same place. One
    /// `async fn` awaiting both would keep its arguments and every local of steps 1–3
    /// (the request twice over, its parts, the read-ahead) beside the attempts for as long
    /// as they run (the request's box was 3.7 KB; see `tests::a_requests_future_stays_small`).
    #[project = ForwardProj]
    enum Forward<S, T, A> {
        Starting { #[pin] start: S, then: Option<T> },
        Attempting { #[pin] attempts: A },
    }
}

impl<S, T, A> Future for Forward<S, T, A>
where
    S: Future<Output = Result<(Box<Exchange>, Request<BoxedBody>), Response<GatewayBody>>>,
    T: FnOnce(Box<Exchange>, Request<BoxedBody>) -> A,
    A: Future<Output = Response<GatewayBody>>,
{
    type Output = Response<GatewayBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<GatewayBody>> {
        loop {
            match self.as_mut().project() {
                ForwardProj::Starting { start, then } => match ready!(start.poll(cx)) {
                    Err(answered) => return Poll::Ready(answered),
                    Ok((ex, req)) => {
                        let then = then.take().expect("steps 1-3 end once");
                        self.set(Forward::Attempting {
                            attempts: then(ex, req),
                        });
                    }
                },
                ForwardProj::Attempting { attempts } => return attempts.poll(cx),
            }
        }
    }
}

/// Steps 1–3: the request as the first provider gets it, with its exchange; or the
/// gateway's answer refusing it. Taken apart before the future is made (not an `async
/// fn`, which would keep the whole request as its argument beside its parts).
fn start(
    req: Request<ClientBody>,
    snap: Arc<Snapshot>,
    admitted: Admitted,
    worker: Worker,
    client: Option<SocketAddr>,
) -> impl Future<Output = Result<(Box<Exchange>, Request<BoxedBody>), Response<GatewayBody>>> + Send
{
    let Admitted {
        request_id,
        client: who,
    } = admitted;
    let (mut parts, body) = req.into_parts();
    async move {
        // Steps 1 and 2 in a block of their own: what they leave behind (the read-ahead,
        // the body's slot) would otherwise stay in the future beside step 3's.
        let (ex, upload, route) = {
            // 1. route; a migration that matches by model needs it read ahead of the body first
            let mut body = Some(body);
            let early = match body.take() {
                Some(b) if snap.routes_by_model && parts.method == Method::POST => {
                    // Nothing is routed before the model comes: a client that stalls is cut.
                    let wait = snap.config.server.header_read_timeout;
                    // Boxed, as the other paths only some gateways take (routing or mapping by
                    // model, asking a stream for its usage, the model list): the allocation is
                    // theirs, and their code stays out of every other request's future.
                    Some(
                        Box::pin(tokio::time::timeout(wait, models::read_model(b)))
                            .await
                            .unwrap_or_else(|_| Err(ClientBodyError::too_slow(wait))),
                    )
                }
                b => {
                    body = b;
                    None
                }
            };
            let model = match &early {
                Some(Ok(read)) => read.prefix.client_model(),
                _ => None,
            };
            let route = route::route(&snap, &parts, &request_id, model);
            // 2. rewrite the head
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
                route,
                client_key: who.client_key,
                client,
                trace,
                permit: who.permit,
                worker,
            });
            let (ex, upload) = match (early, body) {
                (None, Some(body)) => (ex, Upload::Streaming(body)),
                (None, None) => unreachable!("the body is read ahead or left whole"),
                (Some(Ok(read)), _) => match models::served(ex, read) {
                    Ok((ex, read)) => (ex, Upload::Ahead(read)),
                    Err(refused) => return Err(refused),
                },
                (Some(Err(broke)), _) => return Err(ex.client_broke(&broke)),
            };
            (ex, upload, route)
        };
        // 3. prepare the body
        let (mut ex, mut body) = match prepare(ex, &mut parts, upload, route, worker).await {
            Ok(prepared) => prepared,
            Err(refused) => return Err(refused),
        };
        failover::keep_replay(&mut ex, &mut body);
        let req = Request::from_parts(parts, body);
        let req = match ex.upstream().prepare(req, &ex.uri) {
            Ok(r) => r,
            Err(e) => return Err(ex.unforwardable(&e)),
        };
        Ok((ex, req))
    }
}

/// The client's body as routing left it: untouched, or its start read (for its model).
enum Upload {
    Streaming(ClientBody),
    Ahead(ReadAhead),
}

/// Step 3: the body as the first provider gets it, or the gateway's answer refusing it.
/// Not an `async fn`, which would keep `upload` beside what it is taken apart into.
fn prepare(
    mut ex: Box<Exchange>,
    parts: &mut http::request::Parts,
    upload: Upload,
    route: Route,
    worker: Worker,
) -> impl Future<Output = Result<(Box<Exchange>, BoxedBody), Response<GatewayBody>>> + Send + '_ {
    let limit = ex.snap.config.server.max_body_bytes;
    let json_required = ex.endpoint.requires_json();
    let (mut body, mut ahead) = match upload {
        Upload::Streaming(b) => (Some(b), None),
        Upload::Ahead(read) => (None, Some(read)),
    };
    async move {
        // Asking a stream for its usage on the client's behalf rewrites the body: it is read
        // whole (the one case that buffers a request).
        let mut whole = None;
        if ex.upstream().injects_stream_usage()
            && openai::is_chat_completion(&parts.method, &parts.uri)
        {
            let (e, bytes, read) = Box::pin(read_for_usage(
                ex,
                parts,
                body.take(),
                ahead.take(),
                limit,
                json_required,
            ))
            .await?;
            ex = e;
            whole = Some((bytes, read));
        }
        let json_checked = whole.is_some();
        // Providers may name models differently: learn the client's model before choosing what
        // to send (only the body's start is read; the rest streams untouched).
        if ahead.is_none() && models::must_read_ahead(&ex, &parts.method) {
            let (e, read) = match whole.take() {
                Some((bytes, _)) => models::read_whole(ex, bytes)?,
                None => {
                    let incoming = body.take().expect("the body is there");
                    Box::pin(models::read_ahead(ex, incoming)).await?
                }
            };
            ex = e;
            ahead = Some(read);
        }
        let model = ahead.as_ref().and_then(|r| r.prefix.client_model());
        let (tee, pair) = mirror::start(&ex.snap, &route, parts, model, worker);
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
        let mut b = if let Some(read) = ahead {
            let mut b = models::first_body(&mut ex, read, &mut parts.headers, limit);
            b.require_json(json_required);
            b
        } else if let Some((bytes, read)) = whole {
            let shared = RequestShared::of_read(read);
            ex.shared = Some(shared.clone());
            Box::new(RequestBody::buffered(bytes, shared))
        } else {
            let incoming = body.take().expect("the body is there");
            let (mut b, shared) = RequestBody::streaming(incoming, limit);
            ex.shared = Some(shared);
            b.require_json(json_required);
            b
        };
        if let Some(t) = tee {
            b.tee_into(t);
        }
        Ok((ex, b))
    }
}

/// The whole body of a chat completion whose stream the gateway asks for its usage, read
/// once: whether it is JSON, what it asks, and rewritten when it must be.
async fn read_for_usage(
    mut ex: Box<Exchange>,
    parts: &mut http::request::Parts,
    body: Option<ClientBody>,
    ahead: Option<ReadAhead>,
    limit: u64,
    json_required: bool,
) -> Result<(Box<Exchange>, Bytes, RequestRead), Response<GatewayBody>> {
    let read = match (body, ahead) {
        (Some(incoming), _) => collect(Vec::new(), incoming, limit).await,
        (
            None,
            Some(ReadAhead {
                prefix,
                rest: Some(rest),
            }),
        ) => collect(prefix.held.to_vec(), rest, limit).await,
        (None, Some(ReadAhead { prefix, rest: None })) => Ok(prefix.held),
        (None, None) => Ok(Bytes::new()),
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(ex.fail(ErrorKind::BodyTooLarge, &BodyTooLarge::message(limit)))
        }
        Err(e) => return Err(ex.client_broke(&ClientBodyError::of(e))),
    };
    let mut scan = RequestScan::default();
    scan.feed(&bytes);
    if !scan.finish() && json_required {
        return Err(ex.client_broke(&ClientBodyError::not_json()));
    }
    let (bytes, injected) = openai::inject_stream_usage(bytes, &scan.read);
    ex.strip_usage = injected;
    if injected {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    Ok((ex, bytes, scan.read))
}

/// The whole body: `held` (read already) and the rest, within `limit`.
async fn collect(held: Vec<u8>, rest: ClientBody, limit: u64) -> Result<Bytes, BoxError> {
    let room = limit.saturating_sub(held.len() as u64);
    let rest = Limited::new(rest, usize::try_from(room).unwrap_or(usize::MAX))
        .collect()
        .await?
        .to_bytes();
    if held.is_empty() {
        return Ok(rest);
    }
    let mut all = held;
    all.extend_from_slice(&rest);
    Ok(Bytes::from(all))
}

/// Step 4: attempt → classify → retarget → respond.
///
/// Not an `async fn`, which would keep its arguments beside their bindings.
#[allow(clippy::manual_async_fn)]
fn attempts(
    mut ex: Box<Exchange>,
    mut req: Request<BoxedBody>,
    worker: Worker,
) -> impl Future<Output = Response<GatewayBody>> + Send {
    async move {
        let listing = loop {
            let sent = {
                let up = ex.upstream();
                let keep_headers = ex.replay && ex.fallback.is_some();
                // Pinned where it is: the timeout holds a reference, not another copy of a
                // future a kilobyte and more in size.
                let sending = std::pin::pin!(up.send(worker, req, keep_headers));
                let start = ex.shared.as_deref();
                timeout::first_byte(up.config.timeout, start, sending).await
            };
            let next = match sent {
                Ok(Sent {
                    resp,
                    lease,
                    headers,
                }) => match failover::after_refusal(&mut ex, &resp, headers) {
                    Some(next) => next,
                    // Awaited after the loop, where the answer's parts are no longer held.
                    None if models::lists_models(&ex, &resp) => {
                        break Box::pin(models::respond_list(ex, resp, lease))
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
                Err(TimeoutError::Inner(SendError::Exchange(e))) => return ex.broken(&*e),
            };
            req = match next {
                Ok(r) => r,
                Err(e) => return ex.unforwardable(&e),
            };
        };
        listing.await
    }
}

/// The wait for a provider's answer counts from the end of the client's upload (the
/// request body as it streams tells when that was).
impl Started for Option<&RequestShared> {
    fn since(&self) -> Since {
        match self {
            Some(body) => body.sent_at().map_or(Since::NotYet, Since::At),
            None => Since::Call,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::h1_server::tests::{never, size_of_output};

    /// Every request's future is allocated whole and copied into its box, however little of
    /// it a request uses: 3.7 KB when steps 1–3 and the attempts were one `async fn` (each
    /// level kept the request as its argument beside its parts and bindings), 1.3 KB as
    /// two futures one after the other, each step holding only what it goes on with.
    #[test]
    fn a_requests_future_stays_small() {
        let forward = || super::forward(never(), never(), never(), never(), never());
        let size = size_of_output(&forward);
        assert!(size <= 1536, "the request's future is {size} bytes");
    }
}
