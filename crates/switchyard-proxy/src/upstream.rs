//! One pooled HTTP/1.1 client per provider (hyper-util legacy client over rustls).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use switchyard_core::config::ProviderConfig;

use crate::body::RequestBody;
use crate::metrics::ProviderMetrics;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// How many proxy workers there are: set once at start, before any upstream is built.
pub fn set_workers(n: usize) {
    WORKERS.store(n.max(1), Ordering::Relaxed);
}

pub fn workers() -> usize {
    WORKERS.load(Ordering::Relaxed)
}

/// Marks the calling thread as proxy worker `i` (its requests use pool `i`).
pub fn enter_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

pub struct Upstream {
    pub name: Arc<str>,
    /// Value of `x-switchyard-provider`.
    pub name_header: HeaderValue,
    pub config: ProviderConfig,
    pub scheme: Scheme,
    pub authority: Authority,
    pub host: HeaderValue,
    /// `Bearer <key>`, marked sensitive so hyper and our logs never print it.
    pub auth: Option<HeaderValue>,
    /// The key as read, to tell on reload whether the client can be kept.
    key: Option<String>,
    /// One pool per proxy worker (each a single-threaded runtime) plus one for the control
    /// plane, so a connection is only ever driven by the thread that uses it.
    clients: Box<[UpstreamClient]>,
    pub metrics: ProviderMetrics,
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
    /// Builds a provider's client. `key` is the value of its `api_key_env`.
    pub fn build(config: &ProviderConfig, key: Option<String>) -> Result<Upstream, BuildError> {
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Nagle plus delayed ACK stalls small keep-alive requests by ~40 ms.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &config.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| err(format!("ca_file {}: {e}", ca.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("ca_file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(err(format!(
                    "ca_file {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| err(format!("ca_file {}: {e}", ca.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // HTTP/1.1 only: HTTP/2 would multiplex every request onto one capped connection.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let clients = (0..=workers())
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    // Without a timer the pool never expires idle connections.
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(connector.clone())
            })
            .collect();
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            name_header: HeaderValue::from_str(&config.name).map_err(|e| err(e.to_string()))?,
            config: config.clone(),
            scheme: if config.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority,
            host,
            auth,
            key,
            clients,
            metrics: ProviderMetrics::new(&config.name),
        })
    }

    /// The pool of the calling thread's worker (the control plane's on other threads).
    #[inline]
    pub fn client(&self) -> &UpstreamClient {
        let i = WORKER.with(Cell::get).min(self.clients.len() - 1);
        &self.clients[i]
    }

    /// Whether this upstream serves `config` with `key` unchanged (so its pool can be kept).
    pub fn same(&self, config: &ProviderConfig, key: &Option<String>) -> bool {
        &self.config == config && &self.key == key
    }
}
