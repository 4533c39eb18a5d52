//! What one attempt at a provider is accounted as: its status and class, what its body
//! told (usage, facts, details), whether it was cut short, which asked-for features it
//! honoured, and whether its cost can be known.

use std::time::Duration;

use switchyard_core::answer::Endpoint;
use switchyard_core::event::{BodyEnd, Class};
use switchyard_core::features::{Asked, FeatureFacts};

use crate::access::Detail;
use crate::request_body::RequestShared;
use crate::response_body::BodySummary;

/// What a request whose body was not read asked: nothing beyond text.
static NOTHING_ASKED: Asked = Asked {
    tools: Vec::new(),
    json_object: false,
    json_schema: None,
    stream_usage: false,
    logprobs: false,
    n: 1,
};

/// An answer's head, as its end is accounted.
pub(crate) struct Ended {
    pub(crate) status: u16,
    pub(crate) first_byte: Duration,
    /// Counted in `open_streams` (an SSE answer).
    pub(crate) stream: bool,
    /// On a connection opened for it.
    pub(crate) cold: bool,
}

/// One attempt at a provider, as it is accounted.
pub(crate) struct Accounted {
    pub(crate) status: u16,
    pub(crate) class: Class,
    pub(crate) ttfb: Option<Duration>,
    pub(crate) summary: BodySummary,
    /// This attempt is the answer (not one that failed over): a shadow meets it.
    pub(crate) answer: bool,
    pub(crate) detail: Detail,
    /// It went on a connection opened for it.
    pub(crate) cold: bool,
    pub(crate) features: FeatureFacts,
    /// A successful answer whose usage could not be read.
    pub(crate) unmetered: bool,
}

impl Accounted {
    /// The answer, with `status` and `class`, and nothing else known.
    pub(crate) fn answer(status: u16, class: Class) -> Accounted {
        Accounted {
            status,
            class,
            ttfb: None,
            summary: BodySummary::default(),
            answer: true,
            detail: Detail::default(),
            cold: false,
            features: FeatureFacts::default(),
            unmetered: false,
        }
    }

    /// An answer read to its end (or to where it broke off).
    pub(crate) fn ended(
        head: Ended,
        end: BodyEnd,
        summary: BodySummary,
        endpoint: Endpoint,
        shared: Option<&RequestShared>,
        strip_usage: bool,
    ) -> Accounted {
        let (class, bad_answer) = Class::of_end(
            end,
            head.status,
            endpoint,
            head.stream,
            summary.facts.as_ref(),
        );
        let success = class == Class::Success;
        let cut_short = summary.facts.filter(|_| success).and_then(|f| {
            f.cut_short(
                shared.and_then(|s| s.max_tokens()),
                summary.usage.map(|u| u.1),
            )
        });
        let (features, unmetered) = if success {
            let asked = shared.and_then(|s| s.asked());
            let features = crate::features::judge(
                asked.unwrap_or(&NOTHING_ASKED),
                endpoint,
                strip_usage,
                summary.facts.as_ref(),
                summary.usage.is_some(),
                summary.details.as_deref(),
            );
            (features, endpoint.metered() && summary.usage.is_none())
        } else {
            (FeatureFacts::default(), false)
        };
        Accounted {
            ttfb: Some(head.first_byte),
            summary,
            detail: Detail {
                bad_answer,
                cut_short,
                waited: None,
            },
            cold: head.cold,
            features,
            unmetered,
            ..Accounted::answer(head.status, class)
        }
    }
}
