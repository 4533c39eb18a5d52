//! Failover: a request goes once to the other side of the migration when its provider
//! could not be connected to (nothing was sent), or refused it before anything reached the
//! client (`migration.failover.on_status`: 401, 403, 429, 502, 503 by default) and its
//! body was kept whole for a replay (up to `replay_max_body`). The answer says so
//! (`x-switchyard-failover`), the attempt that failed is counted against its provider, and
//! a 429's `Retry-After` keeps first attempts off that provider for a while. Once any byte
//! reached the client, nothing is retried.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response};
use switchyard_core::event::Class;
use switchyard_core::ErrorKind;

use crate::errors::ErrorChain;
use crate::exchange::Exchange;
use crate::models;
use crate::request_body::{BoxedBody, RequestBody, RequestShared};
use crate::upstream::UpstreamBody;

/// The longest a provider's `Retry-After` keeps first attempts off it: a provider cannot
/// take itself out of a migration for long.
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// The replay policy: a body is copied as it streams (and the headers come back with the
/// answer, [`Exchange::replay`]) when a refusal may send it to the other side.
pub(crate) fn keep_replay(ex: &mut Exchange, body: &mut RequestBody) {
    let max = match ex.migration() {
        Some((m, _)) if ex.fallback.is_some() && !m.failover.on_status.is_empty() => {
            m.failover.replay_max_body
        }
        _ => return,
    };
    ex.replay = true;
    body.keep_replay(max);
}

/// The provider answered `resp`'s head to a request sent with `sent` headers: when it is a
/// refusal that fails over and the body was kept whole, the request as the other side must
/// get it (the refusal counted against this provider). `None`: this answer is the client's.
pub(crate) fn after_refusal(
    ex: &mut Exchange,
    resp: &Response<UpstreamBody>,
    sent: Option<HeaderMap>,
) -> Option<Result<Request<BoxedBody>, http::Error>> {
    let other = ex.fallback?;
    let status = resp.status().as_u16();
    let failover = &ex.migration()?.0.failover;
    if !failover.fails_over(status) {
        return None;
    }
    let honor_retry_after = failover.honor_retry_after;
    let replay = ex.shared.as_ref()?.replay()?;
    let mut headers = sent?;
    let up = ex.upstream();
    if status == 429 && honor_retry_after {
        let secs = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(secs) = secs {
            up.pause(Duration::from_secs(secs).min(MAX_PAUSE));
        }
    }
    let body = models::replay_for(
        replay,
        ex.model_prefix.as_ref(),
        &up.config,
        &ex.snap.config.providers[other],
    );
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    tracing::warn!(request_id = ex.id(), provider = %up.name, status, "provider refused; failing over");
    ex.metrics().failovers.increment(1);
    let ttfb = ex.start.elapsed();
    ex.attempt_failed(status, Class::of_status(status), Some(ttfb));
    ex.move_to(other);
    // The copy holds the whole body: a fresh clock for the other provider's timeout.
    let shared = RequestShared::with_model(ex.shared.as_ref().and_then(|s| s.model()));
    ex.shared = Some(shared.clone());
    let mut body = Box::new(RequestBody::buffered(body, shared));
    body.start_reading();
    let mut req = Request::new(body);
    *req.method_mut() = ex.method.clone();
    *req.headers_mut() = headers;
    Some(ex.upstream().prepare(req, &ex.uri))
}

/// The provider could not be connected to (nothing was sent): the request as the other side
/// must get it, the attempt counted against this provider. `None`: there is no other side.
pub(crate) fn after_connect_error(
    ex: &mut Exchange,
    e: &(dyn std::error::Error + 'static),
    mut req: Request<BoxedBody>,
) -> Option<Result<Request<BoxedBody>, http::Error>> {
    let other = ex.fallback?;
    let up = ex.upstream();
    tracing::warn!(request_id = ex.id(), provider = %up.name, error = %ErrorChain(e), "cannot connect; failing over");
    ex.metrics().failovers.increment(1);
    ex.attempt_failed(0, ErrorKind::UpstreamConnect.class(), None);
    ex.move_to(other);
    if let Some(prefix) = &ex.model_prefix {
        models::rename_for(&mut req, prefix, &ex.upstream().config);
    }
    Some(ex.upstream().prepare(req, &ex.uri))
}
