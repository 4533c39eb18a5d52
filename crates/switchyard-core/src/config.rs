//! Raw YAML → validated [`Config`].
//!
//! `Raw*` structs mirror the file exactly and refuse unknown keys; [`Config::parse`]
//! turns them into the types the program uses, collecting every error with the file,
//! line and key path it concerns. After validation nothing is half-valid.
//! Secrets never live here: only the names of the env vars that hold them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::locate::LineIndex;
use crate::migration::MigrationState;
use crate::pricing::{Price, PriceTable};
use crate::router::{Router, BUCKETS};
use crate::units::{parse_duration, parse_size};

// ---------------------------------------------------------------- raw (the file)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    tls: Option<RawTls>,
    admin: Option<RawAdmin>,
    clients: Option<RawClients>,
    providers: BTreeMap<String, RawProvider>,
    migration: RawMigration,
    alerts: Option<RawAlerts>,
    health_check: Option<RawHealthCheck>,
    cluster: Option<RawCluster>,
    server: Option<RawServer>,
    stats: Option<RawStats>,
    shadow: Option<RawShadow>,
    state_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    max_body_size: Option<String>,
    max_concurrent: Option<usize>,
    max_response_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    window_requests: Option<usize>,
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClients {
    keys_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: String,
    api_key_env: Option<String>,
    ca_file: Option<PathBuf>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    idle_timeout: Option<String>,
    inject_stream_usage: Option<bool>,
    #[serde(default)]
    pricing: BTreeMap<String, RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    from: String,
    to: String,
    phases: Vec<RawPhase>,
    phase: Option<String>,
    sticky_header: Option<String>,
    shadow_percent: Option<f64>,
    auto_rollback: Option<RawAutoRollback>,
    auto_advance: Option<bool>,
    preflight: Option<RawPreflight>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    enabled: Option<bool>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: String,
    percent: f64,
    hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoRollback {
    window: Option<u32>,
    min_requests: Option<u32>,
    max_error_rate: Option<f64>,
    max_p95_latency: Option<String>,
    count_as_errors: Option<Vec<String>>,
    compare: Option<RawCompare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompare {
    enabled: Option<bool>,
    max_error_rate_increase: Option<f64>,
    max_latency_ratio: Option<f64>,
    confidence: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook_url_env: String,
    cooldown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    interval: Option<String>,
    path: Option<String>,
    timeout: Option<String>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    etcd: RawEtcd,
    key_prefix: Option<String>,
    replica_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    username_env: Option<String>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_body_size: Option<String>,
    max_connections: Option<usize>,
    header_read_timeout: Option<String>,
    max_header_size: Option<String>,
    max_headers: Option<usize>,
    shutdown_grace: Option<String>,
    access_log: Option<bool>,
}

// ---------------------------------------------------------------- validated

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub admin: AdminConfig,
    pub clients: Option<ClientsConfig>,
    /// Sorted by name; indices are stable for one config.
    pub providers: Vec<ProviderConfig>,
    pub migration: MigrationConfig,
    pub alerts: Option<AlertsConfig>,
    pub health_check: HealthCheckConfig,
    pub cluster: Option<ClusterConfig>,
    pub server: ServerConfig,
    pub stats: StatsConfig,
    pub shadow: ShadowConfig,
    /// Where the migration state is kept, as written (a relative path is relative to the
    /// config file's folder); `None`: `<config>.state.json`.
    pub state_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Requests with larger bodies are not mirrored (counted as `too_large`).
    pub max_body_bytes: u64,
    /// Mirrored requests in flight at once; more are dropped (counted).
    pub max_concurrent: usize,
    /// A shadow answer is read up to this size for the comparison.
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsConfig {
    /// The rolling window holds at most this many requests per provider …
    pub window_requests: usize,
    /// … none older than this.
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsConfig {
    pub keys_env: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    pub https: bool,
    /// `host[:port]` as written.
    pub authority: String,
    /// Path of `base_url` without a trailing slash (`/v1`, or empty).
    pub base_path: String,
    pub api_key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    /// Ask for `stream_options.include_usage` upstream and strip that chunk for clients
    /// that did not ask for it, so every stream's cost is known.
    pub inject_stream_usage: bool,
    pub pricing: PriceTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    /// `percent × 100`, in `[0, 10000]`.
    pub buckets: u16,
    pub hold: Option<Duration>,
}

impl Phase {
    pub fn percent(&self) -> f64 {
        f64::from(self.buckets) / 100.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationConfig {
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
    pub auto_rollback: Option<AutoRollbackConfig>,
    /// Advance by itself when a phase's hold has passed and the window is healthy.
    pub auto_advance: bool,
    /// Probe `to` before the first phase that sends it traffic.
    pub preflight: PreflightConfig,
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
    /// 0.95: a failure is called at 5% significance, spent over the looks of a phase.
    pub confidence: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightConfig {
    pub enabled: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    pub webhook_url_env: String,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub path: String,
    pub timeout: Duration,
    /// Consecutive failures that mark a healthy provider unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy provider healthy.
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub replica_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
    pub access_log: bool,
}

impl Config {
    pub fn provider(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

// ---------------------------------------------------------------- errors

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path such as `migration.phases[1].percent`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

struct Collector<'a> {
    file: &'a str,
    index: LineIndex,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: self.index.line_of(&key),
            column: None,
            key,
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, v: Option<&String>, default: Duration) -> Duration {
        match v.map(|s| parse_duration(s)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.err(key, e);
                default
            }
        }
    }

    fn size(&mut self, key: &str, v: Option<&String>, default: u64) -> u64 {
        match v.map(|s| parse_size(s)) {
            None => default,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.err(key, e);
                default
            }
        }
    }

    fn addr(&mut self, key: &str, v: Option<&String>, default: &str) -> SocketAddr {
        let s = v.map_or(default, |s| s.as_str());
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.err(key, format!("`{s}` is not an address like 0.0.0.0:8080"));
                default.parse().expect("default address parses")
            }
        }
    }

    fn env_name(&mut self, key: &str, v: &str) {
        let ok = !v.is_empty()
            && !v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            self.err(
                key,
                format!("`{v}` is not an environment variable name (the secret itself never goes in the file)"),
            );
        }
    }

    fn percent(&mut self, key: &str, p: f64) -> u16 {
        if !(0.0..=100.0).contains(&p) || p.is_nan() {
            self.err(key, format!("{p} is not a percent between 0 and 100"));
            return 0;
        }
        let b = (p * 100.0).round();
        if (b - p * 100.0).abs() > 1e-6 {
            self.err(key, format!("{p}: percents have a resolution of 0.01"));
        }
        (b as u16).min(BUCKETS)
    }
}

// ---------------------------------------------------------------- parse + validate

impl Config {
    /// Parses and validates `text`; `file` is only used to name errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = match serde_yaml_ng::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let loc = e.location();
                let mut message = e.to_string();
                // serde_yaml repeats the location at the end; we print it up front.
                if let Some(cut) = message.rfind(" at line ") {
                    message.truncate(cut);
                }
                let (key, message) = split_key(&message);
                return Err(ConfigErrors(vec![ConfigError {
                    file: file.to_string(),
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.as_ref().map(|l| l.column()),
                    key,
                    message,
                }]));
            }
        };
        let mut c = Collector {
            file,
            index: LineIndex::build(text),
            errors: Vec::new(),
        };
        let cfg = validate(raw, &mut c);
        if c.errors.is_empty() {
            Ok(cfg)
        } else {
            c.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors(c.errors))
        }
    }
}

