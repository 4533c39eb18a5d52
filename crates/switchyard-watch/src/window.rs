//! The judge's evidence: each side's recent requests, and summaries of them over the same
//! interval at several lengths ([`Scale`]). Summaries (outcome counts, latency histograms
//! per stratum) add up, so a fleet is judged on the sum of its replicas' with the same code.
//!
//! - **Same time.** Both sides' samples come from one interval: the time `to`'s last
//!   requests span. Nothing before it pads a side that served little in it (that side's
//!   metrics are then inconclusive), and a new phase starts both sides afresh: requests
//!   of another routing state are in no interval.
//! - **Several lengths.** `to`'s last `window` requests, and 4, 16 and 64 times as many:
//!   the short interval sees a side that broke just now; the long ones give a sparse
//!   control (the mirrored share at 100%) enough requests, and catch a modest regression
//!   that one window is too small to prove.
//! - **Cohorts, not requests.** Each interval keeps the parts of its heaviest routing keys
//!   (a key's bucket: a sticky user, or one request id) and client keys, so the judge can
//!   leave the heaviest one out and see whether the verdict still holds: one heavy or
//!   malicious client cannot decide it.
//! - **Like with like.** Latencies are kept per stratum — the model, and the answer's
//!   length (whole answers) or the prompt's (time to first token) — so that a mix that
//!   differs between the sides is not taken for speed; answers cut short and requests that
//!   opened a connection are no latency samples.
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use switchyard_core::event::RequestEvent;
use switchyard_core::router::Side;

pub use crate::summary::{strata_without, Counts, Hist, Part, Strata, Summary};
use crate::summary::{top, Sample};

/// The interval lengths compared, in windows of `to`'s requests.
pub const SCALES: [u32; 4] = [1, 4, 16, 64];

/// `from`'s samples kept, in windows: at a 1% phase it serves 99 times `to`'s requests, and
/// the longest intervals are then cut to what is kept (both sides alike).
const FROM_WINDOWS: usize = 256;

/// Both sides over one interval: `multiple` windows of `to`'s requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scale {
    pub multiple: u32,
    pub to: Summary,
    pub from: Summary,
    /// The interval's length.
    pub seconds: f64,
}

impl Scale {
    pub fn merge(&mut self, o: &Scale) {
        self.to.merge(&o.to);
        self.from.merge(&o.from);
        self.seconds = self.seconds.max(o.seconds);
    }
}

