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
//! | `x-mock-ignore: tools,response_format` | leave those parameters unanswered ([`Ignore`]: `tools`, `response_format`, `stream_options`, `logprobs`, `n`) |
//!
//! A chat completion is answered as asked ([`features`]): a call to the first tool offered,
//! its arguments fitting the tool's schema; JSON for `response_format` (fitting its schema);
//! `logprobs`; `n` choices; the usage chunk when `stream_options.include_usage`. The
//! Responses API streams the events the official SDKs assemble (`response.created` with the
//! whole response object, output items and content parts, text deltas), and embeddings
//! come as floats or, with `encoding_format: "base64"`, as base64 little-endian f32s.
//!
//! Set for the whole server: a fixed answer status ([`MockConfig::status`], as a provider
//! that refuses everything), a required API key (401 otherwise, health checks included),
//! and the models it serves (404 `model_not_found` otherwise).
//!
//! `POST …/webhook` answers 200 and is recorded: a mock can receive alerts too.
//!
//! Every request is recorded ([`Mock::received`]; the newest `keep_received` of them when
//! set, as `switchyard mock` sets it); requests whose client went away before
//! the answer was complete are counted ([`Mock::cancelled`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod chat;
mod config;
pub mod fault;
pub mod features;
mod reply;
mod serve;
mod state;
mod tls;

pub use config::MockConfig;
pub use fault::Fault;
pub use features::Ignore;
pub use serve::HEALTH_USER_AGENT;
pub use state::Received;

use serve::serve;
use state::State;

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
            Some((cert, key)) => Some(tls::acceptor(cert, key, cfg.http1_only)?),
            None => None,
        };
        let https = tls.is_some();
        let status = cfg.status.unwrap_or(0);
        let (fault, ignore) = (cfg.fault, cfg.ignore);
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
            ignore: Mutex::new(ignore),
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

    /// Error answers carry `Retry-After: secs` from now on (`None`: not at all).
    pub fn set_retry_after(&self, secs: Option<u64>) {
        self.state
            .retry_after
            .store(secs.unwrap_or(0), Ordering::SeqCst);
    }

    /// Health checks received (requests with `user-agent: switchyard-health-check`; they
    /// are not in [`Mock::received`]).
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

    /// Leave these parameters unanswered from now on (tool calls, JSON formats, the
    /// stream's usage, logprobs, n), as a relay that drops them does.
    pub fn set_ignore(&self, ignore: Ignore) {
        *self.state.ignore.lock().unwrap_or_else(|e| e.into_inner()) = ignore;
    }

    /// Extra delay before every response head.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}
