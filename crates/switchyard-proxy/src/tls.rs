//! The optional TLS listener (`tls: {cert, key}`), on rustls.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use switchyard_http::TlsError;
use tokio_rustls::TlsAcceptor;

pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = switchyard_http::certificates("tls.cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Pem {
        setting: "tls.key",
        path: key.to_path_buf(),
        error,
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
