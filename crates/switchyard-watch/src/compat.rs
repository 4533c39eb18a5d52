//! The compatibility report: whether `to` honours what requests ask of their answers (tool
//! calls, JSON formats, finish reasons, stream usage, logprobs, n) as `from` does.
//!
//! Shadow pairs are the evidence: the same prompt went to both sides, so a feature is
//! compared pair by pair (McNemar's exact test on the pairs where the sides differ), and so
//! are latency and tokens (Wilcoxon's signed-rank test). Without pairs, each side's own
//! traffic is compared (Fisher's exact test), which is weaker — the prompts differ — and the
//! report says so.

use std::collections::VecDeque;

use switchyard_core::api;
use switchyard_core::compat::{CompatVerdict, FeatureReport};
use switchyard_core::event::{Class, RequestEvent, ShadowComparison};
use switchyard_core::features::{Feature, FeatureFacts};

use crate::stat::{fisher_greater, mcnemar_exact, wilcoxon};

/// A difference is reported (`worse`, `better`) when its test's p-value is under this: 1%,
/// as seven features are tested at once and the report is read again and again.
pub const ALPHA: f64 = 0.01;
/// The longest request id kept as an example (ids are the client's: bounded here so 10,000
/// pairs stay about a megabyte).
const ID_MAX: usize = 64;
/// Pairs (or answers on each side) before a feature can be called `same`.
pub const MIN_PAIRS: u64 = 20;
/// The largest difference in the share honoured that is still `same`.
pub const SAME_WITHIN: f64 = 0.05;
/// The smallest median latency difference called `worse` or `better`, as the judge's
/// default `min_latency_increase`: a significant 0.1 ms is no difference a user sees.
pub const MIN_LATENCY_DELTA_MS: f64 = 100.0;
/// Pairs kept (the most recent); about 150 bytes each.
pub const KEEP_PAIRS: usize = 10_000;
const EXAMPLES: usize = 5;
const FEATURES: usize = Feature::ALL.len();

/// One shadow pair, `from` (the served side) against `to` (its shadow).
#[derive(Debug, Clone)]
struct Pair {
    request_id: Box<str>,
    from: FeatureFacts,
    to: FeatureFacts,
    /// Both sides answered.
    answered: bool,
    latency_ms: (f64, f64),
    /// (prompt, completion) on each side.
    tokens: ((u64, u64), (u64, u64)),
    cost: (Option<f64>, Option<f64>),
}

/// One side's own traffic: per feature, answers that asked for it and those that honoured
/// it.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    asked: [u64; FEATURES],
    honoured: [u64; FEATURES],
}

/// One migration's evidence, for the two providers it is between now.
#[derive(Debug, Default)]
pub struct Compat {
    providers: (String, String),
    pairs: VecDeque<Pair>,
    /// `from`'s, `to`'s.
    traffic: [Traffic; 2],
}

impl Compat {
    /// Another pair of providers: nothing seen says anything about them.
    fn align(&mut self, from: &str, to: &str) {
        if self.providers.0 != from || self.providers.1 != to {
            *self = Compat {
                providers: (from.to_string(), to.to_string()),
                ..Compat::default()
            };
        }
    }

    /// A completed shadow comparison of this migration: its primary is `from`, its shadow
    /// `to`.
    pub fn pair(&mut self, from: &str, to: &str, c: &ShadowComparison) {
        self.align(from, to);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        self.pairs.push_back(Pair {
            request_id: clipped(&c.request_id).into(),
            from: c.primary_features,
            to: c.shadow_features,
            answered: c.primary_class == Class::Success && c.shadow_class == Class::Success,
            latency_ms: (ms(c.primary_latency), ms(c.shadow_latency)),
            tokens: (c.primary_tokens, c.shadow_tokens),
            cost: (c.primary_cost_usd, c.shadow_cost_usd),
        });
        while self.pairs.len() > KEEP_PAIRS {
            self.pairs.pop_front();
        }
    }

