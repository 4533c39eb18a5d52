//! Moving a migration: a phase change (by an operator, the phase gate, or finishing) and
//! the rollback. A change takes the writer lock and goes live only if nothing changed
//! meanwhile; a rollback takes no lock and waits for nothing (see [`crate::control`]).

use std::sync::Arc;
use std::time::SystemTime;

use switchyard_core::api::Event;
use switchyard_core::{Config, MigrationState, Trigger};
use switchyard_proxy::Snapshot;
use switchyard_watch::{Alert, Verdict};

use crate::cluster::{SharedState, WriteError};
use crate::control::{
    named, prefix, slot, unix, Control, ROLLBACKS, STATE_SAVED, STATE_SAVE_FAILURES,
};
use crate::error::ControlError;

impl Control {
    /// Applies a state change to migration `name` (not a rollback: see
    /// [`Control::rollback`]). `by` says who asked (`admin`, `auto`), for logs and alerts.
    ///
    /// In cluster mode the store is written first: it is the fleet's truth, and once it took
    /// the change every replica moves, so this one follows in memory even if its own state
    /// file then fails (reported and retried). In single mode the state file is written
    /// first: it is what a restart comes back to, so a change it cannot hold is refused
    /// before anything moves.
    async fn transition(
        &self,
        name: &str,
        by: &str,
        skip_preflight: bool,
        f: impl FnOnce(&Snapshot, usize) -> Result<MigrationState, ControlError>,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _w = self.writer.lock().await;
        let current = self.gateway.load();
        let i = current
            .config
            .migration(name)
            .ok_or_else(|| ControlError::UnknownMigration(name.to_string()))?;
        let next = f(&current, i)?;
        if !skip_preflight {
            self.preflight(&current, i, current.state(i), &next).await?;
        }
        let began = SystemTime::now();
        let phases = &current.config.migrations[i].phases;
        match &self.cluster {
            Some(c) => {
                let shared = SharedState::of(&next, phases, &c.replica_id);
                match c.write(slot(&current.config, i), &shared).await {
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
                if let Err(e) = self.write_states(&current, Some((i, &next, unix(began)))) {
                    metrics::counter!(STATE_SAVE_FAILURES).increment(1);
                    return Err(ControlError::PersistFailed(format!(
                        "cannot save the migration state to {}: {e}; nothing was changed",
                        self.state_path.display()
                    )));
                }
            }
        }
        // Goes live on whatever else changed meanwhile (another migration's rollback takes
        // no lock), unless this migration itself moved: a rollback of it stands.
        let (_, moved) = self.gateway.update(|cur| {
            let j = cur.config.migration(name)?;
            (cur.state(j) == current.state(i)).then(|| cur.with_state(j, next.clone()))
        });
        if !moved {
            // Its rollback is on disk and in the store too (it saved and published itself).
            let _ = self.save();
            return Err(ControlError::Conflict(
                "a rollback happened while this change was being made; it stands".into(),
            ));
        }
        self.watch.phase_began(name, began);
        // Leaving a rollback (or any move): the verdict that tripped is history.
        self.watch.migration(name).last_failing = None;
        if self.cluster.is_some() {
            let _ = self.save();
        } else {
            // Written above; a failed save of an earlier state is now moot.
            *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()) = None;
            metrics::gauge!(STATE_SAVED).set(1.0);
        }
        let s = self.gateway.load();
        tracing::info!(
            migration = name,
            by,
            phase = s.state(i).phase_name(&s.config.migrations[i].phases),
            percent = s.percent(i),
            "migration state changed"
        );
        self.alert_phase(&s.config, i, s.state(i), by);
        self.publish_phase(&s, i, by);
        Ok(s)
    }

    /// The event stream's `phase` event for migration `i` as it stands.
    pub(crate) fn publish_phase(&self, s: &Snapshot, i: usize, by: &str) {
        self.events.publish(&Event::Phase {
            phase: s
                .state(i)
                .phase_name(&s.config.migrations[i].phases)
                .to_string(),
            percent: s.percent(i),
            by: by.to_string(),
            migration: named(&s.config, i),
        });
    }

    pub(crate) fn alert_phase(&self, config: &Config, i: usize, state: &MigrationState, by: &str) {
        let m = &config.migrations[i];
        let name = state.phase_name(&m.phases).to_string();
        let percent = f64::from(state.to_buckets(&m.phases)) / 100.0;
        self.alerter.send(Alert {
            event: "phase_change",
            migration: named(config, i),
            provider: Some(config.providers[m.to].name.clone()),
            phase: Some(name.clone()),
            metric: Some("percent".into()),
            value: Some(percent),
            text: format!(
                "{}phase {name}: {percent}% of traffic to `{}` (by {by})",
                prefix(config, i),
                config.providers[m.to].name
            ),
            ..Alert::default()
        });
    }

