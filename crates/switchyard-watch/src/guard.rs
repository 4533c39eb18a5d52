//! The rollback guard and the phase gates: judgements over a provider's most recent
//! requests in the current phase. Pure: fed events, asked for a verdict.

use std::collections::VecDeque;
use std::time::Duration;

use switchyard_core::config::AutoRollbackConfig;
use switchyard_core::event::RequestEvent;

use crate::stats::latency_of;

/// One provider's most recent `window` requests of the current epoch.
#[derive(Debug)]
pub struct Guard {
    window: usize,
    epoch: u64,
    samples: VecDeque<(bool, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few requests to judge: never a reason to act either way.
    Inconclusive { seen: usize, need: usize },
    Healthy {
        seen: usize,
        error_rate: f64,
        p95: Duration,
    },
    /// A threshold is crossed.
    Breach {
        seen: usize,
        metric: &'static str,
        value: f64,
        threshold: f64,
    },
}

impl Guard {
    pub fn new(window: usize) -> Self {
        Guard {
            window: window.max(1),
            epoch: 0,
            samples: VecDeque::new(),
        }
    }

    /// Starts over when the migration state changes: a new phase is judged on its own traffic.
    pub fn reset(&mut self, epoch: u64, window: usize) {
        self.epoch = epoch;
        self.window = window.max(1);
        self.samples.clear();
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn seen(&self) -> usize {
        self.samples.len()
    }

    /// Counts the event if it belongs to the current epoch.
    pub fn record(&mut self, e: &RequestEvent) {
        if e.epoch != self.epoch || e.class == switchyard_core::event::Class::ClientGone {
            return;
        }
        self.samples.push_back((
            e.class.is_provider_error(),
            e.judged_latency().as_micros() as u64,
        ));
        while self.samples.len() > self.window {
            self.samples.pop_front();
        }
    }

    pub fn verdict(&self, cfg: &AutoRollbackConfig) -> Verdict {
        let seen = self.samples.len();
        let need = cfg.min_requests as usize;
        if seen < need.max(1) {
            return Verdict::Inconclusive { seen, need };
        }
        let errors = self.samples.iter().filter(|(err, _)| *err).count();
        let error_rate = errors as f64 / seen as f64;
        if error_rate > cfg.max_error_rate {
            return Verdict::Breach {
                seen,
                metric: "error_rate",
                value: error_rate,
                threshold: cfg.max_error_rate,
            };
        }
        let p95_ms = latency_of(self.samples.iter().map(|(_, us)| *us)).map_or(0.0, |l| l.p95_ms);
        let max_ms = cfg.max_p95_latency.as_secs_f64() * 1000.0;
        if p95_ms > max_ms {
            return Verdict::Breach {
                seen,
                metric: "p95_latency_ms",
                value: p95_ms,
                threshold: max_ms,
            };
        }
        Verdict::Healthy {
            seen,
            error_rate,
            p95: Duration::from_micros((p95_ms * 1000.0) as u64),
        }
    }
}

/// Counts of the window: `(seen, provider errors, slower than slow_us)`. Replicas publish
/// these so that a fleet can be judged on the sum of its windows.
impl Guard {
    pub fn counts(&self, slow_us: u64) -> (usize, usize, usize) {
        let errors = self.samples.iter().filter(|(e, _)| *e).count();
        let slow = self.samples.iter().filter(|(_, us)| *us > slow_us).count();
        (self.samples.len(), errors, slow)
    }
}

/// The guard's judgement from summed counts: p95 is over the limit exactly when more than
/// 5% of the requests took longer than it.
pub fn verdict_of_counts(
    seen: usize,
    errors: usize,
    slow: usize,
    cfg: &AutoRollbackConfig,
) -> Verdict {
    let need = cfg.min_requests as usize;
    if seen < need.max(1) {
        return Verdict::Inconclusive { seen, need };
    }
    let error_rate = errors as f64 / seen as f64;
    if error_rate > cfg.max_error_rate {
        return Verdict::Breach {
            seen,
            metric: "error_rate",
            value: error_rate,
            threshold: cfg.max_error_rate,
        };
    }
    let slow_share = slow as f64 / seen as f64;
    if slow_share > 0.05 {
        let max_ms = cfg.max_p95_latency.as_secs_f64() * 1000.0;
        return Verdict::Breach {
            seen,
            metric: "p95_latency_ms",
            value: max_ms * (1.0 + slow_share),
            threshold: max_ms,
        };
    }
    Verdict::Healthy {
        seen,
        error_rate,
        p95: Duration::ZERO,
    }
}

/// What the phase gate says about advancing.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Advance,
    Wait(String),
}

/// A phase may advance when it has a `hold`, the hold has passed, it is not the last
/// phase, and the window is judged healthy. A phase without `hold` waits for an operator;
/// an inconclusive window (too little traffic) never advances.
pub fn gate(
    hold: Option<Duration>,
    in_phase_for: Duration,
    is_last: bool,
    verdict: &Verdict,
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
        Verdict::Healthy { .. } => Gate::Advance,
        Verdict::Inconclusive { seen, need } => Gate::Wait(format!(
            "inconclusive: {seen} of {need} requests needed to judge"
        )),
        Verdict::Breach {
            metric,
            value,
            threshold,
            ..
        } => Gate::Wait(format!("{metric} {value:.3} over {threshold:.3}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard_core::event::Class;

    fn cfg() -> AutoRollbackConfig {
        AutoRollbackConfig {
            window: 10,
            min_requests: 5,
            max_error_rate: 0.2,
            max_p95_latency: Duration::from_millis(500),
        }
    }

    fn ev(class: Class, ms: u64, epoch: u64) -> RequestEvent {
        RequestEvent {
            provider: Arc::from("new"),
            epoch,
            class,
            latency: Duration::from_millis(ms),
            ttfb: None,
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: None,
            cost_if_other_usd: None,
        }
    }

    #[test]
    fn inconclusive_until_min_requests() {
        let mut g = Guard::new(10);
        for _ in 0..4 {
            g.record(&ev(Class::ServerError, 10, 0));
        }
        assert_eq!(
            g.verdict(&cfg()),
            Verdict::Inconclusive { seen: 4, need: 5 }
        );
        g.record(&ev(Class::ServerError, 10, 0));
        assert!(matches!(
            g.verdict(&cfg()),
            Verdict::Breach {
                metric: "error_rate",
                ..
            }
        ));
    }

    #[test]
    fn error_rate_counts_provider_errors_not_client_errors() {
        let mut g = Guard::new(10);
        for i in 0..10 {
            let class = if i < 5 {
                Class::ClientError
            } else {
                Class::Success
            };
            g.record(&ev(class, 10, 0));
        }
        assert!(matches!(g.verdict(&cfg()), Verdict::Healthy { .. }));
        // 2 of 10 is 20%: not over 20%
        for class in [Class::Timeout, Class::StreamCut] {
            g.record(&ev(class, 10, 0));
        }
        assert!(
            matches!(g.verdict(&cfg()), Verdict::Healthy { .. }),
            "{:?}",
            g.verdict(&cfg())
        );
        g.record(&ev(Class::Connect, 10, 0));
        match g.verdict(&cfg()) {
            Verdict::Breach { value, .. } => assert!((value - 0.3).abs() < 1e-9),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn p95_latency_breach_and_window_slides() {
        let mut g = Guard::new(10);
        for _ in 0..9 {
            g.record(&ev(Class::Success, 100, 0));
        }
        g.record(&ev(Class::Success, 900, 0));
        // 1 slow of 10: p95 is the slow one
        assert!(matches!(
            g.verdict(&cfg()),
            Verdict::Breach {
                metric: "p95_latency_ms",
                ..
            }
        ));
        for _ in 0..10 {
            g.record(&ev(Class::Success, 100, 0));
        }
        assert!(matches!(g.verdict(&cfg()), Verdict::Healthy { .. }));
    }

    #[test]
    fn old_epochs_are_ignored_after_reset() {
        let mut g = Guard::new(10);
        for _ in 0..10 {
            g.record(&ev(Class::ServerError, 10, 0));
        }
        g.reset(1, 10);
        g.record(&ev(Class::ServerError, 10, 0));
        assert_eq!(g.seen(), 0);
        g.record(&ev(Class::Success, 10, 1));
        assert_eq!(g.seen(), 1);
    }

    #[test]
    fn fleet_counts() {
        let c = cfg();
        assert!(matches!(
            verdict_of_counts(4, 4, 0, &c),
            Verdict::Inconclusive { .. }
        ));
        // two replicas, 10 requests each, 3 + 2 errors: 25% > 20%
        assert!(matches!(
            verdict_of_counts(20, 5, 0, &c),
            Verdict::Breach {
                metric: "error_rate",
                ..
            }
        ));
        assert!(matches!(
            verdict_of_counts(20, 4, 1, &c),
            Verdict::Healthy { .. }
        ));
        assert!(matches!(
            verdict_of_counts(20, 0, 2, &c),
            Verdict::Breach {
                metric: "p95_latency_ms",
                ..
            }
        ));
        let mut g = Guard::new(10);
        for ms in [100, 100, 900] {
            g.record(&ev(Class::Success, ms, 0));
        }
        g.record(&ev(Class::Timeout, 10, 0));
        assert_eq!(g.counts(500_000), (4, 1, 1));
    }

    #[test]
    fn gates() {
        let healthy = Verdict::Healthy {
            seen: 10,
            error_rate: 0.0,
            p95: Duration::ZERO,
        };
        let h = Some(Duration::from_secs(60));
        assert_eq!(
            gate(h, Duration::from_secs(61), false, &healthy),
            Gate::Advance
        );
        assert!(matches!(
            gate(h, Duration::from_secs(59), false, &healthy),
            Gate::Wait(_)
        ));
        assert!(matches!(
            gate(h, Duration::from_secs(61), true, &healthy),
            Gate::Wait(_)
        ));
        assert!(matches!(
            gate(None, Duration::from_secs(1000), false, &healthy),
            Gate::Wait(_)
        ));
        let inconclusive = Verdict::Inconclusive { seen: 1, need: 20 };
        assert!(
            matches!(gate(h, Duration::from_secs(1000), false, &inconclusive), Gate::Wait(r) if r.contains("inconclusive"))
        );
    }
}
