//! Per-provider numbers: totals since start, and a rolling window (the last N requests,
//! none older than M) with HDR-histogram percentiles.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use hdrhistogram::Histogram;
use switchyard_core::api;
use switchyard_core::event::{Class, RequestEvent};

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    latency_us: u64,
    ttfb_us: Option<u64>,
    class: Class,
    cut: bool,
    /// An abandoned wait: how long the client waited.
    waited_us: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    requests: u64,
    by_class: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    cost_if_other_usd: f64,
    /// Requests whose model had no price on this (or the other) provider.
    unpriced: u64,
    unpriced_other: u64,
    /// Successful answers whose usage could not be read (their cost is unknown).
    unmetered: u64,
    bad_answers: BTreeMap<&'static str, u64>,
    cut_answers: BTreeMap<&'static str, u64>,
    abandoned_waits: u64,
}

#[derive(Debug, Default)]
struct ProviderStats {
    totals: Totals,
    window: VecDeque<Sample>,
}

/// Everything `/admin/stats` shows, fed one [`RequestEvent`] at a time.
#[derive(Debug)]
pub struct Stats {
    window_requests: usize,
    window: Duration,
    providers: BTreeMap<String, ProviderStats>,
    first_ms: Option<u64>,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// As the admin API shows it: milliseconds to three decimals.
    pub fn view(self) -> api::Latency {
        api::Latency {
            avg_ms: round3(self.avg_ms),
            p50_ms: round3(self.p50_ms),
            p95_ms: round3(self.p95_ms),
            p99_ms: round3(self.p99_ms),
            max_ms: round3(self.max_ms),
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Percentiles of microsecond samples (HDR, 3 significant digits).
pub fn latency_of(samples: impl Iterator<Item = u64>) -> Option<Latency> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 24 * 3_600 * 1_000_000, 3)
        .expect("static bounds are valid");
    for s in samples {
        h.saturating_record(s.max(1));
    }
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Latency {
        avg_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}

impl Stats {
    pub fn new(window_requests: usize, window: Duration) -> Self {
        Stats {
            window_requests,
            window,
            providers: BTreeMap::new(),
            first_ms: None,
        }
    }

    /// A reload may change the window; samples already held are trimmed to it.
    pub fn set_window(&mut self, window_requests: usize, window: Duration) {
        self.window_requests = window_requests;
        self.window = window;
        for p in self.providers.values_mut() {
            while p.window.len() > window_requests {
                p.window.pop_front();
            }
        }
    }

    pub fn record(&mut self, e: &RequestEvent, now_ms: u64) {
        self.first_ms.get_or_insert(now_ms);
        // Looked up before inserting: a key made per request is a String allocated and
        // formatted per request, on the thread that judges them all.
        if !self.providers.contains_key(&*e.provider) {
            self.providers
                .insert(e.provider.to_string(), ProviderStats::default());
        }
        let Some(p) = self.providers.get_mut(&*e.provider) else {
            return;
        };
        let t = &mut p.totals;
        t.requests += 1;
        *t.by_class.entry(e.class.label()).or_default() += 1;
        t.prompt_tokens += e.prompt_tokens;
        t.completion_tokens += e.completion_tokens;
        let has_tokens = e.prompt_tokens + e.completion_tokens > 0;
        t.unmetered += u64::from(e.unmetered);
        match e.cost_usd {
            Some(c) => t.cost_usd += c,
            None if has_tokens => t.unpriced += 1,
            None => {}
        }
        match e.cost_if_other_usd {
            Some(c) => t.cost_if_other_usd += c,
            None if has_tokens => t.unpriced_other += 1,
            None => {}
        }
        if let Some(shape) = e.bad_answer {
            *t.bad_answers.entry(shape.label()).or_default() += 1;
        }
        if let Some(cut) = e.cut_short {
            *t.cut_answers.entry(cut.label()).or_default() += 1;
        }
        let waited_us = e
            .abandoned_wait()
            .then(|| e.waited.map(|w| w.as_micros() as u64))
            .flatten();
        t.abandoned_waits += u64::from(waited_us.is_some());
        p.window.push_back(Sample {
            at_ms: now_ms,
            latency_us: e.latency.as_micros() as u64,
            ttfb_us: e.ttfb.map(|d| d.as_micros() as u64),
            class: e.class,
            cut: e.cut_short.is_some(),
            waited_us,
        });
        if p.window.len() > self.window_requests {
            p.window.pop_front();
        }
    }

    fn prune(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.window.as_millis() as u64);
        for p in self.providers.values_mut() {
            while p.window.front().is_some_and(|s| s.at_ms < horizon) {
                p.window.pop_front();
            }
        }
    }

    /// The `/admin/stats` document (its `shadow` and `verdict` are the control plane's to
    /// fill in). `from`/`to` name the migration's providers (for ROI).
    pub fn view(&mut self, now_ms: u64, from: &str, to: &str, names: &[&str]) -> api::Stats {
        self.prune(now_ms);
        let mut providers = BTreeMap::new();
        for name in names {
            let empty = ProviderStats::default();
            let p = self.providers.get(*name).unwrap_or(&empty);
            providers.insert(name.to_string(), provider_view(p));
        }
        let observed_s = self
            .first_ms
            .map_or(0.0, |f| (now_ms.saturating_sub(f)) as f64 / 1000.0);
        let cost = |n: &str| {
            self.providers.get(n).map_or((0.0, 0.0), |p| {
                (p.totals.cost_usd, p.totals.cost_if_other_usd)
            })
        };
        let (from_cost, from_on_to) = cost(from);
        let (to_cost, to_on_from) = cost(to);
        let all_on_from = from_cost + to_on_from;
        let all_on_to = to_cost + from_on_to;
        let actual = from_cost + to_cost;
        let per_month = |usd: f64| {
            if observed_s >= 1.0 {
                usd / observed_s * 30.0 * 86_400.0
            } else {
                0.0
            }
        };
        api::Stats {
            window: api::StatsWindow {
                requests: self.window_requests,
                seconds: self.window.as_secs_f64(),
            },
            providers,
            roi: api::Roi {
                observed_seconds: round3(observed_s),
                actual_cost_usd: actual,
                all_on_from_usd: all_on_from,
                all_on_to_usd: all_on_to,
                savings_so_far_usd: all_on_from - actual,
                savings_at_100_percent_usd: all_on_from - all_on_to,
                monthly_cost_all_on_from_usd: per_month(all_on_from),
                monthly_cost_all_on_to_usd: per_month(all_on_to),
                monthly_savings_at_100_percent_usd: per_month(all_on_from - all_on_to),
            },
            shadow: None,
            verdict: None,
        }
    }
}

fn provider_view(p: &ProviderStats) -> api::ProviderStats {
    let t = &p.totals;
    let n = p.window.len() as f64;
    let mut window_class: BTreeMap<String, u64> = Class::ALL
        .iter()
        .map(|c| (c.label().to_string(), 0))
        .collect();
    for s in &p.window {
        *window_class.entry(s.class.label().to_string()).or_default() += 1;
    }
    let rate = |count: u64| if n > 0.0 { count as f64 / n } else { 0.0 };
    let provider_errors = p
        .window
        .iter()
        .filter(|s| s.class.is_provider_error())
        .count() as u64;
    // Rates of what the providers answered or failed, not of successes or what clients broke.
    let mut error_rate: BTreeMap<String, f64> = Class::ALL
        .iter()
        .filter(|c| c.judges_provider() && **c != Class::Success)
        .map(|c| (c.label().to_string(), rate(window_class[c.label()])))
        .collect();
    error_rate.insert("provider_errors".into(), rate(provider_errors));
    // Waits abandoned on this provider (not every `client_gone`), and answers cut short:
    // what the judge compares besides the errors.
    let abandoned = p.window.iter().filter(|s| s.waited_us.is_some()).count() as u64;
    error_rate.insert("client_gone".into(), rate(abandoned));
    let cut = p.window.iter().filter(|s| s.cut).count() as u64;
    error_rate.insert("cut_short".into(), rate(cut));
    let labelled = |m: &BTreeMap<&'static str, u64>| -> BTreeMap<String, u64> {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let outcomes = Class::ALL
        .iter()
        .map(|c| {
            let n = t.by_class.get(c.label()).copied().unwrap_or(0);
            (c.label().to_string(), n)
        })
        .collect();
    api::ProviderStats {
        requests: t.requests,
        outcomes,
        latency: latency_of(p.window.iter().map(|s| s.latency_us)).map(Latency::view),
        ttfb: latency_of(p.window.iter().filter_map(|s| s.ttfb_us)).map(Latency::view),
        error_rate,
        window: api::WindowCounts {
            requests: p.window.len(),
            outcomes: window_class,
        },
        tokens: api::Tokens {
            prompt: t.prompt_tokens,
            completion: t.completion_tokens,
            total: t.prompt_tokens + t.completion_tokens,
        },
        cost_usd: t.cost_usd,
        cost_on_other_provider_usd: t.cost_if_other_usd,
        unpriced_requests: t.unpriced,
        unmetered_requests: t.unmetered,
        bad_answers: labelled(&t.bad_answers),
        cut_answers: labelled(&t.cut_answers),
        abandoned_waits: t.abandoned_waits,
        abandoned_wait: latency_of(p.window.iter().filter_map(|s| s.waited_us)).map(Latency::view),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ev(provider: &str, class: Class, ms: u64) -> RequestEvent {
        RequestEvent {
            provider: Arc::from(provider),
            epoch: 0,
            class,
            latency: Duration::from_millis(ms),
            ttfb: Some(Duration::from_millis(ms / 2)),
            upload: Duration::ZERO,
            stream: false,
            prompt_tokens: 1000,
            completion_tokens: 500,
            cost_usd: Some(if provider == "old" { 0.00082 } else { 0.00035 }),
            cost_if_other_usd: Some(if provider == "old" { 0.00035 } else { 0.00082 }),
            ..RequestEvent::default()
        }
    }

    #[test]
    fn percentiles_and_rates_over_the_window() {
        let mut s = Stats::new(100, Duration::from_secs(60));
        for i in 1..=100 {
            let class = if i % 10 == 0 {
                Class::ServerError
            } else {
                Class::Success
            };
            s.record(&ev("new", class, i), 1000);
        }
        let v = serde_json::to_value(s.view(2000, "old", "new", &["old", "new"])).unwrap();
        let new = &v["providers"]["new"];
        assert_eq!(new["requests"], 100);
        assert_eq!(new["error_rate"]["5xx"], 0.1);
        // HDR keeps 3 significant digits: within 0.1%
        let near = |k: &str, want: f64| {
            let got = new["latency"][k].as_f64().unwrap();
            assert!((got - want).abs() <= want * 0.001, "{k}: {got} vs {want}");
        };
        near("p50_ms", 50.0);
        near("p95_ms", 95.0);
        near("p99_ms", 99.0);
        near("max_ms", 100.0);
        near("avg_ms", 50.5);
        assert_eq!(new["tokens"]["total"], 150_000);
        assert_eq!(v["providers"]["old"]["requests"], 0);
    }

    #[test]
    fn window_drops_old_and_excess_samples_but_totals_stay() {
        let mut s = Stats::new(3, Duration::from_secs(10));
        for i in 0..5 {
            s.record(&ev("old", Class::Success, 10), i * 1000);
        }
        let v = serde_json::to_value(s.view(5_000, "old", "new", &["old"])).unwrap();
        assert_eq!(v["providers"]["old"]["window"]["requests"], 3);
        assert_eq!(v["providers"]["old"]["requests"], 5);
        let v = serde_json::to_value(s.view(14_500, "old", "new", &["old"])).unwrap();
        // samples at 2s, 3s, 4s; the horizon is 4.5s
        assert_eq!(v["providers"]["old"]["window"]["requests"], 0);
        assert_eq!(v["providers"]["old"]["latency"], serde_json::Value::Null);
    }

    #[test]
    fn roi_projects_monthly_savings() {
        let mut s = Stats::new(100, Duration::from_secs(60));
        s.record(&ev("old", Class::Success, 10), 0);
        s.record(&ev("new", Class::Success, 10), 0);
        let v = serde_json::to_value(s.view(10_000, "old", "new", &["old", "new"])).unwrap();
        let roi = &v["roi"];
        let all_on_from = roi["all_on_from_usd"].as_f64().unwrap();
        let all_on_to = roi["all_on_to_usd"].as_f64().unwrap();
        assert!((all_on_from - 0.00164).abs() < 1e-12);
        assert!((all_on_to - 0.00070).abs() < 1e-12);
        let monthly = roi["monthly_savings_at_100_percent_usd"].as_f64().unwrap();
        assert!(
            (monthly - 0.00094 / 10.0 * 2_592_000.0).abs() < 1e-6,
            "{monthly}"
        );
    }
}
