//! What the watchers are told: `alerts:`, `health_check:`, `stats:`, `shadow:`.

use std::time::Duration;

use serde::Deserialize;

use super::Collector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) webhook_url_env: String,
    pub(super) cooldown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) interval: Option<String>,
    pub(super) path: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) unhealthy_threshold: Option<u32>,
    pub(super) healthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    pub(super) window_requests: Option<usize>,
    pub(super) window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    pub(super) max_body_size: Option<String>,
    pub(super) max_concurrent: Option<usize>,
    pub(super) max_response_size: Option<String>,
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
pub struct StatsConfig {
    /// The rolling window holds at most this many requests per provider …
    pub window_requests: usize,
    /// … none older than this.
    pub window: Duration,
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

pub(super) fn alerts(a: RawAlerts, c: &mut Collector) -> AlertsConfig {
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
}

pub(super) fn health_check(raw: Option<&RawHealthCheck>, c: &mut Collector) -> HealthCheckConfig {
    let h = raw;
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
}

pub(super) fn stats(raw: Option<&RawStats>, c: &mut Collector) -> StatsConfig {
    let s = raw;
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
}

pub(super) fn shadow(raw: Option<&RawShadow>, c: &mut Collector) -> ShadowConfig {
    let s = raw;
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
}
