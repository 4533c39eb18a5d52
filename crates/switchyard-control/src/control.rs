//! The control plane's core: loading the config, the migration state and its transitions,
//! and keeping it on disk and (in cluster mode) in the shared store. Reloads: [`crate::reload`].
//!
//! Writers that build on the current state (reloads, phase changes, applying the shared
//! state) take one async mutex so that two of them never interleave, and put their result
//! live only if nothing changed it meanwhile. A rollback takes no lock and waits for
//! nothing: it moves traffic in memory first, always, then saves and publishes what it
//! can, and what fails is reported and retried, never undoes the move.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_core::event::{RequestEvent, ShadowEvent};
use switchyard_core::{Config, MigrationState, Trigger};
use switchyard_proxy::shadow::ShadowRuntime;
use switchyard_proxy::Sinks;
use switchyard_proxy::{Gateway, Snapshot};
use switchyard_watch::{Alert, Alerter, ShadowStats, Stats, Verdict};
use tokio::sync::{mpsc, watch, Mutex};

use crate::cluster::{Cluster, SharedState, WriteError};
use crate::error::ControlError;
use crate::events::EventBus;
use crate::preflight::probe_models;
use crate::store::Store;
use crate::watched::{set_judgement_gauges, WatchState};
use crate::{preflight, state_file};
use switchyard_core::api::Event;

pub const STATE_SAVED: &str = "switchyard_state_saved";
pub const STATE_SAVE_FAILURES: &str = "switchyard_state_save_failures_total";

/// The longest a move waits for the workers to open connections to `to` after its
/// preflight passed (on loopback a few ms; a far provider over TLS a few hundred).
const WARM_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) fn read_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

pub(crate) struct Writer {
    /// The config file's bytes as last loaded, to tell real changes from touch events.
    pub(crate) last_text: Vec<u8>,
    /// The bytes of the last file-change reload tried, loaded or not: a file that failed is
    /// not tried again until it changes (a write elsewhere in its folder is no reason).
    pub(crate) last_tried: Vec<u8>,
    pub(crate) file_phase: String,
}

pub struct Control {
    pub(crate) path: PathBuf,
    pub(crate) state_path: PathBuf,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) shutting_down: AtomicBool,
    pub alerter: Alerter,
    pub watch: WatchState,
    /// Cluster mode: the shared migration state in the store.
    pub cluster: Option<Arc<Cluster>>,
    /// Why the live state is not in the state file (retried until it is).
    pub(crate) unsaved: std::sync::Mutex<Option<String>>,
    /// A rollback this replica made that the store has not taken yet (published when it
    /// answers, before anything is adopted from it).
    pub(crate) unpublished: AtomicBool,
    /// The live event stream (`GET /admin/events`, the dashboard).
    pub events: Arc<EventBus>,
}

pub(crate) fn webhook_url(config: &Config) -> Option<String> {
    config
        .alerts
        .as_ref()
        .and_then(|a| read_env(&a.webhook_url_env))
        .filter(|u| !u.is_empty())
}

