//! A first-byte timeout for any request future that can say since when its wait counts
//! ([`Started`]): no response head within the limit is [`TimeoutError::Elapsed`]. The time
//! counts from the end of the client's upload, not from the call: a client that uploads
//! slowly must not make the provider look slow. Generic: it knows nothing of the gateway
//! (its test drives it with an upload of its own). A plain future, not a tower layer: a
//! layer's service must name its future, and that cost a boxed future per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

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

/// `inner` (a request to a provider), ended with [`TimeoutError::Elapsed`] when it has no
/// response head within `limit`, counted as `start` says. The timer is armed once and
/// re-armed only when it fires while the request is still being sent or was sent late, so
/// the usual request costs no extra wake-up.
pub fn first_byte<F, S: Started>(limit: Duration, start: S, inner: F) -> TimeoutFuture<F, S> {
    let called = Instant::now();
    TimeoutFuture {
        limit,
        start,
        called,
        sleep: tokio::time::sleep_until(called + limit),
        inner,
    }
}

/// The error of [`first_byte`]: the request's own, or the deadline passed.
pub enum TimeoutError<E> {
    Inner(E),
    Elapsed,
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

    /// When the test's upload ended (the timeout knows nothing of the gateway's bodies).
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

    struct Shared(Arc<SentAt>);

    impl Started for Shared {
        fn since(&self) -> Since {
            self.0.sent_at().map_or(Since::NotYet, Since::At)
        }
    }

    /// A request, under the timeout, whose answer comes `after` the call, or never.
    async fn answering(
        body: &Arc<SentAt>,
        after: Option<Duration>,
    ) -> Result<&'static str, TimeoutError<()>> {
        let answer = async move {
            match after {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    Ok("answer")
                }
                None => std::future::pending().await,
            }
        };
        first_byte(LIMIT, Shared(body.clone()), answer).await
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
        let r = answering(&body, Some(Duration::from_millis(3500))).await;
        assert!(matches!(r, Ok("answer")));

        // Uploaded, then silent for longer than the limit: the provider's timeout.
        let body = Arc::new(SentAt::default());
        body.mark_sent();
        let start = Instant::now();
        let r = answering(&body, None).await;
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
        let r = answering(&body, None).await;
        assert!(matches!(r, Err(TimeoutError::Elapsed)));
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }
}
