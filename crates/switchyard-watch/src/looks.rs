//! When the judge may call a failure (a *look*), and at what significance, so that judging
//! again and again keeps a stated false-alarm budget **per day of a phase** while keeping
//! its power late in a long phase.
//!
//! Look `k`, `Δt` after the previous one (or the phase's start), is held to
//!
//! ```text
//! α_k = α/2 · 6/(π² k²)  +  α/2 · min(Δt, 1 day) / 1 day
//! ```
//!
//! The first part adds up to α/2 over all looks (Σ 1/k² = π²/6): most of it goes to the
//! first looks, right after a move, where a broken side shows at once. The second part is
//! spent in proportion to time, α/2 per day whatever the traffic: a look a day later has as
//! much to spend as the first one of the day had. By the union bound the chance of any false
//! failure is at most α over a phase's first day and α/2 over each day after it. Looks come
//! every quarter window of fresh `to` requests, and at most four times a second.

use switchyard_core::config::AutoRollbackConfig;

const DAY_MS: f64 = 86_400_000.0;
/// Looks closer together than this are not worth their computation (the budget does not
/// depend on how often one looks).
const MIN_GAP_MS: u64 = 250;

/// A look: its index in the phase and the significance it may spend (over all its tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    pub k: u32,
    pub alpha: f64,
}

/// The significance of look `k`, `since_last_ms` after the previous look (see the module
/// docs).
pub fn alpha_at(alpha: f64, k: u32, since_last_ms: u64) -> f64 {
    let k = f64::from(k.max(1));
    let early = alpha / 2.0 * 6.0 / (std::f64::consts::PI.powi(2) * k * k);
    let lasting = alpha / 2.0 * (since_last_ms as f64).min(DAY_MS) / DAY_MS;
    early + lasting
}

/// The looks of one phase.
#[derive(Debug, Clone)]
pub struct Looks {
    k: u32,
    next_at: u64,
    last_ms: u64,
}

impl Looks {
    /// Looks of a phase that began at `started_ms` (the watchers' clock).
    pub fn new(started_ms: u64) -> Looks {
        Looks {
            k: 0,
            next_at: 0,
            last_ms: started_ms,
        }
    }

    /// A look as if `k` had been made already, the last at `last_ms`: for simulations that
    /// start late in a phase.
    pub fn after(k: u32, last_ms: u64, to_seen: u64) -> Looks {
        Looks {
            k,
            next_at: to_seen,
            last_ms,
        }
    }

    /// A look, if one is due at `now_ms`: there are `enough` requests to judge, `step` fresh
    /// ones on `to` since the last look, and a quarter of a second has passed. `alpha`: the budget (1 − confidence).
    pub fn due(
        &mut self,
        to_seen: u64,
        enough: bool,
        step: u64,
        now_ms: u64,
        alpha: f64,
    ) -> Option<Look> {
        let too_soon = self.k > 0 && now_ms < self.last_ms + MIN_GAP_MS;
        if !enough || to_seen < self.next_at || too_soon {
            return None;
        }
        self.k += 1;
        self.next_at = to_seen + step.max(1);
        let look = Look {
            k: self.k,
            alpha: alpha_at(alpha, self.k, now_ms.saturating_sub(self.last_ms)),
        };
        self.last_ms = now_ms;
        Some(look)
    }

    pub fn last(&self) -> u32 {
        self.k
    }
}

/// The looks' spacing: a quarter window of fresh `to` requests.
pub fn look_step(cfg: &AutoRollbackConfig) -> u64 {
    u64::from(cfg.window / 4).max(1)
}

/// The false-alarm budget α (per day of a phase): 1 − the configured confidence.
pub fn budget(cfg: &AutoRollbackConfig) -> f64 {
    1.0 - cfg.compare.as_ref().map_or(0.95, |c| c.confidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_day_however_often_one_looks() {
        // Looks every 2.5 s for a day, and every 10 min for a day: both spend at most α.
        for gap in [2_500u64, 600_000] {
            let mut spent = 0.0;
            let mut looks = Looks::new(0);
            let mut now = 0;
            let mut seen = 0;
            while now + gap <= 86_400_000 {
                now += gap;
                seen += 25;
                if let Some(l) = looks.due(seen, true, 25, now, 0.05) {
                    spent += l.alpha;
                }
            }
            assert!(spent <= 0.05 && spent > 0.049, "{gap}: {spent}");
        }
        // A day later a look still has something to spend: α/2 · Δt / day.
        let late = alpha_at(0.05, 34_560, 2_500);
        assert!(
            (late - (0.025 * 2_500.0 / 86_400_000.0)).abs() < 1e-9,
            "{late}"
        );
        assert!(late > 1e-7);
        // The first look, early: most of α/2.
        assert!(alpha_at(0.05, 1, 2_000) > 0.015);
    }

    #[test]
    fn looks_wait_for_traffic_and_a_second() {
        let mut looks = Looks::new(0);
        assert!(looks.due(10, false, 5, 100, 0.05).is_none());
        assert_eq!(looks.due(10, true, 5, 100, 0.05).map(|l| l.k), Some(1));
        assert!(
            looks.due(14, true, 5, 5_000, 0.05).is_none(),
            "a quarter window"
        );
        assert!(
            looks.due(15, true, 5, 200, 0.05).is_none(),
            "a quarter second"
        );
        assert_eq!(looks.due(15, true, 5, 400, 0.05).map(|l| l.k), Some(2));
    }
}
