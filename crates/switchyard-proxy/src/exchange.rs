//! One request's exchange with its providers: its context (which provider it is with now,
//! what it already learned) and its accounting — metrics, tokens and cost, the watchers'
//! event, the access line and span — exactly once per attempt, however it ends: an answer
//! streamed to its end ([`AtEnd`]), a gateway-made error, a failover, or a client that
//! left before the answer's head (`Drop`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, Uri};
use switchyard_core::answer::Endpoint;
use switchyard_core::config::MigrationConfig;
use switchyard_core::event::{model_key, BodyEnd, Class, RequestEvent};
use switchyard_core::features::Feature;
use switchyard_core::ErrorKind;

use crate::access::{access_log, span, Detail, Finished};
use crate::accounted::{Accounted, Ended};
use crate::errors::{
    error_response, has_source, source_of, BodyTooLarge, ClientBodyError, ErrorChain,
};
use crate::headers::{strip_hop_by_hop, OwnHeaders, X_SWITCHYARD_MIGRATION};
use crate::limits::Permit;
use crate::metrics::{ProviderMetrics, Recorded, EVENTS_DROPPED};
use crate::openai::ModelPrefix;
use crate::pool::Lease;
use crate::request_body::RequestShared;
use crate::response_body::{BodySummary, GatewayBody, OnEnd, ResponseBody, Sniff};
use crate::route::Route;
use crate::shadow::{Pair, SideResult};
use crate::snapshot::{Live, Snapshot};
use crate::trace::TraceCtx;
use crate::upstream::{Upstream, UpstreamBody, Worker};

/// The status an access line gives a request whose client left before its answer's head
/// (nginx's "client closed request": what operators read in access logs).
pub const CLIENT_CLOSED: u16 = 499;

/// An attempt that failed over: the answer's access line names it, so a failover is one
/// line.
#[derive(Debug, Clone, Copy)]
struct FailedAttempt {
    provider: usize,
    /// What it answered (0: it could not be connected to).
    status: u16,
}

/// One request's context: what every way it can end needs to account for itself.
pub struct Exchange {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) start: Instant,
    /// Which API the request calls: which answer shapes are possible.
    pub(crate) endpoint: Endpoint,
    /// The provider the request is with (its first, then the one it failed over to), an
    /// index into the snapshot's providers: a client that leaves before the answer's head
    /// left this one.
    provider: usize,
    /// The other side, while the request may still fail over there.
    pub(crate) fallback: Option<usize>,
    /// The migration that routed it, an index into the snapshot's (`None`: no migration
    /// matched, it went to `default_provider`).
    migration: Option<usize>,
    failed: Option<FailedAttempt>,
    /// The answer was accounted; until then, dropping the exchange means the client left.
    answered: bool,
    /// The routing bucket of the request's key: its cohort, for the judge.
    pub(crate) bucket: u16,
    /// Which configured client key sent it.
    pub(crate) client_key: Option<u16>,
    pub(crate) shared: Option<Arc<RequestShared>>,
    /// The gateway asked for stream usage on the client's behalf: strip that chunk.
    pub(crate) strip_usage: bool,
    /// This request is mirrored: its answer meets the shadow's here.
    pub(crate) shadow: Option<Arc<Pair>>,
    /// The body's start as the client sent it (all of it when the gateway held it whole),
    /// read to learn its model (providers that rename models): kept to rename it again for
    /// another provider on failover, until the answer's head.
    pub(crate) model_prefix: Option<ModelPrefix>,
    /// A refused request may be sent once more elsewhere ([`crate::failover`]): its
    /// headers as the provider got them come back with the answer.
    pub(crate) replay: bool,
    /// The client's address, for the access log.
    pub(crate) client: Option<SocketAddr>,
    /// This request's span, when traces are on.
    pub(crate) trace: Option<TraceCtx>,
    /// The client key's in-flight slot, freed when the exchange ends.
    pub(crate) _permit: Option<Arc<Permit>>,
    /// The worker it runs on: its events go on that worker's queue.
    worker: Worker,
}

/// What an exchange starts from (the rest it learns on the way).
pub(crate) struct Start {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) route: Route,
    pub(crate) client_key: Option<u16>,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) trace: Option<TraceCtx>,
    pub(crate) permit: Option<Arc<Permit>>,
    pub(crate) worker: Worker,
}

