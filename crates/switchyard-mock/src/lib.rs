//! An OpenAI-shaped mock provider for tests, `switchyard mock`, `make demo` and benches.
//!
//! Serves `…/chat/completions` (JSON, or SSE when the body asks `"stream": true`),
//! `…/models` and `…/embeddings` under any path prefix, on port 0 by default, over
//! plain HTTP or TLS. Behaviour is set for the whole server ([`MockConfig`], and live
//! through [`Mock::set_status`] …) or per request with headers, which pass through a
//! gateway untouched:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-status: 503` | answer with that status and an OpenAI error body |
//! | `x-mock-delay-ms: 200` | wait before the response head |
//! | `x-mock-hang: 1` | never answer |
//! | `x-mock-chunks: 5` | SSE content chunks |
//! | `x-mock-chunk-delay-ms: 10` | pause before each SSE chunk |
//! | `x-mock-cut-after: 2` | abort the SSE stream after that many chunks |
//! | `x-mock-close: 1` | answer with `Connection: close` and close the connection |
//! | `x-mock-fault: NAME` | a chat completion broken in one of the ways relays break while answering 200 ([`Fault`]: `error_in_200`, `no_choices`, `empty_message`, `error_event`, `stop_early`, `truncate`) |
//!
//! Set for the whole server: a fixed answer status ([`MockConfig::status`], as a provider
//! that refuses everything), a required API key (401 otherwise, health checks included),
//! and the models it serves (404 `model_not_found` otherwise).
//!
//! `POST …/webhook` answers 200 and is recorded: a mock can receive alerts too.
//!
//! Every request is recorded ([`Mock::received`]); requests whose client went away before
//! the answer was complete are counted ([`Mock::cancelled`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod fault;
pub use fault::Fault;

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Shown in answers ("Hello from NAME") and in `x-mock-provider`.
    pub name: String,
    pub addr: SocketAddr,
    /// Delay before every response head.
    pub latency: Duration,
    /// Share of requests (0..1) answered with 500, chosen by a fixed sequence.
    pub error_rate: f64,
    pub chunks: usize,
    pub chunk_delay: Duration,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(String, String)>,
    /// Answer every request with this status (and an OpenAI error body), as a provider
    /// that refuses everything does.
    pub status: Option<u16>,
    /// Only `Authorization: Bearer <this>` is served; anything else gets 401, as from a
    /// provider whose key was mistyped or revoked.
    pub api_key: Option<String>,
    /// The models it serves; another model gets 404 `model_not_found`. Empty: any.
    pub models: Vec<String>,
    /// Speak HTTP/1.1 only: no h2c, and only `http/1.1` offered by ALPN. Otherwise both
    /// (h2 preferred by ALPN, h2c by prior knowledge), as real providers do.
    pub http1_only: bool,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (hyper's default: 200).
    pub http2_max_streams: Option<u32>,
    /// Break every chat completion this way (still answering 200).
    pub fault: Option<Fault>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".into(),
            addr: "127.0.0.1:0".parse().expect("literal address"),
            latency: Duration::ZERO,
            error_rate: 0.0,
            chunks: 5,
            chunk_delay: Duration::from_millis(10),
            tls: None,
            status: None,
            api_key: None,
            models: Vec::new(),
            http1_only: false,
            http2_max_streams: None,
            fault: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// HTTP/1.1 or HTTP/2.
    pub version: http::Version,
    /// Path and query as received.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct State {
    cfg: MockConfig,
    received: Mutex<Vec<Received>>,
    status_override: AtomicU16,
    health_checks: AtomicU64,
    health_status: AtomicU16,
    /// Sent as `Retry-After` with every error answer (0: none).
    retry_after: AtomicU64,
    delay_ms: AtomicU64,
    cancelled: AtomicU64,
    served: AtomicU64,
    seq: AtomicU64,
    connections: AtomicU64,
    open: Mutex<Vec<tokio::task::AbortHandle>>,
    fault: Mutex<Option<Fault>>,
}

