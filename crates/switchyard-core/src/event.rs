//! What the data plane tells the watchers about each finished request: plain data,
//! sent over a bounded queue so that watching never slows the request path.

use std::sync::Arc;
use std::time::Duration;

/// How a request ended, as the stats and the rollback guard see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 1xx–3xx from the provider.
    Success,
    /// 4xx: the client's fault, never counted against the provider.
    ClientError,
    /// 5xx from the provider.
    ServerError,
    /// No response head in time, or a stream silent for `idle_timeout`.
    Timeout,
    /// The provider could not be connected to.
    Connect,
    /// The provider cut the exchange part-way (a stream ended without its end).
    StreamCut,
    /// The client went away first: not the provider's fault.
    ClientGone,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Success,
        Class::ClientError,
        Class::ServerError,
        Class::Timeout,
        Class::Connect,
        Class::StreamCut,
        Class::ClientGone,
    ];

    /// Counts against the provider: 5xx, timeouts, connect errors, cut streams.
    pub fn is_provider_error(self) -> bool {
        matches!(
            self,
            Class::ServerError | Class::Timeout | Class::Connect | Class::StreamCut
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Success => "2xx",
            Class::ClientError => "4xx",
            Class::ServerError => "5xx",
            Class::Timeout => "timeout",
            Class::Connect => "connect_error",
            Class::StreamCut => "stream_cut",
            Class::ClientGone => "client_gone",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    pub provider: Arc<str>,
    /// The migration state's epoch when the request started: judgements only use
    /// requests of the current phase.
    pub epoch: u64,
    pub class: Class,
    /// Whole exchange, to the end of the response body.
    pub latency: Duration,
    /// To the response head; for SSE streams, to the first content chunk.
    pub ttfb: Option<Duration>,
    /// Whether the answer was an SSE stream.
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost on this provider; `None` when the model has no price.
    pub cost_usd: Option<f64>,
    /// What the same tokens would have cost on the other provider of the migration.
    pub cost_if_other_usd: Option<f64>,
}

impl RequestEvent {
    /// The latency the guard and the gates judge: time to first token for streams (a long
    /// answer is not a slow provider), the whole exchange otherwise.
    pub fn judged_latency(&self) -> Duration {
        if self.stream {
            self.ttfb.unwrap_or(self.latency)
        } else {
            self.latency
        }
    }
}

/// One mirrored request: the primary's answer and the shadow's, side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowEvent {
    /// `completed`, or why there is no comparison: `error`, `timeout`, `dropped`
    /// (too many in flight), `too_large` (body over the shadow limit), `aborted`
    /// (the primary request never finished sending its body).
    pub result: &'static str,
    pub comparison: Option<ShadowComparison>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShadowComparison {
    pub primary_status: u16,
    pub shadow_status: u16,
    pub primary_latency: Duration,
    pub shadow_latency: Duration,
    pub primary_ttft: Option<Duration>,
    pub shadow_ttft: Option<Duration>,
    pub primary_tokens: (u64, u64),
    pub shadow_tokens: (u64, u64),
    pub primary_cost_usd: Option<f64>,
    pub shadow_cost_usd: Option<f64>,
    /// Both answers had text and it is the same.
    pub exact_match: bool,
    /// Sørensen–Dice similarity of the two texts (0..1), when both had text.
    pub similarity: Option<f64>,
    /// When the request asked for JSON (`response_format`): whether each answer's text parses.
    pub primary_json_valid: Option<bool>,
    pub shadow_json_valid: Option<bool>,
}
