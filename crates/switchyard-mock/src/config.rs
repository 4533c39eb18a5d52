//! How a mock behaves for the whole server.

use std::net::SocketAddr;
use std::time::Duration;

use crate::fault::Fault;
use crate::features::Ignore;

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Shown in answers ("Hello from NAME") and in `x-mock-provider`.
    pub name: String,
    pub addr: SocketAddr,
    /// Delay before every response head.
    pub latency: Duration,
    /// Share of requests (0..1) answered with 500, chosen by a fixed sequence.
    pub error_rate: f64,
    pub chunks: usize,
    pub chunk_delay: Duration,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(String, String)>,
    /// Answer every request with this status (and an OpenAI error body), as a provider
    /// that refuses everything does.
    pub status: Option<u16>,
    /// Only `Authorization: Bearer <this>` is served; anything else gets 401, as from a
    /// provider whose key was mistyped or revoked.
    pub api_key: Option<String>,
    /// The models it serves; another model gets 404 `model_not_found`. Empty: any.
    pub models: Vec<String>,
    /// Speak HTTP/1.1 only: no h2c, and only `http/1.1` offered by ALPN. Otherwise both
    /// (h2 preferred by ALPN, h2c by prior knowledge), as real providers do.
    pub http1_only: bool,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (hyper's default: 200).
    pub http2_max_streams: Option<u32>,
    /// Break every chat completion this way (still answering 200).
    pub fault: Option<Fault>,
    /// Leave these parameters unanswered, as relays that drop them do.
    pub ignore: Ignore,
    /// Answer 400 to a chat request that carries `stream_options`, as providers that do
    /// not know the parameter do (older Azure OpenAI API versions).
    pub reject_stream_options: bool,
    /// Keep at most this many received requests, the newest (`None`: every one, as tests
    /// read them). A mock serving for hours (`switchyard mock`, the soak) would otherwise
    /// grow by every request it served.
    pub keep_received: Option<usize>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".into(),
            addr: "127.0.0.1:0".parse().expect("literal address"),
            latency: Duration::ZERO,
            error_rate: 0.0,
            chunks: 5,
            chunk_delay: Duration::from_millis(10),
            tls: None,
            status: None,
            api_key: None,
            models: Vec::new(),
            http1_only: false,
            http2_max_streams: None,
            fault: None,
            ignore: Ignore::default(),
            reject_stream_options: false,
            keep_received: None,
        }
    }
}
