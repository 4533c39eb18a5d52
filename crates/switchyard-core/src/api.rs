//! The admin API's documents, as types: built by the control plane, served by the admin
//! API, read by the CLI and the tests. The JSON they make is the documented contract; the
//! round-trip test below pins it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::compat::{
    CompatVerdict, Compatibility, FeatureReport, PairedCost, PairedLatency, TokenRatios,
};
use crate::migration::Trigger;
use crate::verdict::Verdict;

/// `GET /admin/status`, and the answer of every phase change: one migration's (in a
/// gateway of several, `GET /admin/migrations/NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The migration's name (`default` for a gateway of one `migration:`).
    #[serde(default)]
    pub migration: String,
    /// The requests it moves (a gateway of several).
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<MatchView>,
    /// Every migration of the gateway, by name, in file order (several only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<String>,
    /// Where requests no migration matches go (several only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<String>,
    pub from: String,
    pub to: String,
    pub phase: PhaseView,
    /// Share of routing keys sent to `to` now.
    pub percent: f64,
    pub phase_since_unix: u64,
    pub auto_advance: bool,
    /// Why the phase gate waits (with `auto_advance`).
    pub gate: Option<String>,
    pub rolled_back: bool,
    pub rollback_reason: Option<String>,
    pub rollback_trigger: Option<Trigger>,
    /// The phase a rollback left, while rolled back.
    pub rolled_back_from: Option<String>,
    pub phases: Vec<PhaseInfo>,
    pub config_version: u64,
    pub providers: BTreeMap<String, ProviderHealth>,
    /// Cluster mode only.
    pub cluster: Option<ClusterStatus>,
    /// The judge's current verdict, once something was judged in this phase.
    pub verdict: Option<Verdict>,
    /// The last preflight of `to`.
    pub preflight: Option<PreflightReport>,
    pub state_file: StateFileStatus,
    /// An operator declared the migration done at its last phase (`POST /admin/finish`).
    #[serde(default)]
    pub finished: bool,
    /// The judge's live control on `from` at the last phase, while it is on.
    #[serde(default)]
    pub control: Option<ControlView>,
    /// The verdict that caused the automatic rollback now in effect, with its whole metric
    /// table: kept until the rollback is left.
    #[serde(default)]
    pub last_failing_verdict: Option<Verdict>,
}

/// A migration's `match`: the conditions a request must meet, all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchView {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, String>,
}

/// `GET /admin/migrations`: each migration's status, in file order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migrations {
    pub migrations: Vec<Status>,
}

/// What `POST /admin/rollback` answers: the migration's status, or, when a gateway of
/// several rolled them all back at once, every migration's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RollbackAnswer {
    All(Migrations),
    One(Box<Status>),
}

/// The judge's live control: a share of `to`'s requests also sent to `from` (answers
/// discarded) at the last phase, until the migration is finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlView {
    pub provider: String,
    pub percent: f64,
    /// "2% of `new`'s requests also sent to `old` …".
    pub note: String,
}

/// The phase in effect; while rolled back `{"name": "rollback", "index": null, "percent": 0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseView {
    pub name: String,
    pub index: Option<usize>,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseInfo {
    pub name: String,
    pub percent: f64,
    pub hold_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub healthy: bool,
    /// Whether a health check has run yet.
    pub checked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub store: String,
    /// Whether the store answers.
    pub healthy: bool,
    pub replica_id: String,
    pub leader: bool,
    pub replicas: Vec<ReplicaView>,
    /// The judge's windows summed over the fleet, for the current state.
    pub to_window: Option<FleetWindowView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: String,
    pub phase: String,
    pub last_seen: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetWindowView {
    pub requests: u64,
    pub from_requests: u64,
    pub replicas: usize,
}

/// Whether the live state is in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: String,
    pub saved: bool,
    pub error: Option<String>,
}

