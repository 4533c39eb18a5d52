//! The judge: is `to` worse than `from`, on the same traffic at the same time, and is the
//! evidence strong enough to act on? Pure: fed events and the time, asked for a verdict;
//! the control plane only applies verdicts.
//!
//! Per metric, `to` is compared with `from` over the same recent interval:
//! - **error rate** (provider errors: 5xx, timeouts, connect errors, cut streams, and the
//!   provider's refusals `auth`/`refused` unless left out by `count_as_errors`) and
//!   **4xx rate** (other 4xx answers: a model the new side does not serve, a request shape
//!   it rejects): fail when `to`'s rate is higher by more than `max_error_rate_increase`
//!   *and* a one-sided Fisher's exact test says so;
//! - **p95 latency** of whole answers and **p95 time to first token** of streams, over
//!   successful answers: fail when the ratio to `from`'s is over `max_latency_ratio` *and*
//!   a one-sided Mann-Whitney U test says `to` is slower across the board.
//!
//! Three results, as in Argo Rollouts' analysis: **pass** (a phase gate may open), **fail**
//! (roll back), **inconclusive** (too little data on either side: hold, never advance).
//! Absolute limits (`max_error_rate`, `max_p95_latency`) are backstops that apply only
//! where written in the config.
//!
//! Judging again and again must not turn a 5% false-alarm rate per look into a near-certain
//! false alarm over a long phase: the comparative tests only call a failure at *looks*,
//! one each time a quarter window of fresh `to` requests has arrived, and look `k` is held
//! to `α · 6/(π² k²)` ([`stat::alpha_at_look`]), so all the looks of a phase together
//! stay within `α = 1 − confidence`.
//!
//! Windows are summaries ([`Summary`]: outcome counts and latency histograms) that add up,
//! so a fleet is judged on the sum of its replicas' windows with the same code.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::config::AutoRollbackConfig;
use switchyard_core::event::{Class, RequestEvent};
use switchyard_core::router::Side;

use crate::stat;

/// Latency histograms have buckets 2% wide: summable across replicas, and fine enough
/// that a ratio of p95s is off by at most 2%.
const GROWTH: f64 = 1.02;

/// `from`'s window holds at most this many windows' worth of requests: at 10% to `to`,
/// `from` serves nine times as many in the same interval.
const FROM_WINDOWS: usize = 10;

/// A latency histogram (microseconds, log buckets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hist(BTreeMap<u16, u64>);

impl Hist {
    fn bucket(us: u64) -> u16 {
        if us <= 1 {
            return 0;
        }
        ((us as f64).ln() / GROWTH.ln())
            .floor()
            .min(f64::from(u16::MAX)) as u16
    }

    fn value_ms(bucket: u16) -> f64 {
        GROWTH.powf(f64::from(bucket) + 0.5) / 1000.0
    }

    pub fn add(&mut self, us: u64) {
        *self.0.entry(Self::bucket(us)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Hist) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// Nearest-rank quantile, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in &self.0 {
            seen += c;
            if seen >= rank {
                return Some(Self::value_ms(*b));
            }
        }
        None
    }

    /// `(count here, count in other)` per bucket, ascending: the rank test's input.
    fn groups_with<'a>(&'a self, other: &'a Hist) -> impl Iterator<Item = (u64, u64)> + 'a {
        let mut buckets: Vec<u16> = self.0.keys().chain(other.0.keys()).copied().collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets.into_iter().map(move |b| {
            (
                self.0.get(&b).copied().unwrap_or(0),
                other.0.get(&b).copied().unwrap_or(0),
            )
        })
    }
}

/// Outcome counts of one side's window (what the client broke is not in it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub success: u64,
    pub client_error: u64,
    pub auth: u64,
    pub refused: u64,
    pub server_error: u64,
    pub timeout: u64,
    pub connect_error: u64,
    pub stream_cut: u64,
    pub bad_answer: u64,
    /// Clients that gave up waiting for the answer's head (abandoned waits only: what the
    /// client broke or left mid-answer is in no window).
    pub client_gone: u64,
    /// Successful answers cut short though the client did not ask (among `success`).
    pub cut_short: u64,
}

impl Counts {
    fn slot(&mut self, class: Class) -> Option<&mut u64> {
        Some(match class {
            Class::Success => &mut self.success,
            Class::ClientError => &mut self.client_error,
            Class::Auth => &mut self.auth,
            Class::Refused => &mut self.refused,
            Class::ServerError => &mut self.server_error,
            Class::Timeout => &mut self.timeout,
            Class::Connect => &mut self.connect_error,
            Class::StreamCut => &mut self.stream_cut,
            Class::BadAnswer => &mut self.bad_answer,
            Class::ClientGone => &mut self.client_gone,
            Class::ClientFault => return None,
        })
    }