pub(crate) fn cooldown(config: &Config) -> Duration {
    config
        .alerts
        .as_ref()
        .map_or(Duration::from_secs(300), |a| a.cooldown)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Control {
    /// Loads the config and the persisted state, builds the first snapshot. In cluster
    /// mode the shared state lives in etcd.
    pub fn start(
        path: PathBuf,
        prometheus: PrometheusHandle,
        workers: usize,
        events: mpsc::Sender<RequestEvent>,
        shadow_events: mpsc::Sender<ShadowEvent>,
        stop: watch::Receiver<bool>,
    ) -> Result<(Control, Arc<Config>), String> {
        Self::start_with_store(path, prometheus, workers, events, shadow_events, stop, None)
    }

    /// As [`Control::start`], with the cluster's state in `store` instead of etcd.
    pub fn start_with_store(
        path: PathBuf,
        prometheus: PrometheusHandle,
        workers: usize,
        events: mpsc::Sender<RequestEvent>,
        shadow_events: mpsc::Sender<ShadowEvent>,
        stop: watch::Receiver<bool>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<(Control, Arc<Config>), String> {
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config = Arc::new(parse(&text, &path).map_err(|e| e.join("\n"))?);
        let state_path = state_file::path_for(&path, config.state_file.as_deref());
        let (state, entered_at) = state_file::initial(&config, &state_path);
        let (snapshot, warnings) =
            Snapshot::build(config.clone(), 1, state, 0, &read_env, None, workers)
                .map_err(|e| e.to_string())?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let shadow = ShadowRuntime::new(config.shadow.max_concurrent, shadow_events);
        // The collector is chosen at start (like `listen`): a reload does not move it.
        let spans = config.tracing.as_ref().map(|t| {
            let (sink, export) =
                switchyard_proxy::trace::exporter(&t.otlp_endpoint, &t.service_name);
            tokio::spawn(export);
            sink
        });
        let gateway = Arc::new(Gateway::new(
            snapshot,
            Sinks {
                events: Some(events),
                shadow: Some(Arc::new(shadow)),
                spans,
            },
        ));
        let alerter = Alerter::start(webhook_url(&config), cooldown(&config), stop);
        let watch = WatchState {
            stats: std::sync::Mutex::new(Stats::new(
                config.stats.window_requests,
                config.stats.window,
            )),
            health: std::sync::Mutex::new(Default::default()),
            shadow: std::sync::Mutex::new(ShadowStats::new(config.stats.window_requests)),
            started: Instant::now(),
            phase_since: std::sync::Mutex::new(entered_at.unwrap_or_else(SystemTime::now)),
            gate: std::sync::Mutex::new(None),
            verdict: std::sync::Mutex::new(None),
            last_failing: std::sync::Mutex::new(None),
            preflight: std::sync::Mutex::new(None),
        };
        set_judgement_gauges(None);
        metrics::gauge!(STATE_SAVED).set(1.0);
        metrics::counter!(STATE_SAVE_FAILURES).absolute(0);
        let cluster = match (&config.cluster, store) {
            (Some(c), Some(store)) => {
                let id = c.replica_id.clone().unwrap_or_else(|| "switchyard".into());
                Some(Arc::new(Cluster::with_store(store, id, &c.key_prefix)))
            }
            (Some(c), None) => Some(Arc::new(Cluster::new(c)?)),
            (None, _) => None,
        };
        let control = Control {
            path,
            state_path,
            gateway,
            prometheus,
            writer: Mutex::new(Writer {
                last_tried: text.clone(),
                last_text: text,
                file_phase: config.migration.file_phase.clone(),
            }),
            shutting_down: AtomicBool::new(false),
            alerter,
            watch,
            cluster,
            unsaved: std::sync::Mutex::new(None),
            unpublished: AtomicBool::new(false),
            events: Arc::default(),
        };
        Ok((control, config))
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Why the live state is not saved, while it is not.
    pub fn unsaved(&self) -> Option<String> {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes the live state to the state file. A failure is reported (status, metric,
    /// alert, log) and retried by [`Control::retry_unsaved`]; it never undoes anything.
    pub(crate) fn save(&self) -> Result<(), String> {
        let s = self.gateway.load();
        let written = state_file::write(
            &self.state_path,
            &s.config,
            &s.state,
            self.watch.phase_since_unix(),
        );
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        match written {
            Ok(()) => {
                if unsaved.take().is_some() {
                    tracing::info!(path = %self.state_path.display(), "the migration state is saved again");
                }
                metrics::gauge!(STATE_SAVED).set(1.0);
                Ok(())
            }
            Err(e) => {
                let msg = format!(
                    "cannot save the migration state to {}: {e}",
                    self.state_path.display()
                );
                metrics::counter!(STATE_SAVE_FAILURES).increment(1);
                metrics::gauge!(STATE_SAVED).set(0.0);
                if unsaved.replace(msg.clone()).is_none() {
                    tracing::error!("{msg}; traffic follows the state in memory, and saving is retried (a restart now would come back to the last saved state)");
                    self.alerter.send(Alert {
                        event: "state_not_saved",
                        phase: Some(s.state.phase_name(&s.config.migration.phases).to_string()),
                        text: format!(
                            "{msg}: the live state ({}) is not on disk; retrying",
                            s.state.phase_name(&s.config.migration.phases)
                        ),
                        ..Alert::default()
                    });
                }
                Err(msg)
            }
        }
    }

    /// Saves again if the last save failed (called now and then by the watchers).
    pub fn retry_unsaved(&self) {
        if self.unsaved().is_some() {
            let _ = self.save();
        }
    }

    /// Probes `to` when `next` is the first state to send it traffic (from a rollback or a
    /// 0% phase); a refusal stops the move and is kept in status and alerted.
    pub(crate) async fn preflight(
        &self,
        snap: &Snapshot,
        current: &MigrationState,
        next: &MigrationState,
    ) -> Result<(), ControlError> {
        let m = &snap.config.migration;
        if !m.preflight.enabled
            || current.to_buckets(&m.phases) > 0
            || next.to_buckets(&m.phases) == 0
        {
            return Ok(());
        }
        let provider = &snap.config.providers[m.to];
        let models = probe_models(provider);
        let report = preflight::run(
            &snap.upstreams[m.to],
            &models,
            &snap.config.health_check.path,
            m.preflight.timeout,
        )
        .await;
        let summary = preflight::summary(&report);
        let ok = report.ok;
        *self
            .watch
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(report);
        if ok {
            // The first requests of the phase should not pay for connection setup.
            let warm = self.gateway.warm(m.to, WARM_WITHIN).await;
            tracing::info!(workers_warm = warm, "{summary}");
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
        Err(ControlError::PreflightRefused(format!(
            "{summary}; traffic was not moved (fix the provider and try again, or skip the check: --skip-preflight on the CLI, \"skip_preflight\": true in the API)"
        )))
    }

    /// Applies a state change (not a rollback: see [`Control::rollback`]). `by` says who
    /// asked (`admin`, `auto`), for logs and alerts.
    ///
    /// In cluster mode the store is written first: it is the fleet's truth, and once it took
    /// the change every replica moves, so this one follows in memory even if its own state
    /// file then fails (reported and retried). In single mode the state file is written
    /// first: it is what a restart comes back to, so a change it cannot hold is refused
    /// before anything moves.
    async fn transition(
        &self,
        by: &str,
        skip_preflight: bool,
        f: impl FnOnce(&Snapshot) -> Result<MigrationState, ControlError>,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        let next = f(&current)?;
        if !skip_preflight {
            self.preflight(&current, &current.state, &next).await?;
        }
        let began = SystemTime::now();
        match &self.cluster {
            Some(c) => {
                let shared =
                    SharedState::of(&next, &current.config.migration.phases, &c.replica_id);
                match c.write(&shared).await {
                    Ok(_) => {}
                    Err(WriteError::Conflict) => {
                        return Err(ControlError::Conflict("another replica changed the migration state first; check the current phase and try again".into()));
                    }
                    Err(WriteError::Unavailable(e)) => {
                        return Err(ControlError::StoreUnavailable(format!("the shared migration state cannot be changed now ({e}); this replica keeps serving on the last state it knew")));
                    }
                }
            }
            None => {
                if let Err(e) =
                    state_file::write(&self.state_path, &current.config, &next, unix(began))
                {
                    metrics::counter!(STATE_SAVE_FAILURES).increment(1);
                    return Err(ControlError::PersistFailed(format!(
                        "cannot save the migration state to {}: {e}; nothing was changed",
                        self.state_path.display()
                    )));
                }
            }
        }
        if let Err(live) = self.gateway.swap_if(&current, current.with_state(next)) {
            // A rollback came in meanwhile (it waits for no lock): it stands, on disk and in
            // the store too.
            let _ = self.save();
            if let (Some(c), true) = (&self.cluster, live.state.rolled_back) {
                self.publish_rollback(c).await;
            }
            return Err(ControlError::Conflict(
                "a rollback happened while this change was being made; it stands".into(),
            ));
        }
        self.watch.phase_began(began);
        // Leaving a rollback (or any move): the verdict that tripped is history.
        *self
            .watch
            .last_failing
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        if self.cluster.is_some() {
            let _ = self.save();
        } else {
            // Written above; a failed save of an earlier state is now moot.
            *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()) = None;
            metrics::gauge!(STATE_SAVED).set(1.0);
        }
        let s = self.gateway.load();
        tracing::info!(
            by,
            phase = s.state.phase_name(&s.config.migration.phases),
            percent = s.percent(),
            "migration state changed"
        );
        self.alert_phase(&s.config, &s.state, by);
        self.publish_phase(&s, by);
        Ok(s)
    }

    /// The event stream's `phase` event for the live state.
    pub(crate) fn publish_phase(&self, s: &Snapshot, by: &str) {
        self.events.publish(&Event::Phase {
            phase: s.state.phase_name(&s.config.migration.phases).to_string(),
            percent: s.percent(),
            by: by.to_string(),
        });
    }

    pub(crate) fn alert_phase(&self, config: &Config, state: &MigrationState, by: &str) {
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

    /// 100% of traffic to `from`, now: the move happens in memory first and waits for
    /// nothing; then the state is saved and (cluster mode) published, and what fails there
    /// is reported and retried. `only_epoch`: roll back only if the state is still that
    /// one (an automatic rollback judged on it). Answers the live snapshot.
    pub async fn rollback(
        &self,
        trigger: Trigger,
        reason: String,
        only_epoch: Option<u64>,
        metric: Option<(&str, f64, f64)>,
    ) -> Arc<Snapshot> {
        let (s, moved) = self.gateway.update(|cur| {
            let judged = only_epoch.is_none_or(|e| e == cur.epoch);
            (judged && !cur.state.rolled_back)
                .then(|| cur.with_state(cur.state.rollback(reason.clone(), trigger)))
        });
        if !moved {
            return s;
        }
        self.watch.phase_began(SystemTime::now());
        metrics::counter!("switchyard_rollbacks_total", "trigger" => trigger.as_str()).increment(1);
        let m = &s.config.migration;
        let from = &s.config.providers[m.from].name;
        tracing::warn!(trigger = trigger.as_str(), %reason, "ROLLBACK: 100% of traffic to `{from}`");
        self.events.publish(&Event::Rollback {
            reason: reason.clone(),
            trigger,
        });
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
        let _ = self.save();
        if let Some(c) = &self.cluster {
            self.publish_rollback(c).await;
        }
        self.gateway.load()
    }

    /// Goes to the phase `name` (also the way out of a rollback).
    pub async fn set_phase(
        &self,
        name: &str,
        skip_preflight: bool,
    ) -> Result<Arc<Snapshot>, ControlError> {
        self.transition("admin", skip_preflight, |s| {
            Ok(s.state.set(&s.config.migration.phases, name)?)
        })
        .await
    }

    /// Advances one phase.
    pub async fn next_phase(&self, skip_preflight: bool) -> Result<Arc<Snapshot>, ControlError> {
        self.transition("admin", skip_preflight, |s| {
            Ok(s.state.next(&s.config.migration.phases)?)
        })
        .await
    }

    /// The judge failed `to`: roll back, unless the state changed since it was judged.
    pub async fn auto_rollback(&self, epoch: u64, verdict: &Verdict) {
        let metric = verdict.failed().map(|f| {
            (
                f.metric.label(),
                f.to_value.unwrap_or(0.0),
                f.absolute_limit.or(f.allowed).unwrap_or(0.0),
            )
        });
        let before = self.gateway.load().epoch;
        let after = self
            .rollback(Trigger::Auto, verdict.reason.clone(), Some(epoch), metric)
            .await;
        if after.epoch != before && after.state.rolled_back {
            // What tripped stays on show until the rollback is left.
            *self
                .watch
                .last_failing
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(verdict.clone());
        }
    }

    /// Declares the migration done at its last phase: the judge's live control on `from`
    /// ends (a rollback is still one step away).
    pub async fn finish(&self) -> Result<Arc<Snapshot>, ControlError> {
        self.transition("admin", true, |s| {
            Ok(s.state.finish(&s.config.migration.phases)?)
        })
        .await
    }

    /// The phase gate opened: advance one phase, if the state is still the one judged.
    pub async fn auto_advance(&self, epoch: u64) {
        let r = self
            .transition("auto", false, |s| {
                if s.epoch != epoch {
                    return Err(ControlError::Conflict(
                        "the state changed while it was judged".into(),
                    ));
                }
                Ok(s.state.next(&s.config.migration.phases)?)
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "automatic advance skipped");
        }
    }
}

pub(crate) fn parse(text: &[u8], path: &Path) -> Result<Config, Vec<String>> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(text).map_err(|e| vec![format!("{name}: not UTF-8: {e}")])?;
    Config::parse(text, &name).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}
