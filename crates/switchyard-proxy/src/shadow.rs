//! Shadow traffic: a stable share of the requests `from` serves is mirrored to `to`
//! (`x-switchyard-shadow: 1`), fire-and-forget. The copy never delays, alters or fails the
//! primary: its body is teed as the primary's streams upstream (bounded), it runs on its own
//! task under a concurrency cap (excess is dropped and counted), and its answer is read
//! whole and compared with the primary's when both are done.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::BodyExt;
use serde_json::Value;
use switchyard_core::answer::{BadAnswer, CutShort, Endpoint};
use switchyard_core::event::{Class, ShadowComparison, ShadowEvent};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::answer::JsonAnswer;
use crate::body::{RequestBody, RequestShared, TeeResult};
use crate::snapshot::Snapshot;
use crate::sniff::{text_of_json, SseScan};
use crate::upstream::Worker;

pub static X_SWITCHYARD_SHADOW: HeaderName = HeaderName::from_static("x-switchyard-shadow");

pub const SHADOW_REQUESTS: &str = "switchyard_shadow_requests_total";
pub const SHADOW_COST: &str = "switchyard_shadow_cost_usd_total";
pub const SHADOW_DURATION: &str = "switchyard_shadow_duration_seconds";

pub fn describe() {
    metrics::describe_counter!(
        SHADOW_REQUESTS,
        "Mirrored requests by result (completed, error, timeout, dropped, too_large, aborted)"
    );
    // A gauge to the metrics crate, rendered as a counter (see `crate::metrics::render`).
    metrics::describe_gauge!(
        SHADOW_COST,
        "USD the shadow answers cost, apart from served cost (only grows)"
    );
    metrics::describe_counter!(
        CONTROL_REQUESTS,
        "Requests mirrored to the `from` provider at the last phase as the judge's live control (answers discarded)"
    );
    metrics::counter!(CONTROL_REQUESTS).absolute(0);
    metrics::describe_histogram!(
        SHADOW_DURATION,
        metrics::Unit::Seconds,
        "Whole duration of shadow requests"
    );
    for result in [
        "completed",
        "error",
        "timeout",
        "dropped",
        "too_large",
        "aborted",
    ] {
        metrics::counter!(SHADOW_REQUESTS, "result" => result).absolute(0);
    }
}

/// Lives as long as the gateway: the cap on shadows in flight and where results go.
pub struct ShadowRuntime {
    pub permits: Arc<Semaphore>,
    pub events: mpsc::Sender<ShadowEvent>,
}

impl ShadowRuntime {
    pub fn new(max_concurrent: usize, events: mpsc::Sender<ShadowEvent>) -> Self {
        ShadowRuntime {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            events,
        }
    }

    pub fn report(&self, event: ShadowEvent) {
        metrics::counter!(SHADOW_REQUESTS, "result" => event.result).increment(1);
        let _ = self.events.try_send(event);
    }
}

/// One side's answer, as the comparison needs it.
#[derive(Debug, Clone)]
pub struct SideResult {
    /// Classified as a served answer is: a 2xx with no answer in it is `bad_answer`.
    pub class: Class,
    pub bad_answer: Option<BadAnswer>,
    pub cut_short: Option<CutShort>,
    pub stream: bool,
    /// It went on a connection opened for it.
    pub cold: bool,
    pub status: u16,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub tokens: (u64, u64),
    pub cost: Option<f64>,
    pub content: Option<String>,
}

#[derive(Default)]
struct PairState {
    primary: Option<SideResult>,
    shadow: Option<SideResult>,
    json_asked: bool,
    done: bool,
}

/// Where the primary and its shadow meet; whichever finishes second compares.
pub struct Pair {
    state: Mutex<PairState>,
    runtime: Arc<ShadowRuntime>,
}

impl Pair {
    pub fn new(runtime: Arc<ShadowRuntime>) -> Arc<Pair> {
        Arc::new(Pair {
            state: Mutex::new(PairState::default()),
            runtime,
        })
    }

