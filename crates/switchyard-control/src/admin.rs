//! The admin API's view of the control plane: status, stats, and the calls that change it.
//! Errors become HTTP statuses in one place (`From<ControlError> for AdminError`).

use std::sync::atomic::Ordering;

use switchyard_admin::{AdminHandle, AdminResult};
use switchyard_core::api::{
    Compatibility, ControlView, MatchView, Migrations, PhaseInfo, PhaseView, ProviderHealth,
    ReloadAnswer, RollbackAnswer, StateFileStatus, Stats, Status,
};
use switchyard_core::Trigger;
use switchyard_watch::HealthTracker;

use switchyard_proxy::Snapshot;

use crate::control::{slot, Control};
use crate::error::ControlError;
use crate::reload::ReloadCause;

impl Control {
    /// The migration a call is about: `name`, or the gateway's only one.
    fn one(&self, name: Option<&str>) -> Result<String, ControlError> {
        let s = self.gateway.load();
        match name {
            Some(n) if s.config.migration(n).is_some() => Ok(n.to_string()),
            Some(n) => Err(ControlError::UnknownMigration(n.to_string())),
            None if s.config.migrations.len() == 1 => Ok(s.config.migrations[0].name.clone()),
            None => Err(ControlError::NameAMigration(
                s.config.migrations.iter().map(|m| m.name.clone()).collect(),
            )),
        }
    }

    /// Migration `i`'s status.
    fn status_of(&self, s: &Snapshot, i: usize) -> Status {
        let m = &s.config.migrations[i];
        let live = &s.migrations[i];
        let state = &live.state;
        let name = |p: usize| s.config.providers[p].name.clone();
        let phase = match (state.rolled_back, state.phase) {
            (false, Some(p)) => PhaseView {
                name: m.phases[p].name.clone(),
                index: Some(p),
                percent: m.phases[p].percent(),
            },
            _ => PhaseView {
                name: "rollback".into(),
                index: None,
                percent: 0.0,
            },
        };
        let providers = {
            let health = self.watch.health.lock().unwrap_or_else(|e| e.into_inner());
            s.config
                .providers
                .iter()
                .map(|p| {
                    let h = health.get(&p.name);
                    let view = ProviderHealth {
                        healthy: h.is_none_or(HealthTracker::healthy),
                        checked: h.is_some_and(HealthTracker::checked),
                    };
                    (p.name.clone(), view)
                })
                .collect()
        };
        let unsaved = self.unsaved();
        let several = s.config.named_migrations;
        let watch = self.watch.migration(&m.name);
        Status {
            migration: m.name.clone(),
            matches: several.then(|| MatchView {
                models: m.matcher.models.clone(),
                paths: m.matcher.paths.clone(),
                header: m.matcher.headers.iter().cloned().collect(),
            }),
            migrations: if several {
                s.config.migrations.iter().map(|m| m.name.clone()).collect()
            } else {
                Vec::new()
            },
            default_provider: s.config.default_provider.map(name),
            from: name(m.from),
            to: name(m.to),
            phase,
            percent: live.percent(),
            phase_since_unix: watch
                .phase_since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            auto_advance: m.auto_advance,
            gate: watch.gate.clone(),
            rolled_back: state.rolled_back,
            rollback_reason: state.rollback_reason.clone(),
            rollback_trigger: state.rollback_trigger,
            rolled_back_from: if state.rolled_back {
                state.phase.map(|p| m.phases[p].name.clone())
            } else {
                None
            },
            phases: m
                .phases
                .iter()
                .map(|p| PhaseInfo {
                    name: p.name.clone(),
                    percent: p.percent(),
                    hold_seconds: p.hold.map(|h| h.as_secs()),
                })
                .collect(),
            config_version: s.config_version,
            providers,
            cluster: self
                .cluster
                .as_ref()
                .map(|c| c.status(slot(&s.config, i))),
            verdict: watch.verdict.clone(),
            preflight: watch.preflight.clone(),
            state_file: StateFileStatus {
                path: self.state_path().display().to_string(),
                saved: unsaved.is_none(),
                error: unsaved,
            },
            finished: state.finished,
            control: (live.control_buckets > 0).then(|| {
                let percent = f64::from(live.control_buckets) / 100.0;
                let finish = if several {
                    format!("POST /admin/migrations/{}/finish", m.name)
                } else {
                    "POST /admin/finish".to_string()
                };
                ControlView {
                    provider: name(m.from),
                    percent,
                    note: format!(
                        "{percent}% of `{}`'s requests also sent to `{}` (answers discarded) as the judge's live control, until the migration is finished ({finish})",
                        name(m.to),
                        name(m.from)
                    ),
                }
            }),
            last_failing_verdict: watch.last_failing.clone(),
        }
    }
}