/// The two sides' recent requests of the current migration state (epoch).
#[derive(Debug)]
pub struct Windows {
    epoch: u64,
    window: usize,
    to: VecDeque<Sample>,
    from: VecDeque<Sample>,
    /// `from` dropped samples for room: intervals start no earlier than its oldest.
    from_trimmed: bool,
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
            from_trimmed: false,
            to_seen: 0,
        }
    }

    /// A new migration state: both sides start over (its traffic is another split).
    pub fn reset(&mut self, epoch: u64, window: usize) {
        *self = Windows::new(window);
        self.epoch = epoch;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn to_seen(&self) -> u64 {
        self.to_seen
    }

    /// `to`'s requests in its last window (what the first look waits for).
    pub fn to_recent(&self) -> u64 {
        self.to.len().min(self.window) as u64
    }

    /// `from`'s requests kept in this state: fewer than `min_requests` and no interval can
    /// compare yet.
    pub fn from_kept(&self) -> u64 {
        self.from.len() as u64
    }

    /// Counts a finished request of `side`, at `now_ms` on the watchers' clock. Requests
    /// that started under another migration state are in no interval.
    pub fn record(&mut self, side: Side, e: &RequestEvent, now_ms: u64) {
        if !e.judged() || e.epoch != self.epoch {
            return;
        }
        let s = Sample::of(e, now_ms);
        let longest = self.window * SCALES[SCALES.len() - 1] as usize;
        match side {
            Side::To => {
                self.to_seen += 1;
                self.to.push_back(s);
                while self.to.len() > longest {
                    self.to.pop_front();
                }
                // `from` before `to`'s oldest is in no interval.
                let oldest = self.to.front().map_or(0, |s| s.at_ms);
                while self.from.front().is_some_and(|s| s.at_ms < oldest) {
                    self.from.pop_front();
                }
            }
            Side::From => {
                self.from.push_back(s);
                if self.from.len() > self.window * FROM_WINDOWS {
                    self.from.pop_front();
                    self.from_trimmed = true;
                }
            }
        }
    }

    /// Both sides over `to`'s last window, and over each longer interval `to` has served
    /// enough for (see [`SCALES`]): shortest first, each containing the previous. Built in
    /// one pass over each side, newest first.
    pub fn scales(&self, now_ms: u64) -> Vec<Scale> {
        let n = self.to.len();
        let mut sizes = Vec::new();
        for m in SCALES {
            let want = self.window * m as usize;
            if sizes.last().is_some_and(|last| n <= *last) {
                break;
            }
            sizes.push(want.min(n));
        }
        if sizes.is_empty() || n == 0 {
            return vec![Scale {
                multiple: 1,
                ..Scale::default()
            }];
        }
        // Intervals never reach past what `from` still holds.
        let floor = if self.from_trimmed {
            self.from.front().map_or(0, |s| s.at_ms)
        } else {
            0
        };
        let starts: Vec<u64> = sizes
            .iter()
            .map(|size| self.to[n - size].at_ms.max(floor))
            .collect();
        let newest_to = || self.to.iter().rev().take_while(|s| s.at_ms >= floor);
        let newest_from = || {
            let oldest = starts[starts.len() - 1];
            self.from
                .iter()
                .rev()
                .take_while(move |s| s.at_ms >= oldest)
        };
        let in_scale = |at: u64| starts.iter().position(|start| at >= *start);
        // `to`'s intervals are its last requests by count (many share a timestamp: events
        // are taken in batches); `from`'s are by time.
        let by_position = |p: usize| sizes.iter().position(|size| p < *size);
        // The heaviest keys, over the shortest interval and the longest.
        let heaviest = |key: fn(&Sample) -> Option<u16>| -> Vec<u16> {
            let mut short: HashMap<u16, u64> = HashMap::new();
            let mut long: HashMap<u16, u64> = HashMap::new();
            for s in newest_to() {
                if let Some(k) = key(s) {
                    if s.at_ms >= starts[0] {
                        *short.entry(k).or_default() += 1;
                    }
                    *long.entry(k).or_default() += 1;
                }
            }
            let mut keys = top(&short);
            keys.extend(top(&long));
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let routing = heaviest(|s| Some(s.key));
        let clients = heaviest(|s| s.client);
        let side = |samples: &mut dyn Iterator<Item = &Sample>, is_to: bool| -> Vec<Summary> {
            let mut deltas = vec![Summary::default(); starts.len()];
            for (p, s) in samples.enumerate() {
                let j = if is_to {
                    by_position(p)
                } else {
                    in_scale(s.at_ms)
                };
                let Some(j) = j else { continue };
                let d = &mut deltas[j];
                d.add(s);
                if routing.contains(&s.key) {
                    d.keys.entry(s.key).or_default().add(s);
                }
                if let Some(c) = s.client.filter(|c| clients.contains(c)) {
                    d.clients.entry(c).or_default().add(s);
                }
            }
            // Each interval holds the shorter ones.
            for j in 1..deltas.len() {
                let (shorter, rest) = deltas.split_at_mut(j);
                let prev = shorter[j - 1].clone();
                let cur = &mut rest[0];
                let mine = std::mem::take(cur);
                *cur = prev;
                cur.merge_exact(&mine);
            }
            deltas
        };
        let to = side(&mut newest_to(), true);
        let from = side(&mut newest_from(), false);
        to.into_iter()
            .zip(from)
            .zip(starts.iter().zip(SCALES))
            .map(|((to, from), (start, multiple))| Scale {
                multiple,
                to,
                from,
                seconds: now_ms.saturating_sub(*start) as f64 / 1000.0,
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use switchyard_core::event::Class;

    pub(crate) fn ev(provider: &str, class: Class, ms: u64, epoch: u64) -> RequestEvent {
        RequestEvent {
            provider: Arc::from(provider),
            epoch,
            class,
            latency: Duration::from_millis(ms),
            ..RequestEvent::default()
        }
    }

    /// An event of its own routing key (request-id routing: every request a cohort).
    pub(crate) fn keyed(
        provider: &str,
        class: Class,
        ms: u64,
        epoch: u64,
        key: u64,
    ) -> RequestEvent {
        RequestEvent {
            key: (key % 10_000) as u16,
            ..ev(provider, class, ms, epoch)
        }
    }

    #[test]
    fn both_sides_over_the_same_interval_never_padded() {
        let mut w = Windows::new(10);
        // A phase at 10%: old serves nine for each of new's.
        for i in 0..180u64 {
            w.record(
                Side::From,
                &keyed("old", Class::Success, 10, 0, i),
                1_000 + i * 10,
            );
            if i % 9 == 0 {
                w.record(
                    Side::To,
                    &keyed("new", Class::Success, 10, 0, 500 + i),
                    1_000 + i * 10,
                );
            }
        }
        let s = w.scales(3_000);
        assert_eq!(
            s.len(),
            2,
            "20 of `to`'s requests: one window, and all of them"
        );
        assert_eq!(s[0].to.requests(), 10);
        assert_eq!(
            s[0].from.requests(),
            90,
            "only old's requests since new's 10th last"
        );
        assert_eq!((s[1].to.requests(), s[1].from.requests()), (20, 180));

        // 100% after a phase change: old's earlier requests are not a baseline.
        w.reset(1, 10);
        for i in 0..10 {
            w.record(Side::To, &keyed("new", Class::Success, 10, 1, i), 5_000 + i);
        }
        let s = w.scales(5_100);
        assert_eq!((s[0].to.requests(), s[0].from.requests()), (10, 0));
        // Requests of the previous state count for neither side.
        w.record(Side::To, &ev("new", Class::ServerError, 10, 0), 6_000);
        w.record(Side::From, &ev("old", Class::ServerError, 10, 0), 6_000);
        let s = w.scales(6_100);
        assert_eq!((s[0].to.counts.server_error, s[0].from.requests()), (0, 0));
    }

    #[test]
    fn longer_intervals_as_to_serves_more() {
        let mut w = Windows::new(10);
        for i in 0..200u64 {
            w.record(Side::To, &keyed("new", Class::Success, 10, 0, i), i * 10);
            if i % 50 == 0 {
                // A 2% control: sparse.
                w.record(
                    Side::From,
                    &keyed("old", Class::Success, 10, 0, 9_000 + i),
                    i * 10,
                );
            }
        }
        let s = w.scales(2_000);
        let multiples: Vec<u32> = s.iter().map(|s| s.multiple).collect();
        assert_eq!(multiples, [1, 4, 16, 64]);
        assert_eq!(s[0].to.requests(), 10);
        assert_eq!(s[1].to.requests(), 40);
        assert_eq!(s[2].to.requests(), 160);
        assert_eq!(s[3].to.requests(), 200, "all there is");
        assert_eq!((s[3].from.requests(), s[0].from.requests()), (4, 0));
        assert!(s[3].seconds > s[0].seconds);
    }

    #[test]
    fn the_heaviest_keys_parts_are_kept() {
        let mut w = Windows::new(100);
        for i in 0..100u64 {
            // One user (one key) sends 40 failing requests; 60 others succeed.
            let e = if i < 40 {
                keyed("new", Class::ClientError, 10, 0, 7777)
            } else {
                keyed("new", Class::Success, 10, 0, i)
            };
            w.record(Side::To, &e, i);
        }
        let s = &w.scales(200)[0];
        assert_eq!(s.to.counts.client_error, 40);
        assert_eq!(s.to.top_key(), Some((7777, 40)));
        assert_eq!(s.to.keys[&7777].counts.client_error, 40);
        assert!(s.to.keys.len() <= 8);
    }

    #[test]
    fn summaries_add_up_and_round_trip() {
        let mut a = Summary::default();
        a.counts.auth = 3;
        a.latency.entry(5).or_default().add(1500);
        a.clients.entry(1).or_default().counts.success = 2;
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.counts.auth, 6);
        assert_eq!(b.latency[&5].count(), 2);
        assert_eq!(b.clients[&1].counts.success, 4);
        assert_eq!(strata_without(&b.latency, &a.latency), a.latency);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), b);
        assert_eq!(b.counts.without(&a.counts), a.counts);
    }
}
