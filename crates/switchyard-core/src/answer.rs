//! Whether a 2xx answer carries an answer: the facts the data plane reads from a body as it
//! streams by ([`AnswerFacts`]), and the pure rules that turn them into a class.
//!
//! Relays that break often keep answering 200: an OpenAI error object instead of a
//! completion, `choices: []`, an empty message, a `data: {"error": …}` event in a stream, or
//! a stream that just stops with neither a `finish_reason` nor `[DONE]`. Each of these is the
//! provider's failure (the outcome class `bad_answer`, with the shape as its detail).
//! An answer that ends for `length` or `content_filter` is an answer, but cut short
//! ([`CutShort`]): the judge compares how often each side does it, and does not take the
//! speed of a cut answer as speed.

/// What kind of API a request calls: which answer shapes are possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/chat/completions`
    Chat,
    /// `/completions` (legacy text completions)
    Completions,
    /// `/responses` (OpenAI's Responses API)
    Responses,
    /// `/embeddings`
    Embeddings,
    /// Anything else (`/models`, files …): only an error object is known to be wrong.
    Other,
}

impl Endpoint {
    /// Whether its answers report their usage (tokens): one that does not is unmetered.
    pub fn metered(self) -> bool {
        !matches!(self, Endpoint::Other)
    }

    /// The endpoint of a request path (`/v1/chat/completions`, or any prefix before it).
    pub fn of(method_is_post: bool, path: &str) -> Endpoint {
        if !method_is_post {
            return Endpoint::Other;
        }
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Endpoint::Chat
        } else if path.ends_with("/completions") {
            Endpoint::Completions
        } else if path.ends_with("/responses") {
            Endpoint::Responses
        } else if path.ends_with("/embeddings") {
            Endpoint::Embeddings
        } else {
            Endpoint::Other
        }
    }

    /// Whether its requests must be JSON (the OpenAI APIs that generate or embed): a body
    /// the gateway sees is not JSON is the client's fault, refused before any provider.
    pub fn requires_json(self) -> bool {
        self != Endpoint::Other
    }

    /// Whether its answers are generated text (choices, a finish reason, a stream's end).
    pub fn generates(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Responses
        )
    }
}

/// The shape of a 2xx that carried no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadAnswer {
    /// An error object (`{"error": {…}}`) instead of an answer.
    ErrorObject,
    /// A completion with no choices (`choices: []`, or a Responses answer with no output).
    NoChoices,
    /// A choice whose message has no content, no tool call and no refusal.
    EmptyMessage,
    /// An `error` event in a stream (`data: {"error": …}`, `event: error`, `response.failed`).
    ErrorEvent,
    /// A stream that ended cleanly with neither a `finish_reason` nor `[DONE]`.
    Unfinished,
}

impl BadAnswer {
    pub const ALL: [BadAnswer; 5] = [
        BadAnswer::ErrorObject,
        BadAnswer::NoChoices,
        BadAnswer::EmptyMessage,
        BadAnswer::ErrorEvent,
        BadAnswer::Unfinished,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BadAnswer::ErrorObject => "error_object",
            BadAnswer::NoChoices => "no_choices",
            BadAnswer::EmptyMessage => "empty_message",
            BadAnswer::ErrorEvent => "error_event",
            BadAnswer::Unfinished => "unfinished_stream",
        }
    }
}

/// Why an answer ended, as its `finish_reason` (or the Responses API's status) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finish {
    /// `stop`, `tool_calls`, `function_call` and any reason not known to cut an answer.
    Stop,
    /// `length` (`max_tokens` in some dialects; `incomplete` for max_output_tokens).
    Length,
    /// `content_filter` (`safety` and `recitation` in some dialects).
    ContentFilter,
}

impl Finish {
    /// A `finish_reason` value.
    pub fn of_reason(reason: &[u8]) -> Finish {
        match reason {
            b"length" | b"max_tokens" | b"max_output_tokens" => Finish::Length,
            b"content_filter" | b"safety" | b"recitation" => Finish::ContentFilter,
            _ => Finish::Stop,
        }
    }

    /// Of two choices' reasons, the one that says most about the answer (a cut beats a stop).
    pub fn worst(a: Option<Finish>, b: Finish) -> Finish {
        a.map_or(b, |a| a.max(b))
    }
}

/// An answer that ended before it was whole, though the client did not ask for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CutShort {
    /// `finish_reason: length` below the request's own `max_tokens` (or with none set).
    Length,
    /// `finish_reason: content_filter`.
    ContentFilter,
}

impl CutShort {
    pub const ALL: [CutShort; 2] = [CutShort::Length, CutShort::ContentFilter];

    pub fn label(self) -> &'static str {
        match self {
            CutShort::Length => "length",
            CutShort::ContentFilter => "content_filter",
        }
    }
}

/// What the data plane read from an answer as it streamed by. Filled in pieces (each JSON
/// value, each SSE event), judged once at the end ([`AnswerFacts::bad_answer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerFacts {
    /// A top-level `error` that is not null (JSON answers).
    pub error_object: bool,
    /// An error event in a stream.
    pub error_event: bool,
    /// JSON: elements of `choices` (or of a Responses answer's `output`). SSE: events that
    /// carried at least one choice (or a Responses output event).
    pub choices: u32,
    /// Any text, tool call, function call or refusal.
    pub content: bool,
    /// The finish reason seen (of several choices, the worst).
    pub finish: Option<Finish>,
    /// SSE: `[DONE]`, or the Responses API's closing event.
    pub done: bool,
}

