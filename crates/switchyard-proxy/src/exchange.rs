//! One request's exchange with its providers: what every way it can end (an answer, a
//! failover, a refusal, a timeout, a cut stream) needs to account for itself, and the
//! access-log line each end writes. [`crate::service`] builds it; the provider stack and
//! the response body's end finish it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use switchyard_core::answer::{BadAnswer, CutShort, Endpoint};
use switchyard_core::event::{Class, RequestEvent};
use switchyard_core::ErrorKind;

use crate::body::{
    BodySummary, BodyTooLarge, BoxedBody, ClientBodyError, End, GatewayBody, OnEnd, RequestBody,
    RequestShared, ResponseBody, Sniff,
};
use crate::headers::strip_hop_by_hop;
use crate::limits::Permit;
use crate::metrics::{Outcome, EVENTS_DROPPED};
use crate::openai;
use crate::service::{
    error_response, has_source, renamed_for, retarget, set_length, source_of, ErrorChain,
    X_REQUEST_ID, X_SWITCHYARD_FAILOVER, X_SWITCHYARD_PROVIDER,
};
use crate::shadow::{Pair, SideResult};
use crate::snapshot::Snapshot;
use crate::upstream::{Lease, Upstream};

/// One request's context: what every way it can end needs to account for itself.
pub struct Exchange {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) start: Instant,
    /// Which API the request calls: which answer shapes are possible.
    pub(crate) endpoint: Endpoint,
    /// The provider the request is with (its first, then the one it failed over to): a
    /// client that leaves before the answer's head left this one.
    pub(crate) provider: usize,
    /// The answer was accounted; until then, dropping the exchange means the client left.
    pub(crate) answered: AtomicBool,
    /// The routing bucket of the request's key: its cohort, for the judge.
    pub(crate) bucket: u16,
    /// Which configured client key sent it.
    pub(crate) client_key: Option<u16>,
    pub(crate) shared: Option<Arc<RequestShared>>,
    /// The gateway asked for stream usage on the client's behalf: strip that chunk.
    pub(crate) strip_usage: bool,
    /// This request is mirrored: its answer meets the shadow's here.
    pub(crate) shadow: Option<Arc<Pair>>,
    /// The body's start as the client sent it, read to learn its model (providers that
    /// rename models): kept to rename it again for another provider on failover.
    pub(crate) model_prefix: Option<openai::ModelPrefix>,
    /// The request's headers as the first provider got them (less its key and host), to
    /// send a refused request once more elsewhere.
    pub(crate) replay_headers: Option<http::HeaderMap>,
    /// The client's address, for the access log.
    pub(crate) client: Option<std::net::SocketAddr>,
    /// The attempt that failed over (provider index, status; 0: not connected): the
    /// answer's access line names it, so a failover is one line.
    pub(crate) failed_attempt: std::sync::Mutex<Option<(usize, u16)>>,
    /// This request's span, when traces are on.
    pub(crate) trace: Option<crate::trace::TraceCtx>,
    /// The client key's in-flight slot, freed when the exchange ends.
    pub(crate) _permit: Option<Arc<Permit>>,
}

