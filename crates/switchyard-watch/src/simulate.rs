//! The judge's claims, measured: seeded simulations of whole phases judged at every look as
//! the watcher does (false alarms per phase and per day, shared outages, live controls,
//! power late in a long phase), beside the unit cases.

use std::time::Duration;

use switchyard_core::config::{AutoRollbackConfig, CompareConfig};
use switchyard_core::event::{Class, RequestEvent};
use switchyard_core::router::Side;

use crate::gate::{gate, Gate};
use crate::judge::{judge, Judgement, Metric, Sides, Verdict};
use crate::looks::{budget, look_step, Look, Looks};
use crate::window::tests::{ev, keyed};
use crate::window::{Scale, Summary, Windows};

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
            min_latency_increase: Duration::from_millis(100),
            confidence: 0.95,
        }),
    }
}

/// A seeded generator (xorshift64*): the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A latency around `median` ms with a log-normal spread.
    fn latency(&mut self, median: f64) -> u64 {
        // Box-Muller.
        let (u, v) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        (median * (0.25 * z).exp()) as u64
    }
}

/// One side's request as a simulation makes it.
struct Outcome {
    class: Class,
    ms: u64,
    completion_tokens: u64,
    cold: bool,
    key: Option<u64>,
}

fn ok(ms: u64) -> Outcome {
    Outcome {
        class: Class::Success,
        ms,
        completion_tokens: 50,
        cold: false,
        key: None,
    }
}

fn failing(rng: &mut Rng, rate: f64, median: f64) -> Outcome {
    if rng.chance(rate) {
        Outcome {
            class: Class::ServerError,
            ..ok(rng.latency(median))
        }
    } else {
        ok(rng.latency(median))
    }
}

/// A phase judged as the watcher judges it: requests arrive, looks come, a fail stops it.
struct Sim {
    cfg: AutoRollbackConfig,
    w: Windows,
    looks: Looks,
    now_ms: u64,
    key: u64,
    /// The share of keys routed to `to`.
    share: f64,
    /// At 100%: the share of `to`'s requests mirrored to `from` as the control.
    control: f64,
    /// The last verdict of a look.
    last: Option<Verdict>,
}

impl Sim {
    fn new(cfg: AutoRollbackConfig, share: f64, control: f64) -> Sim {
        let window = cfg.window as usize;
        Sim {
            cfg,
            w: Windows::new(window),
            looks: Looks::new(0),
            now_ms: 0,
            key: 0,
            share,
            control,
            last: None,
        }
    }

    fn event(&mut self, provider: &str, o: Outcome, control: bool) -> RequestEvent {
        self.key += 1;
        RequestEvent {
            completion_tokens: o.completion_tokens,
            cold: o.cold,
            control,
            ..keyed(provider, o.class, o.ms, 0, o.key.unwrap_or(self.key))
        }
    }

    /// One request, `gap_ms` after the last, routed by the phase's share; judged if a look
    /// is due. Returns a failing verdict.
    fn request(
        &mut self,
        rng: &mut Rng,
        gap_ms: u64,
        to: &mut impl FnMut(&mut Rng, u64) -> Outcome,
        from: &mut impl FnMut(&mut Rng, u64) -> Outcome,
    ) -> Option<Verdict> {
        self.now_ms += gap_ms;
        let t = self.now_ms;
        if rng.chance(self.share) {
            let o = to(rng, t);
            let e = self.event("new", o, false);
            self.w.record(Side::To, &e, t);
            if rng.chance(self.control) {
                let o = from(rng, t);
                let e = self.event("old", o, true);
                self.w.record(Side::From, &e, t);
            }
        } else {
            let o = from(rng, t);
            let e = self.event("old", o, false);
            self.w.record(Side::From, &e, t);
        }
        self.judge_if_due().filter(|v| v.result == Judgement::Fail)
    }

    fn judge_if_due(&mut self) -> Option<Verdict> {
        let min = u64::from(self.cfg.min_requests);
        let enough = self.w.to_recent() >= min && self.w.from_kept() >= min;
        let look = self.looks.due(
            self.w.to_seen(),
            enough,
            look_step(&self.cfg),
            self.now_ms,
            budget(&self.cfg),
        )?;
        let scales = self.w.scales(self.now_ms);
        let v = verdict(&self.cfg, &scales, Some(look), self.expected());
        self.last = Some(v.clone());
        Some(v)
    }