    pub fn primary(&self, r: SideResult) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.primary = Some(r);
        self.compare_if_ready(&mut s);
    }

    fn shadow(&self, r: SideResult, json_asked: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.shadow = Some(r);
        s.json_asked = json_asked;
        self.compare_if_ready(&mut s);
    }

    fn failed(&self, why: &'static str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.done {
            s.done = true;
            self.runtime.report(ShadowEvent {
                result: why,
                comparison: None,
            });
        }
    }

    fn compare_if_ready(&self, s: &mut PairState) {
        if s.done {
            return;
        }
        let (Some(p), Some(sh)) = (&s.primary, &s.shadow) else {
            return;
        };
        s.done = true;
        self.runtime.report(ShadowEvent {
            result: "completed",
            comparison: Some(compare(p, sh, s.json_asked)),
        });
    }
}

pub fn compare(p: &SideResult, s: &SideResult, json_asked: bool) -> ShadowComparison {
    let (exact_match, similarity) = match (&p.content, &s.content) {
        (Some(a), Some(b)) => (a == b, Some(strsim::sorensen_dice(a, b))),
        _ => (false, None),
    };
    let valid = |c: &Option<String>| {
        json_asked.then(|| {
            c.as_deref()
                .is_some_and(|t| serde_json::from_str::<Value>(t).is_ok())
        })
    };
    ShadowComparison {
        primary_status: p.status,
        shadow_status: s.status,
        primary_class: p.class,
        shadow_class: s.class,
        primary_cut: p.cut_short,
        shadow_cut: s.cut_short,
        primary_latency: p.latency,
        shadow_latency: s.latency,
        primary_ttft: p.ttft,
        shadow_ttft: s.ttft,
        primary_tokens: p.tokens,
        shadow_tokens: s.tokens,
        primary_cost_usd: p.cost,
        shadow_cost_usd: s.cost,
        exact_match,
        similarity,
        primary_json_valid: valid(&p.content),
        shadow_json_valid: valid(&s.content),
    }
}

