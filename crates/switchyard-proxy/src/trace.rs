//! OpenTelemetry traces, opt-in (`tracing.otlp_endpoint`): one span per client request
//! with its provider, phase, model, tokens and outcome, continuing the client's W3C
//! `traceparent` and passing the gateway's span upstream as the provider's parent.
//!
//! Spans are built from what the exchange accounts anyway, queued without waiting (a full
//! queue drops the span, counted) and sent in batches as OTLP/HTTP JSON by one task. The
//! OTLP JSON encoding is a few plain objects; the OpenTelemetry SDK and its gRPC stack
//! would more than double the gateway's build for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Spans waiting for the exporter; more are dropped.
const QUEUE: usize = 4096;
/// At most this many spans per export request.
const BATCH: usize = 512;

/// The request's place in a trace.
#[derive(Debug, Clone, Copy)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    pub start: SystemTime,
}

impl TraceCtx {
    /// Continues the client's `traceparent`, or starts a trace.
    pub fn start(client: Option<&HeaderValue>) -> TraceCtx {
        let random = uuid::Uuid::new_v4().into_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&random[..8]);
        match client.and_then(|v| parse_traceparent(v.as_bytes())) {
            Some((trace_id, parent, flags)) => TraceCtx {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
                start: SystemTime::now(),
            },
            None => TraceCtx {
                trace_id: uuid::Uuid::new_v4().into_bytes(),
                span_id,
                parent: None,
                flags: 1,
                start: SystemTime::now(),
            },
        }
    }

    /// The `traceparent` the provider gets: this trace, the gateway's span as its parent.
    pub fn header(&self) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        );
        HeaderValue::from_str(&v).expect("hex digits are a valid header value")
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (W3C Trace Context); all-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    unhex(trace, &mut trace_id)?;
    unhex(span, &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, flags))
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One finished request, as a span.
#[derive(Debug)]
pub struct SpanRecord {
    pub ctx: TraceCtx,
    pub name: String,
    pub duration: Duration,
    pub error: bool,
    pub attributes: Vec<(&'static str, Value)>,
}

impl SpanRecord {
    fn to_otlp(&self) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                .to_string()
        };
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => json!({"stringValue": s}),
                    Value::Number(n) if n.is_u64() || n.is_i64() => {
                        json!({"intValue": n.to_string()})
                    }
                    Value::Number(n) => json!({"doubleValue": n}),
                    Value::Bool(b) => json!({"boolValue": b}),
                    other => json!({"stringValue": other.to_string()}),
                };
                json!({"key": k, "value": value})
            })
            .collect();
        let mut span = json!({
            "traceId": hex(&self.ctx.trace_id),
            "spanId": hex(&self.ctx.span_id),
            "name": self.name,
            "kind": 2,
            "startTimeUnixNano": nanos(self.ctx.start),
            "endTimeUnixNano": nanos(self.ctx.start + self.duration),
            "attributes": attributes,
            "status": {"code": if self.error { 2 } else { 1 }},
        });
        if let Some(p) = self.ctx.parent {
            span["parentSpanId"] = json!(hex(&p));
        }
        span
    }
}

/// Where the data plane puts finished spans.
#[derive(Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
}

impl SpanSink {
    /// Queues `span` without waiting; a full queue drops it (counted).
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            metrics::counter!("switchyard_spans_dropped_total").increment(1);
        }
    }
}

/// A sink, and the task that exports what reaches it to `endpoint` (`…/v1/traces`).
pub fn exporter(
    endpoint: &str,
    service_name: &str,
) -> (
    SpanSink,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    metrics::describe_counter!(
        "switchyard_spans_dropped_total",
        "Trace spans not exported: the queue was full or the collector refused them"
    );
    metrics::counter!("switchyard_spans_dropped_total").absolute(0);
    let (tx, mut rx) = mpsc::channel::<SpanRecord>(QUEUE);
    let url = format!("{endpoint}/v1/traces");
    let service = service_name.to_string();
    let task = async move {
        let Ok(client) = switchyard_http::client(2, None) else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Wait for one span, then take what else arrives within a second.
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while batch.len() < BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let body = json!({"resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "switchyard"}, "spans": batch.iter().map(SpanRecord::to_otlp).collect::<Vec<_>>()}],
            }]});
            let n = batch.len() as u64;
            batch.clear();
            let req = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )));
            let sent = match req {
                Ok(req) => matches!(
                    tokio::time::timeout(Duration::from_secs(10), client.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success()
                ),
                Err(_) => false,
            };
            if !sent {
                metrics::counter!("switchyard_spans_dropped_total").increment(n);
                tracing::debug!(spans = n, url = %url, "trace export failed");
            }
        }
    };
    (SpanSink { tx }, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_bad_ones() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(v).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            b"garbage",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let ctx = TraceCtx::start(Some(&HeaderValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )));
        let h = ctx.header();
        let (t2, s2, _) = parse_traceparent(h.as_bytes()).unwrap();
        assert_eq!(t2, t, "same trace");
        assert_ne!(s2, s, "the gateway's own span");
        assert_eq!(ctx.parent, Some(s));
        assert!(TraceCtx::start(None).parent.is_none());
    }
}
