//! What a finished client request leaves behind for people: one access-log line and, when
//! traces are on, one span. Both are written from the same [`Finished`] record.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Uri};
use switchyard_core::answer::{BadAnswer, CutShort};
use switchyard_core::event::Class;

use crate::metrics::Outcome;
use crate::trace::{SpanRecord, TraceCtx};

/// What a request's class alone does not say.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Detail {
    pub(crate) bad_answer: Option<BadAnswer>,
    pub(crate) cut_short: Option<CutShort>,
    /// How long the client waited before it gave up on the answer's head.
    pub(crate) waited: Option<Duration>,
}

impl Detail {
    /// The shape of a bad answer or the cause of a cut, for logs and traces.
    pub(crate) fn label(&self) -> Option<&'static str> {
        self.bad_answer
            .map(BadAnswer::label)
            .or(self.cut_short.map(CutShort::label))
    }
}

/// One client request, as it ended.
pub(crate) struct Finished<'a> {
    pub(crate) client: Option<SocketAddr>,
    /// Until the provider's response head (or, for a stream, its first token).
    pub(crate) ttfb: Option<Duration>,
    /// The provider tried first, when the request failed over, and what it answered
    /// (0: it could not be connected to).
    pub(crate) failover: Option<(&'a str, u16)>,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    /// `-` when the gateway answered before choosing one.
    pub(crate) provider: &'a str,
    /// The migration that routed it, in a gateway of several.
    pub(crate) migration: Option<&'a str>,
    /// The migration's phase the request was routed in (`rollback` while rolled back; `-`
    /// for no migration).
    pub(crate) phase: &'a str,
    pub(crate) status: u16,
    pub(crate) outcome: Outcome,
    pub(crate) class: Class,
    pub(crate) elapsed: Duration,
    pub(crate) bytes: u64,
    pub(crate) model: Option<&'a str>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) cost: Option<f64>,
    pub(crate) detail: Detail,
}

/// Milliseconds to the microsecond: what a log pipeline can read as a number.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

// Out of line: the per-request accounting it is called from stays small when it is off.
#[inline(never)]
pub(crate) fn access_log(r: &Finished<'_>) {
    // The path only: query strings can carry secrets.
    tracing::info!(
        target: "switchyard::access",
        request_id = r.request_id.to_str().unwrap_or("-"),
        client = r.client.map(tracing::field::display),
        method = r.method.as_str(),
        path = r.uri.path(),
        provider = r.provider,
        migration = r.migration,
        status = r.status,
        outcome = r.outcome.label(),
        class = r.class.label(),
        duration_ms = ms(r.elapsed),
        ttfb_ms = r.ttfb.map(ms),
        bytes = r.bytes,
        model = r.model.unwrap_or("-"),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        failover_from = r.failover.map(|f| f.0),
        failover_status = r.failover.map(|f| f.1),
        detail = r.detail.label(),
        waited_ms = r.detail.waited.map(ms),
    );
}

/// The request as a trace span (OpenTelemetry's HTTP and GenAI attribute names).
#[inline(never)]
pub(crate) fn span(r: &Finished<'_>, ctx: TraceCtx) -> SpanRecord {
    use serde_json::Value;
    let mut attributes: Vec<(&'static str, Value)> = vec![
        ("http.request.method", r.method.as_str().into()),
        ("url.path", r.uri.path().into()),
        ("http.response.status_code", r.status.into()),
        ("switchyard.provider", r.provider.into()),
        ("switchyard.phase", r.phase.into()),
        ("switchyard.outcome", r.outcome.label().into()),
        ("switchyard.class", r.class.label().into()),
        ("gen_ai.usage.input_tokens", r.prompt_tokens.into()),
        ("gen_ai.usage.output_tokens", r.completion_tokens.into()),
    ];
    if let Some(m) = r.model {
        attributes.push(("gen_ai.request.model", m.into()));
    }
    if let Some(m) = r.migration {
        attributes.push(("switchyard.migration", m.into()));
    }
    if let Some(c) = r.cost {
        attributes.push(("switchyard.cost_usd", c.into()));
    }
    if let Some(d) = r.detail.label() {
        attributes.push(("switchyard.detail", d.into()));
    }
    if let Some(w) = r.detail.waited {
        attributes.push(("switchyard.waited_ms", ms(w).into()));
    }
    if let Some((from, status)) = r.failover {
        attributes.push(("switchyard.failover_from", from.into()));
        attributes.push(("switchyard.failover_status", status.into()));
    }
    SpanRecord {
        ctx,
        name: format!("{} {}", r.method, r.uri.path()),
        duration: r.elapsed,
        error: matches!(r.outcome, Outcome::S5xx | Outcome::Timeout | Outcome::Error),
        attributes,
    }
}
