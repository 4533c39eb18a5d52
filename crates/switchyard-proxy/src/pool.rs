//! One worker's connections to one provider: idle HTTP/1.1 keep-alive connections (most
//! recently used first), shared HTTP/2 connections with their stream counts, and the
//! [`Lease`] an exchange holds (an HTTP/2 stream's slot; an HTTP/1.1 answer's body parks
//! its connection itself once read to its end). Used only
//! by [`crate::upstream::Upstream`], on one worker's thread: the locks are never contended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;

use crate::connect::Io;
use crate::request_body::BoxedBody;

/// A connection ready to carry one exchange.
pub(crate) enum Conn {
    /// An HTTP/1.1 connection's socket, driven by the exchange itself.
    H1(Io),
    /// A handle on a shared HTTP/2 connection, and the stream slot taken on it.
    H2(http2::SendRequest<BoxedBody>, StreamSlot),
}

impl Conn {
    /// Waits until the connection can take a request; an error: it is closed. An idle
    /// HTTP/1.1 connection was checked as it was taken from the pool.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Conn::H1(_) => Ok(()),
            Conn::H2(tx, _) => tx.ready().await,
        }
    }
}

type Idle = VecDeque<(Io, Instant)>;

/// A shared HTTP/2 connection: its handle, its open streams, and since when it has had none.
struct H2Conn {
    tx: http2::SendRequest<BoxedBody>,
    streams: Arc<AtomicUsize>,
    unused_since: Option<Instant>,
}

/// One worker's connections to one provider.
#[derive(Default)]
pub struct Pool {
    /// Idle HTTP/1.1 keep-alive connections, most recently used last.
    idle: Mutex<Idle>,
    /// HTTP/2 connections, busy or not, in the order opened.
    h2: Mutex<Vec<H2Conn>>,
    /// Held while an HTTP/2 connection is being opened.
    pub(crate) opening: tokio::sync::Mutex<()>,
    /// The last warm request this pool answered ([`crate::upstream::Upstream::warm`]).
    pub(crate) warmed: std::sync::atomic::AtomicU64,
}

impl Pool {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Vec<H2Conn>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an idle HTTP/1.1 connection for the next request (up to `max_idle`).
    pub(crate) fn park(&self, conn: Io, max_idle: usize) {
        let mut idle = self.lock();
        if idle.len() < max_idle {
            idle.push_back((conn, Instant::now()));
        }
        // Over the cap the connection is dropped here, which closes it.
    }

    /// The most recently used open connection: the one most likely still warm.
    pub(crate) fn take(&self, timeout: Duration) -> Option<Io> {
        self.take_at(Instant::now(), timeout)
    }

