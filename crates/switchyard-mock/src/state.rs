//! What a running mock shares between its connections: settings changed live, what it
//! received, and its counters.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

use crate::config::MockConfig;
use crate::fault::Fault;
use crate::features::Ignore;

#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
    /// Path and query as received.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub(crate) struct State {
    pub(crate) cfg: MockConfig,
    pub(crate) received: Mutex<Vec<Received>>,
    pub(crate) status_override: AtomicU16,
    pub(crate) health_checks: AtomicU64,
    pub(crate) health_status: AtomicU16,
    /// Sent as `Retry-After` with every error answer (0: none).
    pub(crate) retry_after: AtomicU64,
    pub(crate) delay_ms: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) served: AtomicU64,
    pub(crate) seq: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) open: Mutex<Vec<tokio::task::AbortHandle>>,
    pub(crate) fault: Mutex<Option<Fault>>,
    pub(crate) ignore: Mutex<Ignore>,
}

/// Counts a request as cancelled if it is dropped before [`Guard::done`].
pub(crate) struct Guard(pub(crate) Option<Arc<State>>);

impl Guard {
    pub(crate) fn done(mut self) {
        if let Some(st) = self.0.take() {
            st.served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            st.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