impl Exchange {
    /// The request id as log lines carry it.
    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// This request as a trace span (OpenTelemetry's HTTP and GenAI attribute names).
    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        ctx: crate::trace::TraceCtx,
        up: &Upstream,
        status: u16,
        class: Class,
        outcome: Outcome,
        elapsed: std::time::Duration,
        model: Option<&str>,
        prompt: u64,
        completion: u64,
        cost: Option<f64>,
        failed: Option<(usize, u16)>,
        detail: Detail,
    ) -> crate::trace::SpanRecord {
        use serde_json::Value;
        let state = &self.snap.state;
        let phase = if state.rolled_back {
            "rollback"
        } else {
            state
                .phase
                .and_then(|i| self.snap.config.migration.phases.get(i))
                .map_or("-", |p| p.name.as_str())
        };
        let mut attributes: Vec<(&'static str, Value)> = vec![
            ("http.request.method", self.method.as_str().into()),
            ("url.path", self.uri.path().into()),
            ("http.response.status_code", status.into()),
            ("switchyard.provider", up.name.as_ref().into()),
            ("switchyard.phase", phase.into()),
            ("switchyard.outcome", outcome.label().into()),
            ("switchyard.class", class.label().into()),
            ("gen_ai.usage.input_tokens", prompt.into()),
            ("gen_ai.usage.output_tokens", completion.into()),
        ];
        if let Some(m) = model {
            attributes.push(("gen_ai.request.model", m.into()));
        }
        if let Some(c) = cost {
            attributes.push(("switchyard.cost_usd", c.into()));
        }
        if let Some(d) = detail.label() {
            attributes.push(("switchyard.detail", d.into()));
        }
        if let Some(w) = detail.waited {
            attributes.push((
                "switchyard.waited_ms",
                (w.as_micros() as f64 / 1000.0).into(),
            ));
        }
        if let Some((i, s)) = failed {
            attributes.push((
                "switchyard.failover_from",
                self.snap.upstreams[i].name.as_ref().into(),
            ));
            attributes.push(("switchyard.failover_status", s.into()));
        }
        crate::trace::SpanRecord {
            ctx,
            name: format!("{} {}", self.method, self.uri.path()),
            duration: elapsed,
            error: matches!(outcome, Outcome::S5xx | Outcome::Timeout | Outcome::Error),
            attributes,
        }
    }

    /// The request rewritten for provider `index` after another could not be connected to.
    pub(crate) fn retarget(
        &self,
        mut req: Request<BoxedBody>,
        index: usize,
    ) -> Result<Request<BoxedBody>, http::Error> {
        if let Some(prefix) = &self.model_prefix {
            // Nothing was sent: the body's start can still be renamed for this provider.
            let held = renamed_for(prefix, &self.snap.config.providers[index]);
            let before = req.body().prefix_len();
            if req.body_mut().replace_prefix(held.clone()) {
                set_length(req.headers_mut(), before, held.len());
            }
        }
        retarget(req, &self.uri, &self.snap.upstreams[index])
    }

    /// Provider `index` refused the request (`status`) before anything reached the client:
    /// counted against it, and the request as provider `other` gets it, when its body was
    /// kept whole.
    pub(crate) fn refused_over(
        &mut self,
        index: usize,
        other: usize,
        resp: &Response<Incoming>,
    ) -> Option<Request<BoxedBody>> {
        let replay = self.shared.as_ref()?.replay()?;
        let mut headers = self.replay_headers.take()?;
        let status = resp.status().as_u16();
        let up = &self.snap.upstreams[index];
        let cfg = &self.snap.config;
        if status == 429 && cfg.migration.failover.honor_retry_after {
            let secs = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(secs) = secs {
                // Capped: a provider cannot take itself out of a migration for long.
                up.pause(std::time::Duration::from_secs(secs.min(600)));
            }
        }
        // The copy was sent as provider `index` names the model: rename it for `other`.
        let body = match self.model_prefix.take() {
            Some(prefix) => {
                let sent = renamed_for(&prefix, &cfg.providers[index]).len();
                let mut b = renamed_for(&prefix, &cfg.providers[other]).to_vec();
                b.extend_from_slice(&replay[sent.min(replay.len())..]);
                Bytes::from(b)
            }
            None => replay,
        };
        if headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        tracing::warn!(request_id = self.id(), provider = %up.name, status, "provider refused; failing over");
        up.metrics.failovers.increment(1);
        self.account(Attempt {
            ttfb: Some(self.start.elapsed()),
            ..Attempt::new(index, status, Class::of_status(status), false)
        });
        // A fresh clock for the other provider's first-byte timeout.
        let shared = Arc::new(RequestShared::default());
        if let Some(m) = self.shared.as_ref().and_then(|s| s.model()) {
            let _ = shared.model.set(m.into());
        }
        self.shared = Some(shared.clone());
        let mut req = Request::new(Box::new(RequestBody::buffered(body, shared).reading()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        *req.version_mut() = http::Version::HTTP_11;
        Some(req)
    }

    /// A provider's answer headers as the client gets them: hop-by-hop out, which provider
    /// answered (and which one it failed over from), the request id.
    fn answer_headers(
        &self,
        headers: &mut http::HeaderMap,
        index: usize,
        failed_over_from: Option<usize>,
    ) {
        strip_hop_by_hop(headers);
        let up = &self.snap.upstreams[index];
        headers.insert(X_SWITCHYARD_PROVIDER.clone(), up.name_header.clone());
        headers.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(failed) = failed_over_from {
            headers.insert(
                X_SWITCHYARD_FAILOVER.clone(),
                self.snap.upstreams[failed].name_header.clone(),
            );
        }
    }

    /// Whether `resp` is provider `index`'s model list, to be shown under client names.
    pub(crate) fn lists_models(&self, index: usize, resp: &Response<Incoming>) -> bool {
        self.method == Method::GET
            && self.uri.path().ends_with("/models")
            && resp.status().is_success()
            && !self.snap.config.providers[index].models.is_empty()
    }

    /// Answers provider `index`'s model list (`body`) with the client-facing names of the
    /// models it maps.
    pub(crate) fn respond_models(
        self: Box<Self>,
        mut parts: http::response::Parts,
        body: &[u8],
        index: usize,
        failed_over_from: Option<usize>,
    ) -> Response<GatewayBody> {
        let provider = &self.snap.config.providers[index];
        let body = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(mut v) => {
                if let Some(list) = v.get_mut("data").and_then(|d| d.as_array_mut()) {
                    for m in list {
                        let client = m
                            .get("id")
                            .and_then(|id| id.as_str())
                            .and_then(|id| provider.client_model(id))
                            .map(str::to_string);
                        if let Some(c) = client {
                            m["id"] = serde_json::Value::String(c);
                        }
                    }
                }
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            Err(_) => Bytes::copy_from_slice(body),
        };
        self.answer_headers(&mut parts.headers, index, failed_over_from);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let status = parts.status.as_u16();
        self.account(Attempt {
            ttfb: Some(self.start.elapsed()),
            summary: BodySummary {
                bytes: body.len() as u64,
                ..BodySummary::default()
            },
            ..Attempt::new(index, status, Class::of_status(status), true)
        });
        Response::from_parts(parts, GatewayBody::full(body))
    }

    /// A model list that could not be read whole.
    pub(crate) fn broken_list(&self, index: usize) -> Response<GatewayBody> {
        let up = &self.snap.upstreams[index];
        let msg = format!(
            "provider `{}` sent a model list that could not be read",
            up.name
        );
        self.fail(up, index, ErrorKind::UpstreamBroken, &msg)
    }

    /// Provider `index` sent no response head in time.
    pub(crate) fn timed_out(&self, index: usize) -> Response<GatewayBody> {
        let up = &self.snap.upstreams[index];
        let msg = format!(
            "provider `{}` sent no response within {:?}",
            up.name, up.config.timeout
        );
        self.fail(up, index, ErrorKind::UpstreamTimeout, &msg)
    }

    /// Provider `index` could not be connected to, and the call goes to the other side:
    /// counted (not as the answer).
    pub(crate) fn connect_failed_over(&self, index: usize, e: &(dyn std::error::Error + 'static)) {
        let up = &self.snap.upstreams[index];
        tracing::warn!(request_id = self.id(), provider = %up.name, error = %ErrorChain(e), "cannot connect; failing over");
        up.metrics.failovers.increment(1);
        self.account(Attempt::new(index, 0, Class::Connect, false));
    }

    /// Provider `index` could not be connected to, and there is no other side to try.
    pub(crate) fn not_connected(
        &self,
        index: usize,
        e: &dyn std::fmt::Display,
    ) -> Response<GatewayBody> {
        let up = &self.snap.upstreams[index];
        let msg = format!("gateway cannot connect to provider `{}`", up.name);
        tracing::warn!(request_id = self.id(), provider = %up.name, error = %e, "{msg}");
        self.fail(up, index, ErrorKind::UpstreamConnect, &msg)
    }

    /// The exchange with provider `index` failed once the request was on its way: the
    /// client's body (too large, malformed, abandoned) or the provider.
    pub(crate) fn broken(&self, index: usize, e: &hyper::Error) -> Response<GatewayBody> {
        let up = &self.snap.upstreams[index];
        if has_source::<BodyTooLarge>(e) {
            let limit = self.snap.config.server.max_body_bytes;
            let msg = format!("request body is larger than the limit of {limit} bytes");
            return self.fail(up, index, ErrorKind::BodyTooLarge, &msg);
        }
        if let Some(client) = source_of::<ClientBodyError>(e) {
            return self.client_broke(up, index, client);
        }
        let msg = format!("gateway broke the exchange with provider `{}`", up.name);
        tracing::warn!(request_id = self.id(), provider = %up.name, error = %ErrorChain(e), "{msg}");
        self.fail(up, index, ErrorKind::UpstreamBroken, &msg)
    }

    pub(crate) fn respond(
        mut self: Box<Self>,
        resp: Response<Incoming>,
        lease: Lease,
        index: usize,
        failed_over_from: Option<usize>,
    ) -> Response<GatewayBody> {
        let first_byte = self.start.elapsed();
        let (mut parts, body) = resp.into_parts();
        self.answer_headers(&mut parts.headers, index, failed_over_from);
        let sniff = Sniff::for_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            self.strip_usage,
            self.shadow.is_some(),
        );
        if self.strip_usage && matches!(sniff, Sniff::Sse(_)) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let status = parts.status.as_u16();
        let stream = matches!(sniff, Sniff::Sse(_));
        if stream {
            self.unpin_client_buffer();
        }
        let up = &self.snap.upstreams[index];
        up.metrics.first_byte.record(first_byte.as_secs_f64());
        let idle = up.config.idle_timeout;
        up.metrics.in_flight.increment(1.0);
        if stream {
            up.metrics.open_streams.increment(1.0);
        }
        let cold = lease.fresh();
        let on_end = Box::new(Finish {
            ex: self,
            index,
            status,
            first_byte,
            stream,
            cold,
        });
        let body = ResponseBody::new(body, lease, idle, sniff, on_end);
        Response::from_parts(parts, GatewayBody::upstream(body))
    }

    /// An SSE answer may stream for minutes, and nothing the exchange keeps meanwhile may
    /// share the client connection's read buffer: hyper parses a request's head and small
    /// body into slices of that 8 KiB buffer, and while one slice lives, hyper allocates
    /// another buffer for its next read, 16 KiB per open stream instead of 8. The replay
    /// copy cannot be used any more; the request id and URI are copied out.
    fn unpin_client_buffer(&mut self) {
        self.replay_headers = None;
        if let Some(shared) = &self.shared {
            shared.drop_replay();
        }
        if let Ok(id) = HeaderValue::from_bytes(self.request_id.as_bytes()) {
            self.request_id = id;
        }
        if let Some(pq) = self.uri.path_and_query() {
            if let Ok(pq) = http::uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(
                pq.as_str().as_bytes(),
            )) {
                self.uri = Uri::from(pq);
            }
        }
    }

    /// The request cannot be written for provider `index` (e.g. its path is not a valid URI).
    pub(crate) fn unforwardable(&self, index: usize, e: &http::Error) -> Response<GatewayBody> {
        let msg = format!("cannot forward this request: {e}");
        self.fail(
            &self.snap.upstreams[index],
            index,
            ErrorKind::BadRequest,
            &msg,
        )
    }

    /// An error the gateway makes after a provider was chosen: counted against that provider.
    pub(crate) fn fail(
        &self,
        up: &Upstream,
        index: usize,
        kind: ErrorKind,
        message: &str,
    ) -> Response<GatewayBody> {
        let class = match kind {
            ErrorKind::UpstreamTimeout => Class::Timeout,
            ErrorKind::UpstreamConnect => Class::Connect,
            ErrorKind::UpstreamBroken => Class::StreamCut,
            ErrorKind::BodyTooLarge
            | ErrorKind::BadRequest
            | ErrorKind::Unauthorized
            | ErrorKind::RateLimited
            | ErrorKind::MethodNotAllowed => Class::ClientFault,
            ErrorKind::Unavailable | ErrorKind::Internal => Class::ServerError,
        };
        self.fail_as(up, index, kind, class, message)
    }

    /// The client's upload failed: a 400 for a malformed body (whoever still listens), and
    /// counted as the client's (`client_fault`, or `client_gone` for a hang-up).
    pub(crate) fn client_broke(
        &self,
        up: &Upstream,
        index: usize,
        e: &ClientBodyError,
    ) -> Response<GatewayBody> {
        let class = if e.gone {
            Class::ClientGone
        } else {
            Class::ClientFault
        };
        tracing::debug!(request_id = self.id(), error = %ErrorChain(e), "client request body failed");
        self.fail_as(up, index, ErrorKind::BadRequest, class, &e.to_string())
    }

    fn fail_as(
        &self,
        up: &Upstream,
        index: usize,
        kind: ErrorKind,
        class: Class,
        message: &str,
    ) -> Response<GatewayBody> {
        self.account(Attempt::new(index, kind.status(), class, true));
        let mut r = error_response(kind, message, &self.request_id);
        r.headers_mut()
            .insert(X_SWITCHYARD_PROVIDER.clone(), up.name_header.clone());
        r
    }

    /// Metrics, tokens and cost, the watchers' event, the access log: once per attempt.
    fn account(&self, a: Attempt) {
        let Attempt {
            index,
            status,
            class,
            ttfb,
            mut summary,
            answer: last,
            detail,
            cold,
        } = a;
        let up = &self.snap.upstreams[index];
        let elapsed = self.start.elapsed();
        let m = &up.metrics;
        let outcome = match class {
            Class::Success => Outcome::S2xx,
            Class::ClientError | Class::Auth | Class::Refused | Class::ClientFault => Outcome::S4xx,
            Class::ServerError => Outcome::S5xx,
            Class::Timeout => Outcome::Timeout,
            Class::Connect | Class::StreamCut => Outcome::Error,
            // What the provider's answer said; its status was a 2xx.
            Class::BadAnswer => Outcome::S2xx,
            Class::ClientGone => Outcome::from_status(status),
        };
        m.count(outcome, class);
        if let Some(cut) = detail.cut_short {
            m.count_cut(cut);
        }
        if let Some(w) = detail.waited {
            m.abandoned_waits.record(w.as_secs_f64());
        }
        m.duration.record(elapsed.as_secs_f64());

        let cfg = &self.snap.config;
        let (prompt, completion) = summary.usage.unwrap_or((0, 0));
        let model = self.shared.as_ref().and_then(|s| s.model());
        let (mut cost, mut cost_other) = (None, None);
        if prompt + completion > 0 {
            m.prompt_tokens.increment(prompt);
            m.completion_tokens.increment(completion);
            if let Some(model) = model {
                cost = cfg.providers[index].pricing.cost(model, prompt, completion);
                let mig = &cfg.migration;
                let other = if index == mig.from {
                    Some(mig.to)
                } else if index == mig.to {
                    Some(mig.from)
                } else {
                    None
                };
                cost_other =
                    other.and_then(|o| cfg.providers[o].pricing.cost(model, prompt, completion));
            }
            if let Some(c) = cost {
                m.cost.increment(c);
            }
            m.count_model(model, prompt, completion, cost);
        }
        let ttfb = if summary.stream {
            summary
                .first_token
                .map(|t| t.duration_since(self.start))
                .or(ttfb)
        } else {
            ttfb
        };
        if let (true, Some(t)) = (summary.stream, ttfb) {
            m.stream_ttft.record(t.as_secs_f64());
        }
        if let Some(events) = &self.snap.events {
            let upload = self
                .shared
                .as_ref()
                .and_then(|s| s.sent_at())
                .map_or(std::time::Duration::ZERO, |t| {
                    t.into_std().saturating_duration_since(self.start)
                });
            let event = RequestEvent {
                provider: up.name.clone(),
                epoch: self.snap.epoch,
                class,
                latency: elapsed,
                ttfb,
                upload,
                stream: summary.stream,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cost_usd: cost,
                cost_if_other_usd: cost_other,
                bad_answer: detail.bad_answer,
                cut_short: detail.cut_short,
                waited: detail.waited,
                model: model.map_or(0, switchyard_core::event::model_key),
                key: self.bucket,
                client: self.client_key,
                cold,
                control: false,
            };
            if events.try_send(event).is_err() {
                metrics::counter!(EVENTS_DROPPED).increment(1);
            }
        }
        if !last {
            *self
                .failed_attempt
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((index, status));
            return;
        }
        self.answered.store(true, Ordering::Relaxed);
        let failed = *self
            .failed_attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let (Some(ctx), Some(sink)) = (self.trace, &self.snap.spans) {
            sink.send(self.span(
                ctx, up, status, class, outcome, elapsed, model, prompt, completion, cost, failed,
                detail,
            ));
        }
        if cfg.server.access_log {
            access_log(&AccessRecord {
                client: self.client,
                ttfb,
                failover_from: failed.map(|(i, _)| &*self.snap.upstreams[i].name),
                failover_status: failed.map(|(_, s)| s),
                request_id: &self.request_id,
                method: &self.method,
                uri: &self.uri,
                provider: &up.name,
                status,
                outcome,
                class,
                elapsed,
                bytes: summary.bytes,
                model,
                prompt_tokens: prompt,
                completion_tokens: completion,
                detail,
            });
        }
        if let Some(pair) = &self.shadow {
            pair.primary(SideResult {
                class,
                bad_answer: detail.bad_answer,
                cut_short: detail.cut_short,
                stream: summary.stream,
                cold,
                status,
                latency: elapsed,
                ttft: ttfb,
                tokens: (prompt, completion),
                cost,
                content: summary.content.take(),
            });
        }
    }
}

