//! `migration:` (or each of `migrations:`) — from, to, the phases, the judge
//! (`auto_rollback`), the preflight, and (in `migrations:`) the requests it matches.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::matching::{self, Match, RawMatch};
use super::providers::ProviderConfig;
use super::Collector;
use crate::features::Feature;
use crate::migration::MigrationState;
pub use crate::migration::Phase;
use crate::router::Router;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigration {
    #[serde(rename = "match")]
    pub(super) matcher: Option<RawMatch>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) phases: Vec<RawPhase>,
    pub(super) phase: Option<String>,
    pub(super) sticky_header: Option<String>,
    pub(super) shadow_percent: Option<f64>,
    pub(super) control_percent: Option<f64>,
    pub(super) auto_rollback: Option<RawAutoRollback>,
    pub(super) auto_advance: Option<bool>,
    pub(super) compatibility_gate: Option<Vec<String>>,
    pub(super) preflight: Option<RawPreflight>,
    pub(super) failover: Option<RawFailover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    pub(super) on_status: Option<Vec<u16>>,
    pub(super) replay_max_body: Option<String>,
    pub(super) honor_retry_after: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreflight {
    pub(super) enabled: Option<bool>,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    pub(super) name: String,
    pub(super) percent: f64,
    pub(super) hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoRollback {
    pub(super) window: Option<u32>,
    pub(super) min_requests: Option<u32>,
    pub(super) max_error_rate: Option<f64>,
    max_p95_latency: Option<String>,
    pub(super) count_as_errors: Option<Vec<String>>,
    pub(super) compare: Option<RawCompare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompare {
    pub(super) enabled: Option<bool>,
    pub(super) max_error_rate_increase: Option<f64>,
    pub(super) max_latency_ratio: Option<f64>,
    min_latency_increase: Option<String>,
    pub(super) confidence: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationConfig {
    /// Its key in `migrations:`; `default` for the singular `migration:`.
    pub name: String,
    /// The requests it moves (all of them for the singular `migration:`).
    pub matcher: Match,
    /// Index into `Config::providers`.
    pub from: usize,
    pub to: usize,
    pub phases: Vec<Phase>,
    /// `phase:` exactly as written in the file (a phase name or `rollback`).
    pub file_phase: String,
    /// The state the file asks for.
    pub file_state: MigrationState,
    /// Lower-case header name.
    pub sticky_header: String,
    pub shadow_buckets: u16,
    /// At the last phase (100% to `to`) until `finish`, this share of `to`'s requests (×100,
    /// of 10000 buckets) is also sent to `from`, answers discarded: the judge's live control.
    pub control_buckets: u16,
    pub auto_rollback: Option<AutoRollbackConfig>,
    /// Advance by itself when a phase's hold has passed and the window is healthy.
    pub auto_advance: bool,
    /// Features the compatibility report must not call `worse` for an automatic advance.
    pub compatibility_gate: Vec<Feature>,
    /// Probe `to` before the first phase that sends it traffic.
    pub preflight: PreflightConfig,
    /// Sending a refused request once to the other side.
    pub failover: FailoverConfig,
    pub router: Router,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AutoRollbackConfig {
    pub window: u32,
    pub min_requests: u32,
    /// Absolute backstop on `to`'s provider error rate: only when written in the file.
    pub max_error_rate: Option<f64>,
    /// Absolute backstop on `to`'s p95 latency: only when written in the file.
    pub max_p95_latency: Option<Duration>,
    /// Whether a provider's 401/403/407 counts as its error.
    pub count_auth: bool,
    /// Whether a provider's 402/429 counts as its error.
    pub count_refused: bool,
    /// The comparison of `to` with `from`; `None` when switched off.
    pub compare: Option<CompareConfig>,
}

/// How much worse than `from` the `to` side may be, and how sure the judge must be.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// In rate units: 0.01 is one percentage point.
    pub max_error_rate_increase: f64,
    pub max_latency_ratio: f64,
    /// A latency failure also needs `to`'s p95 to be at least this much above `from`'s: a
    /// ratio of two tiny numbers (14 ms against 4 ms on a loaded host) is no slowdown.
    pub min_latency_increase: Duration,
    /// 0.95: the chance of a false rollback stays under 5% per day of a phase (spent over
    /// the looks; see the judge).
    pub confidence: f64,
}

/// A request the first provider refused before answering anything (these statuses, or no
/// connection) goes once to the other side, when its body is still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Empty: only connect errors fail over.
    pub on_status: Vec<u16>,
    /// Bodies up to this size are kept for a replay; larger ones are not retried.
    pub replay_max_body: u64,
    /// A 429's `Retry-After` keeps first attempts off that provider until then.
    pub honor_retry_after: bool,
}

impl FailoverConfig {
    pub fn fails_over(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightConfig {
    pub enabled: bool,
    pub timeout: Duration,
}

/// The name the singular `migration:` goes by (admin URLs, status).
pub const SINGLE: &str = "default";

/// One migration: `name` and `at` (its key path: `migration`, or `migrations.NAME`);
/// `named`: written under `migrations:` (its name salts the routing hash, it may match).
pub(super) fn validate(
    m: &RawMigration,
    name: &str,
    at: &str,
    named: bool,
    providers: &[ProviderConfig],
    c: &mut Collector,
) -> MigrationConfig {
    let matcher = match (&m.matcher, named) {
        (Some(raw), true) => matching::validate(raw, &format!("{at}.match"), c),
        (Some(_), false) => {
            c.err(
                format!("{at}.match"),
                "a single `migration:` moves every request; to move some of them, name it under `migrations:`",
            );
            Match::default()
        }
        (None, _) => Match::default(),
    };
    let find = |n: &str| providers.iter().position(|p| p.name == n);
    let from = find(&m.from).unwrap_or_else(|| {
        c.err(
            format!("{at}.from"),
            format!("no provider named `{}`", m.from),
        );
        0
    });
    let to = find(&m.to).unwrap_or_else(|| {
        c.err(format!("{at}.to"), format!("no provider named `{}`", m.to));
        0
    });
    if m.from == m.to {
        c.err(
            format!("{at}.to"),
            "`from` and `to` must be different providers",
        );
    }
    if m.phases.is_empty() {
        c.err(format!("{at}.phases"), "at least one phase is needed");
    }
    let mut names = BTreeSet::new();
    let mut phases: Vec<Phase> = Vec::with_capacity(m.phases.len());
    for (i, p) in m.phases.iter().enumerate() {
        let k = format!("{at}.phases[{i}]");
        if p.name.is_empty() || p.name == "rollback" {
            c.err(
                format!("{k}.name"),
                "a phase needs a name other than `rollback`",
            );
        }
        if !names.insert(p.name.as_str()) {
            c.err(
                format!("{k}.name"),
                format!("phase `{}` is named twice", p.name),
            );
        }
        let buckets = c.percent(&format!("{k}.percent"), p.percent);
        // `phase next` only moves forward: a phase that sends less than the one before
        // would be a rollback by another name (and the cohorts it moves back are not stable).
        if let Some(prev) = phases.last() {
            if buckets < prev.buckets {
                c.err(
                    format!("{k}.percent"),
                    format!(
                        "{} is less than the {} of phase `{}` before it: phases only go up (a way back is `phase rollback`)",
                        p.percent,
                        prev.percent(),
                        prev.name
                    ),
                );
            }
        }
        let hold = p
            .hold
            .as_ref()
            .map(|h| c.duration(&format!("{k}.hold"), Some(h), Duration::ZERO));
        phases.push(Phase {
            name: p.name.clone(),
            buckets,
            hold,
        });
    }
    let file_phase = m
        .phase
        .clone()
        .or_else(|| phases.first().map(|p| p.name.clone()))
        .unwrap_or_default();
    let file_state = if file_phase == "rollback" {
        MigrationState {
            phase: None,
            rolled_back: true,
            rollback_reason: Some("phase: rollback in the config file".into()),
            rollback_trigger: Some(crate::Trigger::Config),
            finished: false,
        }
    } else {
        match phases.iter().position(|p| p.name == file_phase) {
            Some(i) => MigrationState::at(i),
            None => {
                if !phases.is_empty() {
                    c.err(
                        format!("{at}.phase"),
                        format!("no phase named `{file_phase}` (use a phase name or `rollback`)"),
                    );
                }
                MigrationState::at(0)
            }
        }
    };
    let sticky_header = m
        .sticky_header
        .clone()
        .unwrap_or_else(|| "x-request-id".into())
        .to_ascii_lowercase();
    if sticky_header.is_empty()
        || !sticky_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    {
        c.err(
            format!("{at}.sticky_header"),
            format!("`{sticky_header}` is not a header name"),
        );
    }
    let shadow_buckets = c.percent(
        &format!("{at}.shadow_percent"),
        m.shadow_percent.unwrap_or(0.0),
    );
    let control_buckets = c.percent(
        &format!("{at}.control_percent"),
        m.control_percent.unwrap_or(2.0),
    );
    let auto_rollback = m.auto_rollback.as_ref().map(|a| {
        let window = a.window.unwrap_or(100);
        let min_requests = a.min_requests.unwrap_or(20);
        if window == 0 {
            c.err(format!("{at}.auto_rollback.window"), "must be at least 1");
        }
        if min_requests > window {
            c.err(
                format!("{at}.auto_rollback.min_requests"),
                format!("{min_requests} is more than the window ({window})"),
            );
        }
        if let Some(r) = a.max_error_rate {
            if !(0.0..=1.0).contains(&r) {
                c.err(
                    format!("{at}.auto_rollback.max_error_rate"),
                    format!("{r} is not a rate between 0 and 1 (0.05 = 5%)"),
                );
            }
        }
        let max_p95_latency = a.max_p95_latency.as_ref().map(|v| {
            c.duration(
                &format!("{at}.auto_rollback.max_p95_latency"),
                Some(v),
                Duration::from_secs(5),
            )
        });
        let (mut count_auth, mut count_refused) = (true, true);
        if let Some(list) = &a.count_as_errors {
            (count_auth, count_refused) = (false, false);
            for v in list {
                match v.as_str() {
                    "auth" => count_auth = true,
                    "refused" => count_refused = true,
                    other => c.err(
                        format!("{at}.auto_rollback.count_as_errors"),
                        format!("`{other}` is not one of: auth (401/403/407), refused (402/429)"),
                    ),
                }
            }
        }
        let compare = match &a.compare {
            Some(cmp) if cmp.enabled == Some(false) => None,
            cmp => {
                let cmp = cmp.as_ref();
                let key = format!("{at}.auto_rollback.compare");
                let inc = cmp.and_then(|x| x.max_error_rate_increase).unwrap_or(0.01);
                let ratio = cmp.and_then(|x| x.max_latency_ratio).unwrap_or(1.5);
                let confidence = cmp.and_then(|x| x.confidence).unwrap_or(0.95);
                if !(0.0..1.0).contains(&inc) {
                    c.err(
                        format!("{key}.max_error_rate_increase"),
                        format!("{inc} is not a rate difference between 0 and 1 (0.01 = one percentage point)"),
                    );
                }
                if ratio.is_nan() || ratio < 1.0 {
                    c.err(
                        format!("{key}.max_latency_ratio"),
                        format!("{ratio} is below 1 (1.5 = `to` may be 50% slower than `from`)"),
                    );
                }
                if !(0.5..1.0).contains(&confidence) {
                    c.err(
                        format!("{key}.confidence"),
                        format!("{confidence} is not a confidence between 0.5 and 1 (0.95 = 95%)"),
                    );
                }
                let min_latency_increase = c.duration(
                    &format!("{key}.min_latency_increase"),
                    cmp.and_then(|x| x.min_latency_increase.as_ref()),
                    Duration::from_millis(100),
                );
                Some(CompareConfig {
                    max_error_rate_increase: inc,
                    max_latency_ratio: ratio,
                    min_latency_increase,
                    confidence,
                })
            }
        };
        AutoRollbackConfig {
            window,
            min_requests,
            max_error_rate: a.max_error_rate,
            max_p95_latency,
            count_auth,
            count_refused,
            compare,
        }
    });
    let preflight = PreflightConfig {
        enabled: m.preflight.as_ref().and_then(|p| p.enabled).unwrap_or(true),
        timeout: c.duration(
            &format!("{at}.preflight.timeout"),
            m.preflight.as_ref().and_then(|p| p.timeout.as_ref()),
            Duration::from_secs(15),
        ),
    };

    let auto_advance = m.auto_advance.unwrap_or(false);
    if auto_advance && auto_rollback.is_none() {
        c.err(
            format!("{at}.auto_advance"),
            "needs `auto_rollback` thresholds to judge the window by",
        );
    }
    let compatibility_gate = match &m.compatibility_gate {
        None => vec![Feature::ToolCalls, Feature::JsonSchema],
        Some(list) => list
            .iter()
            .filter_map(|v| {
                let f = Feature::ALL.into_iter().find(|f| f.label() == v);
                if f.is_none() {
                    let known: Vec<&str> = Feature::ALL.iter().map(|f| f.label()).collect();
                    c.err(
                        format!("{at}.compatibility_gate"),
                        format!("unknown feature `{v}` (one of {})", known.join(", ")),
                    );
                }
                f
            })
            .collect(),
    };
    let router = if named {
        Router::named(name, &m.from, &m.to)
    } else {
        Router::new(&m.from, &m.to)
    };
    let failover = {
        let f = m.failover.as_ref();
        let on_status = f
            .and_then(|f| f.on_status.clone())
            .unwrap_or_else(|| vec![401, 403, 429, 502, 503]);
        for s in &on_status {
            if !(400..=599).contains(s) {
                c.err(
                    format!("{at}.failover.on_status"),
                    format!("{s} is not a 4xx or 5xx status"),
                );
            }
        }
        FailoverConfig {
            on_status,
            replay_max_body: c.size(
                &format!("{at}.failover.replay_max_body"),
                f.and_then(|f| f.replay_max_body.as_ref()),
                1 << 20,
            ),
            honor_retry_after: f.and_then(|f| f.honor_retry_after).unwrap_or(true),
        }
    };
    MigrationConfig {
        name: name.to_string(),
        matcher,
        from,
        to,
        phases,
        file_phase,
        file_state,
        sticky_header,
        shadow_buckets,
        control_buckets,
        auto_rollback,
        auto_advance,
        compatibility_gate,
        preflight,
        failover,
        router,
    }
}

/// A YAML map whose order is kept (`migrations:`: the first that matches wins).
#[derive(Debug)]
pub(super) struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of names to migrations")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = a.next_entry::<String, T>()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// `migration:` (one, matching every request) or `migrations:` with `default_provider:`.
pub(super) fn all(
    single: Option<&RawMigration>,
    several: Option<&Ordered<RawMigration>>,
    default_name: Option<&str>,
    providers: &[ProviderConfig],
    c: &mut Collector,
) -> (Vec<MigrationConfig>, Option<usize>, bool) {
    let default_provider = default_name.and_then(|name| {
        let found = providers.iter().position(|p| p.name == name);
        if found.is_none() {
            c.err("default_provider", format!("no provider named `{name}`"));
        }
        found
    });
    match (single, several) {
        (Some(_), Some(_)) => {
            c.err(
                "migrations",
                "write either `migration:` (one) or `migrations:` (several, by name), not both",
            );
            (Vec::new(), None, false)
        }
        (None, None) => {
            c.err(
                "migration",
                "missing: `migration:` (from, to, phases) or `migrations:` (several, by name)",
            );
            (Vec::new(), None, false)
        }
        (Some(m), None) => {
            if default_name.is_some() {
                c.err(
                    "default_provider",
                    "only with `migrations:`: a single `migration:` routes every request",
                );
            }
            let one = validate(m, SINGLE, "migration", false, providers, c);
            (vec![one], None, false)
        }
        (None, Some(Ordered(list))) => {
            if default_name.is_none() {
                c.err(
                    "default_provider",
                    "missing: with `migrations:`, the provider for requests that no migration matches",
                );
            }
            if list.is_empty() {
                c.err("migrations", "at least one migration is needed");
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (name, m) in list {
                let at = format!("migrations.{name}");
                let good = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)
                    });
                if !good {
                    c.err(
                        &at,
                        format!("`{name}` is not a migration name: lower-case letters, digits, `-` and `_` (it is used in URLs and metric labels)"),
                    );
                }
                if !seen.insert(name.as_str()) {
                    c.err(&at, format!("migration `{name}` is named twice"));
                }
                out.push(validate(m, name, &at, true, providers, c));
            }
            matching::check_all(&out, providers, c);
            (out, default_provider, true)
        }
    }
}
