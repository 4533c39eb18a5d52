//! The admin API's view of the control plane: status, stats, and the calls that change it.
//! Errors become HTTP statuses in one place (`From<ControlError> for AdminError`).

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use switchyard_admin::{AdminHandle, AdminResult};
use switchyard_core::Trigger;
use switchyard_watch::HealthTracker;

use crate::control::{Control, ReloadCause};

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
            "state_file": {
                "path": self.state_path().display().to_string(),
                "saved": self.unsaved().is_none(),
                "error": self.unsaved(),
            },
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
        self.next_phase(skip_preflight).await?;
        Ok(self.status())
    }

    async fn phase_set(&self, name: String, skip_preflight: bool) -> AdminResult {
        self.set_phase(&name, skip_preflight).await?;
        Ok(self.status())
    }

    /// Always moves traffic; whether the state was saved and shared is in the status.
    async fn rollback(&self, reason: String) -> AdminResult {
        Control::rollback(self, Trigger::Admin, reason, None, None).await;
        Ok(self.status())
    }

    async fn reload(&self) -> AdminResult {
        let v = Control::reload(self, ReloadCause::Admin, false).await?;
        Ok(json!({"config_version": v}))
    }
}
