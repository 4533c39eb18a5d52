//! One side's requests over an interval, summarised so that summaries add up: outcome
//! counts, latency histograms per stratum, the parts of the heaviest keys. What an interval
//! is and why the summaries look like this: [`crate::window`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use switchyard_core::config::AutoRollbackConfig;
use switchyard_core::event::{Class, RequestEvent};

/// Latency histograms have buckets 2% wide: summable across replicas, and fine enough
/// that a ratio of p95s is off by at most 2%.
const GROWTH: f64 = 1.02;

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

    pub(crate) fn add(&mut self, s: &Sample) {
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
    pub(crate) fn add(&mut self, s: &Sample) {
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
pub(crate) const TOP_KEYS: usize = 4;

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

    pub(crate) fn add(&mut self, s: &Sample) {
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
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) class: Class,
    pub(crate) latency_us: u64,
    pub(crate) stream: bool,
    pub(crate) cut: bool,
    pub(crate) cold: bool,
    /// Latencies are compared within a stratum: the model and a length bucket.
    pub(crate) stratum: u64,
    pub(crate) key: u16,
    pub(crate) client: Option<u16>,
    pub(crate) control: bool,
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
    pub(crate) fn of(e: &RequestEvent, now_ms: u64) -> Sample {
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

/// The [`TOP_KEYS`] keys with the most requests.
pub(crate) fn top(counts: &HashMap<u16, u64>) -> Vec<u16> {
    let mut all: Vec<(u16, u64)> = counts.iter().map(|(k, n)| (*k, *n)).collect();
    all.sort_unstable_by_key(|(k, n)| (std::cmp::Reverse(*n), *k));
    all.into_iter().take(TOP_KEYS).map(|(k, _)| k).collect()
}

impl Summary {
    /// Adds `o` keeping every key's part (one replica's intervals, not yet trimmed).
    pub(crate) fn merge_exact(&mut self, o: &Summary) {
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