    /// 100% of migration `name`'s traffic to its `from` (`None`: every migration's), now:
    /// the move happens in memory first and waits for nothing; then the state is saved and
    /// (cluster mode) published, and what fails there is reported and retried.
    /// `only_epoch`: roll back only if the migration's state is still that one (an
    /// automatic rollback judged on it). Answers the live snapshot and whether it moved.
    pub async fn rollback(
        &self,
        name: Option<&str>,
        trigger: Trigger,
        reason: String,
        only_epoch: Option<u64>,
        metric: Option<(&str, f64, f64)>,
    ) -> (Arc<Snapshot>, bool) {
        // Which migrations this call moved (the last attempt's: `update` may try again).
        let moved_now = std::cell::RefCell::new(Vec::new());
        let (s, moved) = self.gateway.update(|cur| {
            let mut moved_now = moved_now.borrow_mut();
            moved_now.clear();
            let mut next: Option<Snapshot> = None;
            for (i, m) in cur.config.migrations.iter().enumerate() {
                let live = &cur.migrations[i];
                let chosen = name.is_none_or(|n| n == m.name);
                let judged = only_epoch.is_none_or(|e| e == live.epoch);
                if chosen && judged && !live.state.rolled_back {
                    let base = next.as_ref().unwrap_or(cur);
                    next = Some(base.with_state(i, live.state.rollback(reason.clone(), trigger)));
                    moved_now.push(m.name.clone());
                }
            }
            next
        });
        if !moved {
            return (s, false);
        }
        let moved_now = moved_now.into_inner();
        let now = SystemTime::now();
        for (i, m) in s.config.migrations.iter().enumerate() {
            if !moved_now.contains(&m.name) {
                continue;
            }
            self.watch.phase_began(&m.name, now);
            if s.config.named_migrations {
                metrics::counter!(ROLLBACKS, "trigger" => trigger.as_str(), "migration" => m.name.clone()).increment(1);
            } else {
                metrics::counter!(ROLLBACKS, "trigger" => trigger.as_str()).increment(1);
            }
            let from = &s.config.providers[m.from].name;
            tracing::warn!(migration = %m.name, trigger = trigger.as_str(), %reason, "ROLLBACK: 100% of traffic to `{from}`");
            self.events.publish(&Event::Rollback {
                reason: reason.clone(),
                trigger,
                migration: named(&s.config, i),
            });
            self.alerter.send(Alert {
                event: "rollback",
                migration: named(&s.config, i),
                provider: Some(s.config.providers[m.to].name.clone()),
                phase: Some("rollback".into()),
                metric: metric.map(|(n, ..)| n.to_string()),
                value: metric.map(|(_, v, _)| v),
                threshold: metric.map(|(.., t)| t),
                text: format!(
                    "{}ROLLBACK ({}): 100% of traffic to `{from}`: {reason}",
                    prefix(&s.config, i),
                    trigger.as_str()
                ),
            });
        }
        let _ = self.save();
        if let Some(c) = &self.cluster {
            self.publish_rollback(c, &moved_now).await;
        }
        (self.gateway.load(), true)
    }

    /// Moves migration `name` to its phase `phase` (also the way out of a rollback).
    pub async fn set_phase(
        &self,
        name: &str,
        phase: &str,
        skip_preflight: bool,
    ) -> Result<Arc<Snapshot>, ControlError> {
        self.transition(name, "admin", skip_preflight, |s, i| {
            Ok(s.state(i).set(&s.config.migrations[i].phases, phase)?)
        })
        .await
    }

    /// Advances migration `name` one phase.
    pub async fn next_phase(
        &self,
        name: &str,
        skip_preflight: bool,
    ) -> Result<Arc<Snapshot>, ControlError> {
        self.transition(name, "admin", skip_preflight, |s, i| {
            Ok(s.state(i).next(&s.config.migrations[i].phases)?)
        })
        .await
    }

    /// The judge failed migration `name`'s `to`: roll it back, unless its state changed
    /// since it was judged.
    pub async fn auto_rollback(&self, name: &str, epoch: u64, verdict: &Verdict) {
        let metric = verdict.failed().map(|f| {
            (
                f.metric.label(),
                f.to_value.unwrap_or(0.0),
                f.absolute_limit.or(f.allowed).unwrap_or(0.0),
            )
        });
        let (_, moved) = self
            .rollback(
                Some(name),
                Trigger::Auto,
                verdict.reason.clone(),
                Some(epoch),
                metric,
            )
            .await;
        if moved {
            // What tripped stays on show until the rollback is left.
            self.watch.migration(name).last_failing = Some(verdict.clone());
        }
    }

    /// Declares migration `name` done at its last phase: the judge's live control on
    /// `from` ends (a rollback is still one step away).
    pub async fn finish(&self, name: &str) -> Result<Arc<Snapshot>, ControlError> {
        self.transition(name, "admin", true, |s, i| {
            Ok(s.state(i).finish(&s.config.migrations[i].phases)?)
        })
        .await
    }

    /// Migration `name`'s phase gate opened: advance it one phase, if its state is still
    /// the one judged.
    pub async fn auto_advance(&self, name: &str, epoch: u64) {
        let r = self
            .transition(name, "auto", false, |s, i| {
                if s.migrations[i].epoch != epoch {
                    return Err(ControlError::Conflict(
                        "the state changed while it was judged".into(),
                    ));
                }
                Ok(s.state(i).next(&s.config.migrations[i].phases)?)
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(migration = name, error = %e, "automatic advance skipped");
        }
    }
}