impl Exchange {
    pub(crate) fn new(s: Start) -> Box<Exchange> {
        let endpoint = Endpoint::of(s.method == Method::POST, s.uri.path());
        Box::new(Exchange {
            snap: s.snap,
            request_id: s.request_id,
            method: s.method,
            uri: s.uri,
            start: Instant::now(),
            endpoint,
            provider: s.route.first,
            fallback: s.route.fallback,
            migration: s.route.migration,
            failed: None,
            answered: false,
            bucket: s.route.bucket,
            client_key: s.client_key,
            shared: None,
            strip_usage: false,
            shadow: None,
            model_prefix: None,
            replay: false,
            client: s.client,
            trace: s.trace,
            _permit: s.permit,
            worker: s.worker,
        })
    }

    /// The request id as log lines carry it.
    pub(crate) fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The provider the request is with now.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.snap.upstreams[self.provider]
    }

    /// The migration that routed the request, and where it stands.
    pub(crate) fn migration(&self) -> Option<(&MigrationConfig, &Live)> {
        let i = self.migration?;
        Some((&self.snap.config.migrations[i], &self.snap.migrations[i]))
    }

    /// The metrics of the provider the request is with, for its migration.
    pub(crate) fn metrics(&self) -> &ProviderMetrics {
        self.upstream().metrics(self.migration, self.worker)
    }

    /// The providers the request may still go to (now, then the fallback).
    pub(crate) fn candidates(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.provider).chain(self.fallback)
    }

    /// The request goes to `other` now (it can fail over once).
    pub(crate) fn move_to(&mut self, other: usize) {
        self.provider = other;
        self.fallback = None;
    }

    /// The attempt at the current provider failed and the request goes elsewhere: counted
    /// (not as the answer), and named by the answer's access line.
    pub(crate) fn attempt_failed(&mut self, status: u16, class: Class, ttfb: Option<Duration>) {
        self.account(Accounted {
            ttfb,
            answer: false,
            ..Accounted::answer(status, class)
        });
        self.failed = Some(FailedAttempt {
            provider: self.provider,
            status,
        });
    }

    /// A provider's answer headers as the client gets them: hop-by-hop out, which provider
    /// answered (and which one it failed over from), the request id.
    pub(crate) fn answer_headers(&self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        self.own_headers().insert_into(headers);
    }

    /// The headers the gateway adds to the answer: which provider, the request id, the
    /// migration (when named) and the provider that refused first (after a failover).
    fn own_headers(&self) -> OwnHeaders {
        OwnHeaders {
            provider: self.upstream().name_header.clone(),
            request_id: self.request_id.clone(),
            migration: self.migration_header(),
            failover: self
                .failed
                .map(|f| self.snap.upstreams[f.provider].name_header.clone()),
        }
    }

    /// The provider's answer: its head now, its body streamed through and accounted at its
    /// end.
    pub(crate) fn respond(
        mut self: Box<Self>,
        resp: Response<UpstreamBody>,
        lease: Lease,
    ) -> Response<GatewayBody> {
        let first_byte = self.start.elapsed();
        // The answer is the client's now: nothing fails over any more.
        self.model_prefix = None;
        let (mut parts, body) = resp.into_parts();
        // The answer's text and tool calls are read when a shadow compares them, or when
        // the request asked for what only they tell (tools, a JSON format, logprobs, n).
        let details = self.shadow.is_some()
            || self
                .shared
                .as_ref()
                .and_then(|s| s.asked())
                .is_some_and(|a| a.needs_details());
        let sniff = Sniff::for_content_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            self.strip_usage,
            details,
        );
        let stream = matches!(sniff, Sniff::Sse(_));
        if stream {
            // Before the request id is copied into the answer's head.
            self.unpin_client_buffer();
        }
        strip_hop_by_hop(&mut parts.headers);
        let own = self.own_headers();
        if self.strip_usage && stream {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let up = self.upstream();
        self.metrics().answer_began(first_byte, stream);
        let idle = up.config.idle_timeout;
        let on_end = Box::new(AtEnd {
            head: Ended {
                status: parts.status.as_u16(),
                first_byte,
                stream,
                cold: lease.fresh(),
            },
            ex: self,
        });
        let body = ResponseBody::new(body, lease, idle, sniff, on_end, own);
        Response::from_parts(parts, GatewayBody::upstream(body))
    }

    /// An SSE answer may stream for minutes, and nothing the exchange keeps meanwhile may
    /// share the client connection's read buffer: hyper parses a request's head and small
    /// body into slices of that 8 KiB buffer, and while one slice lives, hyper allocates
    /// another buffer for its next read, 16 KiB per open stream instead of 8. The replay
    /// copy cannot be used any more; the request id and URI are copied out.
    fn unpin_client_buffer(&mut self) {
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

    /// The provider sent no response head in time.
    pub(crate) fn timed_out(self: Box<Self>) -> Response<GatewayBody> {
        let up = self.upstream();
        let msg = format!(
            "provider `{}` sent no response within {:?}",
            up.name, up.config.timeout
        );
        self.fail(ErrorKind::UpstreamTimeout, &msg)
    }

    /// The provider could not be connected to, and there is no other side to try.
    pub(crate) fn not_connected(
        self: Box<Self>,
        e: &dyn std::fmt::Display,
    ) -> Response<GatewayBody> {
        let msg = format!(
            "gateway cannot connect to provider `{}`",
            self.upstream().name
        );
        tracing::warn!(request_id = self.id(), provider = %self.upstream().name, error = %e, "{msg}");
        self.fail(ErrorKind::UpstreamConnect, &msg)
    }

    /// The exchange failed once the request was on its way: the client's body (too large,
    /// malformed, abandoned) or the provider.
    pub(crate) fn broken(
        self: Box<Self>,
        e: &(dyn std::error::Error + 'static),
    ) -> Response<GatewayBody> {
        if has_source::<BodyTooLarge>(e) {
            let limit = self.snap.config.server.max_body_bytes;
            return self.fail(ErrorKind::BodyTooLarge, &BodyTooLarge::message(limit));
        }
        if let Some(client) = source_of::<ClientBodyError>(e) {
            return self.client_broke(client);
        }
        let msg = format!(
            "gateway broke the exchange with provider `{}`",
            self.upstream().name
        );
        tracing::warn!(request_id = self.id(), provider = %self.upstream().name, error = %ErrorChain(e), "{msg}");
        self.fail(ErrorKind::UpstreamBroken, &msg)
    }

    /// The request cannot be written for the provider (e.g. its path is not a valid URI).
    pub(crate) fn unforwardable(self: Box<Self>, e: &http::Error) -> Response<GatewayBody> {
        self.fail(
            ErrorKind::BadRequest,
            &format!("cannot forward this request: {e}"),
        )
    }

    /// The client's upload failed: a 400 for a malformed body (whoever still listens), and
    /// counted as the client's (`client_fault`, or `client_gone` for a hang-up).
    pub(crate) fn client_broke(self: Box<Self>, e: &ClientBodyError) -> Response<GatewayBody> {
        let class = if e.gone {
            Class::ClientGone
        } else {
            ErrorKind::BadRequest.class()
        };
        tracing::debug!(request_id = self.id(), error = %ErrorChain(e), "client request body failed");
        self.fail_as(ErrorKind::BadRequest, class, &e.to_string())
    }

    /// An error the gateway makes after a provider was chosen: counted against that
    /// provider as its kind says.
    pub(crate) fn fail(self: Box<Self>, kind: ErrorKind, message: &str) -> Response<GatewayBody> {
        self.fail_as(kind, kind.class(), message)
    }

    fn fail_as(
        mut self: Box<Self>,
        kind: ErrorKind,
        class: Class,
        message: &str,
    ) -> Response<GatewayBody> {
        self.account(Accounted::answer(kind.status(), class));
        let mut r = error_response(
            kind,
            message,
            &self.request_id,
            &self.upstream().name_header,
        );
        self.name_migration(r.headers_mut());
        r
    }

    /// `x-switchyard-migration`, in a gateway of several migrations.
    fn name_migration(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.migration_header() {
            headers.insert(X_SWITCHYARD_MIGRATION.clone(), v);
        }
    }

    fn migration_header(&self) -> Option<HeaderValue> {
        self.migration().and_then(|(_, live)| live.header.clone())
    }

    /// Metrics, tokens and cost, the watchers' event, the access log: once per attempt.
    pub(crate) fn account(&mut self, a: Accounted) {
        let Accounted {
            status,
            class,
            ttfb,
            mut summary,
            answer,
            detail,
            cold,
            features,
            unmetered,
        } = a;
        // Before anything borrows the exchange: from here on it only reads.
        self.answered |= answer;
        let snap = &self.snap;
        let up = &snap.upstreams[self.provider];
        let elapsed = self.start.elapsed();
        let (prompt, completion) = summary.usage.unwrap_or((0, 0));
        let model = self.shared.as_ref().and_then(|s| s.model());
        let (cost, cost_other) = match model {
            Some(model) if prompt + completion > 0 => self.costs(model, prompt, completion),
            _ => (None, None),
        };
        let ttfb = match (summary.stream, summary.first_token) {
            (true, Some(t)) => Some(t.duration_since(self.start)),
            _ => ttfb,
        };
        let outcome = self.metrics().record(&Recorded {
            status,
            class,
            elapsed,
            cut_short: detail.cut_short,
            waited: detail.waited,
            model,
            tokens: (prompt, completion),
            cost,
            ttft: ttfb.filter(|_| summary.stream),
            unmetered,
        });
        if let Some(events) = &snap.events {
            let upload = self
                .shared
                .as_ref()
                .and_then(|s| s.sent_at())
                .map_or(Duration::ZERO, |t| {
                    t.into_std().saturating_duration_since(self.start)
                });
            let event = RequestEvent {
                provider: up.name.clone(),
                migration: self.migration.map(|i| i as u16),
                epoch: self.migration.map_or(0, |i| snap.migrations[i].epoch),
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
                model: model.map_or(0, model_key),
                key: self.bucket,
                client: self.client_key,
                cold,
                control: false,
                features,
                unmetered,
            };
            if events.of(self.worker).try_send(event).is_err() {
                metrics::counter!(EVENTS_DROPPED).increment(1);
            }
        }
        if !answer {
            return;
        }
        // The record of the request is built only for what reads it: most gateways run with
        // neither the access log nor traces.
        let traced = self.trace.is_some() && snap.spans.is_some();
        if traced || snap.config.server.access_log {
            let finished = Finished {
                client: self.client,
                ttfb,
                failover: self
                    .failed
                    .map(|f| (&*snap.upstreams[f.provider].name, f.status)),
                request_id: &self.request_id,
                method: &self.method,
                uri: &self.uri,
                provider: &up.name,
                migration: self
                    .migration()
                    .filter(|_| snap.config.named_migrations)
                    .map(|(m, _)| m.name.as_str()),
                phase: self
                    .migration()
                    .map_or("-", |(m, live)| live.state.phase_name(&m.phases)),
                status,
                outcome,
                class,
                elapsed,
                bytes: summary.bytes,
                model,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cost,
                detail,
            };
            if let (Some(ctx), Some(sink)) = (self.trace, &snap.spans) {
                sink.send(span(&finished, ctx));
            }
            if snap.config.server.access_log {
                access_log(&finished);
            }
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
                content: summary.details.take().map(|d| d.content),
                features,
            });
        }
    }
}

