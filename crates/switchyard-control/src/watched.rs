//! What the watchers learned, shared with the control plane and the admin API: the stats,
//! the shadow comparison, provider health, the phase's clock, the phase gate, the judge's
//! verdict (and the one that tripped a rollback), the last preflight.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_watch::{HealthTracker, Judgement, Metric, ShadowStats, Stats, Verdict};

use crate::preflight;

/// What the watchers learned, shared with the admin API.
pub struct WatchState {
    pub stats: std::sync::Mutex<Stats>,
    pub shadow: std::sync::Mutex<ShadowStats>,
    pub health: std::sync::Mutex<BTreeMap<String, HealthTracker>>,
    pub(crate) started: Instant,
    /// When the current phase (or rollback) began.
    pub(crate) phase_since: std::sync::Mutex<SystemTime>,
    /// Why the phase gate last waited (auto_advance).
    pub(crate) gate: std::sync::Mutex<Option<String>>,
    /// The judge's current verdict on `to` against `from`.
    pub(crate) verdict: std::sync::Mutex<Option<Verdict>>,
    /// The verdict that caused the automatic rollback in effect, until it is left.
    pub(crate) last_failing: std::sync::Mutex<Option<Verdict>>,
    /// The last preflight of `to`.
    pub(crate) preflight: std::sync::Mutex<Option<preflight::Report>>,
}

impl WatchState {
    /// Milliseconds on the watchers' clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn in_phase_for(&self) -> Duration {
        let since = *self.phase_since.lock().unwrap_or_else(|e| e.into_inner());
        SystemTime::now().duration_since(since).unwrap_or_default()
    }

    pub(crate) fn phase_began(&self, at: SystemTime) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = None;
        set_judgement_gauges(None);
        *self.phase_since.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn set_gate(&self, why: String) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Publishes the judge's verdict (status, stats, and the `switchyard_judgement`
    /// gauges). True when its overall result changed.
    pub fn set_verdict(&self, v: &Verdict) -> bool {
        let mut current = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == Some(v) {
            return false;
        }
        let changed = current.as_ref().map(|c| c.result) != Some(v.result);
        if changed {
            tracing::info!(result = v.result.label(), reason = %v.reason, "judgement");
        }
        set_judgement_gauges(Some(v));
        *current = Some(v.clone());
        changed
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn phase_since_unix(&self) -> u64 {
        let since = *self.phase_since.lock().unwrap_or_else(|e| e.into_inner());
        since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

pub const JUDGEMENT: &str = "switchyard_judgement";

/// `switchyard_judgement{metric, result}`: 1 for each metric's current result (and for
/// `metric="overall"`), 0 for the others; all 0 while nothing is judged.
pub(crate) fn set_judgement_gauges(v: Option<&Verdict>) {
    let mut rows: Vec<(&'static str, Option<Judgement>)> = vec![("overall", v.map(|v| v.result))];
    for m in Metric::ALL {
        rows.push((m.label(), v.and_then(|v| v.metric(m)).map(|mv| mv.result)));
    }
    for (metric, result) in rows {
        for r in Judgement::ALL {
            let on = if result == Some(r) { 1.0 } else { 0.0 };
            metrics::gauge!(JUDGEMENT, "metric" => metric, "result" => r.label()).set(on);
        }
    }
}