    fn add(&mut self, class: Class) {
        if let Some(n) = self.slot(class) {
            *n += 1;
        }
    }

    fn merge(&mut self, o: &Counts) {
        for (class, n) in o.by_class() {
            if let Some(slot) = self.slot(class) {
                *slot += n;
            }
        }
        self.cut_short += o.cut_short;
    }

    fn by_class(&self) -> [(Class, u64); 10] {
        [
            (Class::Success, self.success),
            (Class::ClientError, self.client_error),
            (Class::Auth, self.auth),
            (Class::Refused, self.refused),
            (Class::ServerError, self.server_error),
            (Class::Timeout, self.timeout),
            (Class::Connect, self.connect_error),
            (Class::StreamCut, self.stream_cut),
            (Class::BadAnswer, self.bad_answer),
            (Class::ClientGone, self.client_gone),
        ]
    }

    pub fn requests(&self) -> u64 {
        self.by_class().iter().map(|(_, n)| n).sum()
    }

    fn counts_as_error(class: Class, cfg: &AutoRollbackConfig) -> bool {
        match class {
            Class::Auth => cfg.count_auth,
            Class::Refused => cfg.count_refused,
            c => c.is_provider_error(),
        }
    }

    /// Provider errors, as the config counts them.
    pub fn errors(&self, cfg: &AutoRollbackConfig) -> u64 {
        self.by_class()
            .iter()
            .filter(|(c, _)| Self::counts_as_error(*c, cfg))
            .map(|(_, n)| n)
            .sum()
    }

