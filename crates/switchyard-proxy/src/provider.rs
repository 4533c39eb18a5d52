//! Sending a routed request to the providers, as a tower stack ([`provider_stack`]).
//! Outermost first:
//!
//! 1. [`Failover`]: a call whose provider could not be connected to (nothing was sent)
//!    goes once to the other provider, and the answer says so (`x-switchyard-failover`).
//! 2. [`Accounting`]: each attempt's metrics, tokens and cost, the watchers' event and the
//!    access log, and the answer: the provider's response, its body streamed through
//!    [`crate::body::ResponseBody`], or the gateway's own error. A connect failure that may
//!    still fail over is counted and handed back to (1).
//! 3. [`FirstByteTimeout`]: no response head within the provider's `timeout` is a timeout.
//!    The time counts from the end of the client's upload, not from the call: a client
//!    that uploads slowly must not make the provider look slow. Generic: the request says
//!    its limit and since when ([`Deadline`]).
//! 4. [`Pooled`]: one of this worker's pooled connections to the provider.
//!
//! The layers are stateless and built once; what a call needs travels with it ([`Call`],
//! [`Attempt`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service, ServiceBuilder};

use crate::body::{BoxedBody, GatewayBody, RequestShared};
use crate::exchange::Exchange;
use crate::upstream::{Lease, SendError, Upstream, Worker};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The most of a provider's model list read to rename its models.
const MODEL_LIST_MAX: usize = 1 << 20;

/// The stack every routed request goes through; see the module docs for the order.
pub type ProviderStack = Failover<Accounting<FirstByteTimeout<Pooled>>>;

pub fn provider_stack() -> ProviderStack {
    ServiceBuilder::new()
        .layer(FailoverLayer)
        .layer(AccountingLayer)
        .layer(FirstByteTimeoutLayer)
        .service(Pooled)
}

/// A routed request: its exchange (which holds the request's one reference to the
/// snapshot), the provider it goes to, and where it may fail over.
pub struct Call {
    /// Boxed: the call moves through every layer, and the exchange is most of it.
    pub ex: Box<Exchange>,
    /// The provider: an index into the snapshot's upstreams.
    pub index: usize,
    /// The other provider, while the call may still fail over to it.
    pub fallback: Option<usize>,
    /// The provider this call already failed over from.
    pub failed_over_from: Option<usize>,
    pub req: Request<BoxedBody>,
    pub worker: Worker,
}

/// One attempt at one provider, below accounting. It borrows from the call's exchange,
/// which accounting holds meanwhile: no reference counts change on objects the workers
/// share.
pub struct Attempt<'a> {
    pub upstream: &'a Upstream,
    pub req: Request<BoxedBody>,
    pub worker: Worker,
    /// The client's request body as it streams (tells when it was fully sent).
    pub body: Option<&'a RequestShared>,
}

/// Since when the wait for a response head counts.
pub enum Since {
    /// From the call.
    Call,
    At(Instant),
    /// Not yet (the request is still being sent).
    NotYet,
}

/// Tells when the wait for a response head starts.
pub trait Started {
    fn since(&self) -> Since;
}

impl Started for Option<&RequestShared> {
    fn since(&self) -> Since {
        match self {
            Some(body) => body.sent_at().map_or(Since::NotYet, Since::At),
            None => Since::Call,
        }
    }
}

/// How long a request may wait for its response head, and from when.
pub trait Deadline {
    type Start: Started;
    fn limit(&self) -> Duration;
    fn start(&self) -> Self::Start;
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

// ---------------------------------------------------------------- 4. pooled

/// The worker's pooled connection to the attempt's provider.
#[derive(Clone, Copy, Default)]
pub struct Pooled;

impl<'a> Service<Attempt<'a>> for Pooled {
    type Response = (Response<Incoming>, Lease);
    type Error = SendError;
    type Future =
        Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, a: Attempt<'a>) -> Self::Future {
        Box::pin(async move { a.upstream.send(a.worker, a.req).await })
    }
}

// ---------------------------------------------------------------- 3. first-byte timeout

#[derive(Clone, Copy, Default)]
pub struct FirstByteTimeoutLayer;

impl<S> Layer<S> for FirstByteTimeoutLayer {
    type Service = FirstByteTimeout<S>;

    fn layer(&self, inner: S) -> FirstByteTimeout<S> {
        FirstByteTimeout { inner }
    }
}

