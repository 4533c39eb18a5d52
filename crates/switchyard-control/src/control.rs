//! The control plane: loading and reloading the config, the migration state and its
//! persistence, and the admin API's view of it all.
//!
//! Writers (reloads, phase changes, rollbacks) take one async mutex so that two of them
//! never interleave; the data plane never takes it: it only loads the snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_admin::{AdminError, AdminHandle, AdminResult};
use switchyard_core::event::{RequestEvent, ShadowEvent};

use crate::cluster::{Cluster, SharedState, WriteError};
use crate::preflight;
use switchyard_core::migration::{NamedState, TransitionError};
use switchyard_core::{Config, MigrationState, Trigger};
use switchyard_proxy::shadow::ShadowRuntime;
use switchyard_proxy::Sinks;
use switchyard_proxy::{Gateway, Snapshot};
use switchyard_watch::{
    Alert, Alerter, HealthTracker, Judgement, Metric, ShadowStats, Stats, Verdict,
};
use tokio::sync::{mpsc, watch, Mutex};

/// `<config>.state.json`: the phase an operator set through the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedState {
    #[serde(flatten)]
    pub state: NamedState,
    /// The file's `phase:` when this was written: if the file's value differs at the next
    /// load, the operator edited it since, and the file wins.
    pub file_phase: String,
    pub updated_at_unix: u64,
    /// When the current phase began (holds count from here, across restarts).
    #[serde(default)]
    pub entered_at_unix: Option<u64>,
}

pub fn state_path(config: &Path) -> PathBuf {
    let mut s = config.as_os_str().to_owned();
    s.push(".state.json");
    PathBuf::from(s)
}

fn read_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

struct Writer {
    /// The config file's bytes as last loaded, to tell real changes from touch events.
    last_text: Vec<u8>,
    file_phase: String,
}

pub struct Control {
    path: PathBuf,
    state_path: PathBuf,
    gateway: Arc<Gateway>,
    prometheus: PrometheusHandle,
    writer: Mutex<Writer>,
    shutting_down: AtomicBool,
    pub alerter: Alerter,
    pub watch: WatchState,
    /// Cluster mode: the shared migration state in etcd.
    pub cluster: Option<Arc<Cluster>>,
}

/// What the watchers learned, shared with the admin API.
pub struct WatchState {
    pub stats: std::sync::Mutex<Stats>,
    pub shadow: std::sync::Mutex<ShadowStats>,
    pub health: std::sync::Mutex<BTreeMap<String, HealthTracker>>,
    started: Instant,
    /// When the current phase (or rollback) began.
    phase_since: std::sync::Mutex<SystemTime>,
    /// Why the phase gate last waited (auto_advance).
    gate: std::sync::Mutex<Option<String>>,
    /// The judge's current verdict on `to` against `from`.
    verdict: std::sync::Mutex<Option<Verdict>>,
    /// The last preflight of `to`.
    preflight: std::sync::Mutex<Option<preflight::Report>>,
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

