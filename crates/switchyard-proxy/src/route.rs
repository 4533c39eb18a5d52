//! Where a request goes: the first migration whose `match` it meets (file order), and that
//! migration's side for the request's routing key (its sticky header, or the request id)
//! hashed into a stable bucket. A request that no migration matches goes to
//! `default_provider`, outside any migration: no side, no failover, no judge.

use http::header::HeaderValue;
use http::request::Parts;
use switchyard_core::router::{Router, Side};

use crate::snapshot::Snapshot;

/// A request's way through the gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The migration that moves it (an index into the snapshot's); `None`: the default
    /// provider's.
    pub(crate) migration: Option<usize>,
    /// The provider tried first.
    pub(crate) first: usize,
    /// The migration's other side, while the request may still fail over there.
    pub(crate) fallback: Option<usize>,
    /// The routing key's bucket: its cohort, for the judge.
    pub(crate) bucket: u16,
    pub(crate) side: Side,
}

/// `model`: the request body's, when a migration matches by model (read ahead for it).
pub(crate) fn route(
    snap: &Snapshot,
    parts: &Parts,
    request_id: &HeaderValue,
    model: Option<&str>,
) -> Route {
    let cfg = &snap.config;
    let header = |name: &str| parts.headers.get(name).map(HeaderValue::as_bytes);
    let chosen = cfg.migrations.iter().position(|m| {
        m.matcher.is_everything() || m.matcher.matches(model, parts.uri.path(), header)
    });
    let Some(i) = chosen else {
        // Validation requires `default_provider` with `migrations:`, and the singular
        // `migration:` matches every request.
        return Route {
            migration: None,
            first: cfg.default_provider.unwrap_or_default(),
            fallback: None,
            bucket: 0,
            side: Side::From,
        };
    };
    let (m, live) = (&cfg.migrations[i], &snap.migrations[i]);
    let key = match parts.headers.get(&live.sticky_header) {
        Some(v) if !v.is_empty() => v.as_bytes(),
        _ => request_id.as_bytes(),
    };
    let bucket = m.router.bucket(key);
    let side = Router::side_of(bucket, live.to_buckets);
    let (mut first, mut other) = match side {
        Side::To => (m.to, m.from),
        Side::From => (m.from, m.to),
    };
    // A provider that asked for a pause with a 429's `Retry-After` gets no first attempts.
    if m.failover.honor_retry_after && first != other && snap.upstreams[first].paused() {
        std::mem::swap(&mut first, &mut other);
    }
    Route {
        migration: Some(i),
        first,
        fallback: (other != first).then_some(other),
        bucket,
        side,
    }
}
