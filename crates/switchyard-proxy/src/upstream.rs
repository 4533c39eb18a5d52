//! The connections to each provider, one set per proxy worker (the gateway's own HTTP/1.1
//! client, hyper's HTTP/2 one, rustls for https), plus one set for the control plane
//! (health checks, preflight).
//!
//! A provider that speaks HTTP/2 (offered by ALPN on https; `http2: true` for cleartext
//! h2c) gets a few multiplexed connections per worker, each carrying up to
//! `http2_max_streams` streams before another is opened: 4,000 open streams take 40
//! sockets instead of 4,000, and no TLS session or per-connection buffers each. Otherwise
//! HTTP/1.1 keep-alive connections are pooled, one exchange at a time on each.
//!
//! Each worker is a single-threaded runtime, so its pool is only ever used by one thread:
//! the lock around it is never contended, and a connection is driven by the thread that
//! uses it. The request path names its [`Worker`] explicitly (no globals), and each worker
//! sweeps its own pools. An HTTP/1.1 connection goes back to its pool when the response
//! body has been read to its end (the body parks it itself); one dropped part-way is
//! closed (an HTTP/2 stream dropped part-way is reset, and its connection carries on).
//! This replaces hyper-util's general client, whose per-request key hashing, shared pool
//! and spawned "ready again" task cost more than the rest of the exchange.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::config::InjectStreamUsage;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use switchyard_core::config::ProviderConfig;

use crate::connect::{connect_tcp, h2_handshake, Connected, Io};
use crate::errors::{BoxError, BuildError, ProviderProblem};
use crate::h1_body::Home;
use crate::headers::{maps_to_itself, upstream_path};
use crate::metrics::ProviderMetrics;
use crate::pool::{Conn, Lease, Pool};
use crate::request_body::BoxedBody;
pub use crate::upstream_body::UpstreamBody;

/// Which pool a request uses: a proxy worker's own, or the control plane's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    /// Proxy worker `n`, counted from 0 (fewer than the workers the upstream was built for).
    Proxy(usize),
    /// The control plane (health checks, preflight).
    Control,
}

/// The first proxy worker: every gateway has one (a connection made without a worker, as
/// in tests, uses it).
impl Default for Worker {
    fn default() -> Self {
        Worker::Proxy(0)
    }
}

/// What the provider's connections speak, as far as known: it starts as configured (or
/// unknown, for an https provider that may offer h2) and follows what ALPN answers.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// HTTP/1.1 connections each worker opens ahead of a provider's first traffic.
pub const WARM_H1: usize = 2;

pub struct Upstream {
    pub name: Arc<str>,
    /// Value of `x-switchyard-provider`.
    pub name_header: HeaderValue,
    pub config: ProviderConfig,
    pub host: HeaderValue,
    /// `Bearer <key>`, marked sensitive so hyper and our logs never print it.
    pub auth: Option<HeaderValue>,
    /// The key as read, to tell on reload whether the client can be kept.
    key: Option<String>,
    connector: HttpsConnector<HttpConnector>,
    /// Where connections go: scheme and authority of `base_url`.
    origin: Uri,
    /// One pool per proxy worker (each a single-threaded runtime) plus one for the control
    /// plane, so a connection is only ever driven by the thread that uses it.
    pools: Box<[Arc<Pool>]>,
    /// `PROTO_*`: which pool a request looks in first.
    proto: AtomicU8,
    /// Unlabelled first (requests no migration routed, or a gateway of one); then, in a
    /// gateway of several, one set per migration this provider is a side of, labelled with
    /// its name. Each a set per proxy worker (summed by [`crate::metrics::render`]).
    metrics: Box<[ProviderMetrics]>,
    /// Per migration (`config.migrations`' order), which of `metrics` its requests count in.
    slots: Box<[usize]>,
    /// What the metrics are labelled for, per migration (`None`: not a side of it).
    labels: Box<[Option<String>]>,
    /// Until when (unix ms) first attempts go elsewhere: the provider asked for a pause
    /// with a 429's `Retry-After`.
    skip_until_ms: std::sync::atomic::AtomicU64,
    /// Asks each worker's pool to open connections ahead of traffic ([`Upstream::warm`]):
    /// raised by the control plane, answered by each worker.
    warm_wanted: std::sync::atomic::AtomicU64,
    /// `STREAM_USAGE_*`: whether it was seen honouring `stream_options.include_usage`
    /// (`inject_stream_usage: auto`).
    stream_usage: AtomicU8,
}