    fn phase_began(&self, at: SystemTime) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = None;
        set_judgement_gauges(None);
        *self.phase_since.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn set_gate(&self, why: String) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Publishes the judge's verdict (status, stats, and the `switchyard_judgement` gauges).
    pub fn set_verdict(&self, v: &Verdict) {
        let mut current = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == Some(v) {
            return;
        }
        if current.as_ref().map(|c| c.result) != Some(v.result) {
            tracing::info!(result = v.result.label(), reason = %v.reason, "judgement");
        }
        set_judgement_gauges(Some(v));
        *current = Some(v.clone());
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn phase_since_unix(&self) -> u64 {
        let since = *self.phase_since.lock().unwrap_or_else(|e| e.into_inner());
        since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

pub const JUDGEMENT: &str = "switchyard_judgement";

/// `switchyard_judgement{metric, result}`: 1 for each metric's current result (and for
/// `metric="overall"`), 0 for the others; all 0 while nothing is judged.
fn set_judgement_gauges(v: Option<&Verdict>) {
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

fn webhook_url(config: &Config) -> Option<String> {
    config
        .alerts
        .as_ref()
        .and_then(|a| read_env(&a.webhook_url_env))
        .filter(|u| !u.is_empty())
}

fn cooldown(config: &Config) -> Duration {
    config
        .alerts
        .as_ref()
        .map_or(Duration::from_secs(300), |a| a.cooldown)
}

/// Why a reload happened (log field).
#[derive(Debug, Clone, Copy)]
pub enum ReloadCause {
    Signal,
    FileChange,
    Admin,
}

impl Control {
    /// Loads the config and the persisted state, builds the first snapshot.
    pub fn start(
        path: PathBuf,
        prometheus: PrometheusHandle,
        events: mpsc::Sender<RequestEvent>,
        shadow_events: mpsc::Sender<ShadowEvent>,
        stop: watch::Receiver<bool>,
    ) -> Result<(Control, Arc<Config>), String> {
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config = Arc::new(parse(&text, &path).map_err(|e| e.join("\n"))?);
        let state_path = state_path(&path);
        let (state, entered_at) = initial_state(&config, &state_path);
        let (snapshot, warnings) = Snapshot::build(config.clone(), 1, state, 0, &read_env, None)
            .map_err(|e| e.to_string())?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let shadow = ShadowRuntime::new(config.shadow.max_concurrent, shadow_events);
        let gateway = Arc::new(Gateway::new(
            snapshot,
            Sinks {
                events: Some(events),
                shadow: Some(Arc::new(shadow)),
            },
        ));
        let alerter = Alerter::start(webhook_url(&config), cooldown(&config), stop);
        let watch = WatchState {
            stats: std::sync::Mutex::new(Stats::new(
                config.stats.window_requests,
                config.stats.window,
            )),
            health: std::sync::Mutex::new(BTreeMap::new()),
            shadow: std::sync::Mutex::new(ShadowStats::new(config.stats.window_requests)),
            started: Instant::now(),
            phase_since: std::sync::Mutex::new(entered_at.unwrap_or_else(SystemTime::now)),
            gate: std::sync::Mutex::new(None),
            verdict: std::sync::Mutex::new(None),
            preflight: std::sync::Mutex::new(None),
        };
        set_judgement_gauges(None);
        let control = Control {
            path,
            state_path,
            gateway,
            prometheus,
            writer: Mutex::new(Writer {
                last_text: text,
                file_phase: config.migration.file_phase.clone(),
            }),
            shutting_down: AtomicBool::new(false),
            alerter,
            watch,
            cluster: match &config.cluster {
                Some(c) => Some(Arc::new(Cluster::new(c)?)),
                None => None,
            },
        };
        Ok((control, config))
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Re-reads the file; `only_if_changed` skips it when the bytes are the same (file watch).
    pub async fn reload(
        &self,
        cause: ReloadCause,
        only_if_changed: bool,
    ) -> Result<u64, Vec<String>> {
        let mut w = self.writer.lock().await;
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("{}: {e}", self.path.display());
                return Err(self.reload_failed(cause, vec![msg]));
            }
        };
        if only_if_changed && text == w.last_text {
            return Ok(self.gateway.load().config_version);
        }
        let config = match parse(&text, &self.path) {
            Ok(c) => Arc::new(c),
            Err(errs) => return Err(self.reload_failed(cause, errs)),
        };
        let current = self.gateway.load();
        if config.listen != current.config.listen
            || config.admin.listen != current.config.admin.listen
            || config.tls != current.config.tls
        {
            tracing::warn!("listen, admin.listen and tls changes take effect at the next restart");
        }
        let file_changed_phase = config.migration.file_phase != w.file_phase;
        let state = if file_changed_phase {
            // Editing `phase:` in the file overrides what the admin API set.
            config.migration.file_state.clone()
        } else {
            carry_state(&current, &config)
        };
        let version = current.config_version + 1;
        let state_changed = state != current.state;
        let epoch = if state_changed {
            current.epoch + 1
        } else {
            current.epoch
        };
        let (snapshot, warnings) = match Snapshot::build(
            config.clone(),
            version,
            state.clone(),
            epoch,
            &read_env,
            Some(&current),
        ) {
            Ok(s) => s,
            Err(e) => return Err(self.reload_failed(cause, vec![e.to_string()])),
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        if let Err(e) = self.preflight(&snapshot, &current.state, &state).await {
            return Err(self.reload_failed(cause, vec![e.message]));
        }
        if state_changed {
            self.watch.phase_began(SystemTime::now());
        }
        if let (true, Some(c)) = (file_changed_phase, &self.cluster) {
            let shared = SharedState::of(&state, &config.migration.phases, &c.replica_id);
            if let Err(e) = c.write(&shared).await {
                tracing::warn!(error = ?e, "the config file's phase could not be shared through etcd");
            }
        }
        if file_changed_phase {
            if let Err(e) = self.persist(&config, &state) {
                tracing::error!(error = %e, "cannot persist the migration state");
            }
        }
        let rolled_back_now = state.rolled_back && !current.state.rolled_back;
        self.gateway.store(snapshot);
        w.last_text = text;
        w.file_phase = config.migration.file_phase.clone();
        metrics::counter!("switchyard_config_reloads_total", "result" => "ok").increment(1);
        self.alerter
            .configure(webhook_url(&config), cooldown(&config));
        self.watch
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_window(config.stats.window_requests, config.stats.window);
        tracing::info!(
            ?cause,
            config_version = version,
            phase = state.phase_name(&config.migration.phases),
            "config reloaded"
        );
        if rolled_back_now {
            metrics::counter!("switchyard_rollbacks_total", "trigger" => "config").increment(1);
            let from = &config.providers[config.migration.from].name;
            self.alerter.send(Alert {
                event: "rollback",
                provider: Some(config.providers[config.migration.to].name.clone()),
                phase: Some("rollback".into()),
                text: format!("ROLLBACK by config file: 100% of traffic to `{from}`"),
                ..Alert::default()
            });
        } else if state_changed {
            self.alert_phase(&config, &state, "config file");
        }
        Ok(version)
    }

    fn reload_failed(&self, cause: ReloadCause, errors: Vec<String>) -> Vec<String> {
        metrics::counter!("switchyard_config_reloads_total", "result" => "error").increment(1);
        for e in &errors {
            tracing::error!(
                ?cause,
                "config refused, the running config keeps serving: {e}"
            );
        }
        errors
    }

    fn persist(&self, config: &Config, state: &MigrationState) -> std::io::Result<()> {
        let p = PersistedState {
            state: NamedState::of(state, &config.migration.phases),
            file_phase: config.migration.file_phase.clone(),
            updated_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            entered_at_unix: Some(self.watch.phase_since_unix()),
        };
        let body = serde_json::to_vec_pretty(&p).map_err(std::io::Error::other)?;
        // Write beside, then rename: a crash never leaves half a file.
        let tmp = {
            let mut s = self.state_path.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &self.state_path)
    }

    /// Probes `to` when `next` is the first state to send it traffic (from a rollback or a
    /// 0% phase); a refusal stops the move with 409 and is kept in status and alerted.
    async fn preflight(
        &self,
        snap: &Snapshot,
        current: &MigrationState,
        next: &MigrationState,
    ) -> Result<(), AdminError> {
        let m = &snap.config.migration;
        if !m.preflight.enabled
            || current.to_buckets(&m.phases) > 0
            || next.to_buckets(&m.phases) == 0
        {
            return Ok(());
        }
        let provider = &snap.config.providers[m.to];
        let models: Vec<String> = provider.pricing.models.keys().cloned().collect();
        let report = preflight::run(
            &snap.upstreams[m.to],
            &models,
            &snap.config.health_check.path,
            m.preflight.timeout,
        )
        .await;
        let summary = report.summary();
        let ok = report.ok;
        *self
            .watch
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(report);
        if ok {
            tracing::info!("{summary}");
            return Ok(());
        }
        tracing::warn!("{summary}; traffic was not moved");
        self.alerter.send(Alert {
            event: "preflight",
            provider: Some(provider.name.clone()),
            phase: Some(next.phase_name(&m.phases).to_string()),
            text: format!("PREFLIGHT refused: {summary}; traffic was not moved"),
            ..Alert::default()
        });
        Err(AdminError::new(
            409,
            format!("{summary}; traffic was not moved (fix the provider and try again, or skip the check with \"skip_preflight\": true)"),
        ))
    }

    /// Applies a state change: persisted first, then live, then announced.
    /// `by` says who asked (`admin`, `auto`), for logs and alerts.
    async fn transition(
        &self,
        by: &str,
        skip_preflight: bool,
        f: impl FnOnce(&Snapshot) -> Result<MigrationState, AdminError>,
    ) -> Result<Arc<Snapshot>, AdminError> {
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        let next = f(&current)?;
        if !skip_preflight {
            self.preflight(&current, &current.state, &next).await?;
        }
        if let Some(c) = &self.cluster {
            let shared = SharedState::of(&next, &current.config.migration.phases, &c.replica_id);
            match c.write(&shared).await {
                Ok(()) => {}
                Err(WriteError::Conflict) => {
                    return Err(AdminError::new(409, "another replica changed the migration state first; look at /admin/status and try again"));
                }
                Err(WriteError::Unavailable(e)) => {
                    return Err(AdminError::new(503, format!("the shared migration state cannot be changed now ({e}); this replica keeps serving on the last state it knew")));
                }
            }
        }
        let before = self.watch.phase_since_unix();
        self.watch.phase_began(SystemTime::now());
        if let Err(e) = self.persist(&current.config, &next) {
            self.watch
                .phase_began(UNIX_EPOCH + Duration::from_secs(before));
            return Err(AdminError::new(
                500,
                format!(
                    "cannot persist the migration state to {}: {e}",
                    self.state_path.display()
                ),
            ));
        }
        self.gateway.store(current.with_state(next));
        let s = self.gateway.load();
        tracing::info!(
            by,
            phase = s.state.phase_name(&s.config.migration.phases),
            percent = s.percent(),
            rolled_back = s.state.rolled_back,
            "migration state changed"
        );
        if !s.state.rolled_back {
            self.alert_phase(&s.config, &s.state, by);
        }
        Ok(s)
    }

    /// Cluster mode at start: adopt the shared state, or publish ours when there is none.
    pub async fn join_cluster(&self) {
        let Some(c) = &self.cluster else { return };
        match c.read().await {
            Ok(Some(_)) => {
                self.sync_from_cluster(c).await;
            }
            Ok(None) => {
                let s = self.gateway.load();
                let shared = SharedState::of(&s.state, &s.config.migration.phases, &c.replica_id);
                match c.write(&shared).await {
                    Ok(()) => {
                        c.set_healthy(true);
                        tracing::info!(replica = %c.replica_id, "published the migration state to etcd (first replica)");
                    }
                    Err(_) => {
                        self.sync_from_cluster(c).await;
                    }
                }
            }
            Err(e) => {
                c.set_healthy(false);
                tracing::warn!(error = %e, "etcd unreachable at start: serving on the config file's phase until it answers");
                self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` started while etcd was unreachable: serving on the file's phase", c.replica_id), ..Alert::default() });
            }
        }
    }

    /// Applies the shared state if it changed; false while etcd cannot be reached.
    pub async fn sync_from_cluster(&self, c: &Cluster) -> bool {
        let read = c.read().await;
        let (shared, revision) = match read {
            Err(e) => {
                if c.set_healthy(false) {
                    tracing::warn!(error = %e, "etcd unreachable: serving on the last known migration state");
                    self.alerter.send(Alert { event: "cluster", metric: Some("etcd".into()), value: Some(0.0), text: format!("replica `{}` lost etcd: serving on the last known state; admin writes answer 503", c.replica_id), ..Alert::default() });
                }
                return false;
            }
            Ok(None) => {
                c.set_healthy(true);
                return true;
            }
            Ok(Some(x)) => x,
        };
        if c.set_healthy(true) {
            tracing::info!("etcd reachable again: resynced the migration state");
            self.alerter.send(Alert {
                event: "cluster",
                metric: Some("etcd".into()),
                value: Some(1.0),
                text: format!("replica `{}` reached etcd again", c.replica_id),
                ..Alert::default()
            });
        }
        if revision == c.revision.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        match shared.state.resolve(&current.config.migration.phases) {
            Some(state) if state != current.state => {
                let was_rolled_back = current.state.rolled_back;
                self.watch.phase_began(SystemTime::now());
                if let Err(e) = self.persist(&current.config, &state) {
                    tracing::warn!(error = %e, "cannot persist the shared migration state locally");
                }
                self.gateway.store(current.with_state(state.clone()));
                tracing::info!(from_replica = %shared.changed_by, phase = state.phase_name(&current.config.migration.phases), rolled_back = state.rolled_back, "applied the shared migration state");
                if state.rolled_back && !was_rolled_back {
                    tracing::warn!(from_replica = %shared.changed_by, "ROLLBACK through the cluster: 100% of traffic to `from`");
                }
            }
            Some(_) => {}
            None => {
                tracing::warn!(phase = ?shared.state.phase, "the shared phase does not exist in this replica's config; keeping the current state")
            }
        }
        c.set_revision(revision);
        true
    }

    fn alert_phase(&self, config: &Config, state: &MigrationState, by: &str) {
        let m = &config.migration;
        let name = state.phase_name(&m.phases).to_string();
        let percent = f64::from(state.to_buckets(&m.phases)) / 100.0;
        self.alerter.send(Alert {
            event: "phase_change",
            provider: Some(config.providers[m.to].name.clone()),
            phase: Some(name.clone()),
            metric: Some("percent".into()),
            value: Some(percent),
            text: format!(
                "phase {name}: {percent}% of traffic to `{}` (by {by})",
                config.providers[m.to].name
            ),
            ..Alert::default()
        });
    }

    async fn rollback_by(
        &self,
        trigger: Trigger,
        reason: String,
        metric: Option<(&str, f64, f64)>,
    ) -> Result<Arc<Snapshot>, AdminError> {
        let s = self
            .transition(trigger.as_str(), true, |s| {
                Ok(s.state.rollback(reason.clone(), trigger))
            })
            .await?;
        metrics::counter!("switchyard_rollbacks_total", "trigger" => trigger.as_str()).increment(1);
        let m = &s.config.migration;
        let from = &s.config.providers[m.from].name;
        self.alerter.send(Alert {
            event: "rollback",
            provider: Some(s.config.providers[m.to].name.clone()),
            phase: Some("rollback".into()),
            metric: metric.map(|(n, ..)| n.to_string()),
            value: metric.map(|(_, v, _)| v),
            threshold: metric.map(|(.., t)| t),
            text: format!(
                "ROLLBACK ({}): 100% of traffic to `{from}`: {reason}",
                trigger.as_str()
            ),
        });
        Ok(s)
    }

    /// The judge failed `to`. A no-op when already rolled back.
    pub async fn auto_rollback(&self, epoch: u64, verdict: &Verdict) {
        let s = self.gateway.load();
        if s.state.rolled_back || s.epoch != epoch {
            return;
        }
        let reason = verdict.reason.clone();
        let failed = verdict.failed();
        let metric = failed.map(|f| {
            (
                f.metric.label(),
                f.to_value.unwrap_or(0.0),
                f.absolute_limit.or(f.allowed).unwrap_or(0.0),
            )
        });
        let mut result = self
            .rollback_by(Trigger::Auto, reason.clone(), metric)
            .await;
        // Cluster mode: another replica changed the state first. Fail safe: take its state,
        // and roll back on top of it unless it already is a rollback.
        if let (Err(e), Some(c)) = (&result, &self.cluster) {
            if e.status == 409 {
                self.sync_from_cluster(c).await;
                if !self.gateway.load().state.rolled_back {
                    result = self.rollback_by(Trigger::Auto, reason, metric).await;
                } else {
                    result = Ok(self.gateway.load());
                }
            }
        }
        if let Err(e) = result {
            tracing::error!(error = %e.message, "automatic rollback could not be applied; traffic was not moved");
        }
    }

    /// The phase gate opened: advance one phase, if the state is still the one judged.
    pub async fn auto_advance(&self, epoch: u64) {
        let r = self
            .transition("auto", false, |s| {
                if s.epoch != epoch {
                    return Err(AdminError::new(
                        409,
                        "the state changed while it was judged",
                    ));
                }
                s.state
                    .next(&s.config.migration.phases)
                    .map_err(transition_error)
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e.message, "automatic advance skipped");
        }
    }
}

fn parse(text: &[u8], path: &Path) -> Result<Config, Vec<String>> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(text).map_err(|e| vec![format!("{name}: not UTF-8: {e}")])?;
    Config::parse(text, &name).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

/// The state to start in: the persisted one, unless the file's `phase:` changed since.
fn initial_state(config: &Config, state_path: &Path) -> (MigrationState, Option<SystemTime>) {
    let file_state = (config.migration.file_state.clone(), None);
    let Ok(text) = std::fs::read(state_path) else {
        return file_state;
    };
    let p: PersistedState = match serde_json::from_slice(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(path = %state_path.display(), error = %e, "ignoring an unreadable state file; using the config's phase");
            return file_state;
        }
    };
    if p.file_phase != config.migration.file_phase {
        tracing::info!(path = %state_path.display(), "the config's phase changed since the admin API set one; the config wins");
        return file_state;
    }
    let phases = &config.migration.phases;
    let Some(state) = p.state.resolve(phases) else {
        tracing::warn!(phase = ?p.state.phase, "the persisted phase no longer exists; using the config's phase");
        return file_state;
    };
    tracing::info!(
        phase = state.phase_name(phases),
        rolled_back = state.rolled_back,
        "restored the migration state set through the admin API"
    );
    (
        state,
        p.entered_at_unix
            .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
    )
}

/// Keeps the running state across a reload that did not touch `phase:`, following the
/// phase by name (indices may have moved).
fn carry_state(current: &Snapshot, config: &Config) -> MigrationState {
    let named = NamedState::of(&current.state, &current.config.migration.phases);
    named.resolve(&config.migration.phases).unwrap_or_else(|| {
        tracing::warn!(phase = ?named.phase, "the running phase is gone from the new config; using the config's phase");
        config.migration.file_state.clone()
    })
}

fn transition_error(e: TransitionError) -> AdminError {
    let status = match e {
        TransitionError::UnknownPhase(_) => 400,
        TransitionError::AtLastPhase | TransitionError::RolledBack => 409,
    };
    AdminError::new(status, e.to_string())
}

impl AdminHandle for Control {
    fn status(&self) -> Value {
        let s = self.gateway.load();
        let m = &s.config.migration;
        let name = |i: usize| s.config.providers[i].name.as_str();
        let phase = if s.state.rolled_back {
            json!({"name": "rollback", "index": null, "percent": 0.0})
        } else {
            let i = s.state.phase.unwrap_or(0);
            json!({"name": m.phases[i].name, "index": i, "percent": m.phases[i].percent()})
        };
        let health = self.watch.health.lock().unwrap_or_else(|e| e.into_inner());
        let providers: serde_json::Map<String, Value> = s
            .config
            .providers
            .iter()
            .map(|p| {
                let h = health.get(&p.name);
                (p.name.clone(), json!({"healthy": h.is_none_or(HealthTracker::healthy), "checked": h.is_some_and(HealthTracker::checked)}))
            })
            .collect();
        json!({
            "from": name(m.from),
            "to": name(m.to),
            "phase": phase,
            "percent": s.percent(),
            "phase_since_unix": self.watch.phase_since_unix(),
            "auto_advance": m.auto_advance,
            "gate": *self.watch.gate.lock().unwrap_or_else(|e| e.into_inner()),
            "rolled_back": s.state.rolled_back,
            "rollback_reason": s.state.rollback_reason,
            "rollback_trigger": s.state.rollback_trigger,
            "rolled_back_from": if s.state.rolled_back { s.state.phase.map(|i| m.phases[i].name.clone()) } else { None },
            "phases": m.phases.iter().map(|p| json!({"name": p.name, "percent": p.percent(), "hold_seconds": p.hold.map(|h| h.as_secs())})).collect::<Vec<_>>(),
            "config_version": s.config_version,
            "providers": providers,
            "cluster": self.cluster.as_ref().map(|c| c.status()),
            "verdict": self.watch.verdict(),
            "preflight": *self.watch.preflight.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    fn stats(&self) -> Option<Value> {
        let s = self.gateway.load();
        let names: Vec<&str> = s.config.providers.iter().map(|p| p.name.as_str()).collect();
        let m = &s.config.migration;
        let now = self.watch.now_ms();
        let mut stats = self.watch.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = stats.view(now, names[m.from], names[m.to], &names);
        v["shadow"] = self
            .watch
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view()
            .unwrap_or(Value::Null);
        v["verdict"] = serde_json::to_value(self.watch.verdict()).unwrap_or(Value::Null);
        Some(v)
    }

    fn metrics(&self) -> String {
        self.prometheus.render()
    }

    fn ready(&self) -> bool {
        if self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        let health = self.watch.health.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.gateway.load();
        s.config
            .providers
            .iter()
            .any(|p| health.get(&p.name).is_none_or(HealthTracker::healthy))
    }

    async fn phase_next(&self, skip_preflight: bool) -> AdminResult {
        self.transition("admin", skip_preflight, |s| {
            s.state
                .next(&s.config.migration.phases)
                .map_err(transition_error)
        })
        .await?;
        Ok(self.status())
    }

    async fn phase_set(&self, name: String, skip_preflight: bool) -> AdminResult {
        self.transition("admin", skip_preflight, |s| {
            s.state
                .set(&s.config.migration.phases, &name)
                .map_err(transition_error)
        })
        .await?;
        Ok(self.status())
    }

    async fn rollback(&self, reason: String) -> AdminResult {
        self.rollback_by(Trigger::Admin, reason, None).await?;
        Ok(self.status())
    }

    async fn reload(&self) -> AdminResult {
        match Control::reload(self, ReloadCause::Admin, false).await {
            Ok(v) => Ok(json!({"config_version": v})),
            Err(errors) => Err(AdminError {
                status: 400,
                message: "config refused; the running config keeps serving".into(),
                details: errors,
            }),
        }
    }
}