/// A provider's preflight: one probe per priced model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightReport {
    pub provider: String,
    pub ok: bool,
    pub at_unix: u64,
    pub probes: Vec<PreflightProbe>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightProbe {
    /// The model asked for; `None` for the `GET <health_check.path>` used when no model
    /// is priced.
    pub model: Option<String>,
    pub status: Option<u16>,
    pub ok: bool,
    /// What refused it, from the provider's error body or the connection.
    pub detail: String,
    /// A chat probe streams and asks for its usage (`stream_options.include_usage`):
    /// whether the usage came (`inject_stream_usage: auto` turns on when it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_usage: Option<bool>,
    pub latency_ms: u64,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub window: StatsWindow,
    pub providers: BTreeMap<String, ProviderStats>,
    pub roi: Roi,
    pub shadow: Option<ShadowSummary>,
    pub verdict: Option<Verdict>,
}

/// The rolling window latencies and rates are over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsWindow {
    pub requests: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Since start.
    pub requests: u64,
    /// Since start, by outcome class.
    pub outcomes: BTreeMap<String, u64>,
    pub latency: Option<Latency>,
    pub ttfb: Option<Latency>,
    /// Over the window, by outcome class, and `provider_errors`.
    pub error_rate: BTreeMap<String, f64>,
    pub window: WindowCounts,
    pub tokens: Tokens,
    pub cost_usd: f64,
    pub cost_on_other_provider_usd: f64,
    pub unpriced_requests: u64,
    /// Since start: successful answers whose usage could not be read (a stream whose client
    /// did not ask for usage, with `inject_stream_usage` off): their tokens and cost are
    /// unknown and left out of `tokens` and `cost_usd`.
    #[serde(default)]
    pub unmetered_requests: u64,
    /// Since start: 2xx answers with no answer in them (`bad_answer`), by shape
    /// (`error_object`, `no_choices`, `empty_message`, `error_event`, `unfinished_stream`).
    #[serde(default)]
    pub bad_answers: BTreeMap<String, u64>,
    /// Since start: answers cut short though the client did not ask, by reason (`length`,
    /// `content_filter`).
    #[serde(default)]
    pub cut_answers: BTreeMap<String, u64>,
    /// Since start: clients that gave up waiting for this provider's answer head.
    #[serde(default)]
    pub abandoned_waits: u64,
    /// Over the window: how long those clients had waited.
    #[serde(default)]
    pub abandoned_wait: Option<Latency>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowCounts {
    pub requests: usize,
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// What the traffic seen so far cost, what it would have cost all on one side, and the
/// monthly projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roi {
    pub observed_seconds: f64,
    pub actual_cost_usd: f64,
    pub all_on_from_usd: f64,
    pub all_on_to_usd: f64,
    pub savings_so_far_usd: f64,
    pub savings_at_100_percent_usd: f64,
    pub monthly_cost_all_on_from_usd: f64,
    pub monthly_cost_all_on_to_usd: f64,
    pub monthly_savings_at_100_percent_usd: f64,
}