    fn expected(&self) -> Option<f64> {
        (self.share > 0.0 && self.share < 1.0).then_some(self.share)
    }

    /// Runs `seconds` at `rps` requests a second; the first failing verdict.
    fn run(
        &mut self,
        rng: &mut Rng,
        seconds: u64,
        rps: f64,
        mut to: impl FnMut(&mut Rng, u64) -> Outcome,
        mut from: impl FnMut(&mut Rng, u64) -> Outcome,
    ) -> Option<Verdict> {
        let gap = (1000.0 / rps) as u64;
        let end = self.now_ms + seconds * 1000;
        while self.now_ms < end {
            if let Some(v) = self.request(rng, gap, &mut to, &mut from) {
                return Some(v);
            }
        }
        None
    }
}

fn verdict(
    cfg: &AutoRollbackConfig,
    scales: &[Scale],
    look: Option<Look>,
    expected_share: Option<f64>,
) -> Verdict {
    judge(
        cfg,
        &Sides {
            to_name: "new",
            from_name: "old",
            scales,
            expected_share,
        },
        look,
    )
}

/// A look with the first look's budget.
fn first_look() -> Option<Look> {
    Some(Look {
        k: 1,
        alpha: crate::looks::alpha_at(0.05, 1, 2_000),
    })
}

/// A 50% phase, `n` requests a side, interleaved, one per 10 ms.
fn run(
    w: &mut Windows,
    n: usize,
    mut to: impl FnMut(usize) -> (Class, u64),
    mut from: impl FnMut(usize) -> (Class, u64),
) {
    for i in 0..n {
        let now = i as u64 * 10;
        let (c, ms) = to(i);
        w.record(
            Side::To,
            &keyed("new", c, ms, w.epoch(), 2 * i as u64 + 1),
            now,
        );
        let (c, ms) = from(i);
        w.record(
            Side::From,
            &keyed("old", c, ms, w.epoch(), 2 * i as u64),
            now + 5,
        );
    }
}

fn verdict_at(w: &Windows, cfg: &AutoRollbackConfig, look: Option<Look>) -> Verdict {
    verdict(cfg, &w.scales(1_000_000), look, None)
}

/// The new side refuses everything (401, 404, 429) at 50%: fail at the first look, the
/// reason naming both sides.
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
        let v = verdict_at(&w, &cfg, first_look());
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
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.metric(Metric::ErrorRate).unwrap().result, Judgement::Pass);
    cfg.count_refused = true;
    assert_eq!(verdict_at(&w, &cfg, first_look()).result, Judgement::Fail);
}

#[test]
fn twice_as_slow_fails_on_latency() {
    let cfg = defaults(100, 20);
    let mut w = Windows::new(100);
    run(
        &mut w,
        40,
        |i| (Class::Success, 240 + (i as u64 * 7) % 30),
        |i| (Class::Success, 120 + (i as u64 * 11) % 15),
    );
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Fail, "{v:?}");
    let m = v.failed().unwrap();
    assert_eq!(m.metric, Metric::LatencyP95);
    assert!(m.ratio.unwrap() > 1.8 && m.ratio.unwrap() < 2.4, "{m:?}");
    assert!(v.reason.contains("van Elteren"), "{}", v.reason);
}

/// Twice as slow, but 4 ms against 2 ms: no slowdown anyone feels.
#[test]
fn a_ratio_of_tiny_latencies_is_no_slowdown() {
    let cfg = defaults(100, 20);
    let mut w = Windows::new(100);
    run(
        &mut w,
        60,
        |i| (Class::Success, 4 + (i as u64 % 3)),
        |i| (Class::Success, 2 + (i as u64 % 2)),
    );
    let v = verdict_at(&w, &cfg, first_look());
    let m = v.metric(Metric::LatencyP95).unwrap();
    assert!(m.ratio.unwrap() > 1.5 && m.p_value.unwrap() < 1e-6, "{m:?}");
    assert_eq!(v.result, Judgement::Pass, "{v:?}");
}

#[test]
fn a_few_slow_outliers_do_not_fail() {
    let cfg = defaults(100, 20);
    let mut w = Windows::new(100);
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
    let v = verdict_at(&w, &cfg, first_look());
    let m = v.metric(Metric::LatencyP95).unwrap();
    assert!(m.ratio.unwrap() > 1.5, "the outliers do move p95: {m:?}");
    assert_eq!(v.result, Judgement::Pass, "{v:?}");
}

