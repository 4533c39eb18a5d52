//! What the data plane tells the watchers about each finished request: plain data,
//! sent over a bounded queue so that watching never slows the request path.

use std::sync::Arc;
use std::time::Duration;

use crate::answer::{AnswerFacts, BadAnswer, CutShort, Endpoint};
use crate::features::FeatureFacts;

/// How an answer's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The whole body reached the client.
    Complete,
    /// The provider broke the stream part-way.
    Broken,
    /// The provider's stream went silent for `idle_timeout`.
    Idle,
    /// The client went away first; not the provider's fault.
    ClientGone,
}

impl BodyEnd {
    /// The class of an exchange whose body ended so, whatever its status, when the end
    /// alone decides it (not [`BodyEnd::Complete`]: see [`Class::of_end`]).
    pub fn class(self) -> Class {
        match self {
            BodyEnd::Complete => Class::Success,
            BodyEnd::ClientGone => Class::ClientGone,
            BodyEnd::Broken => Class::StreamCut,
            BodyEnd::Idle => Class::Timeout,
        }
    }
}

/// How a request ended, and so whose fault it was. The rules that decide it live here and
/// nowhere else — an answer by its status and shape ([`Class::of_status`],
/// [`Class::of_answer`]), by how its body ended ([`Class::of_end`], [`BodyEnd::class`]), a
/// gateway-made error by its kind ([`crate::ErrorKind::class`]) — and stats, the rollback
/// guard, metrics and the access log all read this class.
///
/// The gateway supplies the provider's key and checks client keys itself, so a provider's
/// 401/403/407 is never the client's doing ([`Class::Auth`]), and a 402/429 is the provider's
/// capacity or billing ([`Class::Refused`]). Other 4xx answers ([`Class::ClientError`]) may be
/// the client's request or a provider that does not serve it: they are not errors on their own,
/// but the judge compares how often each side gives them. A 2xx that carries no answer is
/// [`Class::BadAnswer`] (see [`crate::answer`]). What the client broke (an upload that is
/// malformed, abandoned or too large) is [`Class::ClientFault`] or [`Class::ClientGone`] and
/// never counts against anyone; but a client that gave up *waiting* for the provider's answer
/// ([`RequestEvent::abandoned_wait`]) is evidence about that provider, compared as a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// 1xx–3xx from the provider.
    #[default]
    Success,
    /// A 4xx from the provider other than auth and refusals (400, 404, 422 …).
    ClientError,
    /// 401, 403, 407 from the provider: its key is wrong or revoked.
    Auth,
    /// 402, 429 from the provider: billing or rate limit.
    Refused,
    /// 5xx from the provider.
    ServerError,
    /// No response head in time, or a stream silent for `idle_timeout`.
    Timeout,
    /// The provider could not be connected to.
    Connect,
    /// The provider cut the exchange part-way (a stream ended without its end).
    StreamCut,
    /// A 2xx with no answer in it: an error object, no choices, an empty message, an error
    /// event in a stream, a stream that stopped without its end ([`crate::answer::BadAnswer`]).
    BadAnswer,
    /// The client went away first: mid-upload or mid-answer, not the provider's fault; before
    /// the answer's head with its request sent, an abandoned wait (see
    /// [`RequestEvent::abandoned_wait`]).
    ClientGone,
    /// The client's request could not be forwarded as sent (malformed or oversized body,
    /// unforwardable path): refused by the gateway, not the provider's fault.
    ClientFault,
}

impl Class {
    pub const ALL: [Class; 11] = [
        Class::Success,
        Class::ClientError,
        Class::Auth,
        Class::Refused,
        Class::ServerError,
        Class::Timeout,
        Class::Connect,
        Class::StreamCut,
        Class::BadAnswer,
        Class::ClientGone,
        Class::ClientFault,
    ];

