//! Reloading the config: on a signal, a file change or the admin API. A reload builds the
//! next snapshot beside the live one and puts it live only if nothing changed meanwhile (a
//! rollback that came in stands, on the new config); a config refused leaves the running
//! one serving.

use std::sync::Arc;
use std::time::SystemTime;

use switchyard_core::api::Event;
use switchyard_core::config::{MigrationConfig, Phase};
use switchyard_core::migration::NamedState;
use switchyard_core::{MigrationState, Trigger};
use switchyard_proxy::Snapshot;
use switchyard_watch::Alert;

use crate::control::{
    cooldown, file_phases, named, parse, phases, prefix, read_env, webhook_url, Control, ROLLBACKS,
};
use crate::error::ControlError;

/// Why a reload happened (log field).
#[derive(Debug, Clone, Copy)]
pub enum ReloadCause {
    Signal,
    FileChange,
    Admin,
}

impl Control {
    /// Re-reads the file; `only_if_changed` skips it when the bytes are the same (file watch).
    pub async fn reload(
        &self,
        cause: ReloadCause,
        only_if_changed: bool,
    ) -> Result<u64, ControlError> {
        let mut w = self.writer.lock().await;
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("{}: {e}", self.path.display());
                return Err(self.reload_failed(cause, vec![msg]));
            }
        };
        if only_if_changed && (text == w.last_text || text == w.last_tried) {
            return Ok(self.gateway.load().config_version);
        }
        w.last_tried.clone_from(&text);
        let config = match parse(&text, &self.path) {
            Ok(c) => Arc::new(c),
            Err(errs) => return Err(self.reload_failed(cause, errs)),
        };
        let current = self.gateway.load();
        if config.listen != current.config.listen
            || config.admin.listen != current.config.admin.listen
            || config.tls != current.config.tls
            || config.state_file != current.config.state_file
        {
            tracing::warn!(
                "listen, admin.listen, tls and state_file changes take effect at the next restart"
            );
        }
        // Each migration by name: one whose `phase:` was edited in the file (or that is new)
        // starts from the file; the others keep their state, following their phase by name.
        let mut epoch = current.epoch;
        let mut moved_by_file = Vec::new();
        let mut plan: Vec<(MigrationState, u64, Option<usize>)> = Vec::new();
        for (i, m) in config.migrations.iter().enumerate() {
            let was = current.config.migration(&m.name);
            let edited = w.file_phases.get(&m.name) != Some(&m.file_phase);
            let state = match was {
                Some(j) if !edited => carry_state(
                    current.state(j),
                    &current.config.migrations[j],
                    &m.file_state,
                    &m.phases,
                ),
                // `phase: rollback` written in the file: a rollback of the phase it was in
                // (shown as `rolled_back_from`).
                Some(j) if m.file_state.rolled_back && !current.state(j).rolled_back => {
                    let left = carry_state(
                        current.state(j),
                        &current.config.migrations[j],
                        &m.file_state,
                        &m.phases,
                    );
                    left.rollback("phase: rollback in the config file", Trigger::Config)
                }
                _ => m.file_state.clone(),
            };
            if edited && was.is_some() {
                moved_by_file.push(i);
            }
            // Another state, or the same migration at another place in the list: a new
            // epoch, so that its judge counts nothing of before.
            let same = was.filter(|j| *j == i && *current.state(*j) == state);
            let e = match same {
                Some(j) => current.migrations[j].epoch,
                None => {
                    epoch += 1;
                    epoch
                }
            };
            plan.push((state, e, was));
        }
        let version = current.config_version + 1;
        let states: Vec<(MigrationState, u64)> =
            plan.iter().map(|(s, e, _)| (s.clone(), *e)).collect();
        let (snapshot, warnings) = match Snapshot::build(
            config.clone(),
            version,
            states.clone(),
            &read_env,
            Some(&current),
            current.workers,
        ) {
            Ok(s) => s,
            Err(e) => return Err(self.reload_failed(cause, vec![e.to_string()])),
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        for (i, (state, _, was)) in plan.iter().enumerate() {
            if let Some(j) = was {
                if let Err(e) = self.preflight(&snapshot, i, current.state(*j), state).await {
                    return Err(self.reload_failed(cause, vec![e.to_string()]));
                }
            }
        }
        let (mut attempt, mut expected) = (snapshot, current.clone());
        while let Err(live) = self.gateway.swap_if(&expected, attempt) {
            // A rollback came in while this reload was prepared: it stands, on the new
            // config (and so does one that comes in while this is built again).
            let mut next_epoch = live.epoch.max(epoch);
            let merged = config
                .migrations
                .iter()
                .zip(&states)
                .map(|(m, (state, e))| match live.config.migration(&m.name) {
                    Some(j) if live.state(j).rolled_back && !state.rolled_back => {
                        next_epoch += 1;
                        (live.state(j).clone(), next_epoch)
                    }
                    _ => (state.clone(), *e),
                })
                .collect();
            attempt = Snapshot::build(
                config.clone(),
                version,
                merged,
                &read_env,
                Some(&live),
                live.workers,
            )
            .map_err(|e| self.reload_failed(cause, vec![e.to_string()]))?
            .0;
            expected = live;
        }
        let live = self.gateway.load();
        let now = SystemTime::now();
        for (i, (state, _, was)) in plan.iter().enumerate() {
            if was.is_none_or(|j| current.state(j) != state) {
                self.watch.phase_began(&config.migrations[i].name, now);
            }
        }
        w.last_text = text;
        w.file_phases = file_phases(&config);
        metrics::counter!("switchyard_config_reloads_total", "result" => "ok").increment(1);
        for change in risky_changes(&current.config, &config) {
            tracing::warn!(?cause, "config reloaded with a change to check: {change}");
            self.alerter.send(Alert {
                event: "config_change",
                text: change,
                ..Alert::default()
            });
        }
        let gone: Vec<_> = current
            .config
            .migrations
            .iter()
            .filter(|m| config.migration(&m.name).is_none())
            .collect();
        if !gone.is_empty() {
            // The state file keeps no migration the config no longer has.
            let _ = self.save();
        }
        for gone in gone {
            let to = config
                .default_provider
                .map_or("-", |p| config.providers[p].name.as_str());
            let text = format!(
                "migration `{}` was removed from the config: the requests it matched go to `{to}` (default_provider) now",
                gone.name
            );
            tracing::warn!(?cause, migration = %gone.name, "{text}");
            self.alerter.send(Alert {
                event: "migration_removed",
                migration: Some(gone.name.clone()),
                text,
                ..Alert::default()
            });
        }
        self.alerter
            .configure(webhook_url(&config), cooldown(&config));
        crate::control::show_rollbacks(&config);
        let names: Vec<&str> = config.migrations.iter().map(|m| m.name.as_str()).collect();
        self.watch.configure(
            config.stats.window_requests,
            config.stats.window,
            &names,
            config.named_migrations,
        );
        tracing::info!(
            ?cause,
            config_version = version,
            phase = phases(&live),
            "config reloaded"
        );
        if !moved_by_file.is_empty() {
            let _ = self.save();
        }
        for i in moved_by_file {
            let m = &config.migrations[i];
            let state = live.state(i);
            if let Some(c) = &self.cluster {
                self.publish(c, &live, i).await;
            }
            let was_rolled_back = plan[i].2.is_some_and(|j| current.state(j).rolled_back);
            if state.rolled_back && !was_rolled_back {
                self.events.publish(&Event::Rollback {
                    reason: "phase: rollback in the config file".into(),
                    trigger: Trigger::Config,
                    migration: named(&config, i),
                });
                if config.named_migrations {
                    metrics::counter!(ROLLBACKS, "trigger" => "config", "migration" => m.name.clone()).increment(1);
                } else {
                    metrics::counter!(ROLLBACKS, "trigger" => "config").increment(1);
                }
                let from = &config.providers[m.from].name;
                self.alerter.send(Alert {
                    event: "rollback",
                    migration: named(&config, i),
                    provider: Some(config.providers[m.to].name.clone()),
                    phase: Some("rollback".into()),
                    text: format!(
                        "{}ROLLBACK by config file: 100% of traffic to `{from}`",
                        prefix(&config, i)
                    ),
                    ..Alert::default()
                });
            } else if plan[i].2.is_some_and(|j| current.state(j) != state) {
                self.alert_phase(&config, i, state, "config file");
                self.publish_phase(&live, i, "config file");
            }
        }
        Ok(version)
    }

    fn reload_failed(&self, cause: ReloadCause, errors: Vec<String>) -> ControlError {
        metrics::counter!("switchyard_config_reloads_total", "result" => "error").increment(1);
        for e in &errors {
            tracing::error!(
                ?cause,
                "config refused, the running config keeps serving: {e}"
            );
        }
        ControlError::ConfigRefused(errors)
    }
}

