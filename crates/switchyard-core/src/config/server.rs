//! The listeners and their limits: `listen`, `tls:`, `admin:`, `clients:`, `server:`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Collector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClients {
    pub(super) keys_env: String,
    pub(super) limits: Option<RawClientLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientLimits {
    pub(super) requests_per_second: Option<f64>,
    pub(super) burst: Option<u32>,
    pub(super) max_concurrent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) max_body_size: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_header_size: Option<String>,
    pub(super) max_headers: Option<usize>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) shutdown_delay: Option<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) access_log: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientsConfig {
    pub keys_env: String,
    /// Limits each key gets on its own (per replica).
    pub limits: ClientLimits,
}

/// Per client key: a request rate (token bucket) and requests in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClientLimits {
    /// `None`: no rate limit.
    pub requests_per_second: Option<f64>,
    /// Requests a key may make at once above its rate (the bucket's size).
    pub burst: u32,
    /// `None`: no limit.
    pub max_concurrent: Option<u32>,
}

impl ClientLimits {
    pub fn any(&self) -> bool {
        self.requests_per_second.is_some() || self.max_concurrent.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
    /// On SIGTERM: `/readyz` answers 503 at once while the listener keeps serving this
    /// long, so load balancers stop sending before the gateway stops accepting.
    pub shutdown_delay: Duration,
    /// A client connection with no answer in progress this long is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike).
    pub keepalive_timeout: Duration,
    pub access_log: bool,
}

pub(super) fn server(raw: Option<&RawServer>, c: &mut Collector) -> ServerConfig {
    let s = raw;
    let max_body_bytes = c.size(
        "server.max_body_size",
        s.and_then(|s| s.max_body_size.as_ref()),
        10 << 20,
    );
    let max_header_bytes = c.size(
        "server.max_header_size",
        s.and_then(|s| s.max_header_size.as_ref()),
        64 << 10,
    );
    if max_header_bytes < 8192 {
        c.err("server.max_header_size", "must be at least 8KiB");
    }
    let max_headers = s.and_then(|s| s.max_headers).unwrap_or(100);
    if max_headers == 0 {
        c.err("server.max_headers", "must be at least 1");
    }
    let max_connections = s.and_then(|s| s.max_connections).unwrap_or(10_000);
    if max_connections == 0 {
        c.err("server.max_connections", "must be at least 1");
    }
    ServerConfig {
        max_body_bytes,
        max_connections,
        header_read_timeout: c.duration(
            "server.header_read_timeout",
            s.and_then(|s| s.header_read_timeout.as_ref()),
            Duration::from_secs(30),
        ),
        max_header_bytes: max_header_bytes as usize,
        max_headers,
        shutdown_grace: c.duration(
            "server.shutdown_grace",
            s.and_then(|s| s.shutdown_grace.as_ref()),
            Duration::from_secs(30),
        ),
        shutdown_delay: c.duration(
            "server.shutdown_delay",
            s.and_then(|s| s.shutdown_delay.as_ref()),
            Duration::from_secs(5),
        ),
        keepalive_timeout: c.duration(
            "server.keepalive_timeout",
            s.and_then(|s| s.keepalive_timeout.as_ref()),
            Duration::from_secs(75),
        ),
        access_log: s.and_then(|s| s.access_log).unwrap_or(true),
    }
}
