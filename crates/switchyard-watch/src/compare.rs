//! One metric, `to` against `from`, over each interval of a look: the rates (with the
//! error-rate backstop) by Fisher's exact test, the latencies by van Elteren's test within
//! strata, each re-run without the one key that could explain a failure alone. What the
//! comparison means and how the look's significance is shared: [`crate::judge`](mod@crate::judge).

use switchyard_core::config::AutoRollbackConfig;
use switchyard_core::verdict::{Concentration, Judgement, Metric, MetricVerdict};

use crate::stat;
use crate::window::{strata_without, Counts, Hist, Part, Scale, Strata, Summary};

/// Both sides over the same intervals, with the providers' names (for reasons people read).
pub struct Sides<'a> {
    pub to_name: &'a str,
    pub from_name: &'a str,
    /// Shortest interval first (see [`crate::window::Windows::scales`]).
    pub scales: &'a [Scale],
    /// The share of routed requests `to` should serve in this phase, between 0 and 1
    /// exclusive (the sample-ratio check); `None` at 0% and 100%.
    pub expected_share: Option<f64>,
}

pub(crate) fn pct(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

pub(crate) fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

pub(crate) fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

pub(crate) fn secs(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

pub(crate) const RATES: [Metric; 4] = [
    Metric::ErrorRate,
    Metric::ClientErrorRate,
    Metric::AbandonedRate,
    Metric::CutShortRate,
];
pub(crate) const LATENCIES: [Metric; 2] = [Metric::LatencyP95, Metric::TtftP95];

/// What counts as "bad" for a rate metric.
fn bad(metric: Metric, c: &Counts, cfg: &AutoRollbackConfig) -> u64 {
    match metric {
        Metric::ErrorRate => c.errors(cfg),
        Metric::ClientErrorRate => c.client_error,
        Metric::AbandonedRate => c.client_gone,
        Metric::CutShortRate => c.cut_short,
        Metric::LatencyP95 | Metric::TtftP95 => 0,
    }
}

fn strata(s: &Summary, metric: Metric) -> &Strata {
    if metric == Metric::TtftP95 {
        &s.ttft
    } else {
        &s.latency
    }
}

fn part_strata(p: &Part, metric: Metric) -> &Strata {
    if metric == Metric::TtftP95 {
        &p.ttft
    } else {
        &p.latency
    }
}

/// A key whose part can be left out: its kind (for people) and its parts on each side.
struct Key<'a> {
    kind: &'static str,
    label: String,
    to: &'a Part,
    from: Option<&'a Part>,
}

/// The keys that could explain a result alone: the heaviest routing keys and client keys of
/// `to`'s interval (client keys only when there are two to tell apart).
fn keys<'a>(to: &'a Summary, from: &'a Summary) -> Vec<Key<'a>> {
    let mut out: Vec<Key<'a>> = to
        .keys
        .iter()
        .filter(|(_, p)| p.counts.requests() > 1)
        .map(|(k, p)| Key {
            kind: "routing_key",
            label: format!("bucket {k}"),
            to: p,
            from: from.keys.get(k),
        })
        .collect();
    if to.clients.len() >= 2 {
        out.extend(to.clients.iter().map(|(c, p)| Key {
            kind: "client_key",
            label: format!("client key #{c}"),
            to: p,
            from: from.clients.get(c),
        }));
    }
    out
}

/// One judgement in progress.
pub(crate) struct Judging<'a> {
    pub(crate) cfg: &'a AutoRollbackConfig,
    pub(crate) sides: &'a Sides<'a>,
    /// Per test.
    pub(crate) alpha: Option<f64>,
    pub(crate) min: u64,
    pub(crate) concentrated: Vec<Concentration>,
}

