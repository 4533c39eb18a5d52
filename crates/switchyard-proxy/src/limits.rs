//! Per client key limits: a request rate (token bucket) and requests in flight at once.
//! Each replica keeps its own counts (cluster mode does not share them).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_core::config::ClientLimits;

struct Key {
    /// Tokens left and when they were last counted.
    bucket: Mutex<(f64, Instant)>,
    in_flight: AtomicU32,
}

/// The limits of every configured client key, by the key's index.
pub struct Limiter {
    limits: ClientLimits,
    keys: Box<[Key]>,
}

/// Why a request was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverLimit {
    Rate { retry_after: Duration },
    Concurrency,
}

impl OverLimit {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            OverLimit::Rate { retry_after } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            OverLimit::Concurrency => 1,
        }
    }
}

/// A request in flight for a key; dropping it frees the slot.
pub struct Permit {
    limiter: Arc<Limiter>,
    key: usize,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit(key {})", self.key)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.limiter.limits.max_concurrent.is_some() {
            self.limiter.keys[self.key]
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Limiter {
    pub fn new(limits: ClientLimits, keys: usize) -> Limiter {
        let now = Instant::now();
        Limiter {
            limits,
            keys: (0..keys)
                .map(|_| Key {
                    bucket: Mutex::new((f64::from(limits.burst), now)),
                    in_flight: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// Admits a request of key `key` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, key: usize, now: Instant) -> Result<Permit, OverLimit> {
        let Some(k) = self.keys.get(key) else {
            return Ok(Permit {
                limiter: self.clone(),
                key: 0,
            });
        };
        if let Some(rps) = self.limits.requests_per_second {
            let mut b = k.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let burst = f64::from(self.limits.burst);
            let refill = now.saturating_duration_since(b.1).as_secs_f64() * rps;
            b.0 = (b.0 + refill).min(burst);
            b.1 = now;
            if b.0 < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - b.0) / rps);
                return Err(OverLimit::Rate { retry_after });
            }
            b.0 -= 1.0;
        }
        if let Some(max) = self.limits.max_concurrent {
            if k.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
                k.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(OverLimit::Concurrency);
            }
        }
        Ok(Permit {
            limiter: self.clone(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_per_key() {
        let l = Arc::new(Limiter::new(
            ClientLimits {
                requests_per_second: Some(2.0),
                burst: 2,
                max_concurrent: Some(3),
            },
            2,
        ));
        let t0 = Instant::now();
        let a = l.admit(0, t0).unwrap();
        let b = l.admit(0, t0).unwrap();
        let refused = l.admit(0, t0).unwrap_err();
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(
            matches!(refused, OverLimit::Rate { retry_after } if retry_after == Duration::from_millis(500))
        );
        // Another key has its own bucket.
        let c = l.admit(1, t0).unwrap();
        // Half a second later one token is back.
        let d = l.admit(0, t0 + Duration::from_millis(500)).unwrap();
        // Three in flight for key 0: the fourth waits for one to end, whatever the rate.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.admit(0, later).unwrap_err(), OverLimit::Concurrency);
        drop(a);
        let e = l.admit(0, later).unwrap();
        drop((b, c, d, e));
    }
}