/// A running mock; stops when dropped.
pub struct Mock {
    addr: SocketAddr,
    https: bool,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    pub async fn start(cfg: MockConfig) -> std::io::Result<Mock> {
        let listener = TcpListener::bind(cfg.addr).await?;
        let addr = listener.local_addr()?;
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key, cfg.http1_only)?),
            None => None,
        };
        let https = tls.is_some();
        let status = cfg.status.unwrap_or(0);
        let fault = cfg.fault;
        let state = Arc::new(State {
            cfg,
            received: Mutex::new(Vec::new()),
            status_override: AtomicU16::new(status),
            health_checks: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            retry_after: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            served: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            fault: Mutex::new(fault),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if st.cfg.http1_only {
                builder = builder.http1_only();
            } else if let Some(n) = st.cfg.http2_max_streams {
                builder.http2().max_concurrent_streams(n);
            }
            let builder = Arc::new(builder);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::SeqCst);
                let conn_state = st.clone();
                let builder = builder.clone();
                let tls = tls.clone();
                let st = conn_state.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move {
                            let close = req.headers().contains_key("x-mock-close");
                            let mut resp = serve(st, req).await;
                            if close {
                                resp.headers_mut()
                                    .insert("connection", HeaderValue::from_static("close"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                let mut open = conn_state.open.lock().unwrap_or_else(|e| e.into_inner());
                // Forget finished ones only when the list would grow: amortised O(1) per accept.
                if open.len() == open.capacity() {
                    open.retain(|h| !h.is_finished());
                }
                open.push(conn.abort_handle());
            }
        });
        Ok(Mock {
            addr,
            https,
            state,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Closes every open connection, as a provider does with idle keep-alive ones.
    pub fn close_connections(&self) {
        let open = std::mem::take(&mut *self.state.open.lock().unwrap_or_else(|e| e.into_inner()));
        open.iter().for_each(tokio::task::AbortHandle::abort);
    }

    /// `http://127.0.0.1:PORT/v1` (or https).
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn clear(&self) {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Requests whose client went away before the answer was complete.
    pub fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Answers sent in full.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Answer every request with this status (None: normal answers).
    pub fn set_status(&self, status: Option<u16>) {
        self.state
            .status_override
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// Health checks received (requests with `user-agent: switchyard-health-check`; they
    /// are not in [`Mock::received`]).
    /// Error answers carry `Retry-After: secs` from now on (`None`: not at all).
    pub fn set_retry_after(&self, secs: Option<u64>) {
        self.state
            .retry_after
            .store(secs.unwrap_or(0), Ordering::SeqCst);
    }

    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// The status health checks get (default 200).
    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Break every chat completion this way from now on (`None`: answer well).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.state.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Extra delay before every response head.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Counts a request as cancelled if it is dropped before [`Guard::done`].
struct Guard(Option<Arc<State>>);

impl Guard {
    fn done(mut self) {
        if let Some(st) = self.0.take() {
            st.served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            st.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type MockBody = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

fn header_num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

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

async fn serve(st: Arc<State>, req: Request<Incoming>) -> Response<MockBody> {
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
    st.received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            method: parts.method.clone(),
            version: parts.version,
            path: path.clone(),
            headers,
            body: body.clone(),
            at: Instant::now(),
        });
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

    if p.ends_with("/chat/completions") && parts.method == Method::POST {
        let stream = req_json
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let fault = h
            .get("x-mock-fault")
            .and_then(|v| v.to_str().ok()?.parse::<Fault>().ok())
            .or(*st.fault.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(fault) = fault {
            let id = format!("chatcmpl-{name}-{n}");
            return faulty(fault, stream, &st, guard, &id, &model, prompt_tokens);
        }
        let chunks = header_num(h, "x-mock-chunks").map_or(st.cfg.chunks, |v| v as usize);
        if !stream {
            let content = format!("Hello from {name}");
            let completion_tokens = chunks as u64;
            let body = json!({
                "id": format!("chatcmpl-{name}-{n}"),
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            });
            guard.done();
            return json_response(StatusCode::OK, &body, name);
        }
        let include_usage = req_json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunk_delay = header_num(h, "x-mock-chunk-delay-ms")
            .map_or(st.cfg.chunk_delay, Duration::from_millis);
        let cut_after = header_num(h, "x-mock-cut-after").map(|v| v as usize);
        let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
        let id = format!("chatcmpl-{name}-{n}");
        tokio::spawn(async move {
            let chunk = |delta: Value, finish: Value| {
                let v = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                Bytes::from(format!("data: {v}\n\n"))
            };
            if tx
                .send_data(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ))
                .await
                .is_err()
            {
                return; // guard drops: cancelled
            }
            for i in 0..chunks {
                if cut_after == Some(i) {
                    // Let what was sent reach the client first: an abort overtakes queued data.
                    while tx.capacity() < tx.max_capacity() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    tx.abort(std::io::Error::other("mock cut the stream"));
                    guard.done();
                    return;
                }
                if !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
                if tx
                    .send_data(chunk(json!({"content": format!("tok{i} ")}), Value::Null))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut tail = chunk(json!({}), json!("stop")).to_vec();
            if include_usage {
                let u = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks, "total_tokens": prompt_tokens + chunks as u64}});
                tail.extend_from_slice(format!("data: {u}\n\n").as_bytes());
            }
            tail.extend_from_slice(b"data: [DONE]\n\n");
            if tx.send_data(Bytes::from(tail)).await.is_ok() {
                guard.done();
            }
        });
        return sse_response(rx, name);
    }
    // OpenAI's Responses API: usage as `input_tokens`/`output_tokens`, in the answer or,
    // streamed, in the closing `response.completed` event.
    if p.ends_with("/responses") && parts.method == Method::POST {
        let stream = req_json
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunks = header_num(h, "x-mock-chunks").map_or(st.cfg.chunks, |v| v as usize);
        let id = format!("resp-{name}-{n}");
        let usage = json!({"input_tokens": prompt_tokens, "output_tokens": chunks, "total_tokens": prompt_tokens + chunks as u64});
        let text = format!("Hello from {name}");
        let done = json!({"id": id, "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            "usage": usage});
        if !stream {
            guard.done();
            return json_response(StatusCode::OK, &done, name);
        }
        let chunk_delay = header_num(h, "x-mock-chunk-delay-ms")
            .map_or(st.cfg.chunk_delay, Duration::from_millis);
        let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
        tokio::spawn(async move {
            let event = |kind: &str, v: Value| Bytes::from(format!("event: {kind}\ndata: {v}\n\n"));
            let created = json!({"type": "response.created", "response": {"id": id, "status": "in_progress"}});
            if tx
                .send_data(event("response.created", created))
                .await
                .is_err()
            {
                return;
            }
            for i in 0..chunks {
                if !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
                let d = json!({"type": "response.output_text.delta", "delta": format!("tok{i} ")});
                if tx
                    .send_data(event("response.output_text.delta", d))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let completed = json!({"type": "response.completed", "response": done});
            if tx
                .send_data(event("response.completed", completed))
                .await
                .is_ok()
            {
                guard.done();
            }
        });
        return sse_response(rx, name);
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
        return json_response(
            StatusCode::OK,
            &json!({"object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}],
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

/// A chat completion broken as `fault` says, still with status 200.
fn faulty(
    fault: Fault,
    stream: bool,
    st: &Arc<State>,
    guard: Guard,
    id: &str,
    model: &str,
    prompt_tokens: u64,
) -> Response<MockBody> {
    let name = st.cfg.name.clone();
    if !stream || fault == Fault::ErrorIn200 {
        let body = fault::json_answer(fault, &name, id, model, prompt_tokens);
        guard.done();
        let mut r = json_response(StatusCode::OK, &Value::Null, &name);
        *r.body_mut() = Either::Left(Full::new(Bytes::from(body)));
        return r;
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let (events, done) = fault::stream_events(fault, &name, chunk);
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}\n\n"));
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    let (mut tx, rx) = Channel::<Bytes, std::io::Error>::new(4);
    let chunk_delay = st.cfg.chunk_delay;
    tokio::spawn(async move {
        tokio::time::sleep(chunk_delay).await;
        if tx.send_data(Bytes::from(body)).await.is_ok() {
            guard.done();
        }
    });
    sse_response(rx, &name)
}

/// A streamed answer: `text/event-stream` from `rx`, as the chat and Responses APIs send.
fn sse_response(rx: Channel<Bytes, std::io::Error>, name: &str) -> Response<MockBody> {
    let mut r = Response::new(Either::Right(rx));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-mock-provider", v);
    }
    r
}

fn json_response(status: StatusCode, body: &Value, name: &str) -> Response<MockBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-mock-provider", v);
    }
    r
}

fn tls_acceptor(
    cert: &str,
    key: &str,
    http1_only: bool,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