    fn take_at(&self, now: Instant, timeout: Duration) -> Option<Io> {
        let mut idle = self.lock();
        while let Some((mut c, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) >= timeout {
                // The freshest is too old, so all are: the provider may be closing them.
                idle.clear();
                return None;
            }
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    /// A stream on the first open HTTP/2 connection with one to spare: filling the first
    /// ones lets the last go unused and be closed after a burst.
    pub(crate) fn take_stream(&self, max_streams: usize) -> Option<Conn> {
        let mut h2 = self.lock_h2();
        h2.retain(|c| !c.tx.is_closed());
        let c = h2
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < max_streams)?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some(Conn::H2(c.tx.clone(), StreamSlot(c.streams.clone())))
    }

    /// Adds a new HTTP/2 connection with one stream taken on it.
    pub(crate) fn add_h2(&self, tx: http2::SendRequest<BoxedBody>) -> StreamSlot {
        let streams = Arc::new(AtomicUsize::new(1));
        self.lock_h2().push(H2Conn {
            tx,
            streams: streams.clone(),
            unused_since: None,
        });
        StreamSlot(streams)
    }

    /// Drops closed connections, those unused for `timeout`, idle HTTP/1.1 ones over
    /// `max_idle`, and unused HTTP/2 ones but one.
    pub(crate) fn close_idle(&self, now: Instant, timeout: Duration, max_idle: usize) {
        {
            let mut idle = self.lock();
            idle.retain_mut(|(c, since)| {
                now.saturating_duration_since(*since) < timeout && !c.is_closed()
            });
            let over = idle.len().saturating_sub(max_idle);
            idle.drain(..over);
        }
        let mut h2 = self.lock_h2();
        let mut unused = 0;
        h2.retain_mut(|c| {
            if c.tx.is_closed() {
                return false;
            }
            if c.streams.load(Ordering::Relaxed) > 0 {
                c.unused_since = None;
                return true;
            }
            let since = *c.unused_since.get_or_insert(now);
            unused += 1;
            // One unused HTTP/2 connection carries what many HTTP/1.1 ones would, and each
            // holds its buffers (about 1 MB after a burst): the rest close at once.
            now.saturating_duration_since(since) < timeout && unused <= max_idle.min(1)
        });
    }
}

/// A stream taken on an HTTP/2 connection, given back when dropped.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection carrying one exchange.
pub struct Lease {
    /// An HTTP/2 stream's slot on its shared connection, given back as it drops. (An
    /// HTTP/1.1 answer's body gives its connection back itself as it reads the end.)
    pub(crate) _slot: Option<StreamSlot>,
    /// The connection was opened for this exchange: its setup is in the wait for the head.
    pub(crate) fresh: bool,
}

impl Lease {
    /// Whether the connection was opened for this exchange (connection setup is not the
    /// provider's slowness).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The response was read to its end: the connection can carry the next request.
    pub fn release(self) {
        // An HTTP/1.1 body parks its connection as it reads the end; an HTTP/2 stream's
        // slot goes back as it drops, and the connection stays shared.
        drop(self)
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    const TIMEOUT: Duration = Duration::from_secs(90);

    /// A loopback TCP connection; the far end holds it open until dropped.
    async fn conn() -> (Io, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (Io::Tcp(near), far)
    }

    /// An HTTP/2 connection to an in-memory hyper server.
    async fn h2_conn() -> http2::SendRequest<BoxedBody> {
        let (near, far) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(far), svc)
                .await;
        });
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx
    }

    #[tokio::test]
    async fn most_recent_first_and_expired_or_closed_ones_are_dropped() {
        let pool = Pool::default();
        let t0 = Instant::now();
        let (a, _keep_a) = conn().await;
        let (b, _keep_b) = conn().await;
        let (c, far_c) = conn().await;
        pool.lock().push_back((a, t0));
        pool.lock().push_back((b, t0 + Duration::from_secs(10)));
        pool.lock().push_back((c, t0 + Duration::from_secs(20)));

        // The provider closed `c`: skipped once its end has come.
        drop(far_c);
        for _ in 0..1000 {
            if pool.lock().back_mut().is_some_and(|(c, _)| c.is_closed()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut taken = pool.take_at(t0 + Duration::from_secs(30), TIMEOUT).unwrap();
        assert!(!taken.is_closed());
        assert_eq!(pool.lock().len(), 1, "c dropped, b taken, a left");

        // `a` is over the idle timeout: the sweep closes it, and a take finds nothing.
        pool.lock().push_back((taken, t0 + Duration::from_secs(30)));
        pool.close_idle(t0 + TIMEOUT + Duration::from_secs(1), TIMEOUT, 32);
        assert_eq!(pool.lock().len(), 1);
        assert!(pool
            .take_at(t0 + Duration::from_secs(31), TIMEOUT)
            .is_some());

        // The freshest over the timeout means all are: the pool empties.
        let (d, _keep_d) = conn().await;
        pool.lock().push_back((d, t0));
        assert!(pool.take_at(t0 + TIMEOUT, TIMEOUT).is_none());
        assert!(pool.lock().is_empty());
    }

    #[tokio::test]
    async fn a_pool_keeps_at_most_its_cap_of_idle_connections() {
        let cap = 4;
        let pool = Arc::new(Pool::default());
        let mut far_ends = Vec::new();
        for _ in 0..=cap {
            let (c, far) = conn().await;
            far_ends.push(far);
            pool.park(c, cap);
        }
        assert_eq!(pool.lock().len(), cap, "over the cap it is closed");

        // A lower cap (after a reload) is applied by the sweep.
        pool.close_idle(Instant::now(), TIMEOUT, 1);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn h2_streams_fill_one_connection_then_the_next_and_come_back() {
        let pool = Pool::default();
        assert!(pool.take_stream(2).is_none(), "no connection yet");
        let first = pool.add_h2(h2_conn().await);
        let second = pool
            .take_stream(2)
            .expect("a second stream on the first connection");
        assert!(pool.take_stream(2).is_none(), "the first is full");
        let third = pool.add_h2(h2_conn().await);
        assert_eq!(pool.lock_h2().len(), 2);
        let streams = |p: &Pool| -> Vec<usize> {
            p.lock_h2()
                .iter()
                .map(|c| c.streams.load(Ordering::Relaxed))
                .collect()
        };
        assert_eq!(streams(&pool), [2, 1]);

        // A finished stream frees its slot, and the next request fills the first again.
        drop(second);
        assert_eq!(streams(&pool), [1, 1]);
        let again = pool.take_stream(2).unwrap();
        assert_eq!(streams(&pool), [2, 1]);

        // Busy connections are kept whatever their age; unused ones go after the timeout.
        drop(third);
        let t0 = Instant::now();
        pool.close_idle(t0, TIMEOUT, 32);
        assert_eq!(pool.lock_h2().len(), 2, "the second just became unused");
        pool.close_idle(t0 + TIMEOUT, TIMEOUT, 32);
        assert_eq!(
            streams(&pool),
            [2],
            "the unused one is closed, the busy one kept"
        );
        let fourth = pool.add_h2(h2_conn().await);
        let fifth = pool.add_h2(h2_conn().await);
        drop((fourth, fifth));
        pool.close_idle(t0 + TIMEOUT, TIMEOUT, 32);
        assert_eq!(
            streams(&pool),
            [2, 0],
            "a second unused one is closed at once"
        );
        drop((first, again));
        pool.close_idle(t0 + TIMEOUT * 3, TIMEOUT, 32);
        assert_eq!(streams(&pool), [0], "unused from now on: one kept a while");
        pool.close_idle(t0 + TIMEOUT * 5, TIMEOUT, 32);
        assert!(pool.lock_h2().is_empty());
    }
}
