//! A first-byte timeout for any service whose requests say their limit and since when it
//! counts ([`Deadline`]): no response head within the limit is [`TimeoutError::Elapsed`].
//! The time counts from the end of the client's upload, not from the call: a client that
//! uploads slowly must not make the provider look slow. Generic: it knows nothing of the
//! gateway (its test drives it with a request type of its own).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

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

/// How long a request may wait for its response head, and from when.
pub trait Deadline {
    type Start: Started;
    fn limit(&self) -> Duration;
    fn start(&self) -> Self::Start;
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    /// When the test's upload ended (the layer knows nothing of the gateway's bodies).
    #[derive(Default)]
    struct SentAt(OnceLock<Instant>);

    impl SentAt {
        fn mark_sent(&self) {
            let _ = self.0.set(Instant::now());
        }

        fn sent_at(&self) -> Option<Instant> {
            self.0.get().copied()
        }
    }

    const LIMIT: Duration = Duration::from_secs(1);

    /// A request whose body is "sent" when the test says so.
    struct Upload(Arc<SentAt>);

    struct Shared(Arc<SentAt>);

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
        let body = Arc::new(SentAt::default());
        let uploading = body.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            uploading.mark_sent();
        });
        let mut svc = FirstByteTimeoutLayer.layer(answering(Some(Duration::from_millis(3500))));
        let r = svc.call(Upload(body)).await;
        assert!(matches!(r, Ok("answer")));

        // Uploaded, then silent for longer than the limit: the provider's timeout.
        let body = Arc::new(SentAt::default());
        body.mark_sent();
        let start = Instant::now();
        let mut svc = FirstByteTimeoutLayer.layer(answering(None));
        let r = svc.call(Upload(body)).await;
        assert!(matches!(r, Err(TimeoutError::Elapsed)));
        assert_eq!(start.elapsed(), LIMIT);

        // Finished uploading late: the timeout runs from then.
        let body = Arc::new(SentAt::default());
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