    /// A request this migration routed (or its live control).
    pub fn request(&mut self, from: &str, to: &str, e: &RequestEvent) {
        self.align(from, to);
        let side = if *e.provider == *to && !e.control {
            1
        } else if *e.provider == *from {
            0
        } else {
            return;
        };
        let t = &mut self.traffic[side];
        for (f, honoured) in e.features.iter() {
            t.asked[f as usize] += 1;
            t.honoured[f as usize] += u64::from(honoured);
        }
    }

    /// The report on `from` and `to` (empty when what was seen is about other providers).
    /// `roi`: the migration's cost projection, which the paired cost corrects.
    pub fn report(
        &self,
        migration: &str,
        (from, to): (&str, &str),
        roi: Option<&api::Roi>,
    ) -> api::Compatibility {
        if self.providers.0 != from || self.providers.1 != to {
            let mut fresh = Compat::default();
            fresh.align(from, to);
            return fresh.report(migration, (from, to), roi);
        }
        let answered: Vec<&Pair> = self.pairs.iter().filter(|p| p.answered).collect();
        let mut features = Vec::new();
        for f in Feature::ALL {
            if let Some(r) = self.paired(f).or_else(|| self.unpaired(f)) {
                features.push(r);
            }
        }
        let source = if !answered.is_empty() {
            "shadow"
        } else if !features.is_empty() {
            "traffic"
        } else {
            "none"
        };
        api::Compatibility {
            migration: migration.to_string(),
            from: self.providers.0.clone(),
            to: self.providers.1.clone(),
            pairs: answered.len() as u64,
            source: source.into(),
            features,
            tokens: tokens(&answered),
            latency: latency(&answered),
            cost: cost(&answered, roi),
        }
    }

    /// Which of `among` the evidence on `from` and `to` calls `worse` (the phase gate).
    pub fn worse(&self, (from, to): (&str, &str), among: &[Feature]) -> Vec<Feature> {
        if self.providers.0 != from || self.providers.1 != to {
            return Vec::new();
        }
        among
            .iter()
            .copied()
            .filter(|f| {
                self.paired(*f)
                    .or_else(|| self.unpaired(*f))
                    .is_some_and(|r| r.verdict == CompatVerdict::Worse)
            })
            .collect()
    }

    fn paired(&self, f: Feature) -> Option<FeatureReport> {
        let (mut n, mut from_ok, mut to_ok) = (0u64, 0u64, 0u64);
        let (mut b, mut c) = (Vec::new(), Vec::new());
        for p in &self.pairs {
            let (Some(x), Some(y)) = (p.from.get(f), p.to.get(f)) else {
                continue;
            };
            n += 1;
            from_ok += u64::from(x);
            to_ok += u64::from(y);
            match (x, y) {
                (true, false) => b.push(&*p.request_id),
                (false, true) => c.push(&*p.request_id),
                _ => {}
            }
        }
        if n == 0 {
            return None;
        }
        let p = mcnemar_exact(b.len() as u64, c.len() as u64);
        let (from_rate, to_rate) = (from_ok as f64 / n as f64, to_ok as f64 / n as f64);
        let verdict = verdict(p, n, from_rate, to_rate);
        // The newest examples of what the verdict is about.
        let shown = match verdict {
            CompatVerdict::Better => c,
            CompatVerdict::Worse => b,
            _ => b.into_iter().chain(c).collect(),
        };
        Some(FeatureReport {
            feature: f,
            source: "shadow".into(),
            pairs: n,
            from_n: n,
            to_n: n,
            from_ok: from_rate,
            to_ok: to_rate,
            test: "mcnemar".into(),
            p,
            verdict,
            examples: shown
                .iter()
                .rev()
                .take(EXAMPLES)
                .map(|s| s.to_string())
                .collect(),
        })
    }