/// The shadow comparison, once anything was mirrored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// Mirrored requests by result (`completed`, `error`, `timeout`, `dropped` …).
    pub requests: BTreeMap<String, u64>,
    pub compared: u64,
    pub status_match_rate: f64,
    pub exact_match_rate: f64,
    pub similarity_avg: Option<f64>,
    pub json: ShadowJson,
    pub latency: ShadowLatency,
    pub ttft: ShadowLatency,
    pub tokens: ShadowTokens,
    pub cost_usd: ShadowCost,
    /// Compared pairs whose answer (on each side) was a 2xx with no answer in it, or was cut
    /// short.
    #[serde(default)]
    pub answers: ShadowAnswers,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowAnswers {
    pub bad_answer: SideCounts,
    pub cut_short: SideCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounts {
    pub primary: u64,
    pub shadow: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowJson {
    pub asked: u64,
    pub primary_valid: u64,
    pub shadow_valid: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowLatency {
    pub primary: Option<Latency>,
    pub shadow: Option<Latency>,
    pub delta_p50_ms: Option<f64>,
    pub delta_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowTokens {
    pub primary: TokenPair,
    pub shadow: TokenPair,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowCost {
    pub primary: f64,
    pub shadow: f64,
    pub delta: f64,
}

/// `POST /admin/phase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRequest {
    pub phase: String,
    /// Move even if `to` refuses the preflight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_preflight: bool,
}

/// `POST /admin/phase/next` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextRequest {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_preflight: bool,
}

/// `POST /admin/rollback` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /admin/reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub config_version: u64,
}

/// Every admin error: `{"error": {"message", "type", "code", "details"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// What `GET /admin/events` streams (Server-Sent Events; the SSE `event:` field is the
/// `type`, `data:` the JSON of the whole value). A client first gets `history` (the last
/// 15 minutes, a point a second) and a `snapshot`, then a `snapshot` every second and the
/// other events as they happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The per-second points of the last 15 minutes, oldest first.
    History {
        points: Vec<Point>,
    },
    /// Everything the dashboard shows, every second.
    Snapshot {
        status: Box<Status>,
        stats: Box<Stats>,
        point: Point,
        /// Every migration's status, in a gateway of several.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        migrations: Vec<Status>,
    },
    /// The migration state changed (a phase, or leaving a rollback).
    Phase {
        phase: String,
        percent: f64,
        by: String,
        /// Which migration, in a gateway of several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration: Option<String>,
    },
    Rollback {
        reason: String,
        trigger: Trigger,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration: Option<String>,
    },
    /// The judge's overall result changed.
    Verdict {
        verdict: Box<Verdict>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration: Option<String>,
    },
    Health {
        provider: String,
        healthy: bool,
    },
    /// An alert, as the webhook gets it.
    Alert {
        event: String,
        provider: Option<String>,
        text: String,
    },
    /// The replicas alive changed (cluster mode).
    Replicas {
        replicas: Vec<ReplicaView>,
    },
    /// The gateway started (or restarted): its counters and charts begin again here.
    Started {
        version: String,
    },
}

impl Event {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::History { .. } => "history",
            Event::Snapshot { .. } => "snapshot",
            Event::Phase { .. } => "phase",
            Event::Rollback { .. } => "rollback",
            Event::Verdict { .. } => "verdict",
            Event::Health { .. } => "health",
            Event::Alert { .. } => "alert",
            Event::Replicas { .. } => "replicas",
            Event::Started { .. } => "started",
        }
    }

    /// Kept in the journal (with an id and a time), replayed to a client that missed it,
    /// and across a restart: everything but the per-second frames.
    pub fn kept(&self) -> bool {
        match self {
            Event::History { .. } | Event::Snapshot { .. } => false,
            // The alerts that repeat a phase move, a rollback or a health change (which are
            // kept as themselves) are live only: they would halve what the journal holds.
            Event::Alert { event, .. } => {
                !matches!(event.as_str(), "phase_change" | "rollback" | "health")
            }
            _ => true,
        }
    }

    /// As one Server-Sent Events frame.
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        format!("event: {}\ndata: {data}\n\n", self.name())
    }
}

