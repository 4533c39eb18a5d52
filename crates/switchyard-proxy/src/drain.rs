//! A listener's drain, as its connections see it. Each open connection holds a [`Drain`]
//! (the listener counts them by it, and waits for the last to go); an HTTP/1.1 connection
//! waits for the drain between requests. A wait on a watch channel, made afresh for each
//! request, took the channel's lock to register and again to leave at every request: a
//! [`Wait`] is made once per connection, registers once, and is then a flag read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

#[derive(Default)]
struct Signal {
    draining: AtomicBool,
    notify: Notify,
}

/// The listener's side: starts the drain and waits for the connections to close.
pub struct Drainer {
    open: watch::Sender<()>,
    signal: Arc<Signal>,
}

/// A connection's side, held while it is open.
#[derive(Clone)]
pub struct Drain {
    _open: watch::Receiver<()>,
    signal: Arc<Signal>,
}

/// A drain not started, with its first connection's side.
pub fn channel() -> (Drainer, Drain) {
    let (open, rx) = watch::channel(());
    let signal = Arc::new(Signal::default());
    (
        Drainer {
            open,
            signal: signal.clone(),
        },
        Drain { _open: rx, signal },
    )
}

impl Drainer {
    /// Tells every connection to close once its answer in progress is finished.
    pub fn start(&self) {
        // The flag first: a wait woken by the notification reads it.
        self.signal.draining.store(true, Ordering::Release);
        self.signal.notify.notify_waiters();
    }

    /// How many connections are open (hold a [`Drain`]), the listener's own aside.
    pub fn open(&self) -> usize {
        self.open.receiver_count()
    }

    /// Resolves when no connection holds a [`Drain`] any more.
    pub async fn closed(&self) {
        self.open.closed().await
    }
}

impl Drain {
    /// The drain has started.
    pub fn is_draining(&self) -> bool {
        self.signal.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain starts (at once if it has), and stays resolved. Made once
    /// per connection and polled again at every request.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            draining: &self.signal.draining,
            notified: self.signal.notify.notified(),
            waker: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Drain::wait`].
    pub struct Wait<'a> {
        draining: &'a AtomicBool,
        #[pin]
        notified: Notified<'a>,
        // The waker the notification wakes: while a poll brings the same one, the
        // notification need not be polled (that takes its lock).
        waker: Option<Waker>,
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.draining.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        *this.waker = Some(cx.waker().clone());
        // Ready only once `start` has notified, and it set the flag before.
        this.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wait_polled_many_times_wakes_once_the_drain_starts() {
        let (drainer, drain) = channel();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let conn = drain.clone();
        let task = tokio::spawn(async move {
            let mut wait = std::pin::pin!(conn.wait());
            // Polled again and again, as a connection does between requests.
            loop {
                tokio::select! {
                    biased;
                    () = &mut wait => return conn.is_draining(),
                    r = rx.recv() => if r.is_none() { return false },
                }
            }
        });
        for _ in 0..5 {
            tx.send(()).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(drainer.open(), 2);
        drainer.start();
        let drained = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the wait woke")
            .unwrap();
        assert!(drained, "it woke because the drain started");
        drop(drain);
        tokio::time::timeout(Duration::from_secs(5), drainer.closed())
            .await
            .expect("every connection's side is gone");
    }

    #[tokio::test]
    async fn a_wait_made_after_the_start_is_ready_at_once() {
        let (drainer, drain) = channel();
        drainer.start();
        assert!(drain.is_draining());
        tokio::time::timeout(Duration::from_secs(1), drain.wait())
            .await
            .expect("ready at once");
    }

    #[tokio::test]
    async fn a_wait_moved_to_another_task_is_woken_there() {
        let (drainer, drain) = channel();
        // Spawned below, the wait must borrow its `Drain` for the test's whole life.
        let drain: &'static Drain = Box::leak(Box::new(drain));
        let mut wait = Box::pin(drain.wait());
        // A first poll from here registers this task's waker...
        assert!(futures_poll_once(wait.as_mut()).is_pending());
        let task = tokio::spawn(async move {
            // ...and this task's poll brings another, which must be registered instead.
            wait.await;
            drain.is_draining()
        });
        tokio::task::yield_now().await;
        drainer.start();
        let drained = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the wait woke in its new task")
            .unwrap();
        assert!(drained);
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }
}