    /// The class of an answer the provider completed with `status`.
    pub fn of_status(status: u16) -> Class {
        match status {
            401 | 403 | 407 => Class::Auth,
            402 | 429 => Class::Refused,
            400..=499 => Class::ClientError,
            500..=599 => Class::ServerError,
            _ => Class::Success,
        }
    }

    /// The class of an answer the provider completed with `status` and whose body was read
    /// to its end: by status, and a 2xx by whether it carried an answer (`facts`, when the
    /// body was read: a JSON or SSE answer).
    pub fn of_answer(
        status: u16,
        endpoint: Endpoint,
        stream: bool,
        facts: Option<&AnswerFacts>,
    ) -> (Class, Option<BadAnswer>) {
        match Class::of_status(status) {
            Class::Success if (200..300).contains(&status) => {
                match facts.and_then(|f| f.bad_answer(endpoint, stream)) {
                    Some(shape) => (Class::BadAnswer, Some(shape)),
                    None => (Class::Success, None),
                }
            }
            class => (class, None),
        }
    }

    /// The class of an exchange whose answer's head came with `status`, once its body
    /// ended as `end`: what the provider answered, how its body ended, and whether a 2xx
    /// carried an answer (`facts`, when read).
    pub fn of_end(
        end: BodyEnd,
        status: u16,
        endpoint: Endpoint,
        stream: bool,
        facts: Option<&AnswerFacts>,
    ) -> (Class, Option<BadAnswer>) {
        match end {
            BodyEnd::Complete => Class::of_answer(status, endpoint, stream, facts),
            cut => (cut.class(), None),
        }
    }

    /// Counts against the provider: 5xx, timeouts, connect errors, cut streams, answers with
    /// no answer in them, and its refusals (auth, refused). The judge may leave the refusals
    /// out by config.
    pub fn is_provider_error(self) -> bool {
        matches!(
            self,
            Class::ServerError
                | Class::Timeout
                | Class::Connect
                | Class::StreamCut
                | Class::BadAnswer
                | Class::Auth
                | Class::Refused
        )
    }

    /// Whether the outcome says anything about the provider: false for what the client
    /// broke or abandoned. Such requests are left out of the judge's windows.
    pub fn judges_provider(self) -> bool {
        !matches!(self, Class::ClientGone | Class::ClientFault)
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Success => "2xx",
            Class::ClientError => "4xx",
            Class::Auth => "auth",
            Class::Refused => "refused",
            Class::ServerError => "5xx",
            Class::Timeout => "timeout",
            Class::Connect => "connect_error",
            Class::StreamCut => "stream_cut",
            Class::BadAnswer => "bad_answer",
            Class::ClientGone => "client_gone",
            Class::ClientFault => "client_fault",
        }
    }
}

/// `Default` is a success of no provider, for building events field by field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestEvent {
    pub provider: Arc<str>,
    /// The migration that routed it (an index into the config's `migrations`); `None`:
    /// no migration matched, it went to `default_provider`.
    pub migration: Option<u16>,
    /// That migration state's epoch when the request started: judgements only use
    /// requests of the current phase.
    pub epoch: u64,
    pub class: Class,
    /// Whole exchange, to the end of the response body.
    pub latency: Duration,
    /// To the response head; for SSE streams, to the first content chunk.
    pub ttfb: Option<Duration>,
    /// How long the client took to upload its body: the provider's time starts after it.
    pub upload: Duration,
    /// Whether the answer was an SSE stream.
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost on this provider; `None` when the model has no price.
    pub cost_usd: Option<f64>,
    /// What the same tokens would have cost on the other provider of the migration.
    pub cost_if_other_usd: Option<f64>,
    /// [`Class::BadAnswer`]: which shape.
    pub bad_answer: Option<BadAnswer>,
    /// An answer that ended for `length` or `content_filter` though the client did not ask.
    pub cut_short: Option<CutShort>,
    /// [`Class::ClientGone`] before the answer's head, once the request had been sent whole:
    /// how long the client waited for the provider before it gave up.
    pub waited: Option<Duration>,
    /// The request's model, hashed ([`model_key`]; 0: none read): latencies are compared
    /// within a model.
    pub model: u64,
    /// The routing bucket of the request's key: its cohort (a sticky user is one).
    pub key: u16,
    /// Which configured client key sent it, when client keys are configured.
    pub client: Option<u16>,
    /// It went on a connection opened for it: connection setup is not provider slowness.
    pub cold: bool,
    /// A copy of a `to` request sent to `from` as the judge's live control (answer
    /// discarded), not a request a client was served.
    pub control: bool,
    /// What the request asked of its answer beyond text, and what the answer honoured
    /// (successful answers only).
    pub features: FeatureFacts,
    /// A successful answer of an API that reports usage, whose usage could not be read:
    /// its tokens and cost are unknown (not counted as 0 silently).
    pub unmetered: bool,
}