/// One second of a migration, per provider: what the dashboard's charts draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub at_unix_ms: u64,
    /// Share of keys routed to `to` then.
    pub percent: f64,
    pub providers: BTreeMap<String, PointValues>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointValues {
    /// Requests finished in that second.
    pub rps: f64,
    /// Over the stats window, as `/admin/stats` has them then.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub error_rate: f64,
    pub cost_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(v: Value) {
        let typed: T = serde_json::from_value(v.clone()).expect("reads the documented JSON");
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            v,
            "writes it back unchanged"
        );
    }

    /// The documented documents, field for field.
    #[test]
    fn the_json_is_pinned() {
        round_trip::<Status>(json!({
            "migration": "default",
            "from": "old", "to": "new",
            "phase": {"name": "rollback", "index": null, "percent": 0.0},
            "percent": 0.0, "phase_since_unix": 1795723527u64, "auto_advance": false,
            "gate": null, "rolled_back": true, "rollback_reason": "new side broken",
            "rollback_trigger": "admin", "rolled_back_from": "phase-3",
            "phases": [{"name": "phase-1", "percent": 10.0, "hold_seconds": 86400}],
            "config_version": 3,
            "providers": {"new": {"healthy": true, "checked": true}},
            "cluster": {"store": "etcd", "healthy": true, "replica_id": "gw-a", "leader": true,
                        "replicas": [{"id": "gw-a", "phase": "rollback", "last_seen": 1795723527u64}],
                        "to_window": {"requests": 0, "from_requests": 12, "replicas": 3}},
            "verdict": null,
            "preflight": {"provider": "new", "ok": false, "at_unix": 1795723000u64,
                          "probes": [{"model": "deepseek-chat", "status": 401, "ok": false,
                                      "detail": "Incorrect API key provided", "latency_ms": 95}]},
            "state_file": {"path": "/var/lib/switchyard/state.json", "saved": false,
                           "error": "cannot save the migration state to …: Permission denied"},
            "finished": false,
            "control": {"provider": "old", "percent": 2.0,
                        "note": "2% of `new`'s requests also sent to `old`"},
            "last_failing_verdict": null,
        }));
        let latency =
            json!({"avg_ms": 1.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0});
        round_trip::<Stats>(json!({
            "window": {"requests": 1000, "seconds": 300.0},
            "providers": {"new": {
                "requests": 3, "outcomes": {"2xx": 2, "auth": 1},
                "latency": latency, "ttfb": null,
                "error_rate": {"4xx": 0.0, "auth": 0.333, "provider_errors": 0.333},
                "window": {"requests": 3, "outcomes": {"2xx": 2, "auth": 1}},
                "tokens": {"prompt": 10, "completion": 5, "total": 15},
                "cost_usd": 0.001, "cost_on_other_provider_usd": 0.002, "unpriced_requests": 0, "unmetered_requests": 0,
                "bad_answers": {"error_object": 1}, "cut_answers": {"length": 2},
                "abandoned_waits": 1, "abandoned_wait": latency,
            }},
            "roi": {"observed_seconds": 60.0, "actual_cost_usd": 0.001, "all_on_from_usd": 0.002,
                    "all_on_to_usd": 0.001, "savings_so_far_usd": 0.001, "savings_at_100_percent_usd": 0.001,
                    "monthly_cost_all_on_from_usd": 86.4, "monthly_cost_all_on_to_usd": 43.2,
                    "monthly_savings_at_100_percent_usd": 43.2},
            "shadow": {"requests": {"completed": 4}, "compared": 4, "status_match_rate": 1.0,
                       "exact_match_rate": 0.5, "similarity_avg": 0.8,
                       "json": {"asked": 0, "primary_valid": 0, "shadow_valid": 0},
                       "latency": {"primary": latency, "shadow": latency, "delta_p50_ms": 0.0, "delta_p95_ms": 0.0},
                       "ttft": {"primary": null, "shadow": null, "delta_p50_ms": null, "delta_p95_ms": null},
                       "tokens": {"primary": {"prompt": 1, "completion": 2}, "shadow": {"prompt": 1, "completion": 3}},
                       "cost_usd": {"primary": 0.1, "shadow": 0.05, "delta": -0.05},
                       "answers": {"bad_answer": {"primary": 0, "shadow": 2},
                                   "cut_short": {"primary": 0, "shadow": 1}}},
            "verdict": null,
        }));
        round_trip::<PhaseRequest>(json!({"phase": "phase-2"}));
        round_trip::<PhaseRequest>(json!({"phase": "phase-2", "skip_preflight": true}));
        round_trip::<NextRequest>(json!({}));
        round_trip::<RollbackRequest>(json!({"reason": "slow"}));
        round_trip::<ReloadAnswer>(json!({"config_version": 4}));
        round_trip::<Event>(json!({"type": "rollback", "reason": "slow", "trigger": "auto"}));
        round_trip::<Event>(
            json!({"type": "history", "points": [{"at_unix_ms": 1, "percent": 50.0,
            "providers": {"new": {"rps": 3.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
                                  "ttft_p95_ms": null, "error_rate": 0.0, "cost_usd": 0.01}}}]}),
        );
        let frame = Event::Health {
            provider: "new".into(),
            healthy: false,
        }
        .to_sse();
        assert!(
            frame.starts_with("event: health\ndata: {\"type\":\"health\""),
            "{frame}"
        );
        assert!(frame.ends_with("\n\n"));
        round_trip::<ErrorBody>(
            json!({"error": {"message": "m", "type": "admin_error", "code": 409}}),
        );
        round_trip::<ErrorBody>(
            json!({"error": {"message": "m", "type": "admin_error", "code": 400, "details": ["a:1: b"]}}),
        );
    }
}
