//! Preflight: before traffic first moves onto a provider, one real, minimal request per
//! priced model (a streamed chat completion with `max_tokens: 1` that asks for its usage,
//! or for an embedding model an embedding of one word), so that a wrong key, a model the provider does not serve or an
//! exhausted quota stops the move instead of failing users. A probe passes only when it
//! proves an answer: a 2xx with at least one choice (or embedding) and no error object;
//! anything else is shown with its status and the provider's message. `switchyard check
//! --probe` runs the same from the command line.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use switchyard_proxy::request_body::RequestBody;
use switchyard_proxy::upstream::{Sent, Upstream, Worker};

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

/// A model to probe, under the name the provider knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeModel {
    pub name: String,
    /// An embedding model: probed on `/embeddings`, never with a chat request.
    pub embedding: bool,
}

/// The models to probe a provider with: its priced models, under the name it knows them
/// by (`models:` maps client-facing names to its own).
pub fn probe_models(p: &switchyard_core::config::ProviderConfig) -> Vec<ProbeModel> {
    p.pricing
        .models
        .iter()
        .map(|(m, price)| ProbeModel {
            name: match p.model_for(m) {
                switchyard_core::config::ModelRoute::Rename(name) => name.to_string(),
                _ => m.clone(),
            },
            embedding: is_embedding(m, price),
        })
        .collect()
}

/// An embedding model: priced for input only (embeddings generate no tokens), or named so.
fn is_embedding(model: &str, price: &switchyard_core::pricing::Price) -> bool {
    price.output == 0.0 || model.to_ascii_lowercase().contains("embed")
}

/// Probes `up`: each of `models` (its priced models) with a one-token chat completion or a
/// one-word embedding, or, when none is priced, `GET <base_url><health_path>`.
pub async fn run(
    up: &Upstream,
    models: &[ProbeModel],
    health_path: &str,
    timeout: Duration,
) -> Report {
    let mut probes = Vec::new();
    if models.is_empty() {
        probes.push(probe(up, None, health_path, timeout).await);
    }
    for m in models {
        let path = if m.embedding {
            "/embeddings"
        } else {
            "/chat/completions"
        };
        probes.push(probe(up, Some(m), path, timeout).await);
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

async fn probe(up: &Upstream, model: Option<&ProbeModel>, path: &str, timeout: Duration) -> Probe {
    let start = Instant::now();
    let send = |streamed| async move {
        tokio::time::timeout(timeout, exchange(up, model, path, streamed))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    };
    let (kind, name) = match model {
        None => (Kind::List, None),
        Some(m) if m.embedding => (Kind::Embedding, Some(m.name.clone())),
        Some(m) => (Kind::Chat, Some(m.name.clone())),
    };
    let mut result = send(kind == Kind::Chat).await;
    let mut refused_streaming = None;
    if let Ok((status @ (400 | 422), _, body)) = &result {
        if kind == Kind::Chat {
            // Some providers refuse `stream_options` (or streaming): the model may still
            // be served. Asked again plainly; the usage ask counts as not honoured.
            refused_streaming = Some(format!(
                "{status} {}",
                verdict(kind, *status, false, body).1
            ));
            result = send(false).await;
        }
    }
    let latency_ms = start.elapsed().as_millis() as u64;
    let model = name;
    match result {
        Ok((status, sse, body)) => {
            let (ok, mut detail, mut stream_usage) = verdict(kind, status, sse, &body);
            if let (true, Some(why)) = (ok, &refused_streaming) {
                stream_usage = Some(false);
                detail = format!("ok, but a streamed probe asking for usage was refused: {why}");
            }
            if let Some(honoured) = stream_usage.filter(|_| ok) {
                up.saw_stream_usage(honoured, true);
            }
            Probe {
                model,
                status: Some(status),
                ok,
                detail,
                latency_ms,
                stream_usage,
            }
        }
        Err(detail) => Probe {
            model,
            status: None,
            ok: false,
            detail,
            latency_ms,
            stream_usage: None,
        },
    }
}

/// What a probe asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Embedding,
    /// `GET <health_check.path>` (no model priced).
    List,
}

/// Whether the probe's answer proves the provider serves it, and what to show: "ok", or
/// the provider's error message (or what was missing); and for a streamed answer, whether
/// it carried the usage the probe asked for.
fn verdict(kind: Kind, status: u16, sse: bool, body: &[u8]) -> (bool, String, Option<bool>) {
    if let Some(events) = sse_events(sse, body).filter(|_| (200..300).contains(&status)) {
        let usage = events.iter().any(|e| e["usage"].is_object());
        let merged = serde_json::json!({
            "error": events.iter().map(|e| &e["error"]).find(|e| !e.is_null()),
            "choices": events.iter().flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>(),
        });
        let (ok, detail) = verdict_of(kind, status, body, Some(merged));
        return (ok, detail, Some(usage));
    }
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let (ok, detail) = verdict_of(kind, status, body, json);
    (ok, detail, None)
}

/// The JSON payloads of an SSE answer (`sse`: its content type said so; `None`: not one).
/// Comment lines (`: keep-alive`), `event:` and `id:` lines are not payloads.
fn sse_events(sse: bool, body: &[u8]) -> Option<Vec<serde_json::Value>> {
    let text = String::from_utf8_lossy(body);
    let first = text.trim_start();
    let looks = [":", "data:", "event:", "id:", "retry:"]
        .iter()
        .any(|p| first.starts_with(p));
    if !sse && !looks {
        return None;
    }
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect(),
    )
}

