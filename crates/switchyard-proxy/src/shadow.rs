//! Shadow traffic: a stable share of the requests `from` serves is mirrored to `to`
//! (`x-switchyard-shadow: 1`, sent by the mirror module), fire-and-forget, and its answer
//! compared with the primary's when both are done ([`Pair`]). Which share is mirrored, and
//! at the last phase which share of `to`'s goes to `from` as the judge's live control, are
//! routing rules ([`Router::mirrored`], [`Router::controlled`]).
//!
//! [`Router::mirrored`]: switchyard_core::router::Router::mirrored
//! [`Router::controlled`]: switchyard_core::router::Router::controlled

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use switchyard_core::answer::{BadAnswer, CutShort};
use switchyard_core::event::{Class, ShadowComparison, ShadowEvent};
use switchyard_core::features::FeatureFacts;
use tokio::sync::{mpsc, Semaphore};

use crate::metrics::SHADOW_COST;

pub const SHADOW_REQUESTS: &str = "switchyard_shadow_requests_total";
pub const SHADOW_DURATION: &str = "switchyard_shadow_duration_seconds";
pub const CONTROL_REQUESTS: &str = "switchyard_control_requests_total";

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
    pub features: FeatureFacts,
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
    /// The request's id, shown as an example of what differed.
    request_id: String,
    migration: u16,
}

impl Pair {
    pub fn new(runtime: Arc<ShadowRuntime>, request_id: String, migration: u16) -> Arc<Pair> {
        Arc::new(Pair {
            state: Mutex::new(PairState::default()),
            runtime,
            request_id,
            migration,
        })
    }

    pub fn primary(&self, r: SideResult) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.primary = Some(r);
        self.compare_if_ready(&mut s);
    }

    pub(crate) fn shadow(&self, r: SideResult, json_asked: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.shadow = Some(r);
        s.json_asked = json_asked;
        self.compare_if_ready(&mut s);
    }

    pub(crate) fn failed(&self, why: &'static str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.done {
            s.done = true;
            self.runtime.report(ShadowEvent {
                result: why,
                migration: Some(self.migration),
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
            migration: Some(self.migration),
            comparison: Some(ShadowComparison {
                request_id: self.request_id.clone(),
                ..compare(p, sh, s.json_asked)
            }),
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
        primary_features: p.features,
        shadow_features: s.features,
        request_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            features: FeatureFacts::default(),
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
