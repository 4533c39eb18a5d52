//! `providers:` — where requests go, with what key, timeouts and prices.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Collector;
use crate::pricing::{Price, PriceTable};

/// `inject_stream_usage:` as written: a boolean or `auto`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawInject {
    Bool(bool),
    Word(String),
}

/// Whether the gateway asks a provider's streams for their usage on the client's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectStreamUsage {
    /// Never: a stream whose client did not ask is unmetered.
    Never,
    /// Every streamed chat request.
    Always,
    /// Once the provider has shown it honours `stream_options` (its preflight probe, or a
    /// stream whose client asked and got usage back): the default.
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) base_url: String,
    pub(super) api_key_env: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) connect_timeout: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) http2: Option<bool>,
    pub(super) http2_max_streams: Option<usize>,
    pub(super) upstream_idle_timeout: Option<String>,
    pub(super) max_idle_connections: Option<usize>,
    pub(super) inject_stream_usage: Option<RawInject>,
    #[serde(default)]
    pub(super) pricing: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub(super) models: BTreeMap<String, String>,
    pub(super) unmapped_models: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub(super) input: f64,
    pub(super) output: f64,
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
    /// `None`: HTTP/2 where an https provider offers it (ALPN), HTTP/1.1 otherwise.
    /// `Some(true)`: HTTP/2 only (h2c, prior knowledge, on http). `Some(false)`: HTTP/1.1.
    pub http2: Option<bool>,
    /// Streams per HTTP/2 connection before another is opened.
    pub http2_max_streams: usize,
    /// How long an unused upstream connection is kept open.
    pub upstream_idle_timeout: Duration,
    /// Unused upstream connections kept per proxy worker; more are closed.
    pub max_idle_connections: usize,
    /// Ask for `stream_options.include_usage` upstream and strip that chunk for clients
    /// that did not ask for it, so every stream's cost is known.
    pub inject_stream_usage: InjectStreamUsage,
    /// By model name as the client sends it.
    pub pricing: PriceTable,
    /// Client-facing model name → this provider's name for it.
    pub models: BTreeMap<String, String>,
    /// A model not in `models` is refused with 400 (instead of passed on as it is).
    pub refuse_unmapped: bool,
}

/// What a provider is sent for a client's model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRoute<'a> {
    /// Its own name for the model.
    Rename(&'a str),
    /// The client's name, as it is.
    Keep,
    /// Not served through this provider (`unmapped_models: refuse`).
    Refuse,
}

impl ProviderConfig {
    /// What this provider is sent for the client's `model`.
    pub fn model_for(&self, client: &str) -> ModelRoute<'_> {
        match self.models.get(client) {
            Some(m) => ModelRoute::Rename(m.as_str()),
            None if self.refuse_unmapped => ModelRoute::Refuse,
            None => ModelRoute::Keep,
        }
    }

    /// The client-facing name of this provider's model `name` (for `/models` answers).
    pub fn client_model(&self, name: &str) -> Option<&str> {
        self.models
            .iter()
            .find(|(_, p)| p.as_str() == name)
            .map(|(c, _)| c.as_str())
    }

    /// Whether request bodies must be looked at before they go to this provider.
    pub fn rewrites_models(&self) -> bool {
        !self.models.is_empty() || self.refuse_unmapped
    }
}

pub(super) fn parse_base_url(url: &str) -> Result<(bool, String, String), String> {
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

pub(super) fn validate(
    providers_raw: &BTreeMap<String, RawProvider>,
    c: &mut Collector,
) -> Vec<ProviderConfig> {
    if providers_raw.is_empty() {
        c.err("providers", "at least one provider is needed");
    }
    let mut providers = Vec::with_capacity(providers_raw.len());
    for (name, p) in providers_raw {
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
        let upstream_idle_timeout = c.duration(
            &format!("{k}.upstream_idle_timeout"),
            p.upstream_idle_timeout.as_ref(),
            Duration::from_secs(90),
        );
        let http2_max_streams = p.http2_max_streams.unwrap_or(100);
        if !(1..=10_000).contains(&http2_max_streams) {
            c.err(
                format!("{k}.http2_max_streams"),
                format!("{http2_max_streams} is not between 1 and 10000"),
            );
        }
        if p.http2_max_streams.is_some() && p.http2 == Some(false) {
            c.err(
                format!("{k}.http2_max_streams"),
                "has no effect with `http2: false`",
            );
        }
        let max_idle_connections = p.max_idle_connections.unwrap_or(32);
        if max_idle_connections > 100_000 {
            c.err(
                format!("{k}.max_idle_connections"),
                format!("{max_idle_connections} is more than 100000"),
            );
        }
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("timeout", timeout),
            ("idle_timeout", idle_timeout),
            ("upstream_idle_timeout", upstream_idle_timeout),
        ] {
            if d.is_zero() {
                c.err(format!("{k}.{key}"), "must be longer than 0");
            }
        }
        for (client, mapped) in &p.models {
            if client.is_empty() || mapped.is_empty() {
                c.err(
                    format!("{k}.models"),
                    "model names must not be empty (client-name: provider-name)",
                );
            }
        }
        let refuse_unmapped = match p.unmapped_models.as_deref() {
            None | Some("pass") => false,
            Some("refuse") => true,
            Some(other) => {
                c.err(
                    format!("{k}.unmapped_models"),
                    format!("`{other}` is not one of: pass (send the name as it is), refuse (400)"),
                );
                false
            }
        };
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
            http2: p.http2,
            http2_max_streams,
            upstream_idle_timeout,
            max_idle_connections,
            inject_stream_usage: match &p.inject_stream_usage {
                None => InjectStreamUsage::Auto,
                Some(RawInject::Bool(true)) => InjectStreamUsage::Always,
                Some(RawInject::Bool(false)) => InjectStreamUsage::Never,
                Some(RawInject::Word(w)) if w == "auto" => InjectStreamUsage::Auto,
                Some(RawInject::Word(w)) => {
                    c.err(
                        format!("{k}.inject_stream_usage"),
                        format!("`{w}` is not one of: true, false, auto (once the provider showed it honours stream_options)"),
                    );
                    InjectStreamUsage::Never
                }
            },
            pricing,
            models: p.models.clone(),
            refuse_unmapped,
        });
    }

    providers
}