/// Keeps a migration's running state across a reload that did not touch its `phase:`,
/// following the phase by name (indices may have moved).
fn carry_state(
    state: &MigrationState,
    was: &MigrationConfig,
    file_state: &MigrationState,
    phases: &[Phase],
) -> MigrationState {
    let named = NamedState::of(state, &was.phases);
    named.resolve(phases).unwrap_or_else(|| {
        tracing::warn!(migration = %was.name, phase = ?named.phase, "the running phase is gone from the new config; using the config's phase");
        file_state.clone()
    })
}

/// Changes a reload makes that an operator should hear of even when they were meant:
/// client authentication turned off, the admin token's variable changed, a provider
/// pointed elsewhere (with its key, to a new host).
pub(crate) fn risky_changes(
    old: &switchyard_core::config::Config,
    new: &switchyard_core::config::Config,
) -> Vec<String> {
    let mut out = Vec::new();
    if old.clients.is_some() && new.clients.is_none() {
        out.push(
            "client authentication removed (`clients:`): requests without a key are now forwarded"
                .to_string(),
        );
    }
    if old.admin.token_env != new.admin.token_env {
        out.push(format!(
            "admin.token_env changed from {} to {} (the admin API keeps its token until a restart)",
            old.admin.token_env, new.admin.token_env
        ));
    }
    for p in &new.providers {
        if let Some(was) = old.providers.iter().find(|o| o.name == p.name) {
            if was.base_url != p.base_url {
                out.push(format!(
                    "providers.{}.base_url changed from {} to {}: its key now goes there",
                    p.name, was.base_url, p.base_url
                ));
            }
        }
    }
    out
}
