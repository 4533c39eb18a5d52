//! Connection slots (`server.max_connections`), shared by every proxy worker, and who gives
//! way at the cap. A connection that has not completed a request head yet — silent, or an
//! HTTP/2 preface and SETTINGS alone — is the cheapest to lose and the likeliest to be a
//! flood: at the cap the oldest such connection is closed to admit the new one. Serving
//! connections never give way; when every slot serves, a new connection gets 503.
//!
//! Why not shrink the head deadline under pressure (Envoy's overload manager)? A shrinking
//! deadline still lets a flood hold every slot until it runs out, and the client that came
//! meanwhile was already refused; closing one silent socket per newcomer admits the
//! newcomer at once, whatever the flood's size.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::conn::ConnInfo;

/// How long a newcomer waits for the slot of the connection closed for it.
pub const SHED_WAIT: Duration = Duration::from_secs(1);

pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    /// Connections without a request head yet, oldest first (some may have read one
    /// since, or closed: skipped when met).
    unproven: Mutex<VecDeque<Weak<ConnInfo>>>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            unproven: Mutex::default(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A slot freed within `wait` (the one of a connection closed to make room).
    pub async fn take_within(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// `conn` has not read a request head yet: it may be closed to admit another.
    pub fn admitted(&self, conn: &Arc<ConnInfo>) {
        let mut q = self.unproven.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() > 2 * self.max + 64 {
            q.retain(|w| {
                w.upgrade()
                    .is_some_and(|c| !c.started.load(Ordering::Relaxed))
            });
        }
        q.push_back(Arc::downgrade(conn));
    }

    /// Asks the oldest connection without a request head to close; false when there is
    /// none (every open connection serves).
    pub fn shed_oldest(&self) -> bool {
        let mut q = self.unproven.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(w) = q.pop_front() {
            if let Some(c) = w.upgrade().filter(|c| !c.started.load(Ordering::Relaxed)) {
                c.shed.notify_one();
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_silent_connection_gives_way_never_a_serving_one() {
        let slots = Slots::new(3);
        let conns: Vec<Arc<ConnInfo>> = (0..3).map(|_| Arc::new(ConnInfo::default())).collect();
        let held: Vec<_> = conns
            .iter()
            .map(|c| {
                slots.admitted(c);
                slots.try_take().unwrap()
            })
            .collect();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.open(), 3);
        // The first has read a request: the second is the oldest silent one.
        conns[0].started.store(true, Ordering::Relaxed);
        assert!(slots.shed_oldest());
        tokio::time::timeout(Duration::from_millis(100), conns[1].shed.notified())
            .await
            .expect("the second was asked to close");
        assert!(slots.shed_oldest());
        conns[2].started.store(true, Ordering::Relaxed);
        assert!(!slots.shed_oldest(), "every connection left serves");
        drop(held);
        assert!(slots.take_within(Duration::from_millis(10)).await.is_some());
    }
}