impl Judging<'_> {
    /// What an inconclusive comparison waits for when `from` is short in every interval.
    pub(crate) fn waiting_for_from(&self) -> String {
        let (to, from) = (self.sides.to_name, self.sides.from_name);
        let Some(longest) = self.sides.scales.last() else {
            return "not judged yet".into();
        };
        let (tn, fnn) = (longest.to.requests(), longest.from.requests());
        if fnn == 0 {
            return format!(
                "`{from}` served no request in the last {} (needs {}): no live control to compare `{to}` with",
                secs(longest.seconds),
                self.min
            );
        }
        let more = ((self.min.saturating_sub(fnn)) as f64 * tn as f64 / fnn as f64).ceil();
        format!(
            "`{from}` has {fnn} of the {} requests needed in the last {}: needs ~{more} more requests on `{to}` at this share",
            self.min,
            secs(longest.seconds)
        )
    }

    fn blank(&self, metric: Metric, scale: &Scale) -> MetricVerdict {
        MetricVerdict {
            metric,
            result: Judgement::Inconclusive,
            to_value: None,
            from_value: None,
            to_n: 0,
            from_n: 0,
            difference: None,
            ratio: None,
            allowed: None,
            absolute_limit: None,
            test: None,
            p_value: None,
            alpha: self.alpha,
            reason: String::new(),
            interval_seconds: Some(scale.seconds),
            min_increase_ms: None,
        }
    }

    /// The verdict over all intervals: the first that fails, else the shortest compared.
    fn over_scales(
        &mut self,
        metric: Metric,
        mut at: impl FnMut(&mut Self, &Scale) -> MetricVerdict,
    ) -> MetricVerdict {
        let mut shown: Option<MetricVerdict> = None;
        let scales = self.sides.scales;
        for scale in scales {
            let v = at(self, scale);
            if v.result == Judgement::Fail {
                return v;
            }
            let better = match &shown {
                None => true,
                Some(s) => s.p_value.is_none() && v.p_value.is_some(),
            };
            if better {
                shown = Some(v);
            }
        }
        shown.unwrap_or_else(|| {
            let mut v = self.blank(metric, &Scale::default());
            v.reason = "nothing judged yet".into();
            v
        })
    }

    pub(crate) fn rate(&mut self, metric: Metric) -> MetricVerdict {
        self.over_scales(metric, |j, scale| j.rate_at(metric, scale))
    }

    /// A rate metric over one interval: the backstop (error rate), then the comparison, each
    /// re-run without the one key that could explain it.
    fn rate_at(&mut self, metric: Metric, scale: &Scale) -> MetricVerdict {
        let cfg = self.cfg;
        let (to_name, from_name) = (self.sides.to_name, self.sides.from_name);
        let (to, from) = (&scale.to, &scale.from);
        let (to_n, from_n) = (to.requests(), from.requests());
        let (to_bad, from_bad) = (bad(metric, &to.counts, cfg), bad(metric, &from.counts, cfg));
        let rate = |b: u64, n: u64| (n > 0).then(|| b as f64 / n as f64);
        let mut v = self.blank(metric, scale);
        v.to_value = rate(to_bad, to_n);
        v.from_value = rate(from_bad, from_n);
        v.to_n = to_n;
        v.from_n = from_n;
        v.allowed = cfg.compare.as_ref().map(|c| c.max_error_rate_increase);
        let what = metric.what();
        let detail = if metric == Metric::ErrorRate && to_bad > 0 {
            format!(" ({to_name}: {})", to.counts.describe_errors(cfg))
        } else {
            String::new()
        };
        let interval = format!("in the last {}", secs(scale.seconds));
        let show = |r: Option<f64>| r.map_or("-".into(), pct);
        let both = format!(
            "`{to_name}` {what} {} over {to_n} requests vs `{from_name}` {} over {from_n}",
            show(v.to_value),
            show(v.from_value)
        );
        let backstop = if metric == Metric::ErrorRate {
            cfg.max_error_rate
        } else {
            None
        };
        v.absolute_limit = backstop;
        if let (Some(limit), Some(alpha), true) = (backstop, self.alpha, to_n >= self.min) {
            let p_of = |b: u64, n: u64| stat::binomial_greater(b, n, limit);
            let p = p_of(to_bad, to_n);
            if p < alpha {
                let alone = self.without_heaviest(
                    to,
                    from,
                    |k| bad(metric, &k.counts, cfg),
                    |t, _| p_of(bad(metric, &t.counts, cfg), t.counts.requests()) < alpha,
                );
                if let Some(note) = alone {
                    v.reason = format!(
                        "{both} {interval}, over the absolute limit {}: {note}",
                        pct(limit)
                    );
                    return v;
                }
                v.result = Judgement::Fail;
                v.test = Some("binomial_exact_one_sided".into());
                v.p_value = Some(p);
                v.reason = format!(
                    "{both} {interval}{detail}, over the absolute limit {} ({}, exact binomial, one-sided, α {alpha:.2e})",
                    pct(limit),
                    p_text(p)
                );
                return v;
            }
        }
        let comparable = to_n >= self.min && from_n >= self.min;
        let (Some(alpha), Some(allowed), true) = (self.alpha, v.allowed, comparable) else {
            v.reason = if cfg.compare.is_none() && to_n >= self.min {
                v.result = Judgement::Pass;
                format!("`{to_name}` {what}: no comparison configured")
            } else if !comparable {
                format!(
                    "{to_n}/{from_n} requests {interval}: too few to compare (needs {} each)",
                    self.min
                )
            } else {
                "not compared yet".into()
            };
            return v;
        };
        let fails = |tb: u64, tn: u64, fb: u64, fnn: u64| {
            let (t, f) = (tb as f64 / tn.max(1) as f64, fb as f64 / fnn.max(1) as f64);
            t - f > allowed && stat::fisher_greater(tb, tn, fb, fnn) < alpha
        };
        let p = stat::fisher_greater(to_bad, to_n, from_bad, from_n);
        let (t, f) = (v.to_value.unwrap_or(0.0), v.from_value.unwrap_or(0.0));
        v.difference = Some(t - f);
        v.test = Some("fisher_exact_one_sided".into());
        v.p_value = Some(p);
        let numbers = format!(
            "`{to_name}` {what} {} vs `{from_name}` {} ({:+.1} pp) over {to_n}/{from_n} requests {interval}{detail}",
            pct(t),
            pct(f),
            (t - f) * 100.0
        );
        if fails(to_bad, to_n, from_bad, from_n) {
            let alone = self.without_heaviest(
                to,
                from,
                |k| bad(metric, &k.counts, cfg),
                |t, f| {
                    let n = |p: &Part| p.counts.requests();
                    let b = |p: &Part| bad(metric, &p.counts, cfg);
                    // The rest need not reach `min_requests`: the question is whether one
                    // key's requests are what makes the difference.
                    n(t) > 0 && n(f) > 0 && fails(b(t), n(t), b(f), n(f))
                },
            );
            if let Some(note) = alone {
                v.reason = format!("{numbers}: {note}");
                return v;
            }
            v.result = Judgement::Fail;
            v.reason = format!(
                "{numbers}: more than the {:+.1} pp allowed, {} (Fisher's exact, one-sided, α {alpha:.2e})",
                allowed * 100.0,
                p_text(p)
            );
        } else {
            v.result = Judgement::Pass;
            v.reason = format!("{numbers}: {}", p_text(p));
        }
        v
    }

    /// When a result holds only with one key's requests in it, what to say instead (the
    /// metric is then inconclusive): each heavy key is left out in turn (from both sides) and
    /// `still(to, from)` asked again. `None` when it holds without each of them.
    fn without_heaviest(
        &mut self,
        to: &Summary,
        from: &Summary,
        bad_of: impl Fn(&Part) -> u64,
        still: impl Fn(&Part, &Part) -> bool,
    ) -> Option<String> {
        let whole = |s: &Summary| Part {
            counts: s.counts,
            latency: s.latency.clone(),
            ttft: s.ttft.clone(),
        };
        let (to_all, from_all) = (whole(to), whole(from));
        for key in keys(to, from) {
            let t = without(&to_all, key.to);
            let f = key
                .from
                .map_or_else(|| from_all.clone(), |p| without(&from_all, p));
            if still(&t, &f) {
                continue;
            }
            let note = format!(
                "concentrated in one {} ({}: {} of `{}`'s {} requests, {} of what counts against it): one client cannot decide",
                key.kind.replace('_', " "),
                key.label,
                key.to.counts.requests(),
                self.sides.to_name,
                to.requests(),
                bad_of(key.to),
            );
            self.concentrated.push(Concentration {
                kind: key.kind.into(),
                key: key.label,
                provider: self.sides.to_name.to_string(),
                requests: key.to.counts.requests(),
                counted: 0,
                note: note.clone(),
            });
            return Some(note);
        }
        None
    }

    pub(crate) fn latency(&mut self, metric: Metric) -> MetricVerdict {
        self.over_scales(metric, |j, scale| j.latency_at(metric, scale))
    }

    /// A latency metric over one interval: the backstop (`to` alone), then the comparison
    /// within the strata both sides served.
    fn latency_at(&mut self, metric: Metric, scale: &Scale) -> MetricVerdict {
        let cfg = self.cfg;
        let (to_name, from_name) = (self.sides.to_name, self.sides.from_name);
        let (to_s, from_s) = (strata(&scale.to, metric), strata(&scale.from, metric));
        let mut v = self.blank(metric, scale);
        let what = metric.what();
        let interval = format!("in the last {}", secs(scale.seconds));
        // The backstop is about what users waited: connections opened for them included.
        let all_to = if metric == Metric::TtftP95 {
            &scale.to.ttft_all
        } else {
            &scale.to.latency_all
        };
        let limit = cfg.max_p95_latency.map(|d| d.as_secs_f64() * 1000.0);
        v.absolute_limit = limit;
        if let (Some(limit), Some(alpha)) = (limit, self.alpha) {
            let n = all_to.count();
            let over = all_to.above_ms(limit);
            // Over the limit at p95: more than 5% of answers above it, beyond chance.
            let p = stat::binomial_greater(over, n, 0.05);
            if n >= self.min && p < alpha {
                let from_p95 = Summary::pooled(from_s).quantile_ms(0.95);
                v.result = Judgement::Fail;
                v.to_value = all_to.quantile_ms(0.95);
                v.from_value = from_p95;
                v.to_n = n;
                v.test = Some("binomial_exact_one_sided".into());
                v.p_value = Some(p);
                v.reason = format!(
                    "`{to_name}` {what} {} over {n} answers vs `{from_name}` {} {interval}, over the absolute limit {} ({} of answers above it, {}, exact binomial, one-sided, α {alpha:.2e})",
                    v.to_value.map_or("-".into(), ms),
                    from_p95.map_or("-".into(), ms),
                    ms(limit),
                    pct(over as f64 / n as f64),
                    p_text(p)
                );
                return v;
            }
        }
        // Like with like: the strata both sides served.
        let common: Vec<(&Hist, &Hist)> = to_s
            .iter()
            .filter_map(|(k, t)| from_s.get(k).map(|f| (t, f)))
            .collect();
        let (mut to_h, mut from_h) = (Hist::default(), Hist::default());
        for (t, f) in &common {
            to_h.merge(t);
            from_h.merge(f);
        }
        v.to_n = to_h.count();
        v.from_n = from_h.count();
        v.to_value = to_h.quantile_ms(0.95);
        v.from_value = from_h.quantile_ms(0.95);
        let compare = cfg.compare.as_ref();
        v.allowed = compare.map(|c| c.max_latency_ratio);
        v.min_increase_ms = compare.map(|c| c.min_latency_increase.as_secs_f64() * 1000.0);
        let comparable = v.to_n >= self.min && v.from_n >= self.min;
        let (Some(alpha), Some(allowed), Some(floor), Some(t), Some(f), true) = (
            self.alpha,
            v.allowed,
            v.min_increase_ms,
            v.to_value,
            v.from_value,
            comparable,
        ) else {
            v.reason = if compare.is_none() && all_to.count() >= self.min {
                v.result = Judgement::Pass;
                format!("`{to_name}` {what}: no comparison configured")
            } else if !comparable {
                format!(
                    "{}/{} answers {interval} in strata both sides served: too few to compare (needs {} each)",
                    v.to_n, v.from_n, self.min
                )
            } else {
                "not compared yet".into()
            };
            return v;
        };
        let min = self.min;
        let effect = |to_s: &Strata, from_s: &Strata| latency_effect(to_s, from_s, min);
        let Some(e) = effect(to_s, from_s) else {
            v.reason = "not compared yet".into();
            return v;
        };
        let (ratio, increase, p) = (e.ratio, e.increase, e.p);
        v.ratio = Some(ratio);
        v.difference = Some(increase);
        v.test = Some("van_elteren_one_sided".into());
        v.p_value = Some(p);
        let strata_note = if common.len() > 1 {
            format!(" in {} strata", common.len())
        } else {
            String::new()
        };
        let numbers = format!(
            "`{to_name}` {what} {} vs `{from_name}` {} ({ratio:.2}×, {:+.0} ms) over {}/{} answers {interval}{strata_note}",
            ms(t),
            ms(f),
            increase,
            v.to_n,
            v.from_n
        );
        let slower = |e: &Effect| e.ratio > allowed && e.increase > floor && e.p < alpha;
        if slower(&e) {
            let alone = self.without_heaviest(
                &scale.to,
                &scale.from,
                |k| Summary::pooled(part_strata(k, metric)).count(),
                |t, f| {
                    latency_effect(part_strata(t, metric), part_strata(f, metric), 1)
                        .is_some_and(|e| slower(&e))
                },
            );
            if let Some(note) = alone {
                v.reason = format!("{numbers}: {note}");
                return v;
            }
            v.result = Judgement::Fail;
            v.reason = format!(
                "{numbers}: more than the {allowed}× and +{} allowed, {} (van Elteren's stratified rank test, one-sided, α {alpha:.2e})",
                ms(floor),
                p_text(p)
            );
        } else {
            v.result = Judgement::Pass;
            v.reason = format!("{numbers}: {}", p_text(p));
        }
        v
    }
}

