//! What the gateway answers by itself, and the errors the request path passes around. The
//! kind of a gateway-made error ([`ErrorKind`], in core) decides its status, its OpenAI
//! `type` and `code`, and whose fault it is ([`ErrorKind::class`]); this module turns it
//! into a response, in one place.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use switchyard_core::ErrorKind;

use crate::headers::{X_REQUEST_ID, X_SWITCHYARD_PROVIDER};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a snapshot (its providers' clients, its client keys, its routing) could not be built
/// from a config that parsed: the config is refused, and the running one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("providers.{provider}: {problem}")]
    Provider {
        provider: String,
        problem: Box<ProviderProblem>,
    },
    #[error("clients.keys_env: {keys_env} is not set or holds no key; refusing to serve with client keys required but none known")]
    NoClientKeys { keys_env: String },
    #[error("migration.sticky_header: {0}")]
    StickyHeader(#[from] http::header::InvalidHeaderName),
}

/// What is wrong with a provider for its client to be built.
#[derive(Debug, thiserror::Error)]
pub enum ProviderProblem {
    #[error("bad host: {0}")]
    Host(#[source] BoxError),
    #[error("the key in {env} has characters not allowed in a header")]
    KeyNotAHeader { env: String },
    #[error("{0}")]
    Name(#[from] http::header::InvalidHeaderValue),
    #[error(transparent)]
    Tls(#[from] switchyard_http::TlsError),
    #[error("bad base_url: {0}")]
    BaseUrl(#[from] http::Error),
}

/// `x-switchyard-provider` on answers the gateway gave before choosing a provider.
pub static GATEWAY_ITSELF: HeaderValue = HeaderValue::from_static("switchyard");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// An OpenAI-shaped error answer of the gateway's own, `provider` naming who it is about
/// (the gateway itself before a provider was chosen).
pub fn error_response<B: From<Bytes>>(
    kind: ErrorKind,
    message: &str,
    request_id: &HeaderValue,
    provider: &HeaderValue,
) -> Response<B> {
    let mut r = Response::new(B::from(Bytes::from(kind.body(message))));
    *r.status_mut() =
        StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON.clone());
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    h.insert(X_SWITCHYARD_PROVIDER.clone(), provider.clone());
    if kind == ErrorKind::Unauthorized {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The request body went over `server.max_body_size`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl BodyTooLarge {
    /// What the client is told.
    pub fn message(limit: u64) -> String {
        format!("request body is larger than the limit of {limit} bytes")
    }
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&BodyTooLarge::message(self.0))
    }
}

impl std::error::Error for BodyTooLarge {}

/// The provider's stream went silent for longer than `idle_timeout`.
#[derive(Debug)]
pub struct StreamIdle(pub Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

/// Reading the client's request body failed: the upload was malformed, or the client went
/// away part-way. The client's doing, never the provider's.
#[derive(Debug)]
pub struct ClientBodyError {
    /// The client hung up (or its connection broke) rather than sending a bad body.
    pub gone: bool,
    source: BoxError,
}

impl ClientBodyError {
    /// A body that must be JSON and is not.
    pub fn not_json() -> Self {
        ClientBodyError {
            gone: false,
            source: "it is not valid JSON (the API requires a JSON body)".into(),
        }
    }

    /// A body whose start (the part that names the model) did not come within `waited`.
    pub fn too_slow(waited: std::time::Duration) -> Self {
        ClientBodyError {
            gone: false,
            source: format!(
                "its start did not arrive within {waited:?} (server.header_read_timeout)"
            )
            .into(),
        }
    }

    pub fn of(e: BoxError) -> Self {
        // hyper reports a malformed chunked body as InvalidInput/InvalidData; an upload cut
        // short as UnexpectedEof or an incomplete message.
        let mut malformed = false;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                malformed = matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                );
            }
            cur = err.source();
        }
        ClientBodyError {
            gone: !malformed,
            source: e,
        }
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gone {
            write!(
                f,
                "the client stopped sending its request body: {}",
                self.source
            )
        } else {
            write!(f, "the client's request body is malformed: {}", self.source)
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pub(crate) fn has_source<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    source_of::<T>(e).is_some()
}

pub(crate) fn source_of<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Prints an error with its causes: the top-level message alone says little.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_upload_is_the_clients_and_says_how() {
        let io = |kind| -> BoxError { Box::new(std::io::Error::new(kind, "x")) };
        assert!(!ClientBodyError::of(io(std::io::ErrorKind::InvalidInput)).gone);
        assert!(!ClientBodyError::of(io(std::io::ErrorKind::InvalidData)).gone);
        assert!(ClientBodyError::of(io(std::io::ErrorKind::UnexpectedEof)).gone);
        assert!(ClientBodyError::of("connection error".into()).gone);
        let wrapped: BoxError = Box::new(ClientBodyError::of(io(std::io::ErrorKind::InvalidInput)));
        let found = source_of::<ClientBodyError>(&*wrapped).unwrap();
        assert!(found.to_string().contains("malformed"));
        assert!(has_source::<ClientBodyError>(&*wrapped));
        assert_eq!(
            BodyTooLarge(10).to_string(),
            "request body is larger than the limit of 10 bytes"
        );
    }
}