impl AnswerFacts {
    /// The shape of a 2xx answer of `endpoint` read to its end that carried no answer, or
    /// `None` for a real answer. `stream`: it was an SSE stream.
    pub fn bad_answer(&self, endpoint: Endpoint, stream: bool) -> Option<BadAnswer> {
        if self.error_object {
            return Some(BadAnswer::ErrorObject);
        }
        if stream && self.error_event {
            return Some(BadAnswer::ErrorEvent);
        }
        if !endpoint.generates() {
            return None;
        }
        if stream && !self.done && self.finish.is_none() {
            return Some(BadAnswer::Unfinished);
        }
        if self.choices == 0 {
            return Some(BadAnswer::NoChoices);
        }
        // A filtered or cut answer may be empty: that is a cut, judged as one.
        let cut = matches!(self.finish, Some(Finish::Length | Finish::ContentFilter));
        if !self.content && !cut {
            return Some(BadAnswer::EmptyMessage);
        }
        None
    }

    /// Whether the answer was cut short although the client did not ask for it: a
    /// `content_filter`, or a `length` below the request's own `max_tokens` (`asked`; with
    /// none set, any `length` is the provider's limit). When the answer's length is not known
    /// (`completion_tokens`: no usage), a `length` with `max_tokens` set is taken as asked.
    pub fn cut_short(
        &self,
        asked: Option<u64>,
        completion_tokens: Option<u64>,
    ) -> Option<CutShort> {
        match self.finish? {
            Finish::ContentFilter => Some(CutShort::ContentFilter),
            Finish::Length => match (asked, completion_tokens) {
                (None, _) => Some(CutShort::Length),
                (Some(max), Some(got)) if got < max => Some(CutShort::Length),
                _ => None,
            },
            Finish::Stop => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> AnswerFacts {
        AnswerFacts {
            choices: 1,
            content: true,
            finish: Some(Finish::Stop),
            done: true,
            ..AnswerFacts::default()
        }
    }

    #[test]
    fn each_hidden_failure_has_its_shape() {
        let chat = Endpoint::Chat;
        assert_eq!(answer().bad_answer(chat, false), None);
        assert_eq!(answer().bad_answer(chat, true), None);
        let error = AnswerFacts {
            error_object: true,
            ..answer()
        };
        assert_eq!(error.bad_answer(chat, false), Some(BadAnswer::ErrorObject));
        // An error object is wrong in any 2xx, embeddings and model lists included.
        assert_eq!(
            error.bad_answer(Endpoint::Embeddings, false),
            Some(BadAnswer::ErrorObject)
        );
        let none = AnswerFacts {
            choices: 0,
            content: false,
            ..answer()
        };
        assert_eq!(none.bad_answer(chat, false), Some(BadAnswer::NoChoices));
        assert_eq!(none.bad_answer(Endpoint::Embeddings, false), None);
        let empty = AnswerFacts {
            content: false,
            ..answer()
        };
        assert_eq!(empty.bad_answer(chat, false), Some(BadAnswer::EmptyMessage));
        let event = AnswerFacts {
            error_event: true,
            ..answer()
        };
        assert_eq!(event.bad_answer(chat, true), Some(BadAnswer::ErrorEvent));
        let stopped = AnswerFacts {
            finish: None,
            done: false,
            ..answer()
        };
        assert_eq!(stopped.bad_answer(chat, true), Some(BadAnswer::Unfinished));
        // Either end marker is enough: some relays send no [DONE], some no finish_reason.
        let no_done = AnswerFacts {
            done: false,
            ..answer()
        };
        assert_eq!(no_done.bad_answer(chat, true), None);
        let no_reason = AnswerFacts {
            finish: None,
            ..answer()
        };
        assert_eq!(no_reason.bad_answer(chat, true), None);
        // A filtered answer with no text is a cut, not an empty message.
        let filtered = AnswerFacts {
            content: false,
            finish: Some(Finish::ContentFilter),
            ..answer()
        };
        assert_eq!(filtered.bad_answer(chat, false), None);
        assert_eq!(
            filtered.cut_short(None, None),
            Some(CutShort::ContentFilter)
        );
    }

    #[test]
    fn a_cut_is_judged_against_the_requests_own_max_tokens() {
        let length = AnswerFacts {
            finish: Some(Finish::Length),
            ..answer()
        };
        assert_eq!(length.cut_short(None, Some(1)), Some(CutShort::Length));
        assert_eq!(length.cut_short(None, None), Some(CutShort::Length));
        assert_eq!(
            length.cut_short(Some(100), Some(12)),
            Some(CutShort::Length)
        );
        assert_eq!(length.cut_short(Some(100), Some(100)), None);
        assert_eq!(length.cut_short(Some(1), None), None);
        assert_eq!(answer().cut_short(None, Some(3)), None);
        assert_eq!(Finish::of_reason(b"length"), Finish::Length);
        assert_eq!(Finish::of_reason(b"tool_calls"), Finish::Stop);
        assert_eq!(Finish::of_reason(b"content_filter"), Finish::ContentFilter);
        assert_eq!(
            Finish::worst(Some(Finish::Stop), Finish::Length),
            Finish::Length
        );
    }

    #[test]
    fn endpoints_by_path() {
        assert_eq!(Endpoint::of(true, "/v1/chat/completions"), Endpoint::Chat);
        assert_eq!(Endpoint::of(true, "/v1/completions"), Endpoint::Completions);
        assert_eq!(
            Endpoint::of(true, "/openai/v1/responses"),
            Endpoint::Responses
        );
        assert_eq!(Endpoint::of(true, "/v1/embeddings"), Endpoint::Embeddings);
        assert_eq!(Endpoint::of(false, "/v1/chat/completions"), Endpoint::Other);
        assert_eq!(Endpoint::of(true, "/v1/files"), Endpoint::Other);
    }
}
