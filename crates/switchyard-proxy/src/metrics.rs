//! Metric handles, registered once per provider per snapshot so the hot path
//! only touches atomics (no label lookups or `String`s per request).

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};
use switchyard_core::answer::CutShort;
use switchyard_core::event::Class;

pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const FIRST_BYTE: &str = "switchyard_upstream_first_byte_seconds";
pub const REJECTED_TOTAL: &str = "switchyard_rejected_total";
pub const FAILOVERS_TOTAL: &str = "switchyard_failovers_total";
pub const TOKENS_TOTAL: &str = "switchyard_tokens_total";
pub const COST_TOTAL: &str = "switchyard_cost_usd_total";
pub const EVENTS_DROPPED: &str = "switchyard_events_dropped_total";
pub const OUTCOMES_TOTAL: &str = "switchyard_request_outcomes_total";
pub const STREAM_TTFT: &str = "switchyard_stream_ttft_seconds";
pub const IN_FLIGHT: &str = "switchyard_responses_in_flight";
pub const MODEL_TOKENS: &str = "switchyard_model_tokens_total";
pub const MODEL_COST: &str = "switchyard_model_cost_usd_total";
pub const OPEN_STREAMS: &str = "switchyard_open_streams";
pub const BUILD_INFO: &str = "switchyard_build_info";
pub const SHADOW_COST: &str = "switchyard_shadow_cost_usd_total";
pub const CUT_ANSWERS: &str = "switchyard_cut_answers_total";
pub const ABANDONED_WAITS: &str = "switchyard_abandoned_wait_seconds";
pub const UNMETERED: &str = "switchyard_unmetered_requests_total";
/// Every `reason` of [`REJECTED_TOTAL`], shown at zero from the start.
pub const REJECT_REASONS: &[&str] = &[
    "auth",
    "body_too_large",
    "framing",
    "dot_segment",
    "method",
    "rate_limit",
    "max_connections",
    "no_request",
    "shed_silent",
];

/// Buckets (seconds) for both latency histograms: LLM calls run from a few ms to minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests by provider and outcome (2xx, 4xx, 5xx, timeout, error); in a gateway of several migrations, requests a migration routed carry its name in `migration` (as do the other per-provider series)"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Whole request duration, to the end of the response body"
    );
    metrics::describe_histogram!(
        FIRST_BYTE,
        metrics::Unit::Seconds,
        "Time until the provider's response head"
    );
    metrics::describe_counter!(
        REJECTED_TOTAL,
        "Requests the gateway refused before choosing a provider, by reason"
    );
    metrics::describe_counter!(
        OUTCOMES_TOTAL,
        "Requests by provider and outcome class: whose fault it was (2xx, 4xx, auth, refused, 5xx, timeout, connect_error, stream_cut, bad_answer: the provider's answer; client_gone, client_fault: the client's doing)"
    );
    metrics::describe_counter!(
        CUT_ANSWERS,
        "Answers cut short though the client did not ask, by provider and reason (length below the request's max_tokens or with none set, content_filter)"
    );
    metrics::describe_histogram!(
        ABANDONED_WAITS,
        metrics::Unit::Seconds,
        "How long clients waited for a provider's answer head before they gave up (client_gone with the request sent)"
    );
    metrics::describe_counter!(
        UNMETERED,
        "Successful answers whose usage (tokens) could not be read: their cost is unknown and left out of cost_usd (a stream whose client did not ask for usage, with inject_stream_usage off)"
    );
    metrics::describe_counter!(
        FAILOVERS_TOTAL,
        "Requests sent to the other provider because the chosen one could not be connected to"
    );
    metrics::describe_counter!(
        TOKENS_TOTAL,
        "Tokens by provider and kind (prompt, completion), from the answers' usage"
    );
    // A gauge to the metrics crate (it only has integer counters); `/metrics` renders it
    // as the counter it is (see `render`).
    metrics::describe_gauge!(
        COST_TOTAL,
        "USD spent by provider, from usage and the config's pricing (only grows)"
    );
    metrics::describe_histogram!(
        STREAM_TTFT,
        metrics::Unit::Seconds,
        "Time to the first token of streamed answers"
    );
    metrics::describe_counter!(
        MODEL_TOKENS,
        "Tokens by provider, model (the priced ones by name, the rest as `other`) and kind"
    );
    metrics::describe_gauge!(
        MODEL_COST,
        "USD spent by provider and model (the priced ones; only grows)"
    );
    metrics::describe_gauge!(
        IN_FLIGHT,
        "Answers being relayed now, from the provider's response head to the end of the body"
    );
    metrics::describe_gauge!(OPEN_STREAMS, "Streamed (SSE) answers being relayed now");
    metrics::describe_counter!(
        EVENTS_DROPPED,
        "Request events the watchers could not take (their queue was full)"
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the running build's version is the label"
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for reason in REJECT_REASONS {
        counter!(REJECTED_TOTAL, "reason" => *reason).absolute(0);
    }
    counter!(EVENTS_DROPPED).absolute(0);
}