/// serde_yaml says `migration.phases[0]: unknown field ...`: split the path off.
fn split_key(message: &str) -> (String, String) {
    if let Some((k, rest)) = message.split_once(": ") {
        if !k.contains(' ') && !k.is_empty() {
            return (k.to_string(), rest.to_string());
        }
    }
    (String::new(), message.to_string())
}

fn parse_base_url(url: &str) -> Result<(bool, String, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("`{url}` must start with http:// or https://"));
    };
    if rest.contains(['?', '#']) {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("`{url}` needs a host (and no user:password@)"));
    }
    if let Some((_, port)) = authority.rsplit_once(':') {
        if !authority.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(format!("`{url}` has a bad port `{port}`"));
        }
    }
    Ok((
        https,
        authority.to_string(),
        path.trim_end_matches('/').to_string(),
    ))
}

fn validate(raw: RawConfig, c: &mut Collector) -> Config {
    let listen = c.addr("listen", raw.listen.as_ref(), "0.0.0.0:8080");

    let admin = {
        let a = raw.admin.as_ref();
        let listen = c.addr(
            "admin.listen",
            a.and_then(|a| a.listen.as_ref()),
            "127.0.0.1:9090",
        );
        let token_env = a
            .and_then(|a| a.token_env.clone())
            .unwrap_or_else(|| "SWITCHYARD_ADMIN_TOKEN".to_string());
        c.env_name("admin.token_env", &token_env);
        AdminConfig { listen, token_env }
    };
    if admin.listen == listen && listen.port() != 0 {
        c.err("admin.listen", "must differ from `listen`");
    }

    let clients = raw.clients.map(|cl| {
        c.env_name("clients.keys_env", &cl.keys_env);
        ClientsConfig {
            keys_env: cl.keys_env,
        }
    });

    let tls = raw.tls.map(|t| TlsFiles {
        cert: t.cert,
        key: t.key,
    });

    if raw.providers.is_empty() {
        c.err("providers", "at least one provider is needed");
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    for (name, p) in &raw.providers {
        let k = format!("providers.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            c.err(
                &k,
                "provider names may use letters, digits, `-`, `_` and `.`",
            );
        }
        let (https, authority, base_path) = match parse_base_url(&p.base_url) {
            Ok(v) => v,
            Err(e) => {
                c.err(format!("{k}.base_url"), e);
                (false, String::new(), String::new())
            }
        };
        if let Some(env) = &p.api_key_env {
            c.env_name(&format!("{k}.api_key_env"), env);
        }
        if p.ca_file.is_some() && !https {
            c.err(format!("{k}.ca_file"), "only applies to an https base_url");
        }
        let connect_timeout = c.duration(
            &format!("{k}.connect_timeout"),
            p.connect_timeout.as_ref(),
            Duration::from_secs(2),
        );
        let timeout = c.duration(
            &format!("{k}.timeout"),
            p.timeout.as_ref(),
            Duration::from_secs(30),
        );
        let idle_timeout = c.duration(
            &format!("{k}.idle_timeout"),
            p.idle_timeout.as_ref(),
            Duration::from_secs(60),
        );
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("timeout", timeout),
            ("idle_timeout", idle_timeout),
        ] {
            if d.is_zero() {
                c.err(format!("{k}.{key}"), "must be longer than 0");
            }
        }
        let mut pricing = PriceTable::default();
        for (model, price) in &p.pricing {
            for (what, v) in [("input", price.input), ("output", price.output)] {
                if !(v >= 0.0 && v.is_finite()) {
                    c.err(
                        format!("{k}.pricing.{model}.{what}"),
                        format!("{v} is not a price in USD per 1M tokens"),
                    );
                }
            }
            pricing.models.insert(
                model.clone(),
                Price {
                    input: price.input,
                    output: price.output,
                },
            );
        }
        providers.push(ProviderConfig {
            name: name.clone(),
            base_url: p.base_url.clone(),
            https,
            authority,
            base_path,
            api_key_env: p.api_key_env.clone(),
            ca_file: p.ca_file.clone(),
            connect_timeout,
            timeout,
            idle_timeout,
            inject_stream_usage: p.inject_stream_usage.unwrap_or(false),
            pricing,
        });
    }

    let m = &raw.migration;
    let find = |n: &str| providers.iter().position(|p| p.name == n);
    let from = find(&m.from).unwrap_or_else(|| {
        c.err("migration.from", format!("no provider named `{}`", m.from));
        0
    });
    let to = find(&m.to).unwrap_or_else(|| {
        c.err("migration.to", format!("no provider named `{}`", m.to));
        0
    });
    if m.from == m.to {
        c.err(
            "migration.to",
            "`from` and `to` must be different providers",
        );
    }
    if m.phases.is_empty() {
        c.err("migration.phases", "at least one phase is needed");
    }
    let mut names = BTreeSet::new();
    let mut phases = Vec::with_capacity(m.phases.len());
    for (i, p) in m.phases.iter().enumerate() {
        let k = format!("migration.phases[{i}]");
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
        }
    } else {
        match phases.iter().position(|p| p.name == file_phase) {
            Some(i) => MigrationState::at(i),
            None => {
                if !phases.is_empty() {
                    c.err(
                        "migration.phase",
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
            "migration.sticky_header",
            format!("`{sticky_header}` is not a header name"),
        );
    }
    let shadow_buckets = c.percent("migration.shadow_percent", m.shadow_percent.unwrap_or(0.0));
    let auto_rollback = m.auto_rollback.as_ref().map(|a| {
        let window = a.window.unwrap_or(100);
        let min_requests = a.min_requests.unwrap_or(20);
        if window == 0 {
            c.err("migration.auto_rollback.window", "must be at least 1");
        }
        if min_requests > window {
            c.err(
                "migration.auto_rollback.min_requests",
                format!("{min_requests} is more than the window ({window})"),
            );
        }
        if let Some(r) = a.max_error_rate {
            if !(0.0..=1.0).contains(&r) {
                c.err(
                    "migration.auto_rollback.max_error_rate",
                    format!("{r} is not a rate between 0 and 1 (0.05 = 5%)"),
                );
            }
        }
        let max_p95_latency = a.max_p95_latency.as_ref().map(|v| {
            c.duration(
                "migration.auto_rollback.max_p95_latency",
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
                        "migration.auto_rollback.count_as_errors",
                        format!("`{other}` is not one of: auth (401/403/407), refused (402/429)"),
                    ),
                }
            }
        }
        let compare = match &a.compare {
            Some(cmp) if cmp.enabled == Some(false) => None,
            cmp => {
                let cmp = cmp.as_ref();
                let key = "migration.auto_rollback.compare";
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
                Some(CompareConfig {
                    max_error_rate_increase: inc,
                    max_latency_ratio: ratio,
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
            "migration.preflight.timeout",
            m.preflight.as_ref().and_then(|p| p.timeout.as_ref()),
            Duration::from_secs(15),
        ),
    };

    let alerts = raw.alerts.map(|a| {
        c.env_name("alerts.webhook_url_env", &a.webhook_url_env);
        let cooldown = c.duration(
            "alerts.cooldown",
            a.cooldown.as_ref(),
            Duration::from_secs(300),
        );
        AlertsConfig {
            webhook_url_env: a.webhook_url_env,
            cooldown,
        }
    });

    let health_check = {
        let h = raw.health_check.as_ref();
        let interval = c.duration(
            "health_check.interval",
            h.and_then(|h| h.interval.as_ref()),
            Duration::from_secs(10),
        );
        let timeout = c.duration(
            "health_check.timeout",
            h.and_then(|h| h.timeout.as_ref()),
            Duration::from_secs(2),
        );
        let path = h
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| "/models".into());
        if !path.starts_with('/') {
            c.err("health_check.path", format!("`{path}` must start with /"));
        }
        if interval.is_zero() {
            c.err("health_check.interval", "must be longer than 0");
        }
        let unhealthy_threshold = h.and_then(|h| h.unhealthy_threshold).unwrap_or(2);
        let healthy_threshold = h.and_then(|h| h.healthy_threshold).unwrap_or(1);
        for (k, v) in [
            ("unhealthy_threshold", unhealthy_threshold),
            ("healthy_threshold", healthy_threshold),
        ] {
            if v == 0 {
                c.err(format!("health_check.{k}"), "must be at least 1");
            }
        }
        HealthCheckConfig {
            interval,
            path,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        }
    };

    let state_file = match raw.state_file {
        Some(p) if p.trim().is_empty() => {
            c.err(
                "state_file",
                "must be a path (or left out for `<config>.state.json`)",
            );
            None
        }
        p => p.map(std::path::PathBuf::from),
    };
    let cluster = raw.cluster.map(|cl| {
        if cl.etcd.endpoints.is_empty() {
            c.err(
                "cluster.etcd.endpoints",
                "at least one etcd endpoint is needed",
            );
        }
        for (i, e) in cl.etcd.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                c.err(
                    format!("cluster.etcd.endpoints[{i}]"),
                    format!("`{e}` must start with http:// or https://"),
                );
            }
        }
        for (k, v) in [
            ("username_env", &cl.etcd.username_env),
            ("password_env", &cl.etcd.password_env),
        ] {
            if let Some(v) = v {
                c.env_name(&format!("cluster.etcd.{k}"), v);
            }
        }
        ClusterConfig {
            endpoints: cl.etcd.endpoints,
            username_env: cl.etcd.username_env,
            password_env: cl.etcd.password_env,
            ca_file: cl.etcd.ca_file,
            key_prefix: cl
                .key_prefix
                .unwrap_or_else(|| format!("/switchyard/{}-to-{}", m.from, m.to)),
            replica_id: cl.replica_id,
        }
    });

    let server = {
        let s = raw.server.as_ref();
        let max_body_bytes = c.size(
            "server.max_body_size",
            s.and_then(|s| s.max_body_size.as_ref()),
            10 << 20,
        );
        let max_header_bytes = c.size(
            "server.max_header_size",
            s.and_then(|s| s.max_header_size.as_ref()),
            64 << 10,
        );
        if max_header_bytes < 8192 {
            c.err("server.max_header_size", "must be at least 8KiB");
        }
        let max_headers = s.and_then(|s| s.max_headers).unwrap_or(100);
        if max_headers == 0 {
            c.err("server.max_headers", "must be at least 1");
        }
        let max_connections = s.and_then(|s| s.max_connections).unwrap_or(10_000);
        if max_connections == 0 {
            c.err("server.max_connections", "must be at least 1");
        }
        ServerConfig {
            max_body_bytes,
            max_connections,
            header_read_timeout: c.duration(
                "server.header_read_timeout",
                s.and_then(|s| s.header_read_timeout.as_ref()),
                Duration::from_secs(30),
            ),
            max_header_bytes: max_header_bytes as usize,
            max_headers,
            shutdown_grace: c.duration(
                "server.shutdown_grace",
                s.and_then(|s| s.shutdown_grace.as_ref()),
                Duration::from_secs(30),
            ),
            access_log: s.and_then(|s| s.access_log).unwrap_or(true),
        }
    };

    let stats = {
        let s = raw.stats.as_ref();
        let window_requests = s.and_then(|s| s.window_requests).unwrap_or(1000);
        if window_requests == 0 || window_requests > 1_000_000 {
            c.err(
                "stats.window_requests",
                format!("{window_requests} is not between 1 and 1000000"),
            );
        }
        let window = c.duration(
            "stats.window",
            s.and_then(|s| s.window.as_ref()),
            Duration::from_secs(300),
        );
        if window.is_zero() {
            c.err("stats.window", "must be longer than 0");
        }
        StatsConfig {
            window_requests,
            window,
        }
    };
    let shadow = {
        let s = raw.shadow.as_ref();
        let max_body_bytes = c.size(
            "shadow.max_body_size",
            s.and_then(|s| s.max_body_size.as_ref()),
            1 << 20,
        );
        let max_response_bytes = c.size(
            "shadow.max_response_size",
            s.and_then(|s| s.max_response_size.as_ref()),
            4 << 20,
        );
        let max_concurrent = s.and_then(|s| s.max_concurrent).unwrap_or(64);
        if max_concurrent == 0 {
            c.err("shadow.max_concurrent", "must be at least 1");
        }
        ShadowConfig {
            max_body_bytes,
            max_concurrent,
            max_response_bytes,
        }
    };
    let auto_advance = m.auto_advance.unwrap_or(false);
    if auto_advance && auto_rollback.is_none() {
        c.err(
            "migration.auto_advance",
            "needs `auto_rollback` thresholds to judge the window by",
        );
    }
    let router = Router::new(&m.from, &m.to);
    Config {
        listen,
        tls,
        admin,
        clients,
        providers,
        migration: MigrationConfig {
            from,
            to,
            phases,
            file_phase,
            file_state,
            sticky_header,
            shadow_buckets,
            auto_rollback,
            auto_advance,
            preflight,
            router,
        },
        alerts,
        health_check,
        cluster,
        server,
        stats,
        shadow,
        state_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9090
providers:
  old:
    base_url: https://api.deepseek.com/v1
    api_key_env: OLD_API_KEY
    connect_timeout: 2s
    timeout: 30s
    pricing:
      deepseek-chat: { input: 0.27, output: 1.10 }
  new:
    base_url: http://127.0.0.1:9000/v1/
    api_key_env: NEW_API_KEY
migration:
  from: old
  to: new
  phases:
    - { name: phase-1, percent: 10, hold: 24h }
    - { name: phase-2, percent: 25 }
    - { name: phase-4, percent: 100 }
  phase: phase-2
  sticky_header: X-User-Id
"#;

    #[test]
    fn good_config() {
        let c = Config::parse(GOOD, "t.yaml").unwrap();
        assert_eq!(c.providers.len(), 2);
        let new = &c.providers[c.migration.to];
        assert_eq!(new.name, "new");
        assert_eq!(new.base_path, "/v1");
        assert_eq!(new.authority, "127.0.0.1:9000");
        assert!(!new.https);
        assert_eq!(new.timeout, Duration::from_secs(30));
        assert_eq!(c.migration.phases[1].buckets, 2500);
        assert_eq!(c.migration.phases[0].hold, Some(Duration::from_secs(86400)));
        assert_eq!(c.migration.file_state, MigrationState::at(1));
        assert_eq!(c.migration.sticky_header, "x-user-id");
        assert_eq!(c.server.max_body_bytes, 10 << 20);
        assert_eq!(c.admin.token_env, "SWITCHYARD_ADMIN_TOKEN");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = GOOD.replace(
            "- { name: phase-2, percent: 25 }",
            "- { name: phase-2, percnt: 25 }",
        );
        let e = Config::parse(&bad, "t.yaml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("percnt"), "{s}");
        assert_eq!(e.0[0].line, Some(21), "{s}");
        assert!(s.starts_with("t.yaml:21:"), "{s}");
    }

    #[test]
    fn semantic_errors_all_reported_with_lines() {
        let bad = GOOD
            .replace("percent: 100", "percent: 120")
            .replace("from: old", "from: olde")
            .replace("timeout: 30s", "timeout: thirty")
            .replace("api_key_env: NEW_API_KEY", "api_key_env: sk-live-123");
        let e = Config::parse(&bad, "t.yaml").unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(
            keys.contains(&("migration.phases[2].percent", Some(22))),
            "{keys:?}"
        );
        assert!(keys.contains(&("migration.from", Some(17))), "{keys:?}");
        assert!(
            keys.contains(&("providers.old.timeout", Some(10))),
            "{keys:?}"
        );
        assert!(
            keys.contains(&("providers.new.api_key_env", Some(15))),
            "{keys:?}"
        );
        // the secret-looking value is echoed as the bad value, which is the point of the message
        assert!(e.to_string().contains("not an environment variable name"));
    }

    #[test]
    fn phase_rollback_in_file() {
        let c = Config::parse(&GOOD.replace("phase: phase-2", "phase: rollback"), "t").unwrap();
        assert!(c.migration.file_state.rolled_back);
        let e = Config::parse(&GOOD.replace("phase: phase-2", "phase: phase-9"), "t").unwrap_err();
        assert_eq!(e.0[0].key, "migration.phase");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = Config::parse("listen: [\n", "t").unwrap_err();
        assert!(e.0[0].line.is_some());
    }

    #[test]
    fn bad_base_urls() {
        for (u, _) in [
            ("ftp://x", 0),
            ("https://", 0),
            ("http://u:p@host/v1", 0),
            ("http://h:99999/v1", 0),
        ] {
            assert!(parse_base_url(u).is_err(), "{u}");
        }
        assert_eq!(
            parse_base_url("https://h/api/v3/").unwrap(),
            (true, "h".into(), "/api/v3".into())
        );
    }
}