    fn unpaired(&self, f: Feature) -> Option<FeatureReport> {
        let [from, to] = self.traffic;
        let i = f as usize;
        let (from_n, to_n) = (from.asked[i], to.asked[i]);
        if from_n == 0 && to_n == 0 {
            return None;
        }
        let (from_ok, to_ok) = (from.honoured[i], to.honoured[i]);
        let rate = |ok: u64, n: u64| if n == 0 { 0.0 } else { ok as f64 / n as f64 };
        // Two-sided: twice the smaller one-sided p-value.
        let worse = fisher_greater(to_n - to_ok, to_n, from_n - from_ok, from_n);
        let better = fisher_greater(from_n - from_ok, from_n, to_n - to_ok, to_n);
        let p = (2.0 * worse.min(better)).min(1.0);
        let (from_rate, to_rate) = (rate(from_ok, from_n), rate(to_ok, to_n));
        Some(FeatureReport {
            feature: f,
            source: "traffic".into(),
            pairs: 0,
            from_n,
            to_n,
            from_ok: from_rate,
            to_ok: to_rate,
            test: "fisher".into(),
            p,
            verdict: verdict(p, from_n.min(to_n), from_rate, to_rate),
            examples: Vec::new(),
        })
    }
}

fn clipped(id: &str) -> &str {
    let mut end = id.len().min(ID_MAX);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

fn verdict(p: f64, n: u64, from_rate: f64, to_rate: f64) -> CompatVerdict {
    if p < ALPHA && to_rate < from_rate {
        CompatVerdict::Worse
    } else if p < ALPHA && to_rate > from_rate {
        CompatVerdict::Better
    } else if n >= MIN_PAIRS && (to_rate - from_rate).abs() <= SAME_WITHIN {
        CompatVerdict::Same
    } else {
        CompatVerdict::Inconclusive
    }
}

fn tokens(pairs: &[&Pair]) -> api::TokenRatios {
    let metered: Vec<_> = pairs
        .iter()
        .filter(|p| p.tokens.0 .0 + p.tokens.0 .1 > 0 && p.tokens.1 .0 + p.tokens.1 .1 > 0)
        .collect();
    let ratio = |of: fn(&(u64, u64)) -> u64| {
        let from: u64 = metered.iter().map(|p| of(&p.tokens.0)).sum();
        let to: u64 = metered.iter().map(|p| of(&p.tokens.1)).sum();
        (from > 0).then(|| round3(to as f64 / from as f64))
    };
    let test = |of: fn(&(u64, u64)) -> u64| {
        let d: Vec<f64> = metered
            .iter()
            .map(|p| of(&p.tokens.1) as f64 - of(&p.tokens.0) as f64)
            .collect();
        (!d.is_empty()).then(|| wilcoxon(&d))
    };
    api::TokenRatios {
        pairs: metered.len() as u64,
        prompt_ratio: ratio(|t| t.0),
        completion_ratio: ratio(|t| t.1),
        test: "wilcoxon".into(),
        prompt_p: test(|t| t.0),
        completion_p: test(|t| t.1),
    }
}

fn latency(pairs: &[&Pair]) -> Option<api::PairedLatency> {
    if pairs.is_empty() {
        return None;
    }
    let mut d: Vec<f64> = pairs
        .iter()
        .map(|p| p.latency_ms.1 - p.latency_ms.0)
        .collect();
    let p = wilcoxon(&d);
    d.sort_by(f64::total_cmp);
    let mid = d.len() / 2;
    let median = if d.len() % 2 == 1 {
        d[mid]
    } else {
        (d[mid - 1] + d[mid]) / 2.0
    };
    // A latency is neither honoured nor not: `same` when the test finds no shift, or one
    // too small to matter.
    let shifted = p < ALPHA && median.abs() >= MIN_LATENCY_DELTA_MS;
    let verdict = match shifted {
        true if median > 0.0 => CompatVerdict::Worse,
        true => CompatVerdict::Better,
        false if pairs.len() as u64 >= MIN_PAIRS => CompatVerdict::Same,
        false => CompatVerdict::Inconclusive,
    };
    Some(api::PairedLatency {
        pairs: pairs.len() as u64,
        median_delta_ms: round3(median),
        test: "wilcoxon".into(),
        p,
        verdict,
    })
}

fn cost(pairs: &[&Pair], roi: Option<&api::Roi>) -> Option<api::PairedCost> {
    let priced: Vec<(f64, f64)> = pairs
        .iter()
        .filter_map(|p| Some((p.cost.0?, p.cost.1?)))
        .collect();
    if priced.is_empty() {
        return None;
    }
    let from_usd: f64 = priced.iter().map(|c| c.0).sum();
    let to_usd: f64 = priced.iter().map(|c| c.1).sum();
    let ratio = (from_usd > 0.0).then(|| to_usd / from_usd);
    let monthly_from = roi.map_or(0.0, |r| r.monthly_cost_all_on_from_usd);
    let corrected = ratio.filter(|_| roi.is_some()).map(|r| monthly_from * r);
    Some(api::PairedCost {
        pairs: priced.len() as u64,
        from_usd,
        to_usd,
        ratio: ratio.map(round3),
        monthly_cost_all_on_from_usd: monthly_from,
        monthly_cost_all_on_to_usd: roi.map_or(0.0, |r| r.monthly_cost_all_on_to_usd),
        monthly_cost_all_on_to_corrected_usd: corrected,
        monthly_savings_at_100_percent_corrected_usd: corrected.map(|c| monthly_from - c),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn comparison(id: &str, from: FeatureFacts, to: FeatureFacts) -> ShadowComparison {
        ShadowComparison {
            primary_status: 200,
            shadow_status: 200,
            primary_class: Class::Success,
            shadow_class: Class::Success,
            primary_cut: None,
            shadow_cut: None,
            primary_latency: Duration::from_millis(100),
            shadow_latency: Duration::from_millis(230),
            primary_ttft: None,
            shadow_ttft: None,
            primary_tokens: (100, 50),
            shadow_tokens: (110, 60),
            primary_cost_usd: Some(0.002),
            shadow_cost_usd: Some(0.001),
            exact_match: false,
            similarity: None,
            primary_json_valid: None,
            shadow_json_valid: None,
            primary_features: from,
            shadow_features: to,
            request_id: id.into(),
        }
    }

    fn facts(of: &[(Feature, bool)]) -> FeatureFacts {
        let mut f = FeatureFacts::default();
        for (feature, honoured) in of {
            f.set(*feature, *honoured);
        }
        f
    }

    /// The check of issue 25: a `to` that drops every tool call and breaks every schema is
    /// `worse` on both within ten pairs, with the pairs it failed as examples; the finish
    /// reason both honour is `same` once there are enough pairs.
    #[test]
    fn a_side_that_drops_tool_calls_is_worse_on_the_pairs() {
        let mut c = Compat::default();
        for i in 0..30 {
            let (from, to) = if i % 2 == 0 {
                (
                    facts(&[(Feature::ToolCalls, true), (Feature::FinishReason, true)]),
                    facts(&[(Feature::ToolCalls, false), (Feature::FinishReason, true)]),
                )
            } else {
                (
                    facts(&[(Feature::JsonSchema, true), (Feature::FinishReason, true)]),
                    facts(&[(Feature::JsonSchema, false), (Feature::FinishReason, true)]),
                )
            };
            c.pair("old", "new", &comparison(&format!("r-{i}"), from, to));
        }
        let roi = api::Roi {
            observed_seconds: 60.0,
            actual_cost_usd: 1.0,
            all_on_from_usd: 1.0,
            all_on_to_usd: 0.4,
            savings_so_far_usd: 0.0,
            savings_at_100_percent_usd: 0.6,
            monthly_cost_all_on_from_usd: 1000.0,
            monthly_cost_all_on_to_usd: 400.0,
            monthly_savings_at_100_percent_usd: 600.0,
        };
        let r = c.report("default", ("old", "new"), Some(&roi));
        assert_eq!((r.pairs, r.source.as_str()), (30, "shadow"));
        let get = |f: Feature| r.features.iter().find(|x| x.feature == f).unwrap();
        let tools = get(Feature::ToolCalls);
        assert_eq!(tools.verdict, CompatVerdict::Worse);
        assert_eq!((tools.pairs, tools.from_ok, tools.to_ok), (15, 1.0, 0.0));
        assert!((tools.p - mcnemar_exact(15, 0)).abs() < 1e-15);
        assert_eq!(tools.examples[0], "r-28");
        assert_eq!(tools.examples.len(), EXAMPLES);
        assert_eq!(get(Feature::JsonSchema).verdict, CompatVerdict::Worse);
        assert_eq!(get(Feature::FinishReason).verdict, CompatVerdict::Same);
        let gated = [Feature::ToolCalls, Feature::FinishReason];
        assert_eq!(c.worse(("old", "new"), &gated), [Feature::ToolCalls]);
        assert!(c.worse(("old", "third"), &gated).is_empty());
        assert!(r.features.iter().all(|f| f.feature != Feature::Logprobs));
        // Another tokenizer: 10% more prompt tokens, 20% more completion tokens.
        assert_eq!(r.tokens.prompt_ratio, Some(1.1));
        assert_eq!(r.tokens.completion_ratio, Some(1.2));
        let latency = r.latency.unwrap();
        assert_eq!(latency.median_delta_ms, 130.0);
        assert_eq!(latency.verdict, CompatVerdict::Worse);
        // Significant but tiny: the same.
        let mut tiny = Compat::default();
        for i in 0..30 {
            let mut c = comparison(
                &format!("t-{i}"),
                FeatureFacts::default(),
                FeatureFacts::default(),
            );
            c.shadow_latency = Duration::from_micros(100_100);
            tiny.pair("old", "new", &c);
        }
        let l = tiny
            .report("default", ("old", "new"), None)
            .latency
            .unwrap();
        assert_eq!(l.verdict, CompatVerdict::Same, "{l:?}");
        let cost = r.cost.unwrap();
        assert_eq!(cost.ratio, Some(0.5));
        let corrected = cost.monthly_cost_all_on_to_corrected_usd.unwrap();
        assert!((corrected - 500.0).abs() < 1e-9, "{corrected}");
    }

    /// Five pairs that differ say nothing yet; nor does a feature both sides honour on a
    /// handful of pairs.
    #[test]
    fn few_pairs_are_inconclusive() {
        let mut c = Compat::default();
        for i in 0..5 {
            let from = facts(&[(Feature::ToolCalls, true), (Feature::N, true)]);
            let to = facts(&[(Feature::ToolCalls, false), (Feature::N, true)]);
            c.pair("old", "new", &comparison(&format!("r-{i}"), from, to));
        }
        let r = c.report("default", ("old", "new"), None);
        for f in &r.features {
            assert_eq!(f.verdict, CompatVerdict::Inconclusive, "{:?}", f.feature);
        }
        assert!(r
            .cost
            .unwrap()
            .monthly_cost_all_on_to_corrected_usd
            .is_none());
    }

    /// Without shadow pairs each side's own traffic is compared, and the report says so.
    #[test]
    fn without_pairs_the_sides_traffic_is_compared() {
        let mut c = Compat::default();
        let event = |provider: &str, honoured: bool| RequestEvent {
            provider: provider.into(),
            features: facts(&[(Feature::StreamUsage, honoured)]),
            ..RequestEvent::default()
        };
        for _ in 0..40 {
            c.request("old", "new", &event("old", true));
            c.request("old", "new", &event("new", false));
        }
        let r = c.report("default", ("old", "new"), None);
        assert_eq!((r.pairs, r.source.as_str()), (0, "traffic"));
        let usage = &r.features[0];
        assert_eq!(usage.feature, Feature::StreamUsage);
        assert_eq!(
            (usage.from_n, usage.to_n, usage.test.as_str()),
            (40, 40, "fisher")
        );
        assert_eq!(usage.verdict, CompatVerdict::Worse);
        assert!(r.latency.is_none());
        // Another `to`: what was seen is about another provider.
        assert_eq!(
            c.report("default", ("old", "third"), None).features.len(),
            0
        );
        c.request("old", "third", &event("third", true));
        let r = c.report("default", ("old", "third"), None);
        assert_eq!(r.features[0].to_n, 1);
        assert_eq!(r.features[0].from_n, 0);
    }
}
