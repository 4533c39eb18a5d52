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

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::conn::ConnInfo;

/// How long a newcomer waits for the slot of the connection closed for it.
pub const SHED_WAIT: Duration = Duration::from_secs(1);

/// A newcomer's claim on the slot of the connection asked to close for it. The slot is
/// handed over, not returned to the pool: a slot freed into the pool goes to whichever
/// worker accepts first, and a newcomer on another worker, still to be polled, was left
/// waiting for a slot that was no longer there (then refused with 503).
pub struct Handoff(oneshot::Receiver<OwnedSemaphorePermit>);

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

    /// `conn` has not read a request head yet: it may be closed to admit another.
    pub fn admitted(&self, conn: &Arc<ConnInfo>) {
        let mut q = lock(&self.unproven);
        // Connections mostly read their first head in the order they came: dropping the
        // served or closed ones at the front keeps the queue near the number of silent
        // ones, and frees their memory (a `Weak` keeps its allocation).
        while q.front().is_some_and(|w| !still_silent(w)) {
            q.pop_front();
        }
        if q.len() > 2 * self.max + 64 {
            q.retain(still_silent);
        }
        q.push_back(Arc::downgrade(conn));
    }

    /// Asks the oldest connection without a request head to close and hand its slot over;
    /// `None` when there is none (every open connection serves).
    pub fn shed_oldest(&self) -> Option<Handoff> {
        let mut q = lock(&self.unproven);
        while let Some(w) = q.pop_front() {
            if let Some(handoff) = w.upgrade().and_then(|c| c.ask_to_give_way()) {
                return Some(Handoff(handoff));
            }
        }
        None
    }

    /// The slot handed over for `handoff` within `wait`. When the connection asked read a
    /// request head meanwhile (it keeps its slot), a slot free at that moment is taken, or
    /// else the next oldest silent connection is asked; with neither, `None` at once (every
    /// connection serves: the newcomer gets 503, as at the cap).
    pub async fn handed_over(
        &self,
        mut handoff: Handoff,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, &mut handoff.0).await {
                Ok(Ok(permit)) => return Some(permit),
                Ok(Err(_)) => {
                    if let Some(permit) = self.try_take() {
                        return Some(permit);
                    }
                    handoff = self.shed_oldest()?;
                }
                Err(_) => return None,
            }
        }
    }
}

/// The connection is open and has not read a request head yet.
fn still_silent(w: &Weak<ConnInfo>) -> bool {
    w.upgrade()
        .is_some_and(|c| !c.started.load(Ordering::Relaxed))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_silent_connection_gives_way_never_a_serving_one() {
        let slots = Slots::new(3);
        let conns: Vec<Arc<ConnInfo>> = (0..3).map(|_| Arc::new(ConnInfo::default())).collect();
        let mut held: Vec<_> = conns
            .iter()
            .map(|c| {
                slots.admitted(c);
                slots.try_take()
            })
            .collect();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.open(), 3);
        // The first has read a request: the second is the oldest silent one.
        conns[0].started.store(true, Ordering::Relaxed);
        let handoff = slots.shed_oldest().expect("a silent connection to shed");
        tokio::time::timeout(Duration::from_millis(100), conns[1].shed.notified())
            .await
            .expect("the second was asked to close");
        // Its slot goes to the newcomer, not to the pool where any accept could take it.
        conns[1].release(held[1].take().unwrap());
        assert!(
            slots.try_take().is_none(),
            "the freed slot was up for grabs"
        );
        let permit = slots.handed_over(handoff, Duration::from_millis(100)).await;
        assert!(permit.is_some(), "the newcomer got the slot");
        drop(permit);

        // The newcomer's connection closed: its slot is free again; taken here.
        let _full = slots.try_take().expect("a free slot");
        // The third reads a request head after it was asked: it keeps its slot, and the
        // newcomer, with no free slot and no other silent connection to ask, is told so at
        // once (not after its wait ran out).
        let handoff = slots.shed_oldest().expect("the third is still silent");
        conns[2].started.store(true, Ordering::Relaxed);
        conns[2].serving();
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            slots.handed_over(handoff, Duration::from_secs(30)),
        )
        .await
        .expect("the newcomer was told at once");
        assert!(answer.is_none());
        assert!(
            slots.shed_oldest().is_none(),
            "every connection left serves"
        );
        // In the queue again (as if its flag were not seen yet), a serving connection is
        // still not asked: the state under its lock decides.
        conns[2].started.store(false, Ordering::Relaxed);
        slots.admitted(&conns[2]);
        assert!(slots.shed_oldest().is_none());
    }

    #[test]
    fn served_and_closed_connections_leave_the_queue_as_new_ones_come() {
        let slots = Slots::new(10);
        let mut conns: Vec<Arc<ConnInfo>> = (0..3).map(|_| Arc::new(ConnInfo::default())).collect();
        for c in &conns {
            slots.admitted(c);
        }
        conns[0].started.store(true, Ordering::Relaxed);
        drop(conns.remove(1));
        let later = Arc::new(ConnInfo::default());
        slots.admitted(&later);
        assert_eq!(
            lock(&slots.unproven).len(),
            2,
            "the silent one and the newcomer"
        );
    }

    #[tokio::test]
    async fn a_newcomer_that_gave_up_returns_the_slot_to_the_pool() {
        let slots = Slots::new(1);
        let conn = Arc::new(ConnInfo::default());
        slots.admitted(&conn);
        let permit = slots.try_take().unwrap();
        let handoff = slots.shed_oldest().unwrap();
        drop(handoff);
        conn.release(permit);
        assert!(slots.try_take().is_some());
        // Still referenced and in the queue again, a closed connection is not asked.
        slots.admitted(&conn);
        assert!(
            slots.shed_oldest().is_none(),
            "a closed connection is not asked"
        );
    }
}
