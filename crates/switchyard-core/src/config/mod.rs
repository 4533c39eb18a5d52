//! Raw YAML → validated [`Config`], one file per section of the config.
//!
//! `Raw*` structs mirror the file exactly and refuse unknown keys; [`Config::parse`]
//! turns them into the types the program uses, collecting every error with the file,
//! line and key path it concerns. After validation nothing is half-valid.
//! Secrets never live here: only the names of the env vars that hold them.

mod cluster;
mod matching;
mod migration;
mod providers;
mod server;
mod watching;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use cluster::ClusterConfig;
pub use matching::Match;
pub use migration::{
    AutoRollbackConfig, CompareConfig, FailoverConfig, MigrationConfig, Phase, PreflightConfig,
    SINGLE,
};
pub use providers::{InjectStreamUsage, ModelRoute, ProviderConfig};
pub use server::{AdminConfig, ClientLimits, ClientsConfig, ServerConfig, TlsFiles};
pub use watching::{AlertsConfig, HealthCheckConfig, ShadowConfig, StatsConfig};

use crate::locate::LineIndex;
use crate::router::BUCKETS;
use crate::units::{parse_duration, parse_size};

// ---------------------------------------------------------------- raw (the file)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    tls: Option<server::RawTls>,
    admin: Option<server::RawAdmin>,
    clients: Option<server::RawClients>,
    providers: BTreeMap<String, providers::RawProvider>,
    migration: Option<migration::RawMigration>,
    migrations: Option<migration::Ordered<migration::RawMigration>>,
    default_provider: Option<String>,
    alerts: Option<watching::RawAlerts>,
    health_check: Option<watching::RawHealthCheck>,
    cluster: Option<cluster::RawCluster>,
    server: Option<server::RawServer>,
    stats: Option<watching::RawStats>,
    shadow: Option<watching::RawShadow>,
    state_file: Option<String>,
    tracing: Option<RawTracing>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    otlp_endpoint: String,
    service_name: Option<String>,
}

/// `tracing:` — OpenTelemetry traces over OTLP/HTTP (JSON), opt-in.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base (`http://collector:4318`); spans go to `/v1/traces`.
    pub otlp_endpoint: String,
    pub service_name: String,
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
    /// The migrations in file order: the first whose `match` a request meets moves it.
    /// The singular `migration:` is one, named `default`, that matches every request.
    pub migrations: Vec<MigrationConfig>,
    /// Where requests that no migration matches go (`migrations:` only).
    pub default_provider: Option<usize>,
    /// Written as `migrations:`: each migration's name shows in response headers, metric
    /// labels and state keys (the singular form keeps today's, unlabelled).
    pub named_migrations: bool,
    pub alerts: Option<AlertsConfig>,
    pub health_check: HealthCheckConfig,
    pub cluster: Option<ClusterConfig>,
    pub server: ServerConfig,
    pub stats: StatsConfig,
    pub shadow: ShadowConfig,
    /// Where the migration state is kept, as written (a relative path is relative to the
    /// config file's folder); `None`: `<config>.state.json`.
    pub state_file: Option<std::path::PathBuf>,
    pub tracing: Option<TracingConfig>,
}