/// The old side is itself at 8% timeouts: a new side just as bad is kept when no
/// absolute limit is written; a limit trips only when `to` is over it beyond chance, and
/// its reason names both sides.
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
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Pass, "{v:?}");
    let m = v.metric(Metric::ErrorRate).unwrap();
    assert_eq!((m.to_value, m.from_value), (Some(0.08), Some(0.08)));
    // 8 of 100 is not over 5% beyond chance (p ≈ 0.13).
    cfg.max_error_rate = Some(0.05);
    assert_eq!(verdict_at(&w, &cfg, first_look()).result, Judgement::Pass);
    // 40 of 100 is.
    let mut w = Windows::new(100);
    run(
        &mut w,
        100,
        |i| {
            if i % 5 < 2 {
                (Class::ServerError, 10)
            } else {
                (Class::Success, 100)
            }
        },
        eight_percent,
    );
    cfg.compare = None;
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Fail, "{v:?}");
    assert!(
        v.reason
            .contains("`new` provider errors 40.0% over 100 requests vs `old` 8.0% over 100")
            && v.reason.contains("over the absolute limit 5.0%"),
        "{}",
        v.reason
    );
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
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Inconclusive);
    assert!(
        v.reason.contains("19 of the 20") && v.reason.contains("needs ~1 more requests on `new`"),
        "{}",
        v.reason
    );
    let hold = Some(Duration::from_secs(60));
    let later = Duration::from_secs(61);
    assert!(
        matches!(gate(hold, later, false, Some(&v)), Gate::Wait(r) if r.starts_with("inconclusive"))
    );

    // Enough on `to`, none on `from` in the interval (100% with no control).
    let mut w = Windows::new(100);
    for i in 0..30 {
        w.record(Side::To, &keyed("new", Class::Success, 10, 0, i), i);
    }
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Inconclusive);
    assert!(
        v.reason.contains("`old` served no request") && v.reason.contains("no live control"),
        "{}",
        v.reason
    );

    run(
        &mut w,
        30,
        |_| (Class::Success, 10),
        |_| (Class::Success, 10),
    );
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Pass, "{v:?}");
    assert_eq!(gate(hold, later, false, Some(&v)), Gate::Advance);
    assert!(matches!(
        gate(hold, Duration::from_secs(59), false, Some(&v)),
        Gate::Wait(_)
    ));
    assert!(matches!(gate(hold, later, true, Some(&v)), Gate::Wait(_)));
    assert!(matches!(gate(None, later, false, Some(&v)), Gate::Wait(_)));
    // Between looks no comparative test runs.
    assert_eq!(verdict_at(&w, &cfg, None).result, Judgement::Inconclusive);
}

#[test]
fn absolute_limits_alone_when_comparison_is_off() {
    let mut cfg = defaults(20, 10);
    cfg.compare = None;
    cfg.max_error_rate = Some(0.2);
    cfg.max_p95_latency = Some(Duration::from_millis(500));
    let mut w = Windows::new(20);
    for i in 0..10u64 {
        let class = if i < 3 {
            Class::ServerError
        } else {
            Class::Success
        };
        w.record(Side::To, &keyed("new", class, 100, 0, i), i);
    }
    // 3 of 10 over a 20% limit: not beyond chance.
    assert_eq!(verdict_at(&w, &cfg, first_look()).result, Judgement::Pass);
    for i in 0..6 {
        w.record(
            Side::To,
            &keyed("new", Class::Connect, 100, 0, 100 + i),
            11 + i,
        );
    }
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.result, Judgement::Fail, "{v:?}");
    assert_eq!(v.failed().unwrap().metric, Metric::ErrorRate);
    let mut w = Windows::new(20);
    for i in 0..20 {
        w.record(Side::To, &keyed("new", Class::Success, 900, 0, i), 20 + i);
    }
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(v.failed().unwrap().metric, Metric::LatencyP95, "{v:?}");
    assert!(
        v.reason.contains("over the absolute limit 500 ms"),
        "{}",
        v.reason
    );
}

