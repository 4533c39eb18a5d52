//! One pool of HTTP/1.1 keep-alive connections per provider and proxy worker (hyper's
//! connection API over rustls), plus one for the control plane (health checks, preflight).
//!
//! Each worker is a single-threaded runtime, so its pool is only ever used by one thread:
//! the lock around it is never contended, and a connection is driven by the thread that
//! uses it. The request path names its [`Worker`] explicitly (no globals), and each worker
//! sweeps its own pools. A connection goes back to its pool when the response body has been read to its
//! end ([`Lease::release`]); one dropped part-way is closed by hyper. This replaces
//! hyper-util's general client, whose per-request key hashing, shared pool and spawned
//! "ready again" task cost more than the rest of the exchange.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use switchyard_core::config::ProviderConfig;

use crate::body::{BoxError, RequestBody};
use crate::headers::{maps_to_itself, upstream_path};
use crate::metrics::ProviderMetrics;

/// How long an unused keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle connections are kept per pool: a burst must not leave thousands
/// of sockets open to a provider afterwards.
pub const MAX_IDLE_PER_POOL: usize = 256;

/// Which pool a request uses: a proxy worker's own, or the control plane's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Worker(pub usize);

impl Worker {
    /// The control plane's pool (the last one).
    pub const CONTROL: Worker = Worker(usize::MAX);
}

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
    pub metrics: ProviderMetrics,
    /// Until when (unix ms) first attempts go elsewhere: the provider asked for a pause
    /// with a 429's `Retry-After`.
    skip_until_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.config.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

