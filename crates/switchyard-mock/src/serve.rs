//! Serving one request: health checks, recording, the delays and statuses asked for, then
//! the answer of its endpoint.

use base64::Engine as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::chat;
use crate::reply::{header_num, json_response, Ask, MockBody};
use crate::state::{Guard, Received, State};

/// The user agent of switchyard's health checks.
pub const HEALTH_USER_AGENT: &str = "switchyard-health-check";

/// The 401 a provider gives for a wrong key, when the mock has one.
fn refuse_key(st: &State, headers: &HeaderMap) -> Option<Response<MockBody>> {
    let key = st.cfg.api_key.as_deref()?;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key) {
        return None;
    }
    let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
    Some(json_response(StatusCode::UNAUTHORIZED, &body, &st.cfg.name))
}

pub(crate) async fn serve(st: Arc<State>, req: Request<Incoming>) -> Response<MockBody> {
    if req
        .headers()
        .get("user-agent")
        .is_some_and(|v| v == HEALTH_USER_AGENT)
    {
        st.health_checks.fetch_add(1, Ordering::SeqCst);
        if let Some(refused) = refuse_key(&st, req.headers()) {
            return refused;
        }
        let status =
            StatusCode::from_u16(st.health_status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        return json_response(status, &json!({"object": "list", "data": []}), &st.cfg.name);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = parts.headers.clone();
    // HTTP/2's `:authority` is what `Host` is to HTTP/1.1 (RFC 9113 8.3.1): recorded as
    // `host` so that tests read one header for both.
    if let (None, Some(a)) = (headers.get(http::header::HOST), parts.uri.authority()) {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            headers.insert(http::header::HOST, v);
        }
    }
    {
        let mut received = st.received.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(keep) = st.cfg.keep_received {
            // The oldest half goes at once: amortised O(1) per request.
            if received.len() >= keep.max(1) {
                let drop = received.len() - keep / 2;
                received.drain(..drop);
            }
        }
        received.push(Received {
            method: parts.method.clone(),
            version: parts.version,
            path: path.clone(),
            headers,
            body: body.clone(),
            at: Instant::now(),
        });
    }
    let guard = Guard(Some(st.clone()));
    let h = &parts.headers;

    let delay = Duration::from_millis(
        header_num(h, "x-mock-delay-ms").unwrap_or(0) + st.delay_ms.load(Ordering::SeqCst),
    ) + st.cfg.latency;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if h.contains_key("x-mock-hang") {
        std::future::pending::<()>().await;
    }
    if let Some(refused) = refuse_key(&st, h) {
        guard.done();
        return refused;
    }

    let forced = header_num(h, "x-mock-status").map(|s| s as u16).or(
        match st.status_override.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        },
    );
    let n = st.seq.fetch_add(1, Ordering::SeqCst);
    let by_rate = st.cfg.error_rate > 0.0 && {
        // Golden-ratio sequence: spreads errors evenly, same run every time.
        let x = (n as f64 * 0.618_033_988_749_895).fract();
        x < st.cfg.error_rate
    };
    let status = forced.or(if by_rate { Some(500) } else { None });
    let name = &st.cfg.name;
    if let Some(s) = status.filter(|s| *s >= 300) {
        let body = json!({"error": {"message": format!("mock {name} answers {s}"), "type": "mock_error", "code": s}});
        guard.done();
        let mut r = json_response(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
            name,
        );
        match st.retry_after.load(Ordering::SeqCst) {
            0 => {}
            secs => {
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
        }
        return r;
    }

    let p = parts.uri.path();
    let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req_json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    if !st.cfg.models.is_empty()
        && req_json.get("model").is_some()
        && !st.cfg.models.contains(&model)
    {
        let body = json!({"error": {"message": format!("The model `{model}` does not exist"), "type": "invalid_request_error", "code": "model_not_found"}});
        guard.done();
        return json_response(StatusCode::NOT_FOUND, &body, name);
    }
    let prompt_tokens = (body.len() as u64 / 4).max(1);

    let ask = Ask {
        st: &st,
        headers: h,
        json: &req_json,
        n,
        model,
        prompt_tokens,
    };
    if p.ends_with("/chat/completions") && parts.method == Method::POST {
        return chat::completion(ask, guard);
    }
    if p.ends_with("/responses") && parts.method == Method::POST {
        return chat::responses(ask, guard);
    }
    if p.ends_with("/webhook") && parts.method == Method::POST {
        // Lets one mock stand in as an alert receiver too.
        guard.done();
        return json_response(StatusCode::OK, &json!({"ok": true}), name);
    }
    if p.ends_with("/models") && parts.method == Method::GET {
        guard.done();
        let ids: Vec<&str> = if st.cfg.models.is_empty() {
            vec!["mock-model", "deepseek-chat"]
        } else {
            st.cfg.models.iter().map(String::as_str).collect()
        };
        let data: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "object": "model", "owned_by": name}))
            .collect();
        return json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": data}),
            name,
        );
    }
    if p.ends_with("/embeddings") && parts.method == Method::POST {
        guard.done();
        let floats = [0.1f32, 0.2, 0.3, 0.4];
        // The OpenAI SDKs ask for base64 (little-endian f32s) by default, and decode it.
        let embedding = if req_json["encoding_format"] == "base64" {
            let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(floats)
        };
        return json_response(
            StatusCode::OK,
            &json!({"object": "list", "model": ask.model,
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
            name,
        );
    }
    guard.done();
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": {"message": format!("mock {name}: no route for {} {path}", parts.method), "type": "invalid_request_error", "code": "not_found"}}),
        name,
    )
}