#[test]
fn what_the_client_broke_is_not_in_any_window_but_abandoned_waits_are() {
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
    assert_eq!(w.scales(1_000).first().map(|s| s.to.requests()), Some(0));
    assert_eq!(w.to_seen(), 0);
    assert_eq!(
        verdict_at(&w, &cfg, first_look()).result,
        Judgement::Inconclusive
    );
    // Clients that gave up waiting on `to` (their requests were sent whole): compared.
    for i in 0..20u64 {
        let gone = RequestEvent {
            waited: Some(Duration::from_secs(3)),
            ..keyed("new", Class::ClientGone, 3000, 0, 1000 + i)
        };
        w.record(Side::To, &gone, 300 + i);
        w.record(
            Side::From,
            &keyed("old", Class::Success, 10, 0, 2000 + i),
            300 + i,
        );
    }
    let v = verdict_at(&w, &cfg, first_look());
    assert_eq!(
        v.failed().map(|m| m.metric),
        Some(Metric::AbandonedRate),
        "{v:?}"
    );
}

#[test]
fn summaries_add_up_over_replicas() {
    let mut a = Windows::new(100);
    let mut b = Windows::new(100);
    run(&mut a, 10, |_| (Class::Auth, 5), |_| (Class::Success, 100));
    run(&mut b, 10, |_| (Class::Auth, 5), |_| (Class::Success, 100));
    let mut sa = a.scales(1_000);
    let sb = b.scales(1_000);
    sa[0].merge(&sb[0]);
    let v = verdict(&defaults(100, 20), &sa, first_look(), None);
    assert_eq!(
        v.result,
        Judgement::Fail,
        "20 of 20 over two replicas of 10: {v:?}"
    );
}

#[test]
fn verdict_json_round_trips() {
    let cfg = defaults(100, 20);
    let mut w = Windows::new(100);
    run(&mut w, 20, |_| (Class::Auth, 5), |_| (Class::Success, 100));
    let v = verdict_at(&w, &cfg, first_look());
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["result"], "fail");
    assert_eq!(json["metrics"][0]["metric"], "error_rate");
    assert_eq!(json["metrics"][1]["metric"], "4xx_rate");
    assert!(json["interval_seconds"].is_number());
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, v);
}

/// A long-answer cohort: one user's answers take 2.2 s on new (1,500 tokens at the same
/// speed per token as everyone's 50 tokens in 200 ms on both sides). Compared within
/// answer lengths, it is no slowdown.
#[test]
fn a_long_answer_cohort_at_equal_speed_per_token_passes() {
    let cfg = defaults(100, 20);
    let mut rng = Rng(7);
    let mut sim = Sim::new(cfg, 0.1, 0.0);
    let heavy = |rng: &mut Rng, _| {
        if rng.chance(0.3) {
            Outcome {
                completion_tokens: 1_500,
                key: Some(4242),
                ..ok(rng.latency(2_200.0))
            }
        } else {
            ok(rng.latency(200.0))
        }
    };
    let v = sim.run(&mut rng, 600, 20.0, heavy, |rng, _| ok(rng.latency(200.0)));
    assert!(v.is_none(), "{v:?}");
    let last = sim.last.expect("judged");
    assert_eq!(last.result, Judgement::Pass, "{last:?}");
}

/// Identical providers, but a connection's first request pays +250 ms of setup, and new
/// opens many connections at first: no latency failure.
#[test]
fn cold_first_requests_pass() {
    let cfg = defaults(100, 20);
    let mut rng = Rng(11);
    let mut sim = Sim::new(cfg, 0.5, 0.0);
    let cold = |rng: &mut Rng, t: u64| {
        if t < 20_000 && rng.chance(0.5) {
            Outcome {
                cold: true,
                ..ok(rng.latency(300.0) + 250)
            }
        } else {
            ok(rng.latency(300.0))
        }
    };
    let v = sim.run(&mut rng, 120, 20.0, cold, |rng, _| ok(rng.latency(300.0)));
    assert!(v.is_none(), "{v:?}");
}

/// One sticky user whose requests only new rejects (400), sending often: not a failure,
/// and shown as concentrated on one key.
#[test]
fn one_keys_burst_of_4xx_is_not_a_fail() {
    let cfg = defaults(100, 20);
    let mut rng = Rng(3);
    let mut sim = Sim::new(cfg, 0.5, 0.0);
    let mut to = |rng: &mut Rng, _| {
        if rng.chance(0.3) {
            Outcome {
                class: Class::ClientError,
                key: Some(777),
                ..ok(20)
            }
        } else {
            ok(rng.latency(100.0))
        }
    };
    for _ in 0..6_000 {
        let mut from = |rng: &mut Rng, _| ok(rng.latency(100.0));
        let v = sim.request(&mut rng, 50, &mut to, &mut from);
        assert!(v.is_none(), "{v:?}");
    }
    let v = sim.last.expect("judged");
    let c = v
        .concentrated
        .iter()
        .find(|c| c.kind == "routing_key")
        .expect("shown as concentrated");
    assert_eq!(c.key, "bucket 777");
    assert!(
        c.requests >= 5 && c.note.contains("one routing key"),
        "{c:?}"
    );
}

