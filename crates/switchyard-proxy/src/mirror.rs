//! Mirrored requests: a copy of a client's request, sent from its own task once the body
//! has been teed whole — a shadow test to `to`, compared with the primary's answer, or the
//! judge's live control to `from` at the last phase, counted as one of `from`'s requests.
//! The copy never delays, alters or fails the primary: its body is teed as the primary's
//! streams upstream (bounded), it runs under a concurrency cap (excess is dropped), and
//! its answer is read whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::BodyExt;
use serde_json::Value;
use switchyard_core::answer::Endpoint;
use switchyard_core::event::{BodyEnd, Class, ShadowEvent};
use switchyard_core::features::FeatureFacts;
use switchyard_core::router::{Router, Side};
use switchyard_core::ErrorKind;
use tokio::sync::OwnedSemaphorePermit;

use crate::answer::JsonAnswer;
use crate::features::AnswerDetails;
use crate::headers::{X_REQUEST_ID, X_SWITCHYARD_SHADOW};
use crate::metrics::SHADOW_COST;
use crate::request_body::{RequestBody, RequestShared, Tee, TeeResult};
use crate::route::Route;
use crate::shadow::{Pair, SideResult, CONTROL_REQUESTS, SHADOW_DURATION};
use crate::snapshot::Snapshot;
use crate::sniff::SseScan;
use crate::upstream::{Sent, Worker};

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
    /// The migration whose sides the copy goes between (an index into the snapshot's).
    pub migration: usize,
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
    fn failed(
        &self,
        snap: &Snapshot,
        migration: usize,
        worker: Worker,
        why: &'static str,
        class: Option<Class>,
        took: Duration,
    ) {
        match self {
            MirrorTo::Shadow(pair) => pair.failed(why),
            MirrorTo::Control { key } => {
                if let Some(class) = class {
                    control_event(snap, migration, worker, *key, class, took, None);
                }
            }
        }
    }
}

