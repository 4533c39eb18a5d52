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

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use switchyard_core::config::AutoRollbackConfig;
use switchyard_core::event::{Class, RequestEvent};
use switchyard_core::router::Side;

/// Latency histograms have buckets 2% wide: summable across replicas, and fine enough
/// that a ratio of p95s is off by at most 2%.
const GROWTH: f64 = 1.02;

/// The interval lengths compared, in windows of `to`'s requests.
pub const SCALES: [u32; 4] = [1, 4, 16, 64];

/// `from`'s samples kept, in windows: at a 1% phase it serves 99 times `to`'s requests, and
/// the longest intervals are then cut to what is kept (both sides alike).
const FROM_WINDOWS: usize = 256;

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

    /// How many values are above `ms`.
    pub fn above_ms(&self, ms: f64) -> u64 {
        let b = Self::bucket((ms * 1000.0) as u64);
        self.0.range(b + 1..).map(|(_, n)| n).sum()
    }

    /// `(count here, count in other)` per bucket, ascending: the rank tests' input.
    pub fn groups_with(&self, other: &Hist) -> Vec<(u64, u64)> {
        let mut buckets: Vec<u16> = self.0.keys().chain(other.0.keys()).copied().collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
            .into_iter()
            .map(|b| {
                (
                    self.0.get(&b).copied().unwrap_or(0),
                    other.0.get(&b).copied().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// Outcome counts of one side over an interval (what the client broke is not in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// client broke or left mid-answer is in no interval).
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

    fn add(&mut self, s: &Sample) {
        if let Some(n) = self.slot(s.class) {
            *n += 1;
        }
        self.cut_short += u64::from(s.cut);
    }

    pub fn merge(&mut self, o: &Counts) {
        for (class, n) in o.by_class() {
            if let Some(slot) = self.slot(class) {
                *slot += n;
            }
        }
        self.cut_short += o.cut_short;
    }

    /// These counts less `o`'s (a part of them).
    pub fn without(&self, o: &Counts) -> Counts {
        let mut out = Counts::default();
        for ((class, n), (_, m)) in self.by_class().into_iter().zip(o.by_class()) {
            if let Some(slot) = out.slot(class) {
                *slot = n.saturating_sub(m);
            }
        }
        out.cut_short = self.cut_short.saturating_sub(o.cut_short);
        out
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
    pub fn describe_errors(&self, cfg: &AutoRollbackConfig) -> String {
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

/// Latencies per stratum, of one kind.
pub type Strata = BTreeMap<u64, Hist>;

/// One key's part of a side's interval (a routing key's, or a client key's): what leaving
/// it out takes away.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Part {
    pub counts: Counts,
    pub latency: Strata,
    pub ttft: Strata,
}

impl Part {
    fn add(&mut self, s: &Sample) {
        add_sample(&mut self.counts, &mut self.latency, &mut self.ttft, s);
    }

    fn merge(&mut self, o: &Part) {
        self.counts.merge(&o.counts);
        merge_strata(&mut self.latency, &o.latency);
        merge_strata(&mut self.ttft, &o.ttft);
    }
}

fn add_sample(counts: &mut Counts, latency: &mut Strata, ttft: &mut Strata, s: &Sample) {
    counts.add(s);
    if s.class == Class::Success && !s.cut && !s.cold {
        let strata = if s.stream { ttft } else { latency };
        strata.entry(s.stratum).or_default().add(s.latency_us);
    }
}

fn merge_strata(into: &mut Strata, o: &Strata) {
    for (k, h) in o {
        into.entry(*k).or_default().merge(h);
    }
}

/// Strata less a part of them.
pub fn strata_without(all: &Strata, part: &Strata) -> Strata {
    let mut out = all.clone();
    for (k, h) in part {
        if let Some(mine) = out.get_mut(k) {
            for (b, n) in &h.0 {
                if let Some(m) = mine.0.get_mut(b) {
                    *m = m.saturating_sub(*n);
                }
            }
            mine.0.retain(|_, n| *n > 0);
        }
    }
    out.retain(|_, h| h.count() > 0);
    out
}

/// How many keys' parts a summary keeps (the heaviest).
const TOP_KEYS: usize = 4;

/// One side's requests over an interval: outcome counts, latencies per stratum, and the
/// parts of its heaviest keys. Adds up over replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub counts: Counts,
    /// Whole-answer latency of successful non-streamed answers, per stratum (model and
    /// answer length).
    pub latency: Strata,
    /// Time to first token of successful streams, per stratum (model and prompt length).
    pub ttft: Strata,
    /// Every successful answer's latency, connections opened for them included (what the
    /// absolute backstop holds `to` to: what users waited), of whole answers and of first
    /// tokens.
    pub latency_all: Hist,
    pub ttft_all: Hist,
    /// The heaviest routing keys' parts (by requests).
    pub keys: BTreeMap<u16, Part>,
    /// The heaviest client keys' parts, when client keys are configured.
    pub clients: BTreeMap<u16, Part>,
    /// Requests of clients routed to this side (not mirrored control requests): the
    /// sample-ratio check's count.
    pub routed: u64,
}

impl Summary {
    pub fn merge(&mut self, o: &Summary) {
        self.merge_exact(o);
        keep_heaviest(&mut self.keys);
        keep_heaviest(&mut self.clients);
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests()
    }

    /// All strata's latencies of one kind in one histogram (for p95s shown and limits).
    pub fn pooled(strata: &Strata) -> Hist {
        let mut h = Hist::default();
        strata.values().for_each(|s| h.merge(s));
        h
    }

    fn add(&mut self, s: &Sample) {
        add_sample(&mut self.counts, &mut self.latency, &mut self.ttft, s);
        self.routed += u64::from(!s.control);
        if s.class == Class::Success && !s.cut {
            let all = if s.stream {
                &mut self.ttft_all
            } else {
                &mut self.latency_all
            };
            all.add(s.latency_us);
        }
    }

    /// The routing key with the most requests here, and how many.
    pub fn top_key(&self) -> Option<(u16, u64)> {
        self.keys
            .iter()
            .map(|(k, p)| (*k, p.counts.requests()))
            .max_by_key(|(k, n)| (*n, std::cmp::Reverse(*k)))
    }
}

fn keep_heaviest(parts: &mut BTreeMap<u16, Part>) {
    while parts.len() > TOP_KEYS {
        let lightest = parts
            .iter()
            .min_by_key(|(k, p)| (p.counts.requests(), std::cmp::Reverse(**k)))
            .map(|(k, _)| *k);
        if let Some(k) = lightest {
            parts.remove(&k);
        }
    }
}

/// One request as the judge keeps it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    class: Class,
    latency_us: u64,
    stream: bool,
    cut: bool,
    cold: bool,
    /// Latencies are compared within a stratum: the model and a length bucket.
    stratum: u64,
    key: u16,
    client: Option<u16>,
    control: bool,
}

/// Length buckets of a factor 4 (1–3, 4–15, 16–63 … tokens; 0: unknown).
fn length_bucket(tokens: u64) -> u64 {
    if tokens == 0 {
        0
    } else {
        1 + u64::from(tokens.ilog2() / 2).min(7)
    }
}

impl Sample {
    fn of(e: &RequestEvent, now_ms: u64) -> Sample {
        // A whole answer takes as long as it is long; a first token, as the prompt is.
        let length = if e.stream {
            e.prompt_tokens
        } else {
            e.completion_tokens
        };
        Sample {
            at_ms: now_ms,
            class: e.class,
            latency_us: e.judged_latency().as_micros() as u64,
            stream: e.stream,
            cut: e.cut_short.is_some(),
            cold: e.cold,
            stratum: (e.model & !0xff) | length_bucket(length),
            key: e.key,
            client: e.client,
            control: e.control,
        }
    }
}

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

/// The [`TOP_KEYS`] keys with the most requests.
fn top(counts: &HashMap<u16, u64>) -> Vec<u16> {
    let mut all: Vec<(u16, u64)> = counts.iter().map(|(k, n)| (*k, *n)).collect();
    all.sort_unstable_by_key(|(k, n)| (std::cmp::Reverse(*n), *k));
    all.into_iter().take(TOP_KEYS).map(|(k, _)| k).collect()
}

impl Summary {
    /// Adds `o` keeping every key's part (one replica's intervals, not yet trimmed).
    fn merge_exact(&mut self, o: &Summary) {
        self.counts.merge(&o.counts);
        merge_strata(&mut self.latency, &o.latency);
        merge_strata(&mut self.ttft, &o.ttft);
        self.latency_all.merge(&o.latency_all);
        self.ttft_all.merge(&o.ttft_all);
        for (into, from) in [(&mut self.keys, &o.keys), (&mut self.clients, &o.clients)] {
            for (k, p) in from {
                into.entry(*k).or_default().merge(p);
            }
        }
        self.routed += o.routed;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

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