/// Ends a request that has no response head within its [`Deadline`]. The timer is armed
/// once and re-armed only when it fires while the request is still being sent or was
/// sent late, so the usual request costs no extra wake-up.
#[derive(Clone, Copy)]
pub struct FirstByteTimeout<S> {
    inner: S,
}

/// The error of a [`FirstByteTimeout`]: the inner service's, or the deadline passed.
pub enum TimeoutError<E> {
    Inner(E),
    Elapsed,
}

impl<S, R> Service<R> for FirstByteTimeout<S>
where
    S: Service<R>,
    R: Deadline,
{
    type Response = S::Response;
    type Error = TimeoutError<S::Error>;
    type Future = TimeoutFuture<S::Future, R::Start>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let limit = req.limit();
        let start = req.start();
        let called = Instant::now();
        TimeoutFuture {
            limit,
            start,
            called,
            sleep: tokio::time::sleep_until(called + limit),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    pub struct TimeoutFuture<F, S> {
        limit: Duration,
        start: S,
        called: Instant,
        #[pin]
        sleep: Sleep,
        #[pin]
        inner: F,
    }
}

impl<F, T, E, S: Started> Future for TimeoutFuture<F, S>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, TimeoutError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(TimeoutError::Inner));
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let since = match this.start.since() {
                Since::Call => *this.called,
                Since::At(sent) => sent,
                Since::NotYet => {
                    this.sleep.as_mut().reset(now + *this.limit);
                    continue;
                }
            };
            if now >= since + *this.limit {
                return Poll::Ready(Err(TimeoutError::Elapsed));
            }
            this.sleep.as_mut().reset(since + *this.limit);
        }
    }
}

// ---------------------------------------------------------------- 2. accounting

#[derive(Clone, Copy, Default)]
pub struct AccountingLayer;

impl<S> Layer<S> for AccountingLayer {
    type Service = Accounting<S>;

    fn layer(&self, inner: S) -> Accounting<S> {
        Accounting { inner }
    }
}

/// Accounts each attempt once and turns it into the client's answer.
#[derive(Clone, Copy)]
pub struct Accounting<S> {
    inner: S,
}

/// A call whose provider could not be connected to, counted, to be tried elsewhere.
pub struct Retry(pub Call);

// Over the concrete stack below it: its attempts borrow from the exchange this future
// holds, which a bound over every lifetime of a generic inner service cannot express.
impl Service<Call> for Accounting<FirstByteTimeout<Pooled>> {
    type Response = Response<GatewayBody>;
    type Error = Retry;
    type Future = BoxFuture<Result<Response<GatewayBody>, Retry>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Retry>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut inner = self.inner;
        Box::pin(async move {
            let Call {
                ex,
                index,
                fallback,
                failed_over_from,
                req,
                worker,
            } = call;
            let attempt = Attempt {
                upstream: &ex.snap.upstreams[index],
                req,
                worker,
                body: ex.shared.as_deref(),
            };
            let sent = inner.call(attempt).await;
            let mut ex = ex;
            match sent {
                Ok((resp, lease)) => {
                    // Refused before anything reached the client: once more, elsewhere.
                    let status = resp.status().as_u16();
                    let refused = ex.snap.config.migration.failover.fails_over(status);
                    if let Some(other) = fallback.filter(|_| refused) {
                        if let Some(req) = ex.refused_over(index, other, &resp) {
                            drop((resp, lease));
                            return Err(Retry(Call {
                                ex,
                                index,
                                fallback,
                                failed_over_from,
                                req,
                                worker,
                            }));
                        }
                    }
                    if ex.lists_models(index, &resp) {
                        // The provider's model list, under the names clients use.
                        let (parts, body) = resp.into_parts();
                        return Ok(match Limited::new(body, MODEL_LIST_MAX).collect().await {
                            Ok(b) => {
                                lease.release();
                                ex.respond_models(parts, &b.to_bytes(), index, failed_over_from)
                            }
                            Err(_) => ex.broken_list(index),
                        });
                    }
                    Ok(ex.respond(resp, lease, index, failed_over_from))
                }
                Err(TimeoutError::Elapsed) => Ok(ex.timed_out(index)),
                Err(TimeoutError::Inner(SendError::Connect(e, back))) => match fallback {
                    Some(_) => {
                        ex.connect_failed_over(index, &*e);
                        Err(Retry(Call {
                            ex,
                            index,
                            fallback,
                            failed_over_from,
                            req: *back,
                            worker,
                        }))
                    }
                    None => Ok(ex.not_connected(index, &*e)),
                },
                Err(TimeoutError::Inner(SendError::Exchange(e))) => Ok(ex.broken(index, &e)),
            }
        })
    }
}

