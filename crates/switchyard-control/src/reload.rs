//! Reloading the config: on a signal, a file change or the admin API. A reload builds the
//! next snapshot beside the live one and puts it live only if nothing changed meanwhile (a
//! rollback that came in stands, on the new config); a config refused leaves the running
//! one serving.

use std::sync::Arc;
use std::time::SystemTime;

use switchyard_core::api::Event;
use switchyard_core::migration::NamedState;
use switchyard_core::{Config, MigrationState, Trigger};
use switchyard_proxy::Snapshot;
use switchyard_watch::Alert;

use crate::control::{cooldown, parse, read_env, webhook_url, Control};
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
        let file_changed_phase = config.migration.file_phase != w.file_phase;
        let state = if file_changed_phase {
            // Editing `phase:` in the file overrides what the admin API set.
            config.migration.file_state.clone()
        } else {
            carry_state(&current, &config)
        };
        let version = current.config_version + 1;
        let state_changed = state != current.state;
        let epoch = current.epoch + u64::from(state_changed);
        let (snapshot, warnings) = match Snapshot::build(
            config.clone(),
            version,
            state.clone(),
            epoch,
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
        if let Err(e) = self.preflight(&snapshot, &current.state, &state).await {
            return Err(self.reload_failed(cause, vec![e.to_string()]));
        }
        let rolled_back_now = state.rolled_back && !current.state.rolled_back;
        if let Err(live) = self.gateway.swap_if(&current, snapshot) {
            // A rollback came in while this reload was prepared: it stands, on the new config.
            let (snapshot, _) = Snapshot::build(
                config.clone(),
                version,
                live.state.clone(),
                live.epoch + 1,
                &read_env,
                Some(&live),
                live.workers,
            )
            .map_err(|e| self.reload_failed(cause, vec![e.to_string()]))?;
            self.gateway.store(snapshot);
        } else if state_changed {
            self.watch.phase_began(SystemTime::now());
        }
        w.last_text = text;
        w.file_phase = config.migration.file_phase.clone();
        metrics::counter!("switchyard_config_reloads_total", "result" => "ok").increment(1);
        for change in risky_changes(&current.config, &config) {
            tracing::warn!(?cause, "config reloaded with a change to check: {change}");
            self.alerter.send(Alert {
                event: "config_change",
                text: change,
                ..Alert::default()
            });
        }
        self.alerter
            .configure(webhook_url(&config), cooldown(&config));
        self.watch
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_window(config.stats.window_requests, config.stats.window);
        let live = self.gateway.load();
        tracing::info!(
            ?cause,
            config_version = version,
            phase = live.state.phase_name(&config.migration.phases),
            "config reloaded"
        );
        if file_changed_phase {
            let _ = self.save();
            if let Some(c) = &self.cluster {
                self.publish(c, &live).await;
            }
        }
        if rolled_back_now {
            self.events.publish(&Event::Rollback {
                reason: "phase: rollback in the config file".into(),
                trigger: Trigger::Config,
            });
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
            self.publish_phase(&live, "config file");
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

/// Keeps the running state across a reload that did not touch `phase:`, following the
/// phase by name (indices may have moved).
fn carry_state(current: &Snapshot, config: &Config) -> MigrationState {
    let named = NamedState::of(&current.state, &current.config.migration.phases);
    named.resolve(&config.migration.phases).unwrap_or_else(|| {
        tracing::warn!(phase = ?named.phase, "the running phase is gone from the new config; using the config's phase");
        config.migration.file_state.clone()
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
