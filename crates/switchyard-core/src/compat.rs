//! `GET /admin/compatibility` (and `switchyard report --json`): whether `to` honours what
//! requests ask of their answers as `from` does, from shadow pairs (the same prompt on
//! both sides) or, without them, from each side's own traffic.

use serde::{Deserialize, Serialize};

use crate::features::Feature;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compatibility {
    /// The migration reported on (`default` for a gateway of one `migration:`).
    #[serde(default)]
    pub migration: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    /// Shadow pairs compared (both sides answered).
    pub pairs: u64,
    /// `shadow` (paired evidence), `traffic` (no pairs: each side's own requests, which
    /// differ in their prompts), or `none` (nothing asked for any feature yet).
    pub source: String,
    /// Per feature seen in traffic, in a fixed order.
    pub features: Vec<FeatureReport>,
    pub tokens: TokenRatios,
    /// Paired latency (`to` − `from`, the same prompt), when there are pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<PairedLatency>,
    /// The cost of the same prompts on both sides, and the ROI projection corrected with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<PairedCost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReport {
    pub feature: Feature,
    /// `shadow` or `traffic` (see [`Compatibility::source`]).
    #[serde(default)]
    pub source: String,
    /// Pairs where both sides answered a request that asked for it (0 from traffic).
    pub pairs: u64,
    /// Answers that asked for it on each side (equal to `pairs` from shadow pairs).
    #[serde(default)]
    pub from_n: u64,
    #[serde(default)]
    pub to_n: u64,
    /// Share of those each side honoured.
    pub from_ok: f64,
    pub to_ok: f64,
    /// `mcnemar` (exact, on the pairs) or `fisher` (exact, two-sided, on traffic).
    pub test: String,
    pub p: f64,
    pub verdict: CompatVerdict,
    /// Request ids of pairs where the sides differed (those `to` failed, for `worse`).
    #[serde(default)]
    pub examples: Vec<String>,
}

/// `to` against `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompatVerdict {
    Same,
    Worse,
    Better,
    Inconclusive,
}

impl CompatVerdict {
    pub fn label(self) -> &'static str {
        match self {
            CompatVerdict::Same => "same",
            CompatVerdict::Worse => "worse",
            CompatVerdict::Better => "better",
            CompatVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// Tokens of the same prompts, `to` ÷ `from`: another tokenizer changes the bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRatios {
    /// Pairs where both sides answered with usage.
    #[serde(default)]
    pub pairs: u64,
    pub prompt_ratio: Option<f64>,
    pub completion_ratio: Option<f64>,
    /// Wilcoxon signed-rank, two-sided, on the paired differences.
    #[serde(default)]
    pub test: String,
    #[serde(default)]
    pub prompt_p: Option<f64>,
    #[serde(default)]
    pub completion_p: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedLatency {
    pub pairs: u64,
    /// Median of `to` − `from` over the pairs.
    pub median_delta_ms: f64,
    pub test: String,
    pub p: f64,
    pub verdict: CompatVerdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedCost {
    /// Pairs priced on both sides.
    pub pairs: u64,
    pub from_usd: f64,
    pub to_usd: f64,
    /// `to_usd / from_usd`: prices and both sides' own token counts.
    pub ratio: Option<f64>,
    /// From `/admin/stats` `roi`: everything at `from`'s price, a month.
    pub monthly_cost_all_on_from_usd: f64,
    /// `roi`'s projection: `from`'s token counts at `to`'s price (assumes one tokenizer).
    pub monthly_cost_all_on_to_usd: f64,
    /// All on `from` × the paired ratio: `to`'s price and `to`'s token counts.
    pub monthly_cost_all_on_to_corrected_usd: Option<f64>,
    pub monthly_savings_at_100_percent_corrected_usd: Option<f64>,
}