/// A model name as the judge compares it: a stable hash (never 0).
pub fn model_key(model: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(model.as_bytes()).max(1)
}

impl RequestEvent {
    /// The client gave up waiting for this provider's answer (its request was sent whole,
    /// no head came). The same clients with the same patience reach both sides of a
    /// migration, so how often this happens is compared between them like an error rate.
    pub fn abandoned_wait(&self) -> bool {
        self.class == Class::ClientGone && self.waited.is_some()
    }

    /// Whether the judge counts this request: what the provider answered or failed, and
    /// waits abandoned on it; not what the client broke or left mid-answer.
    pub fn judged(&self) -> bool {
        self.class.judges_provider() || self.abandoned_wait()
    }

    /// The latency the judge holds against the provider: time to first token for streams
    /// (a long answer is not a slow provider), the whole exchange otherwise, each counted
    /// from the end of the client's upload (a slow client is not a slow provider).
    pub fn judged_latency(&self) -> Duration {
        let from_start = if self.stream {
            self.ttfb.unwrap_or(self.latency)
        } else {
            self.latency
        };
        from_start.saturating_sub(self.upload)
    }
}

/// One mirrored request: the primary's answer and the shadow's, side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowEvent {
    /// `completed`, or why there is no comparison: `error`, `timeout`, `dropped`
    /// (too many in flight), `too_large` (body over the shadow limit), `aborted`
    /// (the primary request never finished sending its body).
    pub result: &'static str,
    /// The migration whose `from` was shadowed to its `to` (an index into the config's).
    pub migration: Option<u16>,
    pub comparison: Option<ShadowComparison>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShadowComparison {
    pub primary_status: u16,
    pub shadow_status: u16,
    /// Each side's outcome, classified as a served answer is.
    pub primary_class: Class,
    pub shadow_class: Class,
    pub primary_cut: Option<CutShort>,
    pub shadow_cut: Option<CutShort>,
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
    /// What the request asked beyond text, and what each side honoured.
    pub primary_features: FeatureFacts,
    pub shadow_features: FeatureFacts,
    /// The request's id, to show as an example.
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::Class;

    #[test]
    fn provider_answers_are_attributed_by_status() {
        for (status, class) in [
            (200, Class::Success),
            (304, Class::Success),
            (400, Class::ClientError),
            (404, Class::ClientError),
            (422, Class::ClientError),
            (401, Class::Auth),
            (403, Class::Auth),
            (407, Class::Auth),
            (402, Class::Refused),
            (429, Class::Refused),
            (500, Class::ServerError),
            (503, Class::ServerError),
        ] {
            assert_eq!(Class::of_status(status), class, "{status}");
        }
        assert!(Class::Auth.is_provider_error() && Class::Refused.is_provider_error());
        assert!(Class::BadAnswer.is_provider_error() && Class::BadAnswer.judges_provider());
        assert!(!Class::ClientError.is_provider_error());
        assert!(!Class::ClientFault.is_provider_error() && !Class::ClientFault.judges_provider());
        assert!(!Class::ClientGone.judges_provider());
        let labels: std::collections::BTreeSet<_> = Class::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), Class::ALL.len(), "labels are distinct");
    }
}