/// The request asked for JSON output (`response_format` json_object / json_schema).
fn asks_json(body: &Value) -> bool {
    body.pointer("/response_format/type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("json"))
}

/// What the shadow request needs from the primary.
pub struct Mirror {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The model as the client named it, when the body's start was read ahead (the teed
    /// copy then carries the primary provider's name for it).
    pub model: Option<Box<str>>,
}

/// Where a mirrored copy goes, and what becomes of its answer.
pub enum MirrorTo {
    /// A shadow test: to `to`, its answer compared with the primary's.
    Shadow(Arc<Pair>),
    /// The judge's live control at the last phase: to `from`, its outcome counted as one of
    /// `from`'s requests (answer discarded).
    Control {
        /// The request's routing bucket.
        key: u16,
    },
}

impl MirrorTo {
    /// The mirror could not be made or sent. `class`: what it says about the provider it
    /// went to (nothing when the copy failed on this side).
    fn failed(&self, snap: &Snapshot, why: &'static str, class: Option<Class>, took: Duration) {
        match self {
            MirrorTo::Shadow(pair) => pair.failed(why),
            MirrorTo::Control { key } => {
                if let Some(class) = class {
                    control_event(snap, *key, class, took, None);
                }
            }
        }
    }
}

pub const CONTROL_REQUESTS: &str = "switchyard_control_requests_total";

/// One control request's outcome, as an event of `from`'s (the judge's live baseline).
fn control_event(
    snap: &Snapshot,
    key: u16,
    class: Class,
    latency: Duration,
    answer: Option<(&SideResult, Option<&str>)>,
) {
    metrics::counter!(CONTROL_REQUESTS).increment(1);
    let Some(events) = &snap.events else { return };
    let from = snap.config.migration.from;
    let (side, model) = answer.unzip();
    let model = model.flatten();
    let event = switchyard_core::event::RequestEvent {
        provider: snap.upstreams[from].name.clone(),
        epoch: snap.epoch,
        class,
        latency,
        ttfb: side.and_then(|s| s.ttft),
        upload: Duration::ZERO,
        stream: side.is_some_and(|s| s.stream),
        prompt_tokens: side.map_or(0, |s| s.tokens.0),
        completion_tokens: side.map_or(0, |s| s.tokens.1),
        cost_usd: side.and_then(|s| s.cost),
        cost_if_other_usd: None,
        bad_answer: side.and_then(|s| s.bad_answer),
        cut_short: side.and_then(|s| s.cut_short),
        waited: None,
        model: model.map_or(0, switchyard_core::event::model_key),
        key,
        client: None,
        cold: side.is_some_and(|s| s.cold),
        control: true,
    };
    if events.try_send(event).is_err() {
        metrics::counter!(crate::metrics::EVENTS_DROPPED).increment(1);
    }
}

/// Sends the copy once the primary's body has been teed whole — a shadow to `to`, a
/// control to `from` — reads the answer, and hands it on. Holds its concurrency permit
/// until it is done.
pub async fn run(
    snap: Arc<Snapshot>,
    mirror: Mirror,
    body: tokio::sync::oneshot::Receiver<TeeResult>,
    dest: MirrorTo,
    _permit: OwnedSemaphorePermit,
    worker: Worker,
) {
    let fail = |why, class| dest.failed(&snap, why, class, Duration::ZERO);
    let body = match body.await {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return fail(why, None),
        Err(_) => return fail("aborted", None),
    };
    let mut request_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let cfg = &snap.config;
    let target = match dest {
        MirrorTo::Shadow(_) => cfg.migration.to,
        MirrorTo::Control { .. } => cfg.migration.from,
    };
    let up = &snap.upstreams[target];
    // Costs and comparisons use the client's name; the target gets its own name for it.
    let model = mirror.model.as_deref().map(str::to_string).or_else(|| {
        request_json
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut body = body;
    if let Some(m) = &model {
        let name = match cfg.providers[target].model_for(m) {
            switchyard_core::config::ModelRoute::Rename(name) => name,
            switchyard_core::config::ModelRoute::Keep => m.as_str(),
            switchyard_core::config::ModelRoute::Refuse => return fail("error", None),
        };
        if request_json.get("model").and_then(Value::as_str) != Some(name) {
            request_json["model"] = Value::String(name.to_string());
            match serde_json::to_vec(&request_json) {
                Ok(v) => body = bytes::Bytes::from(v),
                Err(_) => return fail("error", None),
            }
        }
    }
    let Ok(uri) = up.uri_for(&mirror.uri) else {
        return fail("error", None);
    };
    let body_len = body.len();
    let endpoint = Endpoint::of(mirror.method == Method::POST, mirror.uri.path());
    let shared = Arc::new(RequestShared::default());
    let mut req = Request::new(Box::new(
        RequestBody::buffered(body, shared.clone()).reading(),
    ));
    *req.method_mut() = mirror.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = mirror.headers;
    let h = req.headers_mut();
    if h.contains_key(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    h.insert(header::HOST, up.host.clone());
    let tag = match dest {
        MirrorTo::Shadow(_) => "1",
        MirrorTo::Control { .. } => "control",
    };
    h.insert(X_SWITCHYARD_SHADOW.clone(), HeaderValue::from_static(tag));
    match &up.auth {
        Some(a) => {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        None => {
            h.remove(header::AUTHORIZATION);
        }
    }

    let start = Instant::now();
    let failed = |why, class| dest.failed(&snap, why, Some(class), start.elapsed());
    let (resp, lease) = match tokio::time::timeout(up.config.timeout, up.send(worker, req)).await {
        Err(_) => return failed("timeout", Class::Timeout),
        Ok(Err(_)) => return failed("error", Class::Connect),
        Ok(Ok(r)) => r,
    };
    let cold = lease.fresh();
    let head_at = start.elapsed();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get(header::CONTENT_TYPE);
    let sse = content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let resp_is_json = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut scan = SseScan::new(false).capturing();
    let mut json = Vec::new();
    let mut body = resp.into_body();
    let mut read: u64 = 0;
    loop {
        match tokio::time::timeout(up.config.idle_timeout, body.frame()).await {
            Err(_) => return failed("timeout", Class::Timeout),
            Ok(None) => {
                lease.release();
                break;
            }
            Ok(Some(Err(_))) => return failed("error", Class::StreamCut),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                read += data.len() as u64;
                if read > cfg.shadow.max_response_bytes {
                    return dest.failed(&snap, "too_large", None, start.elapsed());
                }
                if sse {
                    scan.feed(data);
                } else {
                    json.extend_from_slice(&data);
                }
            }
        }
    }
    let latency = start.elapsed();
    let (usage, facts, content, ttft) = if sse {
        let _ = scan.finish();
        (
            scan.usage(),
            scan.facts(),
            scan.content.take(),
            scan.first_token
                .or(scan.first_event)
                .map(|t| t.duration_since(start)),
        )
    } else {
        let mut answer = JsonAnswer::default();
        answer.feed(&json);
        (
            answer.usage(),
            resp_is_json.then(|| answer.facts()),
            text_of_json(&json),
            Some(head_at),
        )
    };
    let tokens = usage.unwrap_or((0, 0));
    let (class, bad_answer) = Class::of_answer(status, endpoint, sse, facts.as_ref());
    let cut_short = (class == Class::Success)
        .then(|| facts.and_then(|f| f.cut_short(shared.max_tokens(), usage.map(|u| u.1))))
        .flatten();
    let cost = model
        .as_deref()
        .and_then(|m| cfg.providers[target].pricing.cost(m, tokens.0, tokens.1));
    let side = SideResult {
        class,
        bad_answer,
        cut_short,
        status,
        latency,
        ttft,
        tokens,
        cost,
        content,
        stream: sse,
        cold,
    };
    match dest {
        MirrorTo::Shadow(pair) => {
            if let Some(c) = cost {
                metrics::gauge!(SHADOW_COST, "provider" => up.name.to_string()).increment(c);
            }
            metrics::histogram!(SHADOW_DURATION, "provider" => up.name.to_string())
                .record(latency.as_secs_f64());
            pair.shadow(side, asks_json(&request_json));
        }
        MirrorTo::Control { key } => {
            control_event(&snap, key, class, latency, Some((&side, model.as_deref())))
        }
    }
}

/// Whether the request in `bucket` is mirrored to `from` as the live control: the last
/// `control_buckets` of the space, a stable cohort.
pub fn controlled(bucket: u16, control_buckets: u16) -> bool {
    control_buckets > 0 && u32::from(bucket) >= 10_000 - u32::from(control_buckets)
}

/// The part of the bucket space `from` serves that is mirrored: its top `shadow_buckets`
/// per 10000, so the shadow cohort is stable for a phase and shrinks as keys move to `to`.
pub fn mirrored(bucket: u16, to_buckets: u16, shadow_buckets: u16) -> bool {
    let from_span = 10_000u32 - u32::from(to_buckets);
    let threshold = 10_000u32 - from_span * u32::from(shadow_buckets) / 10_000;
    shadow_buckets > 0 && bucket >= to_buckets && u32::from(bucket) >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_share_of_the_from_side() {
        let count = |to, sh| (0..10_000u16).filter(|b| mirrored(*b, to, sh)).count();
        assert_eq!(count(0, 1000), 1000);
        assert_eq!(count(5000, 1000), 500);
        assert_eq!(count(5000, 10_000), 5000);
        assert_eq!(count(10_000, 10_000), 0);
        assert_eq!(count(2500, 0), 0);
        // never a bucket that goes to `to`
        assert!((0..2500u16).all(|b| !mirrored(b, 2500, 10_000)));
    }

    fn answer(content: &str, latency_ms: u64) -> SideResult {
        SideResult {
            class: Class::Success,
            bad_answer: None,
            cut_short: None,
            stream: false,
            cold: false,
            status: 200,
            latency: Duration::from_millis(latency_ms),
            ttft: None,
            tokens: (0, 0),
            cost: None,
            content: Some(content.into()),
        }
    }

    #[test]
    fn comparison() {
        let p = answer("{\"a\": 1}", 100);
        let s = SideResult {
            class: Class::BadAnswer,
            ..answer("{\"a\": 2}", 300)
        };
        let c = compare(&p, &s, true);
        assert!(!c.exact_match);
        assert!(c.similarity.unwrap() > 0.5 && c.similarity.unwrap() < 1.0);
        assert_eq!(c.primary_json_valid, Some(true));
        assert_eq!(
            (c.primary_class, c.shadow_class),
            (Class::Success, Class::BadAnswer)
        );
        let same = compare(&p, &p, false);
        assert!(same.exact_match);
        assert_eq!(same.similarity, Some(1.0));
        assert_eq!(same.shadow_json_valid, None);
    }
}
