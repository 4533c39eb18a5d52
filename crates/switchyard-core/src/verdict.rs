//! The judge's verdict: whether the `to` provider is worse than `from`, per metric, with
//! the numbers behind it. Plain data, shared by the judge (switchyard-watch), the control
//! plane, the admin API and the CLI.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Judgement {
    Pass,
    Fail,
    Inconclusive,
}

impl Judgement {
    pub const ALL: [Judgement; 3] = [Judgement::Pass, Judgement::Fail, Judgement::Inconclusive];

    pub fn label(self) -> &'static str {
        match self {
            Judgement::Pass => "pass",
            Judgement::Fail => "fail",
            Judgement::Inconclusive => "inconclusive",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    #[serde(rename = "error_rate")]
    ErrorRate,
    #[serde(rename = "4xx_rate")]
    ClientErrorRate,
    /// Clients that gave up waiting for the answer's head.
    #[serde(rename = "client_gone_rate")]
    AbandonedRate,
    /// Answers cut short (`length` below the request's `max_tokens`, `content_filter`).
    #[serde(rename = "cut_short_rate")]
    CutShortRate,
    #[serde(rename = "p95_latency")]
    LatencyP95,
    #[serde(rename = "p95_ttft")]
    TtftP95,
}

impl Metric {
    /// A latency (compared as a ratio of p95s), not a rate.
    pub fn is_latency(self) -> bool {
        matches!(self, Metric::LatencyP95 | Metric::TtftP95)
    }

    pub const ALL: [Metric; 6] = [
        Metric::ErrorRate,
        Metric::ClientErrorRate,
        Metric::AbandonedRate,
        Metric::CutShortRate,
        Metric::LatencyP95,
        Metric::TtftP95,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::ClientErrorRate => "4xx_rate",
            Metric::AbandonedRate => "client_gone_rate",
            Metric::CutShortRate => "cut_short_rate",
            Metric::LatencyP95 => "p95_latency",
            Metric::TtftP95 => "p95_ttft",
        }
    }

    /// What it measures, in words.
    pub fn what(self) -> &'static str {
        match self {
            Metric::ErrorRate => "provider errors",
            Metric::ClientErrorRate => "4xx answers",
            Metric::AbandonedRate => "abandoned waits",
            Metric::CutShortRate => "answers cut short",
            Metric::LatencyP95 => "p95 latency",
            Metric::TtftP95 => "p95 time to first token",
        }
    }
}

/// One metric's judgement, with its numbers. Rates are fractions (0.05 = 5%), latencies
/// milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    pub metric: Metric,
    pub result: Judgement,
    pub to_value: Option<f64>,
    pub from_value: Option<f64>,
    /// Requests (rates) or answers (latencies) behind each value.
    pub to_n: u64,
    pub from_n: u64,
    /// Rates: `to − from`.
    pub difference: Option<f64>,
    /// Latencies: `to / from`.
    pub ratio: Option<f64>,
    /// The allowed difference (rates) or ratio (latencies).
    pub allowed: Option<f64>,
    /// The absolute backstop, when the config has one.
    pub absolute_limit: Option<f64>,
    pub test: Option<String>,
    pub p_value: Option<f64>,
    /// The significance this test was held to (the look's share for this metric and
    /// interval).
    pub alpha: Option<f64>,
    pub reason: String,
    /// The interval both sides' samples come from (the same one), in seconds.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    /// Latencies: how much higher `to`'s p95 must also be, in milliseconds.
    #[serde(default)]
    pub min_increase_ms: Option<f64>,
}

/// The judge's answer for the current window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub result: Judgement,
    /// One line a person reads; for a failure, what the rollback reason and alert say.
    pub reason: String,
    pub to: String,
    pub from: String,
    /// The look this verdict was made at (0: no comparative test yet).
    pub look: u32,
    pub metrics: Vec<MetricVerdict>,
    /// The most recent interval judged (`to`'s last window), in seconds, and both sides'
    /// requests in it.
    #[serde(default)]
    pub interval_seconds: Option<f64>,
    #[serde(default)]
    pub to_requests: u64,
    #[serde(default)]
    pub from_requests: u64,
    /// What is off without being a failure: a sample-ratio mismatch (which blocks
    /// auto-advance).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Evidence concentrated in one routing key or one client key: shown, never decisive.
    #[serde(default)]
    pub concentrated: Vec<Concentration>,
}

/// One key that sent much of a window's requests (or of its failures).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Concentration {
    /// `routing_key` (its hashed bucket) or `client_key` (its index in the configured list).
    pub kind: String,
    /// `bucket 4821`, `client key #2`: never the key itself.
    pub key: String,
    /// The side it was seen on.
    pub provider: String,
    /// Its requests in the window, and how many of them were counted.
    pub requests: u64,
    pub counted: u64,
    pub note: String,
}

impl Verdict {
    pub fn metric(&self, m: Metric) -> Option<&MetricVerdict> {
        self.metrics.iter().find(|v| v.metric == m)
    }

    /// Whether something is off that blocks auto-advance (a sample-ratio mismatch).
    pub fn blocks_advance(&self) -> bool {
        !self.warnings.is_empty()
    }

    /// The metric that failed first, for alerts.
    pub fn failed(&self) -> Option<&MetricVerdict> {
        self.metrics.iter().find(|v| v.result == Judgement::Fail)
    }
}
