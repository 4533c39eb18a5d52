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
    /// The significance this look was held to.
    pub alpha: Option<f64>,
    pub reason: String,
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
}

impl Verdict {
    pub fn metric(&self, m: Metric) -> Option<&MetricVerdict> {
        self.metrics.iter().find(|v| v.metric == m)
    }

    /// The metric that failed first, for alerts.
    pub fn failed(&self) -> Option<&MetricVerdict> {
        self.metrics.iter().find(|v| v.result == Judgement::Fail)
    }
}