impl Config {
    pub fn provider(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    /// The migration named `name`.
    pub fn migration(&self, name: &str) -> Option<usize> {
        self.migrations.iter().position(|m| m.name == name)
    }

    /// Whether choosing a migration needs the request's model (read ahead of its body).
    pub fn routes_by_model(&self) -> bool {
        self.migrations.iter().any(|m| m.matcher.needs_model())
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
                let first = shape_error(&e, file);
                let mut errors = vec![first];
                errors.extend(more_unknown_keys(text, file, &errors[0]));
                return Err(ConfigErrors(errors));
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

/// A deserializer error as a [`ConfigError`], located where serde_yaml says.
fn shape_error(e: &serde_yaml_ng::Error, file: &str) -> ConfigError {
    let loc = e.location();
    let mut message = e.to_string();
    // serde_yaml repeats the location at the end; we print it up front.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    let (key, message) = split_key(&message);
    ConfigError {
        file: file.to_string(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        key,
        message,
    }
}

/// The field an "unknown field `x`" error names.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

/// serde stops at the first unknown key; a user fixing typos wants them all at once. Each
/// one found is taken out of the document and the rest is deserialized again (at most 50
/// rounds), each error located in the original text by its key path.
fn more_unknown_keys(text: &str, file: &str, first: &ConfigError) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let Ok(mut doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return out;
    };
    let index = LineIndex::build(text);
    let (mut key, mut message) = (first.key.clone(), first.message.clone());
    for _ in 0..50 {
        let Some(field) = unknown_field(&message).map(str::to_string) else {
            break;
        };
        let Some(removed) = mapping_at(&mut doc, &key).and_then(|m| m.remove(&field)) else {
            break;
        };
        let mut next = reparse(&doc, file);
        // The unknown key was a typo of a required one (`percnt` for `percent`): put its
        // value back under that name, so the search goes on past it.
        if let Some(missing) = next.as_ref().and_then(|n| {
            (n.key == key)
                .then(|| missing_field(&n.message))
                .flatten()
                .map(str::to_string)
        }) {
            if let Some(m) = mapping_at(&mut doc, &key) {
                m.insert(serde_yaml_ng::Value::from(missing), removed);
            }
            next = reparse(&doc, file);
        }
        let Some(next) = next else {
            break;
        };
        let Some(next_field) = unknown_field(&next.message) else {
            break;
        };
        let path = if next.key.is_empty() {
            next_field.to_string()
        } else {
            format!("{}.{next_field}", next.key)
        };
        (key, message) = (next.key.clone(), next.message.clone());
        out.push(ConfigError {
            line: index.line_of(&path),
            column: None,
            ..next
        });
    }
    out
}

/// The first error deserializing `doc` (written out again), if any.
fn reparse(doc: &serde_yaml_ng::Value, file: &str) -> Option<ConfigError> {
    let text = serde_yaml_ng::to_string(doc).ok()?;
    serde_yaml_ng::from_str::<RawConfig>(&text)
        .err()
        .map(|e| shape_error(&e, file))
}

/// The field a "missing field `x`" error names.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    Some(&rest[..rest.find('`')?])
}

/// The mapping at `path` (`migration.phases[1]`, or empty for the top).
fn mapping_at<'a>(
    doc: &'a mut serde_yaml_ng::Value,
    path: &str,
) -> Option<&'a mut serde_yaml_ng::Mapping> {
    let mut v = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            v = v.get_mut(name)?;
        }
        for ix in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            v = v.get_mut(ix.parse::<usize>().ok()?)?;
        }
    }
    v.as_mapping_mut()
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
        let l = cl.limits.as_ref();
        let rps = l.and_then(|l| l.requests_per_second);
        if let Some(r) = rps {
            if !(r > 0.0 && r.is_finite()) {
                c.err(
                    "clients.limits.requests_per_second",
                    format!("{r} is not a positive rate"),
                );
            }
        }
        let burst = l
            .and_then(|l| l.burst)
            .unwrap_or_else(|| rps.map_or(1, |r| r.ceil().max(1.0) as u32));
        let max_concurrent = l.and_then(|l| l.max_concurrent);
        if max_concurrent == Some(0) || burst == 0 {
            c.err(
                "clients.limits",
                "burst and max_concurrent must be at least 1",
            );
        }
        ClientsConfig {
            keys_env: cl.keys_env,
            limits: ClientLimits {
                requests_per_second: rps,
                burst,
                max_concurrent,
            },
        }
    });

    let tls = raw.tls.map(|t| TlsFiles {
        cert: t.cert,
        key: t.key,
    });

    let providers = providers::validate(&raw.providers, c);
    let (migrations, default_provider, named_migrations) = migration::all(
        raw.migration.as_ref(),
        raw.migrations.as_ref(),
        raw.default_provider.as_deref(),
        &providers,
        c,
    );
    let alerts = raw.alerts.map(|a| watching::alerts(a, c));
    let health_check = watching::health_check(raw.health_check.as_ref(), c);
    let state_file = match raw.state_file {
        Some(p) if p.trim().is_empty() => {
            c.err(
                "state_file",
                "must be a path (or left out for `<config>.state.json`)",
            );
            None
        }
        p => p.map(PathBuf::from),
    };
    let default_prefix = match (&raw.migration, named_migrations) {
        (Some(m), false) => format!("/switchyard/{}-to-{}", m.from, m.to),
        _ => "/switchyard/migrations".to_string(),
    };
    let cluster = raw
        .cluster
        .map(|cl| cluster::validate(cl, default_prefix, c));
    let server = server::server(raw.server.as_ref(), c);
    let stats = watching::stats(raw.stats.as_ref(), c);
    let shadow = watching::shadow(raw.shadow.as_ref(), c);
    let tracing = raw.tracing.map(|t| {
        let endpoint = t.otlp_endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            c.err(
                "tracing.otlp_endpoint",
                format!("`{endpoint}` must be an http:// or https:// URL (the collector's OTLP/HTTP port, e.g. http://collector:4318)"),
            );
        }
        TracingConfig {
            otlp_endpoint: endpoint,
            service_name: t.service_name.unwrap_or_else(|| "switchyard".into()),
        }
    });
    Config {
        listen,
        tls,
        admin,
        clients,
        providers,
        migrations,
        default_provider,
        named_migrations,
        alerts,
        health_check,
        cluster,
        server,
        stats,
        shadow,
        state_file,
        tracing,
    }
}

