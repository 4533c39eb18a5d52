//! The judge: is `to` worse than `from`, on the same traffic at the same time, and is the
//! evidence strong enough to act on? Pure: given both sides over the same intervals
//! ([`crate::window`]) and a look ([`crate::looks`]), it answers a verdict; the control
//! plane only applies verdicts.
//!
//! Per metric, `to` is compared with `from` over each interval:
//! - **rates** — provider errors (5xx, timeouts, connect errors, cut streams, bad answers,
//!   and the provider's refusals unless left out by `count_as_errors`), other 4xx answers,
//!   waits the clients abandoned, answers cut short: fail when `to`'s rate is higher by more
//!   than `max_error_rate_increase` *and* a one-sided Fisher's exact test says so;
//! - **latencies** — p95 of whole answers and of time to first token, within strata (model
//!   and length): fail when the ratio is over `max_latency_ratio`, the difference over
//!   `min_latency_increase`, *and* van Elteren's stratified rank test says `to` is slower.
//!
//! Three results, as in Argo Rollouts' analysis: **pass**, **fail** (roll back),
//! **inconclusive** (too little data on either side in the interval: hold, never advance).
//! A failure that one routing key or one client key alone explains is not a failure: the
//! heaviest key is left out and the test run again (a leave-one-cluster-out check: requests
//! of one sticky user are not independent samples). The absolute backstops (`max_error_rate`, `max_p95_latency`)
//! fail only when a one-sided exact binomial test says `to` is over them. Every test of a
//! look shares the look's significance (Bonferroni over metrics and intervals).
use switchyard_core::config::AutoRollbackConfig;

pub use switchyard_core::verdict::{Concentration, Judgement, Metric, MetricVerdict, Verdict};

pub use crate::compare::Sides;
use crate::compare::{p_text, pct, secs, Judging, LATENCIES, RATES};
use crate::looks::Look;
use crate::stat;
use crate::window::Scale;

/// A sample-ratio mismatch is called at this significance (the A/B-testing convention).
const SRM_ALPHA: f64 = 0.001;
/// A sample-ratio check needs at least this many routed requests.
const SRM_MIN: u64 = 100;

/// Judges `to` against `from` at `look` (`None`: between looks, where nothing but what is
/// already certain can fail; see the watcher).
pub fn judge(cfg: &AutoRollbackConfig, sides: &Sides<'_>, look: Option<Look>) -> Verdict {
    let min = u64::from(cfg.min_requests.max(1));
    let empty = Scale::default();
    let first = sides.scales.first().unwrap_or(&empty);
    let (to_n, from_n) = (first.to.requests(), first.from.requests());
    // Every test of this look shares its significance: each metric's comparison, and the
    // backstops written, over each interval.
    let backstops =
        usize::from(cfg.max_error_rate.is_some()) + 2 * usize::from(cfg.max_p95_latency.is_some());
    let tests = sides.scales.len().max(1) * (RATES.len() + LATENCIES.len() + backstops);
    let alpha = look.map(|l| l.alpha / tests as f64);
    let mut j = Judging {
        cfg,
        sides,
        alpha,
        min,
        concentrated: Vec::new(),
    };
    let mut metrics: Vec<MetricVerdict> = RATES.iter().map(|m| j.rate(*m)).collect();
    metrics.extend(LATENCIES.iter().map(|m| j.latency(*m)));
    let compared = |m: &MetricVerdict| m.p_value.is_some();
    // The verdict's own numbers are those of the interval that decided it: the failing
    // metric's, or the error rate's as compared (the shortest interval with enough on
    // both sides), or the shortest interval.
    let decisive = metrics
        .iter()
        .find(|m| m.result == Judgement::Fail)
        .or(metrics.first().filter(|m| compared(m)));
    let (shown_to, shown_from, shown_secs) = match decisive {
        Some(m) => (
            m.to_n,
            m.from_n,
            m.interval_seconds.unwrap_or(first.seconds),
        ),
        None => (to_n, from_n, first.seconds),
    };
    let (result, reason) = if let Some(f) = metrics.iter().find(|m| m.result == Judgement::Fail) {
        (
            Judgement::Fail,
            format!("{}: {}", f.metric.label(), f.reason),
        )
    } else if to_n < min {
        (
            Judgement::Inconclusive,
            format!(
                "`{}` has {to_n} of the {min} requests needed to judge: needs ~{} more requests on `{}`",
                sides.to_name,
                min - to_n,
                sides.to_name
            ),
        )
    } else if cfg.compare.is_none() {
        (
            Judgement::Pass,
            format!(
                "`{}` within the absolute limits over {to_n} requests",
                sides.to_name
            ),
        )
    } else if look.is_none() {
        (Judgement::Inconclusive, "not judged yet".into())
    } else if !metrics
        .iter()
        .filter(|m| !m.metric.is_latency())
        .any(compared)
    {
        (Judgement::Inconclusive, j.waiting_for_from())
    } else if !metrics
        .iter()
        .filter(|m| m.metric.is_latency())
        .any(compared)
    {
        (
            Judgement::Inconclusive,
            format!(
                "too few successful answers on either side to compare latency (need {min} each in one interval)"
            ),
        )
    } else {
        (
            Judgement::Pass,
            format!(
                "`{}` no worse than `{}` over {shown_to}/{shown_from} requests in the last {}",
                sides.to_name,
                sides.from_name,
                secs(shown_secs)
            ),
        )
    };
    let mut concentrated = j.concentrated;
    concentrated.extend(heavy(sides, first));
    Verdict {
        result,
        reason,
        to: sides.to_name.to_string(),
        from: sides.from_name.to_string(),
        look: if alpha.is_some() {
            look.map_or(0, |l| l.k)
        } else {
            0
        },
        metrics,
        interval_seconds: Some(shown_secs),
        to_requests: shown_to,
        from_requests: shown_from,
        warnings: sample_ratio(sides, first).into_iter().collect(),
        concentrated,
    }
}

/// A routing key that sent a large share of the shortest interval (a sticky user): shown
/// even when it decides nothing.
fn heavy(sides: &Sides<'_>, first: &Scale) -> Vec<Concentration> {
    [(sides.to_name, &first.to), (sides.from_name, &first.from)]
        .into_iter()
        .filter_map(|(name, s)| {
            let (key, n) = s.top_key()?;
            let total = s.requests();
            (n >= 5 && n * 10 >= total).then(|| Concentration {
                kind: "routing_key".into(),
                key: format!("bucket {key}"),
                provider: name.to_string(),
                requests: n,
                counted: n,
                note: format!(
                    "one routing key sent {n} of `{name}`'s {total} requests in the last {}",
                    secs(first.seconds)
                ),
            })
        })
        .collect()
}

/// A `to` share of routed requests unlike the phase's: routing, failover or one key
/// dominating. Blocks auto-advance.
fn sample_ratio(sides: &Sides<'_>, first: &Scale) -> Option<String> {
    let p = sides.expected_share?;
    let (k, n) = (first.to.routed, first.to.routed + first.from.routed);
    if n < SRM_MIN {
        return None;
    }
    let pv = stat::share_differs(k, n, p);
    (pv < SRM_ALPHA).then(|| {
        format!(
            "sample ratio mismatch: `{}` served {} of {n} requests in the last {}, the phase sends {} ({}): a routing bug, failovers, or one key dominating; auto-advance waits",
            sides.to_name,
            pct(k as f64 / n as f64),
            secs(first.seconds),
            pct(p),
            p_text(pv)
        )
    })
}