/// The label that tells the workers' series of a provider apart (see [`ProviderMetrics`]).
const WORKER_LABEL: &str = "worker";

/// The Prometheus text of `rendered` with each provider's per-worker series summed into
/// one, and the float counters (USD, which the metrics crate can only hold as gauges)
/// typed as the counters they are.
pub fn render(rendered: String) -> String {
    let mut out = sum_workers(&rendered);
    for name in [COST_TOTAL, MODEL_COST, SHADOW_COST] {
        out = out.replace(
            &format!("# TYPE {name} gauge"),
            &format!("# TYPE {name} counter"),
        );
    }
    out
}

/// Each worker counts its requests in series of its own (label [`WORKER_LABEL`], last of
/// a series' own labels): two workers adding to the same atomics at every request made
/// each wait for the other's cache line. The series a scrape shows are their sums, where
/// the first worker's stood. Every per-worker series is additive: counters, histogram
/// buckets, sums and counts (histograms, as every `_seconds` metric is rendered, not
/// summaries, whose quantiles are not), and the gauges of answers in flight and of cost.
/// Values are added in the workers' order, whatever order the exporter gave them in: a
/// floating-point sum taken in another order can come out an ulp lower, which a scraper
/// would read as a counter's reset.
fn sum_workers(text: &str) -> String {
    let mut lines: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    // The merged series: where it stands in `lines`, and each worker's value.
    let mut merged: std::collections::HashMap<String, (usize, Vec<(u32, Sum)>)> =
        Default::default();
    for line in text.lines() {
        let Some((series, worker, value)) = per_worker(line) else {
            lines.push(line.into());
            continue;
        };
        match (merged.get_mut(&series), Sum::of(value)) {
            (Some((_, values)), Some(v)) => values.push((worker, v)),
            (None, Some(v)) => {
                lines.push(std::borrow::Cow::Borrowed(""));
                merged.insert(series, (lines.len() - 1, vec![(worker, v)]));
            }
            // Not a number this knows how to add: shown as it came.
            (_, None) => lines.push(line.into()),
        }
    }
    for (series, (at, mut values)) in merged {
        values.sort_unstable_by_key(|(w, _)| *w);
        let mut sum = values[0].1;
        for (_, v) in &values[1..] {
            sum.add(*v);
        }
        lines[at] = format!("{series} {sum}").into();
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A series line with the worker label: the series without it, the worker, and the value.
fn per_worker(line: &str) -> Option<(String, u32, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let label = format!("{WORKER_LABEL}=\"");
    // A label's name follows `{` or `,`; quotes inside values are escaped, so `worker="`
    // with a bare quote there is the label itself.
    let start = [",", "{"]
        .iter()
        .filter_map(|sep| series.find(&format!("{sep}{label}")))
        .min()?;
    let name_at = start + 1;
    let value_at = name_at + label.len();
    let end = value_at + series[value_at..].find('"')? + 1;
    let worker = series[value_at..end - 1].parse().ok()?;
    let (before, after) = (&series[..name_at], &series[end..]);
    let joined = match (before.ends_with('{'), after.strip_prefix(',')) {
        // `{worker="0",le="…"}`: the comma after it goes with it.
        (true, Some(rest)) => format!("{before}{rest}"),
        // `{worker="0"}`: no labels left.
        (true, None) => format!("{}{}", &before[..before.len() - 1], &after[1..]),
        // `…,worker="0"…`: the comma before it goes with it.
        (false, _) => format!("{}{after}", &before[..before.len() - 1]),
    };
    Some((joined, worker, value))
}

/// A sum of series values: whole while every value is a whole number (counters, bucket
/// counts), else floating point.
#[derive(Clone, Copy)]
enum Sum {
    Whole(u64),
    Float(f64),
}

impl Sum {
    fn of(value: &str) -> Option<Sum> {
        value
            .parse::<u64>()
            .map(Sum::Whole)
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(Sum::Float))
    }

    fn add(&mut self, other: Sum) {
        *self = match (*self, other) {
            (Sum::Whole(a), Sum::Whole(b)) => Sum::Whole(a.saturating_add(b)),
            (a, b) => Sum::Float(a.float() + b.float()),
        };
    }

    fn float(self) -> f64 {
        match self {
            Sum::Whole(n) => n as f64,
            Sum::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Sum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sum::Whole(n) => write!(f, "{n}"),
            Sum::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Outcome classes, the `status` label of `switchyard_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    S2xx,
    S4xx,
    S5xx,
    Timeout,
    Error,
}

impl Outcome {
    /// The `status` bucket of a request that ended in `class` with `status` (a 2xx with no
    /// answer in it is a 2xx here: what the provider said).
    pub fn of(class: Class, status: u16) -> Outcome {
        match class {
            Class::Success | Class::BadAnswer => Outcome::S2xx,
            Class::ClientError | Class::Auth | Class::Refused | Class::ClientFault => Outcome::S4xx,
            Class::ServerError => Outcome::S5xx,
            Class::Timeout => Outcome::Timeout,
            Class::Connect | Class::StreamCut => Outcome::Error,
            Class::ClientGone => Outcome::from_status(status),
        }
    }

    fn from_status(status: u16) -> Self {
        match status {
            500..=599 => Outcome::S5xx,
            400..=499 => Outcome::S4xx,
            _ => Outcome::S2xx,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::S2xx => "2xx",
            Outcome::S4xx => "4xx",
            Outcome::S5xx => "5xx",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// One attempt, as a provider's metrics count it.
pub struct Recorded<'a> {
    pub status: u16,
    pub class: Class,
    pub elapsed: Duration,
    pub cut_short: Option<CutShort>,
    /// How long a client that left before the answer's head had waited for it.
    pub waited: Option<Duration>,
    /// The client's name for it.
    pub model: Option<&'a str>,
    pub tokens: (u64, u64),
    pub cost: Option<f64>,
    /// A stream's time to first token.
    pub ttft: Option<Duration>,
    /// A successful answer whose usage could not be read.
    pub unmetered: bool,
}

#[derive(Clone)]
pub struct ProviderMetrics {
    requests: [Counter; 5],
    classes: [Counter; Class::ALL.len()],
    pub duration: Histogram,
    pub first_byte: Histogram,
    pub failovers: Counter,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub cost: Gauge,
    pub stream_ttft: Histogram,
    pub in_flight: Gauge,
    pub open_streams: Gauge,
    /// By [`CutShort`], in its order.
    cut: [Counter; CutShort::ALL.len()],
    pub abandoned_waits: Histogram,
    /// Successful answers whose usage could not be read.
    unmetered: Counter,
    /// Per model: the provider's priced models by their client-facing name, then `other`
    /// (a bounded label: clients cannot make new series with made-up model names).
    by_model: std::sync::Arc<[ModelMetrics]>,
}

struct ModelMetrics {
    model: Box<str>,
    prompt: Counter,
    completion: Counter,
    cost: Gauge,
}

impl ProviderMetrics {
    /// With a `model` series for each of `models` (the priced ones) and `other`; every
    /// series labelled with `migration` too when given (a gateway of several migrations),
    /// and with `worker`'s index, last, which [`render`] sums away.
    pub fn new<'a>(
        provider: &str,
        models: impl Iterator<Item = &'a str>,
        migration: Option<&str>,
        worker: usize,
    ) -> Self {
        let mut base = vec![Label::new("provider", provider.to_string())];
        if let Some(m) = migration {
            base.push(Label::new("migration", m.to_string()));
        }
        let worker = Label::new(WORKER_LABEL, worker.to_string());
        let with = |more: &[(&'static str, &str)]| -> Vec<Label> {
            let mut l = base.clone();
            l.extend(more.iter().map(|(k, v)| Label::new(*k, v.to_string())));
            l.push(worker.clone());
            l
        };
        let by_model = models
            .chain(std::iter::once("other"))
            .map(|model| {
                let t = |kind: &'static str| {
                    counter!(MODEL_TOKENS, with(&[("model", model), ("kind", kind)]))
                };
                ModelMetrics {
                    model: model.into(),
                    prompt: t("prompt"),
                    completion: t("completion"),
                    cost: gauge!(MODEL_COST, with(&[("model", model)])),
                }
            })
            .collect();
        let c = |status: &'static str| counter!(REQUESTS_TOTAL, with(&[("status", status)]));
        ProviderMetrics {
            requests: [c("2xx"), c("4xx"), c("5xx"), c("timeout"), c("error")],
            classes: Class::ALL
                .map(|class| counter!(OUTCOMES_TOTAL, with(&[("class", class.label())]))),
            duration: histogram!(REQUEST_DURATION, with(&[])),
            first_byte: histogram!(FIRST_BYTE, with(&[])),
            failovers: counter!(FAILOVERS_TOTAL, with(&[])),
            prompt_tokens: counter!(TOKENS_TOTAL, with(&[("kind", "prompt")])),
            completion_tokens: counter!(TOKENS_TOTAL, with(&[("kind", "completion")])),
            cost: gauge!(COST_TOTAL, with(&[])),
            stream_ttft: histogram!(STREAM_TTFT, with(&[])),
            in_flight: gauge!(IN_FLIGHT, with(&[])),
            open_streams: gauge!(OPEN_STREAMS, with(&[])),
            cut: CutShort::ALL.map(|c| counter!(CUT_ANSWERS, with(&[("reason", c.label())]))),
            abandoned_waits: histogram!(ABANDONED_WAITS, with(&[])),
            unmetered: counter!(UNMETERED, with(&[])),
            by_model,
        }
    }

    /// Everything counted of one attempt, once; answers its `status` bucket.
    pub fn record(&self, r: &Recorded<'_>) -> Outcome {
        let outcome = Outcome::of(r.class, r.status);
        self.count(outcome, r.class);
        if let Some(cut) = r.cut_short {
            self.cut[cut as usize].increment(1);
        }
        if let Some(w) = r.waited {
            self.abandoned_waits.record(w.as_secs_f64());
        }
        self.duration.record(r.elapsed.as_secs_f64());
        let (prompt, completion) = r.tokens;
        if prompt + completion > 0 {
            self.prompt_tokens.increment(prompt);
            self.completion_tokens.increment(completion);
            if let Some(c) = r.cost {
                self.cost.increment(c);
            }
            self.count_model(r.model, prompt, completion, r.cost);
        }
        if let Some(t) = r.ttft {
            self.stream_ttft.record(t.as_secs_f64());
        }
        if r.unmetered {
            self.unmetered.increment(1);
        }
        outcome
    }

    /// An answer's head was passed on; it is in flight until [`ProviderMetrics::answer_ended`].
    pub fn answer_began(&self, first_byte: Duration, stream: bool) {
        self.first_byte.record(first_byte.as_secs_f64());
        self.in_flight.increment(1.0);
        if stream {
            self.open_streams.increment(1.0);
        }
    }

    pub fn answer_ended(&self, stream: bool) {
        self.in_flight.decrement(1.0);
        if stream {
            self.open_streams.decrement(1.0);
        }
    }

    /// Counts one answer's tokens (and cost) under its model's series.
    fn count_model(&self, model: Option<&str>, prompt: u64, completion: u64, cost: Option<f64>) {
        let m = model
            .and_then(|name| self.by_model.iter().find(|m| &*m.model == name))
            .or_else(|| self.by_model.last());
        if let Some(m) = m {
            m.prompt.increment(prompt);
            m.completion.increment(completion);
            if let Some(c) = cost {
                m.cost.increment(c);
            }
        }
    }

    #[inline]
    pub fn count(&self, outcome: Outcome, class: Class) {
        self.requests[outcome as usize].increment(1);
        self.classes[class as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    /// The scrape of `answers` answers (and one stream still open) spread over `workers`.
    fn scrape(workers: usize, answers: usize) -> String {
        // As the gateway installs it (`serve::install_metrics`).
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let each: Vec<ProviderMetrics> = (0..workers)
                .map(|w| ProviderMetrics::new("old", ["deepseek-chat"].into_iter(), None, w))
                .collect();
            for i in 0..answers {
                let m = &each[i % workers];
                // Binary fractions: a float sum is the same in any order.
                let took = Duration::from_millis(if i % 2 == 0 { 250 } else { 500 });
                m.answer_began(took / 2, false);
                m.record(&Recorded {
                    status: 200,
                    class: Class::Success,
                    elapsed: took,
                    cut_short: None,
                    waited: None,
                    model: Some("deepseek-chat"),
                    tokens: (12, 3),
                    cost: Some(0.125),
                    ttft: None,
                    unmetered: false,
                });
                m.answer_ended(false);
            }
            each[workers - 1].answer_began(Duration::from_millis(125), true);
        });
        render(handle.render())
    }

    /// A scrape shows one series per provider however many workers counted into it, each
    /// the sum of theirs: what one worker counting everything shows.
    #[test]
    fn the_workers_series_are_scraped_as_one() {
        let two = scrape(2, 7);
        assert!(!two.contains("worker"), "{two}");
        for line in [
            r#"switchyard_requests_total{provider="old",status="2xx"} 7"#,
            r#"switchyard_tokens_total{provider="old",kind="prompt"} 84"#,
            r#"switchyard_cost_usd_total{provider="old"} 0.875"#,
            r#"switchyard_model_cost_usd_total{provider="old",model="deepseek-chat"} 0.875"#,
            r#"switchyard_request_duration_seconds_bucket{provider="old",le="0.25"} 4"#,
            r#"switchyard_request_duration_seconds_bucket{provider="old",le="0.5"} 7"#,
            r#"switchyard_request_duration_seconds_count{provider="old"} 7"#,
            r#"switchyard_request_duration_seconds_sum{provider="old"} 2.5"#,
            r#"switchyard_responses_in_flight{provider="old"} 1"#,
            r#"switchyard_open_streams{provider="old"} 1"#,
            "# TYPE switchyard_cost_usd_total counter",
        ] {
            assert_eq!(two.matches(line).count(), 1, "{line} in\n{two}");
        }
        let alone = scrape(1, 7);
        let mut one: Vec<&str> = alone.lines().collect();
        let mut both: Vec<&str> = two.lines().collect();
        one.sort_unstable();
        both.sort_unstable();
        assert_eq!(one, both);
    }

    /// Every (migration, worker) pair counts in a set of its own, each labelled with its
    /// migration, and a scrape shows per migration the sum over its workers.
    #[test]
    fn each_migration_and_worker_counts_in_its_own_set() {
        use crate::upstream::Worker;
        let yaml = "providers:\n  old: { base_url: \"http://127.0.0.1:9/v1\" }\n  new: { base_url: \"http://127.0.0.1:9/v1\" }\n  third: { base_url: \"http://127.0.0.1:9/v1\" }\ndefault_provider: old\nmigrations:\n  chat:\n    match: { models: [deepseek-chat] }\n    from: old\n    to: new\n    phases: [ { name: all, percent: 100 } ]\n  emb:\n    match: { paths: [/v1/embeddings] }\n    from: old\n    to: third\n    phases: [ { name: all, percent: 100 } ]\n";
        let config = std::sync::Arc::new(switchyard_core::Config::parse(yaml, "t.yaml").unwrap());
        let states = config
            .migrations
            .iter()
            .map(|m| (m.file_state.clone(), 0))
            .collect();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let (snap, _) = crate::Snapshot::build(config, 1, states, &|_| None, None, 3).unwrap();
            let old = snap.upstreams.iter().find(|u| &*u.name == "old").unwrap();
            let mut seen = Vec::new();
            // Worker w of migration m counts 10^m × (w + 1) requests (none routed: 1,000).
            for (m, scale) in [(None, 1000), (Some(0), 1), (Some(1), 10)] {
                for w in 0..3 {
                    let set = old.metrics(m, Worker::Proxy(w));
                    assert!(!seen.iter().any(|s| std::ptr::eq(*s, set)), "{m:?} {w}");
                    seen.push(set);
                    for _ in 0..scale * (w + 1) {
                        set.count(Outcome::S2xx, Class::Success);
                    }
                }
            }
            assert!(std::ptr::eq(old.metrics(Some(0), Worker::Control), seen[3]));
        });
        let text = render(handle.render());
        for line in [
            r#"switchyard_requests_total{provider="old",status="2xx"} 6000"#,
            r#"switchyard_requests_total{provider="old",migration="chat",status="2xx"} 6"#,
            r#"switchyard_requests_total{provider="old",migration="emb",status="2xx"} 60"#,
        ] {
            assert_eq!(text.matches(line).count(), 1, "{line} in\n{text}");
        }
    }

    /// Float values are added in the workers' order however the scrape listed them, so a
    /// cost counter never reads an ulp lower from one scrape to the next.
    #[test]
    fn float_sums_do_not_depend_on_the_scrapes_order() {
        let line = |w: u32, v: &str| format!("cost{{p=\"x\",worker=\"{w}\"}} {v}\n");
        let (a, b, c) = (line(0, "0.1"), line(1, "0.2"), line(2, "0.3"));
        let in_order = sum_workers(&format!("{a}{b}{c}"));
        // In another order the sum would be 0.6 (0.2 + 0.3 first), not 0.6000000000000001.
        assert_eq!(in_order, "cost{p=\"x\"} 0.6000000000000001\n");
        for shuffled in [
            format!("{b}{c}{a}"),
            format!("{c}{a}{b}"),
            format!("{c}{b}{a}"),
        ] {
            assert_eq!(sum_workers(&shuffled), in_order);
        }
    }

    #[test]
    fn a_worker_label_anywhere_in_a_series_is_taken_out() {
        let text = "# TYPE a counter\n\
                    a{worker=\"0\"} 1\n\
                    a{worker=\"1\"} 2\n\
                    b{x=\"worker=\\\"1\\\"\",worker=\"0\",le=\"+Inf\"} 1.5\n\
                    b{x=\"worker=\\\"1\\\"\",worker=\"1\",le=\"+Inf\"} 1\n\
                    c{worker=\"0\",y=\"z\"} 4\n\
                    c{worker=\"1\",y=\"z\"} NaN?\n\
                    d 5\n";
        assert_eq!(
            sum_workers(text),
            "# TYPE a counter\n\
             a 3\n\
             b{x=\"worker=\\\"1\\\"\",le=\"+Inf\"} 2.5\n\
             c{y=\"z\"} 4\n\
             c{worker=\"1\",y=\"z\"} NaN?\n\
             d 5\n"
        );
    }
}
