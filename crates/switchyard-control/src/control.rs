//! The control plane's core: loading the config and the migration states, keeping them on
//! disk and (in cluster mode) in the shared store, the preflight. Moving a migration:
//! [`crate::transition`]; reloads: [`crate::reload`].
//!
//! Writers that build on the current state (reloads, phase changes, applying the shared
//! state) take one async mutex so that two of them never interleave, and put their result
//! live only if nothing changed it meanwhile. A rollback takes no lock and waits for
//! nothing: it moves traffic in memory first, always, then saves and publishes what it
//! can, and what fails is reported and retried, never undoes the move.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_core::event::ShadowEvent;
use switchyard_core::{Config, MigrationState, Trigger};
use switchyard_proxy::shadow::ShadowRuntime;
use switchyard_proxy::{EventQueues, Sinks};
use switchyard_proxy::{Gateway, Snapshot};
use switchyard_watch::{Alert, Alerter};
use tokio::sync::{mpsc, watch, Mutex};

use crate::cluster::Cluster;
use crate::error::ControlError;
use crate::events::EventBus;
use crate::preflight::probe_models;
use crate::store::Store;
use crate::watched::WatchState;
use crate::{preflight, state_file};

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
    /// Each migration's `phase:` in the file as last loaded, by name: one edited since
    /// moves that migration at the next reload.
    pub(crate) file_phases: BTreeMap<String, String>,
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
    /// The migrations this replica rolled back that the store has not taken yet, by name
    /// (published when it answers, before anything is adopted from it).
    pub(crate) unpublished: std::sync::Mutex<BTreeSet<String>>,
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

/// Where the notable events are kept across restarts: beside the state file.
fn journal_path(state: &std::path::Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".events.jsonl");
    state.with_file_name(name)
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Control {
    /// Loads the config and the persisted state, builds the first snapshot. In cluster
    /// mode the shared state lives in etcd.
    pub fn start(
        path: PathBuf,
        prometheus: PrometheusHandle,
        workers: usize,
        events: EventQueues,
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
        events: EventQueues,
        shadow_events: mpsc::Sender<ShadowEvent>,
        stop: watch::Receiver<bool>,
        store: Option<Arc<dyn Store>>,
    ) -> Result<(Control, Arc<Config>), String> {
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config = Arc::new(parse(&text, &path).map_err(|e| e.join("\n"))?);
        let state_path = state_file::path_for(&path, config.state_file.as_deref());
        let initial = state_file::initial(&config, &state_path);
        // Each migration an epoch of its own: its events are told apart by it too.
        let states = initial
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (s.clone(), i as u64))
            .collect();
        let (snapshot, warnings) =
            Snapshot::build(config.clone(), 1, states, &read_env, None, workers)
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
        let watch = WatchState::new(
            config.stats.window_requests,
            config.stats.window,
            config.named_migrations,
        );
        for (m, (_, entered_at)) in config.migrations.iter().zip(&initial) {
            watch.migration(&m.name).phase_since = entered_at.unwrap_or_else(SystemTime::now);
            watch.set_judgement_gauges(&m.name, None);
        }
        metrics::gauge!(STATE_SAVED).set(1.0);
        metrics::counter!(STATE_SAVE_FAILURES).absolute(0);
        show_rollbacks(&config);
        let cluster = match (&config.cluster, store) {
            (Some(c), Some(store)) => {
                let id = c.replica_id.clone().unwrap_or_else(|| "switchyard".into());
                Some(Arc::new(Cluster::with_store(store, id, &c.key_prefix)))
            }
            (Some(c), None) => Some(Arc::new(Cluster::new(c)?)),
            (None, _) => None,
        };
        let events = Arc::new(EventBus::with_journal(Some(journal_path(&state_path))));
        events.publish(&switchyard_core::api::Event::Started {
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        let control = Control {
            path,
            state_path,
            gateway,
            prometheus,
            writer: Mutex::new(Writer {
                last_tried: text.clone(),
                last_text: text,
                file_phases: file_phases(&config),
            }),
            shutting_down: AtomicBool::new(false),
            alerter,
            watch,
            cluster,
            unsaved: std::sync::Mutex::new(None),
            unpublished: std::sync::Mutex::default(),
            events,
        };
        // An automatic rollback still in effect shows what tripped it, across a restart:
        // the failing verdict is in the event journal.
        let snap = control.gateway.load();
        for (i, m) in config.migrations.iter().enumerate() {
            let state = snap.state(i);
            if state.rolled_back && state.rollback_trigger == Some(Trigger::Auto) {
                if let Some(v) = control
                    .events
                    .last_failing_verdict(named(&config, i).as_deref())
                {
                    control.watch.migration(&m.name).last_failing = Some(v);
                }
            }
        }
        drop(snap);
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
        let written = self.write_states(&s, None);
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
                        text: format!(
                            "{msg}: the live state ({}) is not on disk; retrying",
                            phases(&s)
                        ),
                        ..Alert::default()
                    });
                }
                Err(msg)
            }
        }
    }

    /// Writes the states of `s` to the state file, migration `next.0`'s as `next.1` (the
    /// state it is about to take, since `next.2`).
    pub(crate) fn write_states(
        &self,
        s: &Snapshot,
        next: Option<(usize, &MigrationState, u64)>,
    ) -> std::io::Result<()> {
        let states: Vec<(&MigrationState, u64)> = s
            .config
            .migrations
            .iter()
            .enumerate()
            .map(|(i, m)| match next {
                Some((j, state, at)) if i == j => (state, at),
                _ => (s.state(i), self.watch.phase_since_unix(&m.name)),
            })
            .collect();
        state_file::write(&self.state_path, &s.config, &states)
    }

    /// Saves again if the last save failed (called now and then by the watchers).
    pub fn retry_unsaved(&self) {
        if self.unsaved().is_some() {
            let _ = self.save();
        }
    }

    /// Probes migration `i`'s `to` when `next` is the first state to send it traffic (from
    /// a rollback or a 0% phase); a refusal stops the move and is kept in status and
    /// alerted.
    pub(crate) async fn preflight(
        &self,
        snap: &Snapshot,
        i: usize,
        current: &MigrationState,
        next: &MigrationState,
    ) -> Result<(), ControlError> {
        let m = &snap.config.migrations[i];
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
        self.watch.migration(&m.name).preflight = Some(report);
        if ok {
            // The first requests of the phase should not pay for connection setup.
            let warm = self.gateway.warm(m.to, WARM_WITHIN).await;
            tracing::info!(migration = %m.name, workers_warm = warm, "{summary}");
            return Ok(());
        }
        tracing::warn!(migration = %m.name, "{summary}; traffic was not moved");
        self.alerter.send(Alert {
            event: "preflight",
            migration: named(&snap.config, i),
            provider: Some(provider.name.clone()),
            phase: Some(next.phase_name(&m.phases).to_string()),
            text: format!(
                "{}PREFLIGHT refused: {summary}; traffic was not moved",
                prefix(&snap.config, i)
            ),
            ..Alert::default()
        });
        Err(ControlError::PreflightRefused(format!(
            "{summary}; traffic was not moved (fix the provider and try again, or skip the check: --skip-preflight on the CLI, \"skip_preflight\": true in the API)"
        )))
    }
}