/// One control request's outcome, as an event of `from`'s (the judge's live baseline), on
/// `worker`'s queue.
fn control_event(
    snap: &Snapshot,
    migration: usize,
    worker: Worker,
    key: u16,
    class: Class,
    latency: Duration,
    answer: Option<(&SideResult, Option<&str>)>,
) {
    metrics::counter!(CONTROL_REQUESTS).increment(1);
    let Some(events) = &snap.events else { return };
    let from = snap.config.migrations[migration].from;
    let (side, model) = answer.unzip();
    let model = model.flatten();
    let event = switchyard_core::event::RequestEvent {
        provider: snap.upstreams[from].name.clone(),
        migration: Some(migration as u16),
        epoch: snap.migrations[migration].epoch,
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
        features: side.map(|s| s.features).unwrap_or_default(),
        unmetered: false,
    };
    if events.of(worker).try_send(event).is_err() {
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
    let migration = mirror.migration;
    let fail = |why, class| dest.failed(&snap, migration, worker, why, class, Duration::ZERO);
    let body = match body.await {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return fail(why, None),
        Err(_) => return fail("aborted", None),
    };
    let mut request_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let cfg = &snap.config;
    let target = match dest {
        MirrorTo::Shadow(_) => cfg.migrations[migration].to,
        MirrorTo::Control { .. } => cfg.migrations[migration].from,
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
    let body_len = body.len();
    let endpoint = Endpoint::of(mirror.method == Method::POST, mirror.uri.path());
    let shared = Arc::new(RequestShared::default());
    let mut body = Box::new(RequestBody::buffered(body, shared.clone()));
    body.start_reading();
    let mut req = Request::new(body);
    *req.method_mut() = mirror.method;
    *req.headers_mut() = mirror.headers;
    let Ok(mut req) = up.prepare(req, &mirror.uri) else {
        return fail("error", None);
    };
    let h = req.headers_mut();
    if h.contains_key(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    let tag = match dest {
        MirrorTo::Shadow(_) => "1",
        MirrorTo::Control { .. } => "control",
    };
    h.insert(X_SWITCHYARD_SHADOW.clone(), HeaderValue::from_static(tag));

    let start = Instant::now();
    let failed =
        |why, class| dest.failed(&snap, migration, worker, why, Some(class), start.elapsed());
    let sent = tokio::time::timeout(up.config.timeout, up.send(worker, req, false)).await;
    let Sent { resp, lease, .. } = match sent {
        Err(_) => return failed("timeout", ErrorKind::UpstreamTimeout.class()),
        Ok(Err(_)) => return failed("error", ErrorKind::UpstreamConnect.class()),
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
            Err(_) => return failed("timeout", BodyEnd::Idle.class()),
            Ok(None) => {
                lease.release();
                break;
            }
            Ok(Some(Err(_))) => return failed("error", BodyEnd::Broken.class()),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                read += data.len() as u64;
                if read > cfg.shadow.max_response_bytes {
                    return dest.failed(
                        &snap,
                        migration,
                        worker,
                        "too_large",
                        None,
                        start.elapsed(),
                    );
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
    let (usage, facts, details, ttft) = if sse {
        let _ = scan.finish();
        (
            scan.usage(),
            scan.facts(),
            scan.details.take(),
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
            AnswerDetails::of_json(&json).map(Box::new),
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
    let features = match (class, shared.asked()) {
        (Class::Success, Some(asked)) => {
            // The teed body is what the primary sent, usage ask included: judged as asked.
            crate::features::judge(
                asked,
                endpoint,
                false,
                facts.as_ref(),
                usage.is_some(),
                details.as_deref(),
            )
        }
        _ => FeatureFacts::default(),
    };
    let side = SideResult {
        class,
        bad_answer,
        cut_short,
        status,
        latency,
        ttft,
        tokens,
        cost,
        content: details.map(|d| d.content),
        features,
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
        MirrorTo::Control { key } => control_event(
            &snap,
            migration,
            worker,
            key,
            class,
            latency,
            Some((&side, model.as_deref())),
        ),
    }
}

/// The mirror of this request, if it is in a mirrored cohort: a shadow of what `from`
/// serves, or at the last phase the live control of what `to` serves. Spawns the copy's
/// task and answers the tee the body must feed, and the pair the primary's answer meets
/// (shadows).
pub(crate) fn start(
    snap: &Arc<Snapshot>,
    route: &Route,
    parts: &http::request::Parts,
    model: Option<&str>,
    worker: Worker,
) -> (Option<Tee>, Option<Arc<Pair>>) {
    let Some(migration) = route.migration else {
        return (None, None);
    };
    let (m, live) = (
        &snap.config.migrations[migration],
        &snap.migrations[migration],
    );
    let (side, bucket) = (route.side, route.bucket);
    let shadowed = side == Side::From
        && m.from != m.to
        && Router::mirrored(bucket, live.to_buckets, m.shadow_buckets);
    let controlled = side == Side::To && Router::controlled(bucket, live.control_buckets);
    let Some(rt) = snap.shadow.as_ref().filter(|_| shadowed || controlled) else {
        return (None, None);
    };
    let Ok(permit) = rt.permits.clone().try_acquire_owned() else {
        if shadowed {
            rt.report(ShadowEvent {
                result: "dropped",
                migration: Some(migration as u16),
                comparison: None,
            });
        }
        return (None, None);
    };
    let (tee, rx) = Tee::new(snap.config.shadow.max_body_bytes);
    let mirror = Mirror {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        model: model.map(Box::from),
        migration,
    };
    let (dest, pair) = if shadowed {
        let id = parts
            .headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let pair = Pair::new(rt.clone(), id.to_string(), migration as u16);
        (MirrorTo::Shadow(pair.clone()), Some(pair))
    } else {
        (MirrorTo::Control { key: bucket }, None)
    };
    tokio::spawn(run(snap.clone(), mirror, rx, dest, permit, worker));
    (Some(tee), pair)
}