// ---------------------------------------------------------------- 1. failover

#[derive(Clone, Copy, Default)]
pub struct FailoverLayer;

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Failover<S> {
        Failover { inner }
    }
}

/// Sends a call that could not connect (nothing sent) once more, to its fallback.
#[derive(Clone, Copy)]
pub struct Failover<S> {
    inner: S,
}

impl<S> Service<Call> for Failover<S>
where
    S: Service<Call, Response = Response<GatewayBody>, Error = Retry> + Clone + Unpin,
    S::Future: Unpin,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = FailoverFuture<S>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut inner = self.inner.clone();
        FailoverFuture {
            attempt: inner.call(call),
            inner,
        }
    }
}

/// The first attempt, and the second one if the first could not connect.
pub struct FailoverFuture<S: Service<Call>> {
    inner: S,
    attempt: S::Future,
}

impl<S> Future for FailoverFuture<S>
where
    S: Service<Call, Response = Response<GatewayBody>, Error = Retry> + Unpin,
    S::Future: Unpin,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match std::task::ready!(Pin::new(&mut this.attempt).poll(cx)) {
                Ok(resp) => return Poll::Ready(Ok(resp)),
                Err(Retry(mut call)) => {
                    let Some(other) = call.fallback.take() else {
                        // Accounting answers calls without a fallback; for completeness.
                        let answer = call.ex.not_connected(call.index, &"no provider left");
                        return Poll::Ready(Ok(answer));
                    };
                    call.failed_over_from = Some(call.index);
                    call.index = other;
                    call.ex.provider = other;
                    match call.ex.retarget(call.req, other) {
                        Ok(req) => call.req = req,
                        Err(e) => return Poll::Ready(Ok(call.ex.unforwardable(other, &e))),
                    }
                    this.attempt = this.inner.call(call);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LIMIT: Duration = Duration::from_secs(1);

    /// A request whose body is "sent" when the test says so.
    struct Upload(Arc<RequestShared>);

    struct Shared(Arc<RequestShared>);

    impl Started for Shared {
        fn since(&self) -> Since {
            self.0.sent_at().map_or(Since::NotYet, Since::At)
        }
    }

    impl Deadline for Upload {
        type Start = Shared;

        fn limit(&self) -> Duration {
            LIMIT
        }

        fn start(&self) -> Shared {
            Shared(self.0.clone())
        }
    }

    /// An inner service that answers `after` the call, or never.
    fn answering(
        after: Option<Duration>,
    ) -> impl Service<
        Upload,
        Response = &'static str,
        Error = (),
        Future = BoxFuture<Result<&'static str, ()>>,
    > {
        tower::service_fn(move |_: Upload| -> BoxFuture<Result<&'static str, ()>> {
            Box::pin(async move {
                match after {
                    Some(d) => {
                        tokio::time::sleep(d).await;
                        Ok("answer")
                    }
                    None => std::future::pending().await,
                }
            })
        })
    }

    /// The provider's first-byte timeout counts from the end of the client's upload.
    #[tokio::test(start_paused = true)]
    async fn a_slow_upload_does_not_eat_the_providers_timeout() {
        // The client takes 3 s to upload; the provider answers 500 ms after that.
        let body = Arc::new(RequestShared::default());
        let uploading = body.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            uploading.mark_sent();
        });
        let mut svc = FirstByteTimeoutLayer.layer(answering(Some(Duration::from_millis(3500))));
        let r = svc.call(Upload(body)).await;
        assert!(matches!(r, Ok("answer")));

        // Uploaded, then silent for longer than the limit: the provider's timeout.
        let body = Arc::new(RequestShared::default());
        body.mark_sent();
        let start = Instant::now();
        let mut svc = FirstByteTimeoutLayer.layer(answering(None));
        let r = svc.call(Upload(body)).await;
        assert!(matches!(r, Err(TimeoutError::Elapsed)));
        assert_eq!(start.elapsed(), LIMIT);

        // Finished uploading late: the timeout runs from then.
        let body = Arc::new(RequestShared::default());
        let late = body.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            late.mark_sent();
        });
        let r = svc.call(Upload(body)).await;
        assert!(matches!(r, Err(TimeoutError::Elapsed)));
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }
}
