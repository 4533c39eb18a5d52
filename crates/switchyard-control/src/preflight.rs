//! Preflight: before traffic first moves onto a provider, one real, minimal request per
//! priced model (a chat completion with `max_tokens: 1`), so that a wrong key, a model the
//! provider does not serve or an exhausted quota stops the move instead of failing users.
//! `switchyard check --probe` runs the same from the command line.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use switchyard_proxy::body::RequestBody;
use switchyard_proxy::upstream::{Upstream, Worker};

/// Sent with every probe, so providers' logs (and the test mock) can tell them apart.
pub const PREFLIGHT_USER_AGENT: &str = "switchyard-preflight";

/// The most of a probe's answer read (for its error message).
const ANSWER_MAX: usize = 64 << 10;

pub use switchyard_core::api::{PreflightProbe as Probe, PreflightReport as Report};

/// "`new` refused the preflight: deepseek-chat 401 (Incorrect API key provided)".
pub fn summary(r: &Report) -> String {
    let list = |ok: bool| {
        r.probes
            .iter()
            .filter(|p| p.ok == ok)
            .map(|p| {
                let what = p.model.as_deref().unwrap_or("GET models");
                match p.status {
                    Some(s) if ok => format!("{what} {s}"),
                    Some(s) => format!("{what} {s} ({})", p.detail),
                    None => format!("{what}: {}", p.detail),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if r.ok {
        format!("`{}` passed the preflight: {}", r.provider, list(true))
    } else {
        format!("`{}` refused the preflight: {}", r.provider, list(false))
    }
}

/// The models to probe a provider with: its priced models, under the name it knows them
/// by (`models:` maps client-facing names to its own).
pub fn probe_models(p: &switchyard_core::config::ProviderConfig) -> Vec<String> {
    p.pricing
        .models
        .keys()
        .map(|m| match p.model_for(m) {
            switchyard_core::config::ModelRoute::Rename(name) => name.to_string(),
            _ => m.clone(),
        })
        .collect()
}

/// Whether an answer is a refusal worth stopping a move for: the provider's key, quota,
/// model or health, not the shape of the probe.
fn refused(status: u16) -> bool {
    matches!(status, 401 | 402 | 403 | 404 | 407 | 429) || status >= 500
}

/// Probes `up`: each of `models` (its priced models) with a one-token chat completion, or,
/// when none is priced, `GET <base_url><health_path>`.
pub async fn run(up: &Upstream, models: &[String], health_path: &str, timeout: Duration) -> Report {
    let mut probes = Vec::new();
    if models.is_empty() {
        probes.push(probe(up, None, health_path, timeout).await);
    }
    for m in models {
        probes.push(probe(up, Some(m), "/chat/completions", timeout).await);
    }
    Report {
        provider: up.name.to_string(),
        ok: probes.iter().all(|p| p.ok),
        at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        probes,
    }
}

async fn probe(up: &Upstream, model: Option<&str>, path: &str, timeout: Duration) -> Probe {
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, exchange(up, model, path))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    let latency_ms = start.elapsed().as_millis() as u64;
    let model = model.map(str::to_string);
    match result {
        Ok((status, detail)) => Probe {
            model,
            status: Some(status),
            ok: !refused(status),
            detail,
            latency_ms,
        },
        Err(detail) => Probe {
            model,
            status: None,
            ok: false,
            detail,
            latency_ms,
        },
    }
}

async fn exchange(up: &Upstream, model: Option<&str>, path: &str) -> Result<(u16, String), String> {
    let uri =
        Uri::try_from(format!("{}{}", up.config.base_path, path)).map_err(|e| e.to_string())?;
    let (method, body) = match model {
        Some(m) => {
            let body = serde_json::json!({
                "model": m,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
            });
            (Method::POST, Bytes::from(body.to_string()))
        }
        None => (Method::GET, Bytes::new()),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(RequestBody::buffered(body, Default::default()))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(header::HOST, up.host.clone());
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(PREFLIGHT_USER_AGENT),
    );
    if model.is_some() {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(a) = &up.auth {
        h.insert(header::AUTHORIZATION, a.clone());
    }
    let (resp, lease) = up
        .send(Worker::CONTROL, req.map(Box::new))
        .await
        .map_err(|e| format!("cannot reach it: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), ANSWER_MAX).collect().await;
    let detail = match body {
        Ok(b) => {
            lease.release();
            error_message(&b.to_bytes())
        }
        Err(e) => format!("answer unreadable: {e}"),
    };
    Ok((status, detail))
}

/// `error.message` of an OpenAI-shaped error body, or the start of the body.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
        if v.get("error").is_none() {
            return "ok".into();
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_the_providers_not_the_probes() {
        for s in [401, 402, 403, 404, 407, 429, 500, 502, 503] {
            assert!(refused(s), "{s}");
        }
        for s in [200, 201, 400, 422] {
            assert!(!refused(s), "{s}");
        }
        assert_eq!(
            error_message(br#"{"error":{"message":"Incorrect API key provided"}}"#),
            "Incorrect API key provided"
        );
    }
}