impl Upstream {
    /// Builds a provider's client for `workers` proxy workers. `key` is the value of its
    /// `api_key_env`.
    pub fn build(
        config: &ProviderConfig,
        key: Option<String>,
        workers: usize,
    ) -> Result<Upstream, BuildError> {
        let err = |m: String| BuildError(format!("providers.{}: {m}", config.name));
        let authority: Authority = config
            .authority
            .parse()
            .map_err(|e| err(format!("bad host: {e}")))?;
        let host =
            HeaderValue::from_str(&config.authority).map_err(|e| err(format!("bad host: {e}")))?;
        let auth = match &key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    err(format!(
                        "the key in {} has characters not allowed in a header",
                        config.api_key_env.as_deref().unwrap_or("?")
                    ))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let roots = switchyard_http::roots(config.ca_file.as_deref())
            .map_err(|e| err(format!("ca_file {e}")))?;
        let tls = switchyard_http::tls_config(roots).map_err(err)?;
        // HTTP/1.1 only: HTTP/2 would multiplex every request onto one capped connection.
        let connector = switchyard_http::connector(tls, config.connect_timeout);
        let scheme = if config.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| err(format!("bad base_url: {e}")))?;
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            name_header: HeaderValue::from_str(&config.name).map_err(|e| err(e.to_string()))?,
            config: config.clone(),
            host,
            auth,
            key,
            connector,
            origin,
            pools: (0..=workers.max(1)).map(|_| Arc::default()).collect(),
            metrics: ProviderMetrics::new(&config.name),
            skip_until_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// `worker`'s pool (the control plane's for [`Worker::CONTROL`]).
    #[inline]
    fn pool(&self, worker: Worker) -> &Arc<Pool> {
        &self.pools[worker.0.min(self.pools.len() - 1)]
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

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection or a new one.
    /// Release the [`Lease`] once the response body has been read to its end.
    pub async fn send(
        &self,
        worker: Worker,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let pool = self.pool(worker);
        loop {
            let (mut conn, fresh) = match pool.take() {
                Some(c) => (c, false),
                // Boxed: connecting is rare, and its large future would otherwise be
                // part of (and copied with) every request's.
                None => match Box::pin(self.connect()).await {
                    Ok(c) => (c, true),
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
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        conn,
                        pool: pool.clone(),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    Some(back) => {
                        return Err(SendError::Connect(e.into_error().into(), Box::new(back)))
                    }
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, BoxError> {
        use tower::ServiceExt;
        let io = self.connector.clone().oneshot(self.origin.clone()).await?;
        let (tx, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// Closes `worker`'s connections idle for longer than the idle timeout (each worker
    /// calls it now and then, so a quiet gateway does not hold them forever).
    pub fn close_idle(&self, worker: Worker) {
        self.pool(worker).close_idle(Instant::now());
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

    /// Whether this upstream serves `config` with `key` unchanged (so its pool can be kept).
    pub fn same(&self, config: &ProviderConfig, key: &Option<String>) -> bool {
        &self.config == config && &self.key == key
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Idle keep-alive connections, most recently used last.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<VecDeque<(SendRequest<RequestBody>, Instant)>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(SendRequest<RequestBody>, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used open connection: the one most likely still warm.
    fn take(&self) -> Option<SendRequest<RequestBody>> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.lock();
        while let Some((c, since)) = idle.pop_back() {
            if now.saturating_duration_since(since) >= IDLE_TIMEOUT {
                // The freshest is too old, so all are: the provider may be closing them.
                idle.clear();
                return None;
            }
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn close_idle(&self, now: Instant) {
        self.lock().retain(|(c, since)| {
            !c.is_closed() && now.saturating_duration_since(*since) < IDLE_TIMEOUT
        });
    }
}

/// A connection carrying one exchange.
pub struct Lease {
    conn: SendRequest<RequestBody>,
    pool: Arc<Pool>,
}

impl Lease {
    /// The response was read to its end: the connection can carry the next request.
    pub fn release(self) {
        if self.conn.is_closed() {
            return;
        }
        let mut idle = self.pool.lock();
        if idle.len() < MAX_IDLE_PER_POOL {
            idle.push_back((self.conn, Instant::now()));
        }
        // Over the cap the connection is dropped here, and hyper closes it.
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Why [`Upstream::send`] failed.
pub enum SendError {
    /// No connection could be made; nothing was sent, and the request comes back.
    Connect(BoxError, Box<Request<RequestBody>>),
    /// The exchange failed once the request was on its way.
    Exchange(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e, _) => write!(f, "cannot connect: {e}"),
            SendError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// A connection over an in-memory pipe; `keep` holds the far end open.
    async fn conn() -> (SendRequest<RequestBody>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (tx, conn) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(conn);
        (tx, far)
    }

    #[tokio::test]
    async fn most_recent_first_and_expired_or_closed_ones_are_dropped() {
        let pool = Pool::default();
        let t0 = Instant::now();
        let (a, _keep_a) = conn().await;
        let (b, _keep_b) = conn().await;
        let (c, far_c) = conn().await;
        pool.lock().push_back((a, t0));
        pool.lock().push_back((b, t0 + Duration::from_secs(10)));
        pool.lock().push_back((c, t0 + Duration::from_secs(20)));

        // The provider closed `c`: skipped once hyper has seen it.
        drop(far_c);
        for _ in 0..100 {
            if pool.lock().back().is_some_and(|(c, _)| c.is_closed()) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let taken = pool.take_at(t0 + Duration::from_secs(30)).unwrap();
        assert!(!taken.is_closed());
        assert_eq!(pool.lock().len(), 1, "c dropped, b taken, a left");

        // `a` is over the idle timeout: the sweep closes it, and a take finds nothing.
        pool.lock().push_back((taken, t0 + Duration::from_secs(30)));
        pool.close_idle(t0 + IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(pool.lock().len(), 1);
        assert!(pool.take_at(t0 + Duration::from_secs(31)).is_some());

        // The freshest over the timeout means all are: the pool empties.
        let (d, _keep_d) = conn().await;
        pool.lock().push_back((d, t0));
        assert!(pool.take_at(t0 + IDLE_TIMEOUT).is_none());
        assert!(pool.lock().is_empty());
    }

    #[tokio::test]
    async fn a_pool_keeps_at_most_its_cap_of_idle_connections() {
        let pool = Arc::new(Pool::default());
        let mut far_ends = Vec::new();
        for _ in 0..MAX_IDLE_PER_POOL {
            let (c, far) = conn().await;
            far_ends.push(far);
            pool.lock().push_back((c, Instant::now()));
        }
        let (extra, _far) = conn().await;
        Lease {
            conn: extra,
            pool: pool.clone(),
        }
        .release();
        assert_eq!(pool.lock().len(), MAX_IDLE_PER_POOL);
        pool.lock().pop_back();
        let (one_more, _far2) = conn().await;
        Lease {
            conn: one_more,
            pool: pool.clone(),
        }
        .release();
        assert_eq!(
            pool.lock().len(),
            MAX_IDLE_PER_POOL,
            "under the cap it is kept"
        );
    }
}