/// Accounts for one exchange when its response body ends.
struct Finish {
    ex: Box<Exchange>,
    // An index into the exchange's snapshot, not an `Arc`: cloning one shared by all
    // workers would bounce its count between cores on every request.
    index: usize,
    status: u16,
    first_byte: std::time::Duration,
    /// Counted in `open_streams` (an SSE answer).
    stream: bool,
    /// On a connection opened for it.
    cold: bool,
}

impl OnEnd for Finish {
    fn on_end(self: Box<Self>, end: End, summary: BodySummary) {
        // Exactly once per answer (at its end, or when the client drops it).
        let m = &self.ex.snap.upstreams[self.index].metrics;
        m.in_flight.decrement(1.0);
        if self.stream {
            m.open_streams.decrement(1.0);
        }
        let mut detail = Detail::default();
        let class = match end {
            End::Complete => {
                let (class, shape) = Class::of_answer(
                    self.status,
                    self.ex.endpoint,
                    self.stream,
                    summary.facts.as_ref(),
                );
                detail.bad_answer = shape;
                if class == Class::Success {
                    let asked = self.ex.shared.as_ref().and_then(|s| s.max_tokens());
                    detail.cut_short = summary
                        .facts
                        .and_then(|f| f.cut_short(asked, summary.usage.map(|u| u.1)));
                }
                class
            }
            End::ClientGone => Class::ClientGone,
            End::Broken => Class::StreamCut,
            End::Idle => Class::Timeout,
        };
        self.ex.account(Attempt {
            ttfb: Some(self.first_byte),
            summary,
            detail,
            cold: self.cold,
            ..Attempt::new(self.index, self.status, class, true)
        });
    }
}