#[cfg(test)]
mod tests {
    use super::providers::parse_base_url;
    use super::*;
    use crate::migration::MigrationState;

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
        let new = &c.providers[c.migrations[0].to];
        assert_eq!(new.name, "new");
        assert_eq!(new.base_path, "/v1");
        assert_eq!(new.authority, "127.0.0.1:9000");
        assert!(!new.https);
        assert_eq!(new.timeout, Duration::from_secs(30));
        assert_eq!(c.migrations[0].phases[1].buckets, 2500);
        assert_eq!(
            c.migrations[0].phases[0].hold,
            Some(Duration::from_secs(86400))
        );
        assert_eq!(c.migrations[0].file_state, MigrationState::at(1));
        assert_eq!(c.migrations[0].sticky_header, "x-user-id");
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
    fn upstream_connection_keys() {
        let c = Config::parse(GOOD, "t").unwrap();
        let old = &c.providers[c.migrations[0].from];
        assert_eq!(old.http2, None, "https: ALPN decides");
        assert_eq!(old.http2_max_streams, 100);
        assert_eq!(old.upstream_idle_timeout, Duration::from_secs(90));
        assert_eq!(old.max_idle_connections, 32);
        let set = GOOD.replace(
            "api_key_env: NEW_API_KEY",
            "api_key_env: NEW_API_KEY\n    http2: true\n    http2_max_streams: 250\n    upstream_idle_timeout: 5s\n    max_idle_connections: 0",
        );
        let c = Config::parse(&set, "t").unwrap();
        let new = &c.providers[c.migrations[0].to];
        assert_eq!(new.http2, Some(true));
        assert_eq!(new.http2_max_streams, 250);
        assert_eq!(new.upstream_idle_timeout, Duration::from_secs(5));
        assert_eq!(new.max_idle_connections, 0);
        let bad = GOOD.replace(
            "api_key_env: NEW_API_KEY",
            "api_key_env: NEW_API_KEY\n    http2: false\n    http2_max_streams: 0\n    upstream_idle_timeout: 0s",
        );
        let e = Config::parse(&bad, "t").unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"providers.new.http2_max_streams"),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"providers.new.upstream_idle_timeout"),
            "{keys:?}"
        );
    }

    #[test]
    fn phases_only_go_up() {
        let bad = GOOD.replace("percent: 25 }", "percent: 5 }");
        let e = Config::parse(&bad, "t").unwrap_err();
        assert_eq!(e.0[0].key, "migration.phases[1].percent", "{e}");
        assert!(e.to_string().contains("phases only go up"), "{e}");
        let equal = GOOD.replace("percent: 25 }", "percent: 10 }");
        assert!(
            Config::parse(&equal, "t").is_ok(),
            "a repeated percent is allowed"
        );
    }

    #[test]
    fn every_unknown_key_in_one_run() {
        let bad = GOOD
            .replace(
                "- { name: phase-2, percent: 25 }",
                "- { name: phase-2, percnt: 25 }",
            )
            .replace("connect_timeout: 2s", "conect_timeout: 2s")
            .replace(
                "sticky_header: X-User-Id",
                "sticky_header: X-User-Id\n  shadow_percentt: 5",
            );
        let e = Config::parse(&bad, "t.yaml").unwrap_err();
        let found: Vec<(String, Option<usize>)> =
            e.0.iter().map(|e| (e.message.clone(), e.line)).collect();
        assert_eq!(e.0.len(), 3, "{e}");
        for (word, line) in [
            ("conect_timeout", 9),
            ("percnt", 21),
            ("shadow_percentt", 25),
        ] {
            assert!(
                found
                    .iter()
                    .any(|(m, l)| m.contains(word) && *l == Some(line)),
                "{word} at {line}: {e}"
            );
        }
    }

    #[test]
    fn phase_rollback_in_file() {
        let c = Config::parse(&GOOD.replace("phase: phase-2", "phase: rollback"), "t").unwrap();
        assert!(c.migrations[0].file_state.rolled_back);
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