impl Exchange {
    /// What the tokens cost on the provider that served them, and what they would have
    /// cost on the other side of the migration (the live ROI projection).
    fn costs(&self, model: &str, prompt: u64, completion: u64) -> (Option<f64>, Option<f64>) {
        let providers = &self.snap.config.providers;
        let other = self.migration().and_then(|(m, _)| match self.provider {
            p if p == m.from => Some(m.to),
            p if p == m.to => Some(m.from),
            _ => None,
        });
        let cost = |p: usize| providers[p].pricing.cost(model, prompt, completion);
        (cost(self.provider), other.and_then(cost))
    }
}

/// A client that leaves before the answer's head (its connection closed, its HTTP/2 stream
/// reset) drops the request's future, and with it the exchange: the one place that still
/// knows it happened. Accounted once, as `client_gone` against the provider the request was
/// with; when the request had been sent whole, with how long the client waited (an
/// abandoned wait, which the judge compares between the sides).
impl Drop for Exchange {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let waited = self
            .shared
            .as_ref()
            .and_then(|s| s.sent_at())
            .map(|t| t.elapsed());
        self.account(Accounted {
            detail: Detail {
                waited,
                ..Detail::default()
            },
            ..Accounted::answer(CLIENT_CLOSED, Class::ClientGone)
        });
    }
}

/// Accounts for one exchange when its response body ends.
struct AtEnd {
    ex: Box<Exchange>,
    head: Ended,
}

impl OnEnd for AtEnd {
    fn on_end(mut self: Box<Self>, end: BodyEnd, summary: BodySummary) {
        // Exactly once per answer (at its end, or when the client drops it).
        self.ex.metrics().answer_ended(self.head.stream);
        let ex = &self.ex;
        let accounted = Accounted::ended(
            self.head,
            end,
            summary,
            ex.endpoint,
            ex.shared.as_deref(),
            ex.strip_usage,
        );
        if accounted.features.get(Feature::StreamUsage) == Some(true) {
            // `inject_stream_usage: auto` learns from it.
            self.ex.upstream().saw_stream_usage(true, false);
        }
        self.ex.account(accounted);
    }
}