/// A client that leaves before the answer's head (its connection closed, its HTTP/2 stream
/// reset) drops the request's future, and with it the exchange: the one place that still
/// knows it happened. Accounted once, as `client_gone` against the provider the request was
/// with; when the request had been sent whole, with how long the client waited (an
/// abandoned wait, which the judge compares between the sides).
impl Drop for Exchange {
    fn drop(&mut self) {
        if *self.answered.get_mut() {
            return;
        }
        let waited = self
            .shared
            .as_ref()
            .and_then(|s| s.sent_at())
            .map(|t| t.elapsed());
        // nginx's "client closed request": what operators read in access logs.
        self.account(Attempt {
            detail: Detail {
                waited,
                ..Detail::default()
            },
            ..Attempt::new(self.provider, CLIENT_CLOSED, Class::ClientGone, true)
        });
    }
}

/// The status an access line gives a request whose client left before its answer's head.
pub const CLIENT_CLOSED: u16 = 499;

/// What an attempt's class alone does not say.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Detail {
    pub(crate) bad_answer: Option<BadAnswer>,
    pub(crate) cut_short: Option<CutShort>,
    /// How long the client waited before it gave up on the answer's head.
    pub(crate) waited: Option<Duration>,
}

impl Detail {
    /// The shape of a bad answer or the cause of a cut, for logs and traces.
    pub(crate) fn label(&self) -> Option<&'static str> {
        self.bad_answer
            .map(BadAnswer::label)
            .or(self.cut_short.map(CutShort::label))
    }
}