const STREAM_USAGE_UNKNOWN: u8 = 0;
const STREAM_USAGE_HONOURED: u8 = 1;
const STREAM_USAGE_IGNORED: u8 = 2;

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.config.base_url)
            .finish_non_exhaustive()
    }
}

/// A provider's answer to a request: its head (the body streams on), the connection's
/// lease, and the request's headers as sent when [`Upstream::send`] was asked to keep them.
pub struct Sent {
    pub resp: Response<UpstreamBody>,
    pub lease: Lease,
    pub headers: Option<http::HeaderMap>,
}

impl Upstream {
    /// Builds a provider's client for `workers` proxy workers. `key` is the value of its
    /// `api_key_env`; `labels`, per migration, the name its metrics are labelled with when
    /// it is a side of that migration (empty in a gateway of one migration).
    pub fn build(
        config: &ProviderConfig,
        key: Option<String>,
        workers: usize,
        labels: &[Option<String>],
    ) -> Result<Upstream, BuildError> {
        let err = |problem: ProviderProblem| BuildError::Provider {
            provider: config.name.clone(),
            problem: Box::new(problem),
        };
        let authority: Authority = config
            .authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(ProviderProblem::Host(e.into())))?;
        let host = HeaderValue::from_str(&config.authority)
            .map_err(|e| err(ProviderProblem::Host(e.into())))?;
        let auth = match &key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    err(ProviderProblem::KeyNotAHeader {
                        env: config.api_key_env.as_deref().unwrap_or("?").to_string(),
                    })
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let tls = switchyard_http::roots(config.ca_file.as_deref())
            .and_then(switchyard_http::tls_config)
            .map_err(|e| err(e.into()))?;
        let connector =
            switchyard_http::provider_connector(tls, config.connect_timeout, config.http2);
        let scheme = if config.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let proto = match (config.http2, config.https) {
            (Some(true), _) => PROTO_H2,
            (Some(false), _) | (None, false) => PROTO_H1,
            (None, true) => PROTO_UNKNOWN,
        };
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| err(e.into()))?;
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            name_header: HeaderValue::from_str(&config.name).map_err(|e| err(e.into()))?,
            config: config.clone(),
            host,
            auth,
            key,
            connector,
            origin,
            pools: (0..=workers.max(1)).map(|_| Arc::default()).collect(),
            proto: AtomicU8::new(proto),
            metrics: std::iter::once(None)
                .chain(labels.iter().flatten().map(|m| Some(m.as_str())))
                .flat_map(|m| {
                    (0..workers.max(1)).map(move |w| {
                        ProviderMetrics::new(
                            &config.name,
                            config.pricing.models.keys().map(String::as_str),
                            m,
                            w,
                        )
                    })
                })
                .collect(),
            slots: labels
                .iter()
                .scan(0, |n, l| {
                    Some(match l {
                        Some(_) => {
                            *n += 1;
                            *n
                        }
                        None => 0,
                    })
                })
                .collect(),
            labels: labels.into(),
            skip_until_ms: std::sync::atomic::AtomicU64::new(0),
            warm_wanted: std::sync::atomic::AtomicU64::new(0),
            stream_usage: AtomicU8::new(STREAM_USAGE_UNKNOWN),
        })
    }

    /// Whether a streamed chat request to it is asked for its usage on the client's behalf.
    pub fn injects_stream_usage(&self) -> bool {
        match self.config.inject_stream_usage {
            InjectStreamUsage::Always => true,
            InjectStreamUsage::Never => false,
            InjectStreamUsage::Auto => {
                self.stream_usage.load(Ordering::Relaxed) == STREAM_USAGE_HONOURED
            }
        }
    }

    /// A stream that asked for its usage got it (`from_probe`: the preflight's; else a
    /// client's). Only a probe says the provider ignores the ask: a client's stream may
    /// have failed for another reason.
    pub fn saw_stream_usage(&self, honoured: bool, from_probe: bool) {
        let now = if honoured {
            STREAM_USAGE_HONOURED
        } else if from_probe {
            STREAM_USAGE_IGNORED
        } else {
            return;
        };
        if self.stream_usage.load(Ordering::Relaxed) != now {
            self.stream_usage.store(now, Ordering::Relaxed);
        }
    }

    /// Asks every worker to open connections to this provider ahead of its traffic (see
    /// [`crate::Gateway::warm`]); the number to compare [`Upstream::warmed`] with.
    pub fn want_warm(&self) -> u64 {
        self.warm_wanted.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Worker pools that answered warm request `generation` (all proxy workers: done).
    pub fn warmed(&self, generation: u64) -> usize {
        self.pools[..self.pools.len() - 1]
            .iter()
            .filter(|p| p.warmed.load(Ordering::Relaxed) >= generation)
            .count()
    }

    /// On `worker`'s thread: when warming was asked for since this pool last did it, opens
    /// connections so the first requests of a new phase do not wait for connection setup
    /// (TCP, TLS, HTTP/2 settings): up to [`WARM_H1`] HTTP/1.1 keep-alive connections,
    /// or one HTTP/2 connection, which multiplexes.
    pub async fn warm(&self, worker: Worker) {
        let pool = self.pool(worker);
        let wanted = self.warm_wanted.load(Ordering::Relaxed);
        if pool.warmed.load(Ordering::Relaxed) >= wanted {
            return;
        }
        let max_streams = self.config.http2_max_streams;
        for _ in 0..WARM_H1 {
            let have_h1 = pool.lock().len();
            if self.proto.load(Ordering::Relaxed) == PROTO_H1 {
                if have_h1 >= WARM_H1.min(self.config.max_idle_connections) {
                    break;
                }
            } else if self.pooled(pool, max_streams).is_some() {
                // An HTTP/2 connection is there (the stream slot just taken goes back).
                break;
            }
            match self.open(pool, max_streams).await {
                Ok((Conn::H1(io), _)) => pool.park(io, self.config.max_idle_connections),
                Ok((Conn::H2(..), _)) => {}
                Err(e) => {
                    tracing::debug!(provider = %self.name, error = %e, "cannot warm a connection");
                    break;
                }
            }
        }
        pool.warmed.fetch_max(wanted, Ordering::Relaxed);
    }

    /// `worker`'s pool: the proxy workers' first, the control plane's last.
    #[inline]
    fn pool(&self, worker: Worker) -> &Arc<Pool> {
        let control = self.pools.len() - 1;
        match worker {
            Worker::Proxy(n) => {
                debug_assert!(n < control, "worker {n} of {control}");
                &self.pools[n]
            }
            Worker::Control => &self.pools[control],
        }
    }

    /// The origin-form URI for a client's request URI: its path mapped onto `base_url`'s.
    pub fn uri_for(&self, client_uri: &Uri) -> Result<Uri, http::Error> {
        match client_uri.path_and_query() {
            // The usual case (`/v1/…` onto a base path of `/v1`): the client's bytes, shared.
            Some(pq) if maps_to_itself(&self.config.base_path, pq.as_str()) => {
                Ok(Uri::from(pq.clone()))
            }
            pq => {
                let pq = pq.map_or("/", |p| p.as_str());
                Ok(Uri::try_from(upstream_path(&self.config.base_path, pq))?)
            }
        }
    }

    /// `req` (the client's request, its URI as the client sent it, `client_uri`) addressed
    /// to this provider: its path mapped onto `base_url`'s (origin-form: the connection
    /// already goes to the provider), its `Host` and key, HTTP/1.1 whatever the client
    /// spoke (an HTTP/2 provider's connection turns it into HTTP/2).
    pub fn prepare(
        &self,
        mut req: Request<BoxedBody>,
        client_uri: &Uri,
    ) -> Result<Request<BoxedBody>, http::Error> {
        *req.uri_mut() = self.uri_for(client_uri)?;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        headers.insert(http::header::HOST, self.host.clone());
        match &self.auth {
            Some(auth) => headers.insert(http::header::AUTHORIZATION, auth.clone()),
            None => headers.remove(http::header::AUTHORIZATION),
        };
        Ok(req)
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection or a new one.
    /// Release the [`Lease`] once the response body has been read to its end. With
    /// `keep_headers`, the request's headers as sent come back with the answer (to send it
    /// again elsewhere): handed back over HTTP/1.1, where they are only read, and copied
    /// before HTTP/2 takes them.
    ///
    /// Not an `async fn`, which would keep the request twice (its argument and its binding)
    /// for as long as the exchange runs.
    pub fn send(
        &self,
        worker: Worker,
        mut req: Request<BoxedBody>,
        keep_headers: bool,
    ) -> impl Future<Output = Result<Sent, SendError>> + Send + '_ {
        let pool = self.pool(worker);
        let max_streams = self.config.http2_max_streams;
        async move {
            loop {
                let (mut conn, fresh) = match self.pooled(pool, max_streams) {
                    Some(c) => (c, false),
                    // Boxed: a new connection is rare under keep-alive, and its code large.
                    None => match Box::pin(self.open(pool, max_streams)).await {
                        Ok((c, fresh)) => (c, fresh),
                        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                    },
                };
                // A pooled connection the provider has closed since is skipped; a pooled one
                // that fails before the request is written gives it back to try the next.
                if let Err(e) = conn.ready().await {
                    if fresh {
                        return Err(SendError::Connect(e.into(), Box::new(req)));
                    }
                    continue;
                }
                let (mut tx, slot) = match conn {
                    Conn::H1(io) => {
                        let home = Home {
                            pool: pool.clone(),
                            max_idle: self.config.max_idle_connections,
                        };
                        return match crate::h1::send(io, req, home, keep_headers).await {
                            Ok((resp, headers)) => Ok(Sent {
                                resp: resp.map(UpstreamBody::H1),
                                lease: Lease { _slot: None, fresh },
                                headers,
                            }),
                            Err(e) => Err(SendError::Exchange(e)),
                        };
                    }
                    Conn::H2(tx, slot) => {
                        self.to_h2(&mut req);
                        (tx, slot)
                    }
                };
                let headers = keep_headers.then(|| req.headers().clone());
                let sent = tx.try_send_request(req).await.map(|resp| Sent {
                    resp: resp.map(UpstreamBody::H2),
                    lease: Lease {
                        _slot: Some(slot),
                        fresh,
                    },
                    headers,
                });
                match sent {
                    Ok(done) => return Ok(done),
                    Err(mut e) => match e.take_message() {
                        Some(back) if !fresh => req = back,
                        Some(back) => {
                            return Err(SendError::Connect(e.into_error().into(), Box::new(back)))
                        }
                        None => return Err(SendError::Exchange(e.into_error().into())),
                    },
                }
            }
        }
    }

    /// HTTP/2 carries scheme and authority as pseudo-headers, and has no `Host`.
    fn to_h2(&self, req: &mut Request<BoxedBody>) {
        if req.uri().scheme().is_none() {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = self.origin.scheme().cloned();
            parts.authority = self.origin.authority().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        req.headers_mut().remove(http::header::HOST);
        *req.version_mut() = Version::HTTP_2;
    }

    /// A pooled connection, of the kind the provider is known to speak.
    fn pooled(&self, pool: &Pool, max_streams: usize) -> Option<Conn> {
        match self.proto.load(Ordering::Relaxed) {
            PROTO_H1 => pool.take(self.config.upstream_idle_timeout).map(Conn::H1),
            _ => pool.take_stream(max_streams),
        }
    }

    /// A new connection, `true` if it is new. HTTP/2 connections are opened one at a time
    /// per pool: a burst of requests shares the first one instead of each opening its own.
    async fn open(&self, pool: &Pool, max_streams: usize) -> Result<(Conn, bool), BoxError> {
        let _one_at_a_time = if self.proto.load(Ordering::Relaxed) == PROTO_H1 {
            None
        } else {
            let guard = pool.opening.lock().await;
            // Opened by another request while this one waited.
            if let Some(c) = self.pooled(pool, max_streams) {
                return Ok((c, false));
            }
            Some(guard)
        };
        // Inline: `send` boxes this whole future (connecting is rare), and warming awaits it
        // in its own task.
        let conn = self.connect().await?;
        Ok((
            match conn {
                Connected::H1(tx) => {
                    self.proto.store(PROTO_H1, Ordering::Relaxed);
                    Conn::H1(tx)
                }
                Connected::H2(tx) => {
                    self.proto.store(PROTO_H2, Ordering::Relaxed);
                    let slot = pool.add_h2(tx.clone());
                    Conn::H2(tx, slot)
                }
            },
            true,
        ))
    }

    async fn connect(&self) -> Result<Connected, BoxError> {
        if !self.config.https {
            // Cleartext skips the TLS connector: its connect future and the connection
            // task holding a `MaybeHttpsStream` are each several KB per connection, paid
            // at once when a burst of streams opens a connection each.
            let tcp = connect_tcp(&self.origin, self.config.connect_timeout).await?;
            if self.config.http2 == Some(true) {
                return h2_handshake(TokioIo::new(tcp)).await;
            }
            return Ok(Connected::H1(Io::Tcp(tcp)));
        }
        Box::pin(self.connect_tls()).await
    }

    async fn connect_tls(&self) -> Result<Connected, BoxError> {
        use tower::ServiceExt;
        let io = self.connector.clone().oneshot(self.origin.clone()).await?;
        if io.connected().is_negotiated_h2() {
            return h2_handshake(io).await;
        }
        Ok(Connected::H1(Io::Tls(Box::new(TokioIo::new(io)))))
    }

    /// Closes `worker`'s connections idle for longer than `upstream_idle_timeout` (each
    /// worker calls it now and then, so a quiet gateway does not hold them forever).
    pub fn close_idle(&self, worker: Worker) {
        self.pool(worker).close_idle(
            Instant::now(),
            self.config.upstream_idle_timeout,
            self.config.max_idle_connections,
        );
    }

    /// Keeps first attempts off this provider for `pause` (a 429's `Retry-After`).
    pub fn pause(&self, pause: Duration) {
        let until = now_ms() + pause.as_millis() as u64;
        self.skip_until_ms
            .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether first attempts should go elsewhere now.
    #[inline]
    pub fn paused(&self) -> bool {
        let until = self
            .skip_until_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Whether this upstream serves `config` with `key` unchanged, its metrics labelled
    /// alike (so it can be kept, pools and all).
    pub fn same(
        &self,
        config: &ProviderConfig,
        key: &Option<String>,
        labels: &[Option<String>],
    ) -> bool {
        &self.config == config && &self.key == key && *self.labels == *labels
    }

    /// The metrics of requests routed by `migration` (`None`: by no migration) on `worker`
    /// (the control plane forwards no requests: it has no set of its own).
    #[inline]
    pub fn metrics(&self, migration: Option<usize>, worker: Worker) -> &ProviderMetrics {
        let slot = migration.and_then(|i| self.slots.get(i).copied());
        let workers = self.pools.len() - 1;
        let w = match worker {
            Worker::Proxy(n) => n.min(workers - 1),
            Worker::Control => 0,
        };
        &self.metrics[slot.unwrap_or(0) * workers + w]
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why [`Upstream::send`] failed.
#[derive(thiserror::Error)]
pub enum SendError {
    /// No connection could be made; nothing was sent, and the request comes back.
    #[error("cannot connect: {0}")]
    Connect(BoxError, Box<Request<BoxedBody>>),
    /// The exchange failed once the request was on its way (the provider's side, or the
    /// client's body as it was raised).
    #[error("{0}")]
    Exchange(BoxError),
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