fn verdict_of(
    kind: Kind,
    status: u16,
    body: &[u8],
    json: Option<serde_json::Value>,
) -> (bool, String) {
    let message = json.as_ref().and_then(|v| {
        let e = v.get("error").filter(|e| !e.is_null())?;
        Some(
            e.get("message")
                .and_then(|m| m.as_str())
                .or(e.as_str())
                .map_or_else(|| e.to_string(), str::to_string),
        )
    });
    if !(200..300).contains(&status) {
        let detail = message.unwrap_or_else(|| start_of(body));
        return (false, detail);
    }
    if let Some(m) = message {
        return (false, format!("an error instead of an answer: {m}"));
    }
    let non_empty = |key: &str| {
        json.as_ref()
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty())
    };
    match kind {
        Kind::List => (true, "ok".into()),
        Kind::Chat if non_empty("choices") => (true, "ok".into()),
        Kind::Embedding if non_empty("data") => (true, "ok".into()),
        Kind::Chat => (
            false,
            format!("no choices in the answer: {}", start_of(body)),
        ),
        Kind::Embedding => (
            false,
            format!("no embedding in the answer: {}", start_of(body)),
        ),
    }
}

fn start_of(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// One probe; `streamed`: a chat probe that streams and asks for its usage. The status,
/// whether the answer is an event stream, and its start.
async fn exchange(
    up: &Upstream,
    model: Option<&ProbeModel>,
    path: &str,
    streamed: bool,
) -> Result<(u16, bool, Bytes), String> {
    let uri =
        Uri::try_from(format!("{}{}", up.config.base_path, path)).map_err(|e| e.to_string())?;
    let (method, body) = match model {
        Some(m) if m.embedding => {
            let body = serde_json::json!({"model": m.name, "input": "ping"});
            (Method::POST, Bytes::from(body.to_string()))
        }
        Some(m) => {
            let mut body = serde_json::json!({
                "model": m.name,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
            });
            if streamed {
                body["stream"] = true.into();
                body["stream_options"] = serde_json::json!({"include_usage": true});
            }
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
    let Sent { resp, lease, .. } = up
        .send(Worker::Control, req.map(Box::new), false)
        .await
        .map_err(|e| format!("cannot reach it: {e}"))?;
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = Limited::new(resp.into_body(), ANSWER_MAX)
        .collect()
        .await
        .map_err(|e| format!("answered {status}, but the answer was unreadable: {e}"))?;
    lease.release();
    Ok((status, sse, body.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_passes() {
        let answer = br#"{"choices":[{"message":{"content":"p"},"finish_reason":"length"}]}"#;
        assert_eq!(
            verdict(Kind::Chat, 200, false, answer),
            (true, "ok".to_string(), None)
        );
        // LiteLLM's proxy answers a wrong key and an unknown model with 400.
        let (ok, detail, _) = verdict(Kind::Chat, 400, false, br#"{"error":{"message":"Invalid model name passed in model=deepseek-chat","type":"invalid_request_error"}}"#,
        );
        assert!(!ok);
        assert!(detail.starts_with("Invalid model name"), "{detail}");
        for status in [401, 402, 403, 404, 422, 429, 500, 503] {
            assert!(!verdict(Kind::Chat, status, false, b"{}").0, "{status}");
        }
        let (ok, detail, _) = verdict(
            Kind::Chat,
            200,
            false,
            br#"{"error":{"message":"no_db_connection","type":"no_db_connection"}}"#,
        );
        assert!(!ok && detail.contains("no_db_connection"), "{detail}");
        let (ok, detail, _) = verdict(Kind::Chat, 200, false, br#"{"choices":[]}"#);
        assert!(!ok && detail.starts_with("no choices"), "{detail}");
        assert!(!verdict(Kind::Chat, 200, false, b"<html>ok</html>").0);
        assert!(
            verdict(
                Kind::Embedding,
                200,
                false,
                br#"{"data":[{"embedding":[0.1]}]}"#
            )
            .0
        );
        assert!(!verdict(Kind::Embedding, 200, false, br#"{"data":[]}"#).0);
        assert!(verdict(Kind::List, 200, false, br#"{"data":[]}"#).0);
        assert!(!verdict(Kind::List, 503, false, b"down").0);
    }

    /// The chat probe streams and asks for its usage: an answer proves the provider serves
    /// the model, and the usage chunk that it honours `stream_options`.
    #[test]
    fn a_streamed_probe_says_whether_usage_came() {
        let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"p\"},\"finish_reason\":\"length\"}]}\n\n";
        let usage =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        let with = format!("{head}{usage}data: [DONE]\n\n");
        assert_eq!(
            verdict(Kind::Chat, 200, true, with.as_bytes()),
            (true, "ok".into(), Some(true))
        );
        let without = format!("{head}data: [DONE]\n\n");
        assert_eq!(
            verdict(Kind::Chat, 200, false, without.as_bytes()),
            (true, "ok".into(), Some(false))
        );
        let (ok, detail, _) = verdict(
            Kind::Chat,
            200,
            false,
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        );
        assert!(!ok && detail.contains("overloaded"), "{detail}");
        let (ok, detail, _) = verdict(Kind::Chat, 200, false, b"data: [DONE]\n\n");
        assert!(!ok && detail.starts_with("no choices"), "{detail}");
        // A stream that opens with a keep-alive comment (OpenRouter's).
        let kept = format!(": OPENROUTER PROCESSING\n\n{with}");
        assert_eq!(
            verdict(Kind::Chat, 200, false, kept.as_bytes()),
            (true, "ok".into(), Some(true))
        );
    }

    #[test]
    fn embedding_models_are_probed_as_such() {
        let price = |output| switchyard_core::pricing::Price {
            input: 0.02,
            output,
        };
        assert!(is_embedding("text-embedding-3-small", &price(0.5)));
        assert!(is_embedding("bge-m3", &price(0.0)));
        assert!(!is_embedding("deepseek-chat", &price(1.1)));
    }
}