/// One attempt at a provider, as it is accounted.
struct Attempt {
    /// Into the exchange's snapshot's upstreams.
    index: usize,
    status: u16,
    class: Class,
    ttfb: Option<std::time::Duration>,
    summary: BodySummary,
    /// This attempt is the answer (not one that failed over): a shadow meets it.
    answer: bool,
    detail: Detail,
    /// It went on a connection opened for it.
    cold: bool,
}

impl Attempt {
    fn new(index: usize, status: u16, class: Class, answer: bool) -> Attempt {
        Attempt {
            index,
            status,
            class,
            ttfb: None,
            summary: BodySummary::default(),
            answer,
            detail: Detail::default(),
            cold: false,
        }
    }
}

/// One access-log line.
pub(crate) struct AccessRecord<'a> {
    pub(crate) client: Option<std::net::SocketAddr>,
    /// Until the provider's response head (or, for a stream, its first token).
    pub(crate) ttfb: Option<std::time::Duration>,
    /// The provider tried first, when the request failed over, and what it answered
    /// (0: it could not be connected to).
    pub(crate) failover_from: Option<&'a str>,
    pub(crate) failover_status: Option<u16>,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) provider: &'a str,
    pub(crate) status: u16,
    pub(crate) outcome: Outcome,
    pub(crate) class: Class,
    pub(crate) elapsed: std::time::Duration,
    pub(crate) bytes: u64,
    pub(crate) model: Option<&'a str>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) detail: Detail,
}

pub(crate) fn access_log(r: &AccessRecord<'_>) {
    // Milliseconds to the microsecond: what a log pipeline can read as a number.
    let ms = |d: std::time::Duration| d.as_micros() as f64 / 1000.0;
    // The path only: query strings can carry secrets.
    tracing::info!(
        target: "switchyard::access",
        request_id = r.request_id.to_str().unwrap_or("-"),
        client = r.client.map(tracing::field::display),
        method = r.method.as_str(),
        path = r.uri.path(),
        provider = r.provider,
        status = r.status,
        outcome = r.outcome.label(),
        class = r.class.label(),
        duration_ms = ms(r.elapsed),
        ttfb_ms = r.ttfb.map(ms),
        bytes = r.bytes,
        model = r.model.unwrap_or("-"),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        failover_from = r.failover_from,
        failover_status = r.failover_status,
        detail = r.detail.label(),
        waited_ms = r.detail.waited.map(ms),
    );
}
