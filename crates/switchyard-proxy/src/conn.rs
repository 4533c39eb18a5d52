//! What the request path knows of the client connection a request came on, and the guard
//! that tells a busy connection from an idle one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::upstream::Worker;

/// Per-connection facts the request path needs.
#[derive(Default)]
pub struct ConnInfo {
    /// Set by the HTTP/1.1 server ([`crate::h1_request`]) when a request head carried
    /// both `Content-Length` and `Transfer-Encoding`.
    pub framing_violation: AtomicBool,
    /// A request head has been read on this connection (the listener's first-request
    /// deadline).
    pub started: AtomicBool,
    /// The proxy worker serving the connection: its requests use that worker's pools.
    pub worker: Worker,
    /// The client's address, for the access log.
    pub remote: Option<SocketAddr>,
    /// Answers being sent on this connection (see [`Active`]).
    pub active: AtomicUsize,
    /// When the connection last started or finished an answer, in ms since `opened`.
    pub last_active_ms: AtomicU64,
    pub opened: Option<Instant>,
    /// Raised when the connection, still without a request head, is to close to admit
    /// another at the connection cap ([`crate::slots`]).
    pub shed: tokio::sync::Notify,
    /// Who its slot goes to when it closes ([`crate::slots`]).
    give_way: Mutex<GiveWay>,
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

    /// Asks the connection, still without a request head, to close and hand its slot to
    /// the newcomer holding the receiver; `None` when it has read one, closed, or was
    /// asked already. (`started` is only a shortcut: the state under the lock decides.)
    pub(crate) fn ask_to_give_way(&self) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        if self.started.load(Ordering::Relaxed) {
            return None;
        }
        let mut give_way = self.give_way();
        if !matches!(*give_way, GiveWay::Keep) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        *give_way = GiveWay::To(tx);
        self.shed.notify_one();
        Some(rx)
    }

    /// The connection has read its first request head: it is never asked to give way from
    /// now on, and a newcomer that asked it just before looks elsewhere (its receiver
    /// errs). Called once, as `started` is set.
    pub(crate) fn serving(&self) {
        let mut give_way = self.give_way();
        if !matches!(*give_way, GiveWay::Closed) {
            *give_way = GiveWay::Serving;
        }
    }

    /// The connection has closed: its slot goes to the newcomer it was asked to close for,
    /// if that one still waits, else back to the pool.
    pub(crate) fn release(&self, slot: OwnedSemaphorePermit) {
        let mut give_way = self.give_way();
        if let GiveWay::To(newcomer) = std::mem::replace(&mut *give_way, GiveWay::Closed) {
            // Refused (the newcomer gave up waiting): the slot is dropped back to the pool.
            let _ = newcomer.send(slot);
        }
    }

    fn give_way(&self) -> MutexGuard<'_, GiveWay> {
        self.give_way.lock().unwrap_or_else(|e| e.into_inner())
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

/// One answer in progress on a connection, from the request's admission until its body is
/// dropped: what tells an idle keep-alive or HTTP/2 connection from a busy one.
pub struct Active(Arc<ConnInfo>);

impl Active {
    pub(crate) fn start(conn: &Arc<ConnInfo>) -> Active {
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

/// What becomes of a connection's slot when it closes ([`crate::slots`]).
#[derive(Default)]
enum GiveWay {
    /// Back to the pool.
    #[default]
    Keep,
    /// To the newcomer it was asked to close for.
    To(oneshot::Sender<OwnedSemaphorePermit>),
    /// It has read a request head: not to be asked.
    Serving,
    /// Closed already: not to be asked.
    Closed,
}