pub const ROLLBACKS: &str = "switchyard_rollbacks_total";

/// `switchyard_rollbacks_total` at 0 for each trigger (and each migration, in a gateway of
/// several), so alerts on `rate()` work before the first rollback.
pub(crate) fn show_rollbacks(config: &Config) {
    for t in [Trigger::Admin, Trigger::Config, Trigger::Auto] {
        if config.named_migrations {
            for m in &config.migrations {
                metrics::counter!(ROLLBACKS, "trigger" => t.as_str(), "migration" => m.name.clone())
                    .increment(0);
            }
        } else {
            metrics::counter!(ROLLBACKS, "trigger" => t.as_str()).increment(0);
        }
    }
}

/// Migration `i`'s name where it is shown (alerts, events): in a gateway of several.
pub(crate) fn named(config: &Config, i: usize) -> Option<String> {
    config
        .named_migrations
        .then(|| config.migrations[i].name.clone())
}

/// `[name] ` before an alert's sentence, in a gateway of several.
pub(crate) fn prefix(config: &Config, i: usize) -> String {
    named(config, i).map_or(String::new(), |n| format!("[{n}] "))
}

/// Where migration `i`'s state lives in the cluster store (see [`Cluster::state_key`]).
pub(crate) fn slot(config: &Config, i: usize) -> &str {
    if config.named_migrations {
        &config.migrations[i].name
    } else {
        ""
    }
}

/// Each migration's phase, for people: `chat: half, emb: rollback`.
pub(crate) fn phases(s: &Snapshot) -> String {
    s.config
        .migrations
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let phase = s.state(i).phase_name(&m.phases);
            if s.config.named_migrations {
                format!("{}: {phase}", m.name)
            } else {
                phase.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each migration's `phase:` as the file has it, by name.
pub(crate) fn file_phases(config: &Config) -> BTreeMap<String, String> {
    config
        .migrations
        .iter()
        .map(|m| (m.name.clone(), m.file_phase.clone()))
        .collect()
}

pub(crate) fn parse(text: &[u8], path: &Path) -> Result<Config, Vec<String>> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(text).map_err(|e| vec![format!("{name}: not UTF-8: {e}")])?;
    Config::parse(text, &name).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}
