//! The admin API's view of the control plane: status, stats, and the calls that change it.
//! Errors become HTTP statuses in one place (`From<ControlError> for AdminError`).

use std::sync::atomic::Ordering;

use switchyard_admin::{AdminHandle, AdminResult};
use switchyard_core::api::{
    ControlView, PhaseInfo, PhaseView, ProviderHealth, ReloadAnswer, StateFileStatus, Stats, Status,
};
use switchyard_core::Trigger;
use switchyard_watch::HealthTracker;

use crate::control::Control;
use crate::reload::ReloadCause;

impl AdminHandle for Control {
    fn status(&self) -> Status {
        let s = self.gateway.load();
        let m = &s.config.migration;
        let name = |i: usize| s.config.providers[i].name.clone();
        let phase = match (s.state.rolled_back, s.state.phase) {
            (false, Some(i)) => PhaseView {
                name: m.phases[i].name.clone(),
                index: Some(i),
                percent: m.phases[i].percent(),
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
        Status {
            from: name(m.from),
            to: name(m.to),
            phase,
            percent: s.percent(),
            phase_since_unix: self.watch.phase_since_unix(),
            auto_advance: m.auto_advance,
            gate: self
                .watch
                .gate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            rolled_back: s.state.rolled_back,
            rollback_reason: s.state.rollback_reason.clone(),
            rollback_trigger: s.state.rollback_trigger,
            rolled_back_from: if s.state.rolled_back {
                s.state.phase.map(|i| m.phases[i].name.clone())
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
            cluster: self.cluster.as_ref().map(|c| c.status()),
            verdict: self.watch.verdict(),
            preflight: self
                .watch
                .preflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            state_file: StateFileStatus {
                path: self.state_path().display().to_string(),
                saved: unsaved.is_none(),
                error: unsaved,
            },
            finished: s.state.finished,
            control: (s.control_buckets > 0).then(|| {
                let percent = f64::from(s.control_buckets) / 100.0;
                ControlView {
                    provider: name(m.from),
                    percent,
                    note: format!(
                        "{percent}% of `{}`'s requests also sent to `{}` (answers discarded) as the judge's live control, until the migration is finished (POST /admin/finish)",
                        name(m.to),
                        name(m.from)
                    ),
                }
            }),
            last_failing_verdict: self
                .watch
                .last_failing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn stats(&self) -> Option<Stats> {
        let s = self.gateway.load();
        let names: Vec<&str> = s.config.providers.iter().map(|p| p.name.as_str()).collect();
        let m = &s.config.migration;
        let now = self.watch.now_ms();
        let mut stats = self
            .watch
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view(now, names[m.from], names[m.to], &names);
        stats.shadow = self
            .watch
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .view();
        stats.verdict = self.watch.verdict();
        Some(stats)
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

    async fn phase_next(&self, skip_preflight: bool) -> AdminResult {
        self.next_phase(skip_preflight).await?;
        Ok(self.status())
    }

    async fn phase_set(&self, name: String, skip_preflight: bool) -> AdminResult {
        self.set_phase(&name, skip_preflight).await?;
        Ok(self.status())
    }

    async fn finish(&self) -> AdminResult {
        Control::finish(self).await?;
        Ok(self.status())
    }

    /// Always moves traffic; whether the state was saved and shared is in the status.
    async fn rollback(&self, reason: String) -> AdminResult {
        Control::rollback(self, Trigger::Admin, reason, None, None).await;
        Ok(self.status())
    }

    fn events(
        &self,
    ) -> (
        Vec<std::sync::Arc<str>>,
        tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    ) {
        self.events.subscribe()
    }

    async fn reload(&self) -> AdminResult<ReloadAnswer> {
        let config_version = Control::reload(self, ReloadCause::Admin, false).await?;
        Ok(ReloadAnswer { config_version })
    }
}