    /// "auth 93, 5xx 2": what the errors were.
    fn describe_errors(&self, cfg: &AutoRollbackConfig) -> String {
        let mut parts: Vec<(u64, &str)> = self
            .by_class()
            .iter()
            .filter(|(c, n)| *n > 0 && Self::counts_as_error(*c, cfg))
            .map(|(c, n)| (*n, c.label()))
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        parts
            .iter()
            .map(|(n, l)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One side's window: outcome counts and the latency of its successful answers. Adds up
/// over replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub counts: Counts,
    /// Whole-answer latency of successful non-streamed answers.
    pub latency: Hist,
    /// Time to first token of successful streams.
    pub ttft: Hist,
}

impl Summary {
    pub fn merge(&mut self, o: &Summary) {
        self.counts.merge(&o.counts);
        self.latency.merge(&o.latency);
        self.ttft.merge(&o.ttft);
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests()
    }

    fn add(&mut self, s: &Sample) {
        self.counts.add(s.class);
        if s.cut {
            // Cut answers count as cut, not as speed: a one-token answer is fast.
            self.counts.cut_short += 1;
        } else if s.class == Class::Success {
            if s.stream {
                self.ttft.add(s.latency_us);
            } else {
                self.latency.add(s.latency_us);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    class: Class,
    latency_us: u64,
    stream: bool,
    cut: bool,
}

/// The two sides' most recent requests. `to`'s window holds its last `window` requests of
/// the current migration state (epoch): a new phase, or leaving a rollback, is judged on
/// its own traffic. `from`'s is kept across epochs: at 100% it is the baseline `to` is
/// held to.
#[derive(Debug)]
pub struct Windows {
    epoch: u64,
    window: usize,
    to: VecDeque<Sample>,
    from: VecDeque<Sample>,
    /// `to` requests judged in this epoch (the looks count from it).
    to_seen: u64,
}

impl Windows {
    pub fn new(window: usize) -> Self {
        Windows {
            epoch: 0,
            window: window.max(1),
            to: VecDeque::new(),
            from: VecDeque::new(),
            to_seen: 0,
        }
    }

    /// A new migration state: `to` starts over, `from`'s baseline stays.
    pub fn reset(&mut self, epoch: u64, window: usize) {
        self.epoch = epoch;
        self.window = window.max(1);
        self.to.clear();
        self.to_seen = 0;
        while self.from.len() > self.window * FROM_WINDOWS {
            self.from.pop_front();
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn to_seen(&self) -> u64 {
        self.to_seen
    }

    /// Counts a finished request of `side`, at `now_ms` on the watchers' clock.
    pub fn record(&mut self, side: Side, e: &RequestEvent, now_ms: u64) {
        if !e.judged() {
            return;
        }
        let s = Sample {
            at_ms: now_ms,
            class: e.class,
            latency_us: e.judged_latency().as_micros() as u64,
            stream: e.stream,
            cut: e.cut_short.is_some(),
        };
        match side {
            Side::To => {
                if e.epoch != self.epoch {
                    return;
                }
                self.to_seen += 1;
                self.to.push_back(s);
                while self.to.len() > self.window {
                    self.to.pop_front();
                }
            }
            Side::From => {
                self.from.push_back(s);
                while self.from.len() > self.window * FROM_WINDOWS {
                    self.from.pop_front();
                }
            }
        }
    }

    /// `(to, from)`: `from` over the interval `to`'s window covers, or, when it served
    /// fewer than a window's worth in it (at high percents, or 100%), its last `window`.
    pub fn summaries(&self) -> (Summary, Summary) {
        let mut to = Summary::default();
        self.to.iter().for_each(|s| to.add(s));
        let since = self.to.front().map_or(u64::MAX, |s| s.at_ms);
        let in_interval = self
            .from
            .iter()
            .rev()
            .take_while(|s| s.at_ms >= since)
            .count();
        let take = in_interval.max(self.window).min(self.from.len());
        let mut from = Summary::default();
        self.from.iter().rev().take(take).for_each(|s| from.add(s));
        (to, from)
    }
}

/// When the comparative tests may call a failure: the first time both sides have enough
/// requests, then every `step` fresh `to` requests. Each look spends its own share of α.
#[derive(Debug, Default, Clone)]
pub struct Looks {
    k: u32,
    next_at: u64,
}

impl Looks {
    /// The look index if one is due now (`to_seen`: `to` requests of this epoch).
    pub fn due(&mut self, to_seen: u64, enough: bool, step: u64) -> Option<u32> {
        if !enough || to_seen < self.next_at {
            return None;
        }
        self.k += 1;
        self.next_at = to_seen + step.max(1);
        Some(self.k)
    }

    pub fn last(&self) -> u32 {
        self.k
    }
}

/// The looks' spacing: a quarter window of fresh `to` requests.
pub fn look_step(cfg: &AutoRollbackConfig) -> u64 {
    u64::from(cfg.window / 4).max(1)
}

pub use switchyard_core::verdict::{Judgement, Metric, MetricVerdict, Verdict};

/// The two windows to judge, with the providers' names (for reasons people read).
pub struct Sides<'a> {
    pub to_name: &'a str,
    pub from_name: &'a str,
    pub to: &'a Summary,
    pub from: &'a Summary,
}

fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// Judges `to` against `from`. `look` is the index of this look (see [`Looks`]); 0 runs
/// no comparative test (inconclusive unless an absolute limit is crossed).
pub fn judge(cfg: &AutoRollbackConfig, sides: &Sides<'_>, look: u32) -> Verdict {
    let min = u64::from(cfg.min_requests.max(1));
    let (to_n, from_n) = (sides.to.requests(), sides.from.requests());
    let enough = to_n >= min && from_n >= min;
    let alpha = match (&cfg.compare, enough && look > 0) {
        (Some(c), true) => Some(stat::alpha_at_look(1.0 - c.confidence, look)),
        _ => None,
    };
    let metrics = vec![
        rate_metric(
            cfg,
            sides,
            Metric::ErrorRate,
            (sides.to.counts.errors(cfg), sides.from.counts.errors(cfg)),
            cfg.max_error_rate,
            alpha,
        ),
        rate_metric(
            cfg,
            sides,
            Metric::ClientErrorRate,
            (sides.to.counts.client_error, sides.from.counts.client_error),
            None,
            alpha,
        ),
        // The same clients with the same patience reach both sides: a side they give up
        // on more often keeps them waiting longer, whatever its own timeout says.
        rate_metric(
            cfg,
            sides,
            Metric::AbandonedRate,
            (sides.to.counts.client_gone, sides.from.counts.client_gone),
            None,
            alpha,
        ),
        rate_metric(
            cfg,
            sides,
            Metric::CutShortRate,
            (sides.to.counts.cut_short, sides.from.counts.cut_short),
            None,
            alpha,
        ),
        latency_metric(
            cfg,
            sides,
            Metric::LatencyP95,
            (&sides.to.latency, &sides.from.latency),
            alpha,
        ),
        latency_metric(
            cfg,
            sides,
            Metric::TtftP95,
            (&sides.to.ttft, &sides.from.ttft),
            alpha,
        ),
    ];
    let (result, reason) = if let Some(f) = metrics.iter().find(|m| m.result == Judgement::Fail) {
        (
            Judgement::Fail,
            format!("{}: {}", f.metric.label(), f.reason),
        )
    } else if to_n < min {
        (
            Judgement::Inconclusive,
            format!(
                "`{}` has {to_n} of the {min} requests needed to judge",
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
    } else if from_n < min {
        (
            Judgement::Inconclusive,
            format!(
                "`{}` has {from_n} of the {min} requests needed to compare with",
                sides.from_name
            ),
        )
    } else if look == 0 {
        (Judgement::Inconclusive, "not judged yet".into())
    } else if !metrics
        .iter()
        .any(|m| m.metric.is_latency() && m.p_value.is_some())
    {
        (
            Judgement::Inconclusive,
            format!(
                "too few successful answers on either side to compare latency (need {min} each)"
            ),
        )
    } else {
        (
            Judgement::Pass,
            format!(
                "`{}` no worse than `{}` over {to_n}/{from_n} requests",
                sides.to_name, sides.from_name
            ),
        )
    };
    Verdict {
        result,
        reason,
        to: sides.to_name.to_string(),
        from: sides.from_name.to_string(),
        look: if alpha.is_some() { look } else { 0 },
        metrics,
    }
}

/// One metric's measurements, before judging.
struct Measure<'a> {
    metric: Metric,
    /// "requests" (rates) or "answers" (latencies).
    unit: &'static str,
    to_value: Option<f64>,
    from_value: Option<f64>,
    to_n: u64,
    from_n: u64,
    absolute: Option<f64>,
    allowed: Option<f64>,
    show: fn(f64) -> String,
    /// Said after the numbers, e.g. what the errors were.
    detail: String,
    sides: &'a Sides<'a>,
}

/// What a comparative test found.
struct Comparison {
    p: f64,
    difference: Option<f64>,
    ratio: Option<f64>,
    /// The effect is larger than allowed (the test must also say so).
    over_allowed: bool,
    /// "+100.0 pp" or "(2.01×)", and what is allowed, for the reason.
    effect: String,
    allowed: String,
    test: &'static str,
    test_name: &'static str,
}

/// The absolute backstop, then the comparison at `alpha`, for one metric.
fn judge_metric(
    cfg: &AutoRollbackConfig,
    m: Measure<'_>,
    alpha: Option<f64>,
    compare: impl FnOnce(f64, f64, f64) -> Comparison,
) -> MetricVerdict {
    let min = u64::from(cfg.min_requests.max(1));
    let (to_n, from_n, unit, show) = (m.to_n, m.from_n, m.unit, m.show);
    let (to, from, what) = (m.sides.to_name, m.sides.from_name, m.metric.what());
    let mut v = MetricVerdict {
        metric: m.metric,
        result: Judgement::Inconclusive,
        to_value: m.to_value,
        from_value: m.from_value,
        to_n,
        from_n,
        difference: None,
        ratio: None,
        allowed: m.allowed,
        absolute_limit: m.absolute,
        test: None,
        p_value: None,
        alpha,
        reason: String::new(),
    };
    if let (Some(limit), Some(t), true) = (m.absolute, m.to_value, to_n >= min) {
        if t > limit {
            v.result = Judgement::Fail;
            v.reason = format!(
                "`{to}` {what} {} over {to_n} {unit}{}, over the absolute limit {}",
                show(t),
                m.detail,
                show(limit)
            );
            return v;
        }
    }
    let comparable = to_n >= min && from_n >= min;
    let (Some(alpha), Some(allowed), Some(t), Some(f), true) =
        (alpha, m.allowed, m.to_value, m.from_value, comparable)
    else {
        v.reason = if cfg.compare.is_none() && to_n >= min {
            v.result = Judgement::Pass;
            format!("`{to}` {what}: no comparison configured")
        } else if !comparable {
            format!("{to_n}/{from_n} {unit}: too few to compare")
        } else {
            "not compared yet".into()
        };
        return v;
    };
    let c = compare(t, f, allowed);
    v.difference = c.difference;
    v.ratio = c.ratio;
    v.test = Some(c.test.into());
    v.p_value = Some(c.p);
    let numbers = format!(
        "`{to}` {what} {} vs `{from}` {} {} over {to_n}/{from_n} {unit}{}",
        show(t),
        show(f),
        c.effect,
        m.detail
    );
    if c.over_allowed && c.p < alpha {
        v.result = Judgement::Fail;
        v.reason = format!(
            "{numbers}: more than the {} allowed, {} ({}, one-sided, α {alpha:.2e})",
            c.allowed,
            p_text(c.p),
            c.test_name
        );
    } else {
        v.result = Judgement::Pass;
        v.reason = format!("{numbers}: {}", p_text(c.p));
    }
    v
}

fn rate_metric(
    cfg: &AutoRollbackConfig,
    sides: &Sides<'_>,
    metric: Metric,
    (to_bad, from_bad): (u64, u64),
    absolute: Option<f64>,
    alpha: Option<f64>,
) -> MetricVerdict {
    let (to_n, from_n) = (sides.to.requests(), sides.from.requests());
    let rate = |bad: u64, n: u64| (n > 0).then(|| bad as f64 / n as f64);
    let detail = if metric == Metric::ErrorRate && to_bad > 0 {
        format!(
            " ({}: {})",
            sides.to_name,
            sides.to.counts.describe_errors(cfg)
        )
    } else {
        String::new()
    };
    let m = Measure {
        metric,
        unit: "requests",
        to_value: rate(to_bad, to_n),
        from_value: rate(from_bad, from_n),
        to_n,
        from_n,
        absolute,
        allowed: cfg.compare.as_ref().map(|c| c.max_error_rate_increase),
        show: pct,
        detail,
        sides,
    };
    judge_metric(cfg, m, alpha, |t, f, allowed| {
        let diff = t - f;
        Comparison {
            p: stat::fisher_greater(to_bad, to_n, from_bad, from_n),
            difference: Some(diff),
            ratio: None,
            over_allowed: diff > allowed,
            effect: format!("({:+.1} pp)", diff * 100.0),
            allowed: format!("{:+.1} pp", allowed * 100.0),
            test: "fisher_exact_one_sided",
            test_name: "Fisher's exact",
        }
    })
}

fn latency_metric(
    cfg: &AutoRollbackConfig,
    sides: &Sides<'_>,
    metric: Metric,
    (to_h, from_h): (&Hist, &Hist),
    alpha: Option<f64>,
) -> MetricVerdict {
    let m = Measure {
        metric,
        unit: "answers",
        to_value: to_h.quantile_ms(0.95),
        from_value: from_h.quantile_ms(0.95),
        to_n: to_h.count(),
        from_n: from_h.count(),
        absolute: cfg.max_p95_latency.map(|d| d.as_secs_f64() * 1000.0),
        allowed: cfg.compare.as_ref().map(|c| c.max_latency_ratio),
        show: ms,
        detail: String::new(),
        sides,
    };
    judge_metric(cfg, m, alpha, |t, f, allowed| {
        let ratio = t / f.max(1e-3);
        Comparison {
            p: stat::mann_whitney_greater(to_h.groups_with(from_h)),
            difference: None,
            ratio: Some(ratio),
            over_allowed: ratio > allowed,
            effect: format!("({ratio:.2}×)"),
            allowed: format!("{allowed}×"),
            test: "mann_whitney_u_one_sided",
            test_name: "Mann-Whitney U",
        }
    })
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

/// What the phase gate says about advancing.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Advance,
    Wait(String),
}

/// A phase may advance when it has a `hold`, the hold has passed, it is not the last
/// phase, and the judge says pass. A phase without `hold` waits for an operator; an
/// inconclusive judgement (too little traffic) never advances.
pub fn gate(
    hold: Option<Duration>,
    in_phase_for: Duration,
    is_last: bool,
    verdict: Option<&Verdict>,
) -> Gate {
    if is_last {
        return Gate::Wait("at the last phase".into());
    }
    let Some(hold) = hold else {
        return Gate::Wait("this phase has no hold: an operator advances it".into());
    };
    if in_phase_for < hold {
        return Gate::Wait(format!("hold: {:?} of {:?}", in_phase_for, hold));
    }
    match verdict {
        Some(v) if v.result == Judgement::Pass => Gate::Advance,
        Some(v) => Gate::Wait(format!("{}: {}", v.result.label(), v.reason)),
        None => Gate::Wait("inconclusive: not judged yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard_core::config::CompareConfig;

    /// What a team that writes only `auto_rollback: {window, min_requests}` gets.
    fn defaults(window: u32, min_requests: u32) -> AutoRollbackConfig {
        AutoRollbackConfig {
            window,
            min_requests,
            max_error_rate: None,
            max_p95_latency: None,
            count_auth: true,
            count_refused: true,
            compare: Some(CompareConfig {
                max_error_rate_increase: 0.01,
                max_latency_ratio: 1.5,
                confidence: 0.95,
            }),
        }
    }

    fn ev(provider: &str, class: Class, ms: u64, epoch: u64) -> RequestEvent {
        RequestEvent {
            provider: Arc::from(provider),
            epoch,
            class,
            latency: Duration::from_millis(ms),
            ttfb: None,
            upload: Duration::ZERO,
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: None,
            cost_if_other_usd: None,
            bad_answer: None,
            cut_short: None,
            waited: None,
        }
    }

    /// A phase-3 (50%) run: `n` requests a side, interleaved, one per 10 ms of the clock.
    fn run(
        w: &mut Windows,
        n: usize,
        mut to: impl FnMut(usize) -> (Class, u64),
        mut from: impl FnMut(usize) -> (Class, u64),
    ) {
        for i in 0..n {
            let now = i as u64 * 10;
            let (c, ms) = from(i);
            w.record(Side::From, &ev("old", c, ms, w.epoch()), now);
            let (c, ms) = to(i);
            w.record(Side::To, &ev("new", c, ms, w.epoch()), now + 5);
        }
    }

    fn verdict_at(w: &Windows, cfg: &AutoRollbackConfig, look: u32) -> Verdict {
        let (to, from) = w.summaries();
        judge(
            cfg,
            &Sides {
                to_name: "new",
                from_name: "old",
                to: &to,
                from: &from,
            },
            look,
        )
    }

    /// The new side refuses everything (401, 404, 429) at 50%: fail at the first look.
    #[test]
    fn refusals_only_on_the_new_side_fail() {
        let cfg = defaults(100, 20);
        for (status, metric) in [
            (401, Metric::ErrorRate),
            (403, Metric::ErrorRate),
            (429, Metric::ErrorRate),
            (402, Metric::ErrorRate),
            (404, Metric::ClientErrorRate),
            (400, Metric::ClientErrorRate),
        ] {
            let mut w = Windows::new(100);
            run(
                &mut w,
                20,
                |_| (Class::of_status(status), 5),
                |_| (Class::Success, 100),
            );
            let v = verdict_at(&w, &cfg, 1);
            assert_eq!(v.result, Judgement::Fail, "{status}: {v:?}");
            let m = v.failed().unwrap();
            assert_eq!(m.metric, metric, "{status}");
            assert_eq!((m.to_value, m.from_value), (Some(1.0), Some(0.0)));
            assert!(m.p_value.unwrap() < 1e-9);
            assert!(
                v.reason.contains("`new`")
                    && v.reason.contains("100.0% vs `old` 0.0%")
                    && v.reason.contains("over 20/20 requests")
                    && v.reason.contains("p < 0.001"),
                "{}",
                v.reason
            );
        }
    }

    #[test]
    fn refusals_can_be_left_out_of_the_error_rate() {
        let mut cfg = defaults(100, 20);
        cfg.count_refused = false;
        let mut w = Windows::new(100);
        run(
            &mut w,
            20,
            |_| (Class::Refused, 5),
            |_| (Class::Success, 100),
        );
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.metric(Metric::ErrorRate).unwrap().result, Judgement::Pass);
        cfg.count_refused = true;
        assert_eq!(verdict_at(&w, &cfg, 1).result, Judgement::Fail);
    }

    #[test]
    fn twice_as_slow_fails_on_latency() {
        let cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        // Some jitter, so that the rank test sees real spreads.
        run(
            &mut w,
            40,
            |i| (Class::Success, 240 + (i as u64 * 7) % 30),
            |i| (Class::Success, 120 + (i as u64 * 11) % 15),
        );
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Fail, "{v:?}");
        let m = v.failed().unwrap();
        assert_eq!(m.metric, Metric::LatencyP95);
        assert!(m.ratio.unwrap() > 1.8 && m.ratio.unwrap() < 2.4, "{m:?}");
        assert!(v.reason.contains("Mann-Whitney"), "{}", v.reason);
    }

    #[test]
    fn a_few_slow_outliers_do_not_fail() {
        let cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        // 3 of 40 answers on the new side are 10× slower: p95 doubles, the ranks barely move.
        run(
            &mut w,
            40,
            |i| {
                (
                    Class::Success,
                    if i % 13 == 0 {
                        1000
                    } else {
                        100 + i as u64 % 7
                    },
                )
            },
            |i| (Class::Success, 100 + i as u64 % 7),
        );
        let v = verdict_at(&w, &cfg, 1);
        let m = v.metric(Metric::LatencyP95).unwrap();
        assert!(m.ratio.unwrap() > 1.5, "the outliers do move p95: {m:?}");
        assert_eq!(v.result, Judgement::Pass, "{v:?}");
    }

    /// The old side is itself at 8% timeouts: a new side just as bad is kept when no
    /// absolute limit is written, and failed by one that is.
    #[test]
    fn as_good_as_a_failing_old_side_passes() {
        let mut cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        let eight_percent = |i: usize| {
            if i % 25 < 2 {
                (Class::Timeout, 30_000)
            } else {
                (Class::Success, 100 + i as u64 % 9)
            }
        };
        run(&mut w, 100, eight_percent, eight_percent);
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Pass, "{v:?}");
        let m = v.metric(Metric::ErrorRate).unwrap();
        assert_eq!((m.to_value, m.from_value), (Some(0.08), Some(0.08)));
        cfg.max_error_rate = Some(0.05);
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Fail);
        assert!(v.reason.contains("absolute limit 5.0%"), "{}", v.reason);
    }

    #[test]
    fn too_few_on_either_side_is_inconclusive_and_holds() {
        let cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        run(
            &mut w,
            19,
            |_| (Class::Success, 10),
            |_| (Class::Success, 10),
        );
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Inconclusive);
        assert!(v.reason.contains("19 of the 20"), "{}", v.reason);
        let hold = Some(Duration::from_secs(60));
        let later = Duration::from_secs(61);
        assert!(
            matches!(gate(hold, later, false, Some(&v)), Gate::Wait(r) if r.starts_with("inconclusive"))
        );

        // Enough on `to`, none on `from` (a 100% phase after a restart): still inconclusive.
        let mut w = Windows::new(100);
        for i in 0..30 {
            w.record(Side::To, &ev("new", Class::Success, 10, 0), i);
        }
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Inconclusive);
        assert!(v.reason.contains("`old` has 0 of the 20"), "{}", v.reason);

        run(
            &mut w,
            30,
            |_| (Class::Success, 10),
            |_| (Class::Success, 10),
        );
        let v = verdict_at(&w, &cfg, 1);
        assert_eq!(v.result, Judgement::Pass, "{v:?}");
        assert_eq!(gate(hold, later, false, Some(&v)), Gate::Advance);
        assert!(matches!(
            gate(hold, Duration::from_secs(59), false, Some(&v)),
            Gate::Wait(_)
        ));
        assert!(matches!(gate(hold, later, true, Some(&v)), Gate::Wait(_)));
        assert!(matches!(gate(None, later, false, Some(&v)), Gate::Wait(_)));
        // Look 0 runs no test.
        assert_eq!(verdict_at(&w, &cfg, 0).result, Judgement::Inconclusive);
    }

    #[test]
    fn absolute_limits_alone_when_comparison_is_off() {
        let mut cfg = defaults(20, 10);
        cfg.compare = None;
        cfg.max_error_rate = Some(0.2);
        cfg.max_p95_latency = Some(Duration::from_millis(500));
        let mut w = Windows::new(20);
        for i in 0..10u64 {
            let class = if i < 2 {
                Class::ServerError
            } else {
                Class::Success
            };
            w.record(Side::To, &ev("new", class, 100, 0), i);
        }
        assert_eq!(verdict_at(&w, &cfg, 0).result, Judgement::Pass);
        w.record(Side::To, &ev("new", Class::Connect, 100, 0), 11);
        let v = verdict_at(&w, &cfg, 0);
        assert_eq!(v.result, Judgement::Fail, "{v:?}");
        assert_eq!(v.failed().unwrap().metric, Metric::ErrorRate);
        for i in 0..20 {
            w.record(Side::To, &ev("new", Class::Success, 900, 0), 20 + i);
        }
        let v = verdict_at(&w, &cfg, 0);
        assert_eq!(v.failed().unwrap().metric, Metric::LatencyP95);
    }

    #[test]
    fn what_the_client_broke_is_not_in_any_window() {
        let cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        run(
            &mut w,
            20,
            |_| (Class::ClientFault, 5),
            |_| (Class::Success, 10),
        );
        run(
            &mut w,
            20,
            |_| (Class::ClientGone, 5),
            |_| (Class::Success, 10),
        );
        let (to, _) = w.summaries();
        assert_eq!(to.requests(), 0);
        assert_eq!(w.to_seen(), 0);
        assert_eq!(verdict_at(&w, &cfg, 1).result, Judgement::Inconclusive);
    }

    #[test]
    fn windows_compare_the_same_interval_and_keep_the_baseline() {
        let mut w = Windows::new(10);
        // An hour-old old side that failed, then both sides healthy at 10%.
        for i in 0..100 {
            w.record(Side::From, &ev("old", Class::ServerError, 10, 0), i);
        }
        for i in 0..90u64 {
            w.record(
                Side::From,
                &ev("old", Class::Success, 10, 0),
                1_000 + i * 10,
            );
            if i % 9 == 0 {
                w.record(Side::To, &ev("new", Class::Success, 10, 0), 1_000 + i * 10);
            }
        }
        let (to, from) = w.summaries();
        assert_eq!(to.requests(), 10);
        assert_eq!(
            from.requests(),
            90,
            "only old's requests since new's oldest"
        );
        assert_eq!(from.counts.server_error, 0);

        // 100%: nothing new from `old`; its last window is the baseline, across the reset.
        w.reset(1, 10);
        for i in 0..10 {
            w.record(Side::To, &ev("new", Class::Success, 10, 1), 5_000 + i);
        }
        let (to, from) = w.summaries();
        assert_eq!((to.requests(), from.requests()), (10, 10));
        // Events of the previous state do not count for `to`.
        w.record(Side::To, &ev("new", Class::ServerError, 10, 0), 6_000);
        assert_eq!(w.summaries().0.counts.server_error, 0);
    }

    #[test]
    fn summaries_add_up_over_replicas() {
        let mut a = Windows::new(100);
        let mut b = Windows::new(100);
        run(&mut a, 10, |_| (Class::Auth, 5), |_| (Class::Success, 100));
        run(&mut b, 10, |_| (Class::Auth, 5), |_| (Class::Success, 100));
        let (mut to, mut from) = a.summaries();
        let (to_b, from_b) = b.summaries();
        to.merge(&to_b);
        from.merge(&from_b);
        let json = serde_json::to_string(&to).unwrap();
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, to);
        let cfg = defaults(100, 20);
        let v = judge(
            &cfg,
            &Sides {
                to_name: "new",
                from_name: "old",
                to: &to,
                from: &from,
            },
            1,
        );
        assert_eq!(
            v.result,
            Judgement::Fail,
            "20 of 20 over two replicas of 10"
        );
    }

    /// Sides equally bad (8% errors, random): over many long phases judged at every look,
    /// few phases ever see a false alarm. Without spending α over the looks (every look
    /// at 5%), most phases of 80 looks would.
    #[test]
    fn repeated_looks_keep_the_false_alarm_rate_per_phase() {
        let cfg = defaults(100, 20);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut coin = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 1000) < 80
        };
        let phases = 200;
        let mut alarms = 0;
        for _ in 0..phases {
            let mut w = Windows::new(100);
            let mut looks = Looks::default();
            let mut alarmed = false;
            for i in 0..2000u64 {
                let class = |bad: bool| {
                    if bad {
                        Class::ServerError
                    } else {
                        Class::Success
                    }
                };
                w.record(Side::From, &ev("old", class(coin()), 100, 0), i);
                w.record(Side::To, &ev("new", class(coin()), 100, 0), i);
                let (to, from) = w.summaries();
                let enough = to.requests() >= 20 && from.requests() >= 20;
                if let Some(k) = looks.due(w.to_seen(), enough, look_step(&cfg)) {
                    let sides = Sides {
                        to_name: "new",
                        from_name: "old",
                        to: &to,
                        from: &from,
                    };
                    if judge(&cfg, &sides, k).result == Judgement::Fail {
                        alarmed = true;
                        break;
                    }
                }
            }
            alarms += usize::from(alarmed);
        }
        assert!(
            alarms * 100 <= phases * 5,
            "{alarms} of {phases} phases alarmed"
        );
    }

    #[test]
    fn verdict_json_round_trips() {
        let cfg = defaults(100, 20);
        let mut w = Windows::new(100);
        run(&mut w, 20, |_| (Class::Auth, 5), |_| (Class::Success, 100));
        let v = verdict_at(&w, &cfg, 1);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["result"], "fail");
        assert_eq!(json["metrics"][0]["metric"], "error_rate");
        assert_eq!(json["metrics"][1]["metric"], "4xx_rate");
        let back: Verdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
    }
}