/// The migration a read is about: `name`, or the first (a gateway's only one).
fn read_index(s: &Snapshot, name: Option<&str>) -> Result<usize, ControlError> {
    match name {
        Some(n) => s
            .config
            .migration(n)
            .ok_or_else(|| ControlError::UnknownMigration(n.to_string())),
        None => Ok(0),
    }
}

impl AdminHandle for Control {
    fn status(&self, migration: Option<&str>) -> AdminResult {
        let s = self.gateway.load();
        let i = read_index(&s, migration)?;
        Ok(self.status_of(&s, i))
    }

    fn migrations(&self) -> Migrations {
        let s = self.gateway.load();
        Migrations {
            migrations: (0..s.config.migrations.len())
                .map(|i| self.status_of(&s, i))
                .collect(),
        }
    }

    fn stats(&self, migration: Option<&str>) -> AdminResult<Stats> {
        let s = self.gateway.load();
        let names: Vec<&str> = s.config.providers.iter().map(|p| p.name.as_str()).collect();
        let now = self.watch.now_ms();
        let (i, mut stats) = match migration {
            Some(n) => {
                let i = s
                    .config
                    .migration(n)
                    .ok_or_else(|| ControlError::UnknownMigration(n.to_string()))?;
                let m = &s.config.migrations[i];
                // Its own two providers: it sends no request elsewhere.
                let (from, to) = (names[m.from], names[m.to]);
                let stats = self
                    .watch
                    .migration(n)
                    .stats
                    .view(now, from, to, &[from, to]);
                (i, stats)
            }
            None => {
                let m = &s.config.migrations[0];
                let stats = self
                    .watch
                    .stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .view(now, names[m.from], names[m.to], &names);
                (0, stats)
            }
        };
        stats.shadow = self
            .watch
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view();
        stats.verdict = self.watch.verdict(&s.config.migrations[i].name);
        Ok(stats)
    }

    fn compatibility(&self, migration: Option<&str>) -> AdminResult<Compatibility> {
        let s = self.gateway.load();
        let i = read_index(&s, migration)?;
        let m = &s.config.migrations[i];
        let providers = &s.config.providers;
        let (from, to) = (&*providers[m.from].name, &*providers[m.to].name);
        let now = self.watch.now_ms();
        let mut watch = self.watch.migration(&m.name);
        let roi = watch.stats.view(now, from, to, &[from, to]).roi;
        Ok(watch.compat.report(&m.name, (from, to), Some(&roi)))
    }

    fn metrics(&self) -> String {
        switchyard_proxy::metrics::render(self.prometheus.render())
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

    async fn phase_next(&self, migration: Option<String>, skip_preflight: bool) -> AdminResult {
        let name = self.one(migration.as_deref())?;
        self.next_phase(&name, skip_preflight).await?;
        self.status(Some(&name))
    }

    async fn phase_set(
        &self,
        migration: Option<String>,
        phase: String,
        skip_preflight: bool,
    ) -> AdminResult {
        let name = self.one(migration.as_deref())?;
        self.set_phase(&name, &phase, skip_preflight).await?;
        self.status(Some(&name))
    }

    async fn finish(&self, migration: Option<String>) -> AdminResult {
        let name = self.one(migration.as_deref())?;
        Control::finish(self, &name).await?;
        self.status(Some(&name))
    }

    /// Always moves traffic; whether the state was saved and shared is in the status.
    /// Unnamed in a gateway of several: every migration (the panic button), and every
    /// migration's status.
    async fn rollback(
        &self,
        migration: Option<String>,
        reason: String,
    ) -> AdminResult<RollbackAnswer> {
        if let Some(n) = &migration {
            self.one(Some(n))?;
        }
        let (s, _) = Control::rollback(
            self,
            migration.as_deref(),
            Trigger::Admin,
            reason,
            None,
            None,
        )
        .await;
        if migration.is_none() && s.config.migrations.len() > 1 {
            return Ok(RollbackAnswer::All(self.migrations()));
        }
        Ok(RollbackAnswer::One(Box::new(
            self.status(migration.as_deref())?,
        )))
    }

    fn events(
        &self,
        last_event_id: Option<u64>,
    ) -> (
        Vec<std::sync::Arc<str>>,
        tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    ) {
        self.events.subscribe(last_event_id)
    }

    async fn reload(&self) -> AdminResult<ReloadAnswer> {
        let config_version = Control::reload(self, ReloadCause::Admin, false).await?;
        Ok(ReloadAnswer { config_version })
    }
}