/// A latency comparison within the strata both sides served.
struct Effect {
    /// Weighted geometric mean of the strata's p95 ratios.
    ratio: f64,
    /// Weighted mean of the strata's p95 differences, in ms.
    increase: f64,
    /// Van Elteren's one-sided p.
    p: f64,
}

/// `None` when the strata both sides served hold fewer than `min` answers on either side.
fn latency_effect(to_s: &Strata, from_s: &Strata, min: u64) -> Option<Effect> {
    let common: Vec<(&Hist, &Hist)> = to_s
        .iter()
        .filter_map(|(k, t)| from_s.get(k).map(|f| (t, f)))
        .collect();
    let (tn, fnn): (u64, u64) = common
        .iter()
        .fold((0, 0), |(a, b), (t, f)| (a + t.count(), b + f.count()));
    if tn < min || fnn < min {
        return None;
    }
    // Each stratum weighted by the smaller side's count: one a side barely served says little.
    let (mut log_ratio, mut diff, mut weight) = (0.0, 0.0, 0.0);
    for (th, fh) in &common {
        let w = th.count().min(fh.count()) as f64;
        if let (Some(tp), Some(fp)) = (th.quantile_ms(0.95), fh.quantile_ms(0.95)) {
            log_ratio += w * (tp / fp.max(1e-3)).ln();
            diff += w * (tp - fp);
            weight += w;
        }
    }
    let groups: Vec<Vec<(u64, u64)>> = common.iter().map(|(t, f)| t.groups_with(f)).collect();
    Some(Effect {
        ratio: (log_ratio / weight.max(1e-9)).exp(),
        increase: diff / weight.max(1e-9),
        p: stat::van_elteren_greater(&groups),
    })
}

/// A part less another.
fn without(all: &Part, part: &Part) -> Part {
    Part {
        counts: all.counts.without(&part.counts),
        latency: strata_without(&all.latency, &part.latency),
        ttft: strata_without(&all.ttft, &part.ttft),
    }
}
