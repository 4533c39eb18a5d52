//! The one place switchyard builds TLS trust and outbound HTTP(S) clients: the public web
//! roots plus an optional private CA, the ring provider, TCP_NODELAY. Provider connections
//! (switchyard-proxy), webhooks (switchyard-watch), the etcd client (switchyard-store) and
//! `switchyard loadtest` all come through here, so a change of trust is made once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why a TLS setup could not be built; `setting` names the config key the file came from
/// (`ca_file`, `tls.cert` …).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {}: {error}", path.display())]
    Pem {
        setting: &'static str,
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("{setting} {}: no PEM certificate in it", path.display())]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting} {}: {error}", path.display())]
    Rejected {
        setting: &'static str,
        path: PathBuf,
        error: rustls::Error,
    },
    #[error("tls: {0}")]
    Config(#[from] rustls::Error),
}

/// The PEM certificates in `path`, at least one.
pub fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |error| TlsError::Pem {
        setting,
        path: path.to_path_buf(),
        error,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The public web roots, plus the PEM certificates in `ca_file` (a private CA) when given.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        for c in certificates("ca_file", ca)? {
            roots.add(c).map_err(|error| TlsError::Rejected {
                setting: "ca_file",
                path: ca.to_path_buf(),
                error,
            })?;
        }
    }
    Ok(roots)
}

/// A TLS client config trusting `roots` (ring, TLS 1.2 and 1.3).
pub fn tls_config(roots: RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// A TCP connector for `http://` and `https://` alike, with Nagle off (small keep-alive
/// requests otherwise stall ~40 ms on delayed ACKs).
pub fn connector(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    provider_connector(tls, connect_timeout, Some(false))
}

/// [`connector`] for a provider: `http2` `None` offers h2 and http/1.1 by ALPN (the
/// provider picks), `Some(true)` h2 only, `Some(false)` http/1.1 only. Which one a
/// connection speaks is `connected().is_negotiated_h2()`; cleartext is never negotiated.
pub fn provider_connector(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    http2: Option<bool>,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match http2 {
        None => b.enable_all_versions().wrap_connector(http),
        Some(true) => b.enable_http2().wrap_connector(http),
        Some(false) => b.enable_http1().wrap_connector(http),
    }
}

/// A pooled client for small control-plane calls (webhooks, etcd, loadtest).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// `pool_max_idle` connections per host are kept for reuse; `ca_file` is trusted beside
/// the public roots.
pub fn client(pool_max_idle: usize, ca_file: Option<&Path>) -> Result<HttpClient, TlsError> {
    let https = connector(tls_config(roots(ca_file)?)?, Duration::from_secs(5));
    // Without a timer the pool ignores its idle timeout.
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_max_idle_per_host(pool_max_idle)
        .pool_idle_timeout(POOL_IDLE)
        .build(https))
}

/// How long an idle connection is kept for reuse: under the shortest keep-alive servers
/// commonly close at (Node's 5 s). hyper-util's default of 90 s outlives most servers'
/// keep-alive, and a request sent as the server closes the connection meets a reset: an
/// hour of `switchyard loadtest` against a gateway closing at 15 s failed 4 of 9,000,000
/// requests that way (`benches/README.md`).
const POOL_IDLE: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ca_files_are_checked() {
        let public = roots(None).unwrap().len();
        assert!(public > 100, "the web's roots: {public}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(roots(Some(&empty))
            .unwrap_err()
            .to_string()
            .contains("no PEM certificate"));
        assert!(roots(Some(&dir.path().join("missing.pem"))).is_err());
        assert!(client(1, None).is_ok());
    }
}
