//! What the watchers learned, shared with the control plane and the admin API: the stats,
//! the shadow comparison, provider health, and per migration its phase's clock, its phase
//! gate, its judge's verdict (and the one that tripped a rollback), its last preflight.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_watch::{Compat, HealthTracker, Judgement, Metric, ShadowStats, Stats, Verdict};

use crate::preflight;

/// What the watchers learned, shared with the admin API.
pub struct WatchState {
    /// Every request, by provider.
    pub stats: Mutex<Stats>,
    pub shadow: Mutex<ShadowStats>,
    pub health: Mutex<BTreeMap<String, HealthTracker>>,
    pub(crate) started: Instant,
    /// Per migration, by name.
    migrations: Mutex<BTreeMap<String, MigrationWatch>>,
    /// The stats windows, for migrations seen from now on.
    window: Mutex<(usize, Duration)>,
    /// Label the judgement gauges with the migration (a gateway of several).
    named: std::sync::atomic::AtomicBool,
}

/// One migration, as its watchers see it.
pub struct MigrationWatch {
    /// Its requests, by provider.
    pub stats: Stats,
    /// When the current phase (or rollback) began.
    pub phase_since: SystemTime,
    /// Why the phase gate last waited (auto_advance).
    pub gate: Option<String>,
    /// The judge's current verdict on `to` against `from`.
    pub verdict: Option<Verdict>,
    /// The verdict that caused the automatic rollback in effect, until it is left.
    pub last_failing: Option<Verdict>,
    /// The last preflight of `to`.
    pub preflight: Option<preflight::Report>,
    /// Whether `to` honours what requests ask of their answers as `from` does.
    pub compat: Compat,
}

impl WatchState {
    pub(crate) fn new(window_requests: usize, window: Duration, named: bool) -> WatchState {
        WatchState {
            stats: Mutex::new(Stats::new(window_requests, window)),
            shadow: Mutex::new(ShadowStats::new(window_requests)),
            health: Mutex::default(),
            started: Instant::now(),
            migrations: Mutex::default(),
            window: Mutex::new((window_requests, window)),
            named: std::sync::atomic::AtomicBool::new(named),
        }
    }

    /// Milliseconds on the watchers' clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Migration `name`'s watch (made when first asked for).
    pub fn migration(&self, name: &str) -> impl std::ops::DerefMut<Target = MigrationWatch> + '_ {
        let mut all = lock(&self.migrations);
        if !all.contains_key(name) {
            let (n, w) = *lock(&self.window);
            all.insert(
                name.to_string(),
                MigrationWatch {
                    stats: Stats::new(n, w),
                    phase_since: SystemTime::now(),
                    gate: None,
                    verdict: None,
                    last_failing: None,
                    preflight: None,
                    compat: Compat::default(),
                },
            );
        }
        Entry {
            all,
            name: name.to_string(),
        }
    }

    /// A reload: the stats windows as configured, the judgement gauges labelled or not,
    /// and the watches of migrations that are gone dropped.
    pub(crate) fn configure(
        &self,
        window_requests: usize,
        window: Duration,
        names: &[&str],
        named: bool,
    ) {
        *lock(&self.window) = (window_requests, window);
        lock(&self.stats).set_window(window_requests, window);
        self.named
            .store(named, std::sync::atomic::Ordering::Relaxed);
        let mut all = lock(&self.migrations);
        all.retain(|n, _| names.contains(&n.as_str()));
        for m in all.values_mut() {
            m.stats.set_window(window_requests, window);
        }
    }

    pub fn in_phase_for(&self, name: &str) -> Duration {
        let since = self.migration(name).phase_since;
        SystemTime::now().duration_since(since).unwrap_or_default()
    }

    /// Migration `name` entered a phase (or a rollback) at `at`: its gate and verdict are
    /// of the phase before.
    pub(crate) fn phase_began(&self, name: &str, at: SystemTime) {
        {
            let mut m = self.migration(name);
            m.gate = None;
            m.verdict = None;
            m.phase_since = at;
        }
        self.set_judgement_gauges(name, None);
    }

    pub fn set_gate(&self, name: &str, why: String) {
        self.migration(name).gate = Some(why);
    }

    /// Publishes the judge's verdict on migration `name` (status, stats, and the
    /// `switchyard_judgement` gauges). True when its overall result changed.
    pub fn set_verdict(&self, name: &str, v: &Verdict) -> bool {
        let changed = {
            let mut m = self.migration(name);
            if m.verdict.as_ref() == Some(v) {
                return false;
            }
            let changed = m.verdict.as_ref().map(|c| c.result) != Some(v.result);
            m.verdict = Some(v.clone());
            changed
        };
        if changed {
            tracing::info!(migration = name, result = v.result.label(), reason = %v.reason, "judgement");
        }
        self.set_judgement_gauges(name, Some(v));
        changed
    }

    pub fn verdict(&self, name: &str) -> Option<Verdict> {
        self.migration(name).verdict.clone()
    }

    pub(crate) fn phase_since_unix(&self, name: &str) -> u64 {
        let since = self.migration(name).phase_since;
        since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// `switchyard_judgement{metric, result}` (and `migration`, in a gateway of several):
    /// 1 for each metric's current result (and for `metric="overall"`), 0 for the others;
    /// all 0 while nothing is judged.
    pub(crate) fn set_judgement_gauges(&self, name: &str, v: Option<&Verdict>) {
        let named = self.named.load(std::sync::atomic::Ordering::Relaxed);
        let mut rows: Vec<(&'static str, Option<Judgement>)> =
            vec![("overall", v.map(|v| v.result))];
        for m in Metric::ALL {
            rows.push((m.label(), v.and_then(|v| v.metric(m)).map(|mv| mv.result)));
        }
        for (metric, result) in rows {
            for r in Judgement::ALL {
                let on = if result == Some(r) { 1.0 } else { 0.0 };
                if named {
                    metrics::gauge!(JUDGEMENT, "migration" => name.to_string(), "metric" => metric, "result" => r.label()).set(on);
                } else {
                    metrics::gauge!(JUDGEMENT, "metric" => metric, "result" => r.label()).set(on);
                }
            }
        }
    }
}

pub const JUDGEMENT: &str = "switchyard_judgement";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One migration's watch, held under the lock of them all.
struct Entry<'a> {
    all: MutexGuard<'a, BTreeMap<String, MigrationWatch>>,
    name: String,
}

impl std::ops::Deref for Entry<'_> {
    type Target = MigrationWatch;
    fn deref(&self) -> &MigrationWatch {
        &self.all[&self.name]
    }
}

impl std::ops::DerefMut for Entry<'_> {
    fn deref_mut(&mut self) -> &mut MigrationWatch {
        self.all
            .get_mut(&self.name)
            .expect("made before the entry is handed out")
    }
}