/// Both sides share an outage right after a move: 8% 5xx on each, at 50% and at 100% (with
/// the default 2% live control). Rolled back in at most 5% of simulated phases.
#[test]
fn a_shared_outage_right_after_a_move_rarely_rolls_back() {
    for (share, control) in [(0.5, 0.0), (1.0, 0.02)] {
        let phases = 100;
        let mut rolled_back = 0;
        for seed in 0..phases {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut sim = Sim::new(defaults(100, 20), share, control);
            let healthy = |rng: &mut Rng, _| ok(rng.latency(200.0));
            let outage = |rng: &mut Rng, _| failing(rng, 0.08, 200.0);
            let v = sim
                .run(&mut rng, 30, 20.0, healthy, healthy)
                .or_else(|| sim.run(&mut rng, 300, 20.0, outage, outage));
            rolled_back += usize::from(v.is_some());
        }
        eprintln!("shared outage at {share}: {rolled_back} of {phases} phases rolled back");
        assert!(
            rolled_back * 100 <= phases as usize * 5,
            "{rolled_back} of {phases} phases at {share} rolled back"
        );
    }
}

/// At 100% with the default 2% control on `from`: new failing 30% while old is fine is
/// rolled back, the reason giving old's live numbers.
#[test]
fn new_failing_at_100_percent_fails_against_the_live_control() {
    for seed in 0..10 {
        let mut rng = Rng(seed + 1);
        let mut sim = Sim::new(defaults(100, 20), 1.0, 0.02);
        let v = sim.run(
            &mut rng,
            600,
            20.0,
            |rng, _| failing(rng, 0.3, 200.0),
            |rng, _| ok(rng.latency(200.0)),
        );
        let v = v.unwrap_or_else(|| panic!("seed {seed}: never rolled back"));
        eprintln!("30% at 100%: rolled back after {} s", sim.now_ms / 1000);
        let m = v.failed().unwrap();
        assert_eq!(m.metric, Metric::ErrorRate);
        assert!(m.from_n >= 20 && m.from_value == Some(0.0), "{m:?}");
        assert!(v.reason.contains("vs `old` 0.0%"), "{}", v.reason);
    }
}

/// New's 5xx rate goes from 0% to 10% after a day of looks at 10 requests/s, at 50%:
/// caught within a few windows (the budget left late in a phase is α/2 per day, and the
/// longer intervals accumulate the evidence one window is too small to hold).
#[test]
fn a_regression_late_in_a_long_phase_is_caught_within_a_few_windows() {
    let day_ms = 86_400_000;
    let mut taken = Vec::new();
    for seed in 0..20 {
        let mut rng = Rng(seed + 100);
        let mut sim = Sim::new(defaults(100, 20), 0.5, 0.0);
        // A day of healthy traffic and its looks: 34,560 of them at 10 requests/s.
        sim.now_ms = day_ms;
        sim.looks = Looks::after(34_560, day_ms - 5_000, 0);
        let healthy = |rng: &mut Rng, _| ok(rng.latency(200.0));
        assert!(sim.run(&mut rng, 200, 10.0, healthy, healthy).is_none());
        let before = sim.w.to_seen();
        let v = sim.run(
            &mut rng,
            600,
            10.0,
            |rng, _| failing(rng, 0.10, 200.0),
            healthy,
        );
        assert!(v.is_some(), "seed {seed}: never caught");
        taken.push(sim.w.to_seen() - before);
    }
    let worst = *taken.iter().max().unwrap();
    let mean = taken.iter().sum::<u64>() as f64 / taken.len() as f64;
    eprintln!("0% -> 10% a day in: caught after {mean:.0} requests on new (worst {worst})");
    assert!(
        worst <= 500,
        "requests on new until caught: {taken:?} (mean {mean})"
    );
}

