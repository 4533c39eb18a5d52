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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service, ServiceBuilder};

use crate::body::{GatewayBody, RequestBody, RequestShared};
use crate::service::Exchange;
use crate::upstream::{Lease, SendError, Upstream, Worker};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
    pub ex: Exchange,
    /// The provider: an index into the snapshot's upstreams.
    pub index: usize,
    /// The other provider, while the call may still fail over to it.
    pub fallback: Option<usize>,
    /// The provider this call already failed over from.
    pub failed_over_from: Option<usize>,
    pub req: Request<RequestBody>,
    pub worker: Worker,
}

/// One attempt at one provider, below accounting.
pub struct Attempt {
    pub upstream: Arc<Upstream>,
    pub req: Request<RequestBody>,
    pub worker: Worker,
    /// The client's request body as it streams (tells when it was fully sent).
    pub body: Option<Arc<RequestShared>>,
}

/// When the wait for a response head starts.
pub trait Started: Send + Sync {
    /// `None`: not yet (the request is still being sent).
    fn started(&self) -> Option<Instant>;
}

impl Started for RequestShared {
    fn started(&self) -> Option<Instant> {
        self.sent_at()
    }
}

/// How long a request may wait for its response head, and from when.
pub trait Deadline {
    fn limit(&self) -> Duration;
    /// `None`: from the call.
    fn start(&self) -> Option<Arc<dyn Started>>;
}

impl Deadline for Attempt {
    fn limit(&self) -> Duration {
        self.upstream.config.timeout
    }

    fn start(&self) -> Option<Arc<dyn Started>> {
        self.body.clone().map(|b| b as Arc<dyn Started>)
    }
}

// ---------------------------------------------------------------- 4. pooled

/// The worker's pooled connection to the attempt's provider.
#[derive(Clone, Copy, Default)]
pub struct Pooled;

impl Service<Attempt> for Pooled {
    type Response = (Response<Incoming>, Lease);
    type Error = SendError;
    type Future = BoxFuture<Result<(Response<Incoming>, Lease), SendError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, a: Attempt) -> Self::Future {
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
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let limit = req.limit();
        let start = req.start();
        TimeoutFuture {
            limit,
            start,
            sleep: tokio::time::sleep(limit),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    pub struct TimeoutFuture<F> {
        limit: Duration,
        start: Option<Arc<dyn Started>>,
        #[pin]
        sleep: Sleep,
        #[pin]
        inner: F,
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
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
            let Some(start) = this.start else {
                return Poll::Ready(Err(TimeoutError::Elapsed));
            };
            let now = Instant::now();
            match start.started() {
                Some(sent) if now >= sent + *this.limit => {
                    return Poll::Ready(Err(TimeoutError::Elapsed))
                }
                Some(sent) => this.sleep.as_mut().reset(sent + *this.limit),
                None => this.sleep.as_mut().reset(now + *this.limit),
            }
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

impl<S> Service<Call> for Accounting<S>
where
    S: Service<Attempt, Response = (Response<Incoming>, Lease), Error = TimeoutError<SendError>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<GatewayBody>;
    type Error = Retry;
    type Future = BoxFuture<Result<Response<GatewayBody>, Retry>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Retry>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut inner = self.inner.clone();
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
                upstream: ex.snap.upstreams[index].clone(),
                req,
                worker,
                body: ex.shared.clone(),
            };
            match inner.call(attempt).await {
                Ok((resp, lease)) => Ok(ex.respond(resp, lease, index, failed_over_from)),
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
    S: Service<Call, Response = Response<GatewayBody>, Error = Retry> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<GatewayBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match inner.call(call).await {
                Ok(resp) => Ok(resp),
                Err(Retry(mut call)) => {
                    // Accounting hands back only calls that have a fallback.
                    let other = call.fallback.take().unwrap_or(call.index);
                    call.failed_over_from = Some(call.index);
                    call.index = other;
                    match call.ex.retarget(call.req, other) {
                        Ok(req) => call.req = req,
                        Err(e) => return Ok(call.ex.unforwardable(other, &e)),
                    }
                    match inner.call(call).await {
                        Ok(resp) => Ok(resp),
                        // Without a fallback the call is answered; this is for completeness.
                        Err(Retry(call)) => {
                            Ok(call.ex.not_connected(call.index, &"no provider left"))
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(1);

    /// A request whose body is "sent" when the test says so.
    struct Upload(Arc<RequestShared>);

    impl Deadline for Upload {
        fn limit(&self) -> Duration {
            LIMIT
        }

        fn start(&self) -> Option<Arc<dyn Started>> {
            Some(self.0.clone())
        }
    }

    /// An inner service that answers `after` the upload finished, or never.
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