/// Both sides truly at 3% with a 5% backstop: the backstop trips in at most 5% of phases.
#[test]
fn a_backstop_does_not_trip_on_noise() {
    let mut cfg = defaults(100, 20);
    cfg.max_error_rate = Some(0.05);
    let phases = 100;
    let mut tripped = 0;
    for seed in 0..phases {
        let mut rng = Rng(seed * 31 + 5);
        let mut sim = Sim::new(cfg.clone(), 0.5, 0.0);
        let three = |rng: &mut Rng, _| failing(rng, 0.03, 200.0);
        tripped += usize::from(sim.run(&mut rng, 300, 20.0, three, three).is_some());
    }
    eprintln!("3% under a 5% backstop: {tripped} of {phases} phases tripped");
    assert!(
        tripped * 100 <= phases as usize * 5,
        "{tripped} of {phases}"
    );
}

/// Equal sides judged at every look for a whole simulated day: few phases ever alarm.
#[test]
fn the_false_alarm_rate_holds_over_a_day() {
    let phases = 100;
    let mut alarms = 0;
    for seed in 0..phases {
        let mut rng = Rng(seed * 7919 + 1);
        let mut sim = Sim::new(defaults(40, 10), 0.5, 0.0);
        let same = |rng: &mut Rng, _| failing(rng, 0.05, 300.0);
        // One request every 20 s: a day of looks (the budget does not depend on traffic).
        alarms += usize::from(sim.run(&mut rng, 86_400, 0.05, same, same).is_some());
    }
    eprintln!("equal sides for a day: {alarms} of {phases} phases alarmed");
    assert!(
        alarms * 100 <= phases as usize * 5,
        "{alarms} of {phases} days alarmed"
    );
}

/// The split `to` served is far from the phase's percent: a warning that blocks advancing.
#[test]
fn a_skewed_split_is_a_warning() {
    let cfg = defaults(100, 20);
    let mut w = Windows::new(100);
    // At "50%", new serves 70 of every 100.
    for i in 0..400u64 {
        let side = if i % 10 < 7 { Side::To } else { Side::From };
        let name = if side == Side::To { "new" } else { "old" };
        w.record(side, &keyed(name, Class::Success, 100, 0, i), i * 10);
    }
    let v = verdict(&cfg, &w.scales(4_000), first_look(), Some(0.5));
    assert_eq!(v.warnings.len(), 1, "{v:?}");
    assert!(
        v.warnings[0].contains("sample ratio mismatch"),
        "{:?}",
        v.warnings
    );
    let hold = Some(Duration::from_secs(1));
    let passed = Verdict {
        result: Judgement::Pass,
        ..v
    };
    assert!(
        matches!(gate(hold, Duration::from_secs(2), false, Some(&passed)), Gate::Wait(r) if r.contains("mismatch"))
    );
}

/// A client key whose requests only new rejects cannot decide alone; a failure spread
/// over client keys does.
#[test]
fn one_client_key_cannot_decide() {
    let cfg = defaults(100, 20);
    let client_run = |bad_clients: &[u16]| {
        let mut w = Windows::new(100);
        for i in 0..100u64 {
            let client = (i % 4) as u16;
            let to_class = if bad_clients.contains(&client) {
                Class::ClientError
            } else {
                Class::Success
            };
            let e = RequestEvent {
                client: Some(client),
                ..keyed("new", to_class, 100, 0, i)
            };
            w.record(Side::To, &e, i * 10);
            let e = RequestEvent {
                client: Some(client),
                ..keyed("old", Class::Success, 100, 0, 5_000 + i)
            };
            w.record(Side::From, &e, i * 10);
        }
        verdict(&cfg, &w.scales(2_000), first_look(), None)
    };
    let one = client_run(&[2]);
    assert_ne!(one.result, Judgement::Fail, "{one:?}");
    assert!(
        one.concentrated
            .iter()
            .any(|c| c.key == "client key #2" && c.note.contains("one client cannot decide")),
        "{one:?}"
    );
    let spread = client_run(&[1, 2, 3]);
    assert_eq!(spread.result, Judgement::Fail, "{spread:?}");
}

/// Plain data for [`Summary`]'s users outside this crate (the fleet sum).
#[test]
fn a_scale_merges_like_its_summaries() {
    let mut a = Scale {
        multiple: 1,
        seconds: 3.0,
        ..Scale::default()
    };
    a.to.counts.success = 2;
    let b = Scale {
        seconds: 5.0,
        ..a.clone()
    };
    a.merge(&b);
    assert_eq!((a.to.counts.success, a.seconds), (4, 5.0));
    assert_eq!(Summary::default().requests(), 0);
    let _ = ev("x", Class::Success, 1, 0);
}
