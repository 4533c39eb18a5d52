//! What an answer (and its request) says about itself, read as it streams by with the
//! [`JsonWalk`]: the facts that tell an answer from a 2xx with none in it
//! ([`AnswerFacts`], judged by `switchyard_core::answer`), its usage, whether an SSE event
//! carried a token; and from the request, its model and its own `max_tokens`.

use switchyard_core::answer::{AnswerFacts, Finish};

use crate::json_walk::{as_count, JsonWalk, Key, Step, Visit};

/// Bytes kept of a string whose value matters (finish reasons, statuses, event types).
const WORD_MAX: usize = 32;

/// Token counts as the provider reported them, in OpenAI's names or the Responses API's.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageRead {
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl UsageRead {
    /// `(prompt, completion)` once a prompt count was seen.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        Some((self.prompt?, self.completion.unwrap_or(0)))
    }

    fn scalar(&mut self, key: Step, bytes: &[u8]) {
        match key {
            Step::Key(Key::PromptTokens | Key::InputTokens) => self.prompt = as_count(bytes),
            Step::Key(Key::CompletionTokens | Key::OutputTokens) => {
                self.completion = as_count(bytes)
            }
            _ => {}
        }
    }
}

/// What one SSE event said, for the stream's rewriting and its first token.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFacts {
    /// It carried generated text or a tool call.
    pub token: bool,
    /// It carried usage (what the gateway strips when it asked on the client's behalf).
    pub usage: bool,
}

/// The visitor for answers: a JSON body whole, or one SSE event's payload at a time.
#[derive(Debug, Default)]
struct Reader {
    facts: AnswerFacts,
    usage: UsageRead,
    /// Reading SSE events (`delta` rather than `message`; an `error` is an error event).
    stream: bool,
    // Per SSE event:
    token: bool,
    usage_seen: bool,
}

impl Reader {
    fn finish(&mut self, f: Finish) {
        self.facts.finish = Some(Finish::worst(self.facts.finish, f));
    }

    fn error(&mut self) {
        if self.stream {
            self.facts.error_event = true;
        } else {
            self.facts.error_object = true;
        }
    }

    fn content(&mut self, token: bool) {
        self.facts.content = true;
        self.token |= token;
    }

    /// A Responses API `type` (events) or `status` (answers).
    fn word(&mut self, w: &[u8]) {
        match w {
            b"error" | b"response.failed" | b"failed" => self.error(),
            b"response.completed" | b"completed" => {
                self.facts.done |= self.stream;
                self.finish(Finish::Stop);
            }
            b"response.incomplete" | b"incomplete" => {
                self.facts.done |= self.stream;
                self.finish(Finish::Length);
            }
            _ if w.starts_with(b"response.output") => self.facts.choices += 1,
            _ => {}
        }
    }
}

use Key as K;
use Step::Key as S;

/// `path` is `[choices, i, rest…]`.
fn in_choice(path: &[Step]) -> Option<&[Step]> {
    match path {
        [S(K::Choices), Step::Index(_), rest @ ..] => Some(rest),
        _ => None,
    }
}

impl Visit for Reader {
    fn wants(&self, path: &[Step]) -> bool {
        matches!(
            path,
            [S(K::Type | K::Status)]
                | [S(K::Response), S(K::Status)]
                | [S(K::IncompleteDetails), S(K::Reason)]
                | [S(K::Response), S(K::IncompleteDetails), S(K::Reason)]
        ) || matches!(in_choice(path), Some([S(K::FinishReason)]))
    }

    fn open(&mut self, path: &[Step], array: bool) {
        match (path, array) {
            ([S(K::Error)], _) => self.error(),
            _ => {
                if let Some([S(K::Message | K::Delta), S(K::FunctionCall)]) = in_choice(path) {
                    self.content(true);
                }
            }
        }
    }

    fn close(&mut self, path: &[Step], array: bool, count: u32) {
        if !array {
            return;
        }
        match path {
            [S(K::Choices)] => {
                if self.stream {
                    self.facts.choices += u32::from(count > 0);
                } else {
                    self.facts.choices += count;
                }
            }
            // A Responses answer's output items.
            [S(K::Output)] if !self.stream => {
                self.facts.choices += count;
                if count > 0 {
                    self.content(false);
                }
            }
            _ => match in_choice(path) {
                Some([S(K::Message | K::Delta), S(K::ToolCalls)]) if count > 0 => {
                    self.content(true)
                }
                // Content as parts (`[{"type": "text", …}]`).
                Some([S(K::Message), S(K::Content)]) if count > 0 => self.content(false),
                _ => {}
            },
        }
    }

    fn string(&mut self, path: &[Step], head: &[u8], len: usize) {
        match path {
            [S(K::Error)] if len > 0 => self.error(),
            [S(K::Type | K::Status)] | [S(K::Response), S(K::Status)] => self.word(head),
            [S(K::IncompleteDetails), S(K::Reason)]
            | [S(K::Response), S(K::IncompleteDetails), S(K::Reason)] => {
                self.finish(Finish::of_reason(head))
            }
            // The Responses API's text deltas.
            [S(K::Delta)] if self.stream && len > 0 => self.content(true),
            _ => match in_choice(path) {
                Some([S(K::FinishReason)]) => self.finish(Finish::of_reason(head)),
                Some([S(K::Text)])
                | Some([S(K::Message | K::Delta), S(K::Content | K::Refusal)])
                    if len > 0 =>
                {
                    self.content(true)
                }
                // Reasoning is an answer of sorts, but not the first token clients see.
                Some([S(K::Message | K::Delta), S(K::ReasoningContent)]) if len > 0 => {
                    self.content(false)
                }
                _ => {}
            },
        }
    }

    fn scalar(&mut self, path: &[Step], bytes: &[u8]) {
        match path {
            [S(K::Error)] if bytes != b"null" => self.error(),
            [S(K::Usage), key] | [S(K::Response), S(K::Usage), key] => {
                self.usage_seen = true;
                self.usage.scalar(*key, bytes);
            }
            _ => {}
        }
    }
}

/// Reads a JSON answer as it streams by.
#[derive(Debug)]
pub struct JsonAnswer {
    walk: JsonWalk,
    read: Reader,
}

impl Default for JsonAnswer {
    fn default() -> Self {
        JsonAnswer {
            walk: JsonWalk::new(WORD_MAX),
            read: Reader::default(),
        }
    }
}

impl JsonAnswer {
    pub fn feed(&mut self, data: &[u8]) {
        self.walk.feed(data, &mut self.read);
    }

    /// The answer's facts, once it ended.
    pub fn facts(&mut self) -> AnswerFacts {
        self.walk.finish(&mut self.read);
        self.read.facts
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        self.read.usage.tokens()
    }
}

/// Reads an SSE stream's events (their `data:` payloads), one at a time.
#[derive(Debug)]
pub struct SseAnswer {
    walk: JsonWalk,
    read: Reader,
}

impl Default for SseAnswer {
    fn default() -> Self {
        SseAnswer {
            walk: JsonWalk::new(WORD_MAX),
            read: Reader {
                stream: true,
                ..Reader::default()
            },
        }
    }
}

impl SseAnswer {
    /// One event's `data:` payload (not `[DONE]`).
    pub fn event(&mut self, payload: &[u8]) -> EventFacts {
        self.walk.reset();
        let r = &mut self.read;
        r.token = false;
        r.usage_seen = false;
        self.walk.feed(payload, r);
        self.walk.finish(r);
        EventFacts {
            token: r.token,
            usage: r.usage_seen,
        }
    }

    /// `[DONE]`, or an `event: error` line.
    pub fn done(&mut self) {
        self.read.facts.done = true;
    }

    pub fn error_event(&mut self) {
        self.read.facts.error_event = true;
    }

    pub fn facts(&self) -> AnswerFacts {
        self.read.facts
    }

    pub fn usage(&self) -> Option<(u64, u64)> {
        self.read.usage.tokens()
    }
}

/// What the gateway reads from a request body as it streams upstream: its model, the
/// `max_tokens` (or `max_completion_tokens`, `max_output_tokens`) it asked for, and what it
/// asked of its answer beyond text ([`crate::features::asked_of`]).
#[derive(Debug, Default)]
pub struct RequestRead {
    pub model: Option<Box<str>>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage: true` (`null` options ask nothing).
    pub include_usage: bool,
    pub logprobs: bool,
    pub n: Option<u64>,
    /// `tools` and `response_format` as sent (copied only when present).
    pub tools: Option<Vec<u8>>,
    pub response_format: Option<Vec<u8>>,
}

/// Longest model name read.
pub const MODEL_MAX: usize = 256;

impl Visit for RequestRead {
    fn wants(&self, path: &[Step]) -> bool {
        matches!(path, [S(K::Model)])
    }

    fn string(&mut self, path: &[Step], head: &[u8], len: usize) {
        if let ([S(K::Model)], true, None) = (path, len <= MODEL_MAX, &self.model) {
            self.model = if head.contains(&b'\\') {
                let quoted = [b"\"", head, b"\""].concat();
                serde_json::from_slice::<String>(&quoted)
                    .ok()
                    .map(Box::from)
            } else {
                std::str::from_utf8(head).ok().map(Box::from)
            };
        }
    }

    fn scalar(&mut self, path: &[Step], bytes: &[u8]) {
        match path {
            [S(K::MaxTokens | K::MaxCompletionTokens | K::MaxOutputTokens)] => {
                self.max_tokens = as_count(bytes).or(self.max_tokens);
            }
            [S(K::Stream)] => self.stream = bytes == b"true",
            [S(K::StreamOptions), S(K::IncludeUsage)] => self.include_usage = bytes == b"true",
            [S(K::Logprobs)] => self.logprobs = bytes == b"true",
            [S(K::N)] => self.n = as_count(bytes),
            _ => {}
        }
    }

    fn captures(&self, path: &[Step]) -> bool {
        matches!(path, [S(K::Tools | K::ResponseFormat)])
    }

    fn captured(&mut self, path: &[Step], bytes: &[u8]) {
        match path {
            [S(K::Tools)] => self.tools = Some(bytes.to_vec()),
            [S(K::ResponseFormat)] => self.response_format = Some(bytes.to_vec()),
            _ => {}
        }
    }
}

/// Walks a request body as it streams: [`RequestRead`], and whether it is JSON.
#[derive(Debug)]
pub struct RequestScan {
    walk: JsonWalk,
    pub read: RequestRead,
}

impl Default for RequestScan {
    fn default() -> Self {
        RequestScan {
            walk: JsonWalk::new(MODEL_MAX),
            read: RequestRead::default(),
        }
    }
}

impl RequestScan {
    pub fn feed(&mut self, data: &[u8]) {
        self.walk.feed(data, &mut self.read);
    }

    /// Not JSON, as far as fed.
    pub fn invalid(&self) -> bool {
        self.walk.invalid()
    }

    /// The body ended: whether it was JSON.
    pub fn finish(&mut self) -> bool {
        self.walk.finish(&mut self.read)
    }
}

/// Whether a body held whole is one JSON value.
pub fn is_json(body: &[u8]) -> bool {
    let mut scan = RequestScan::default();
    scan.feed(body);
    scan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::answer::{BadAnswer, CutShort, Endpoint};

    /// The facts of a JSON answer fed in pieces of `size` bytes.
    fn json(body: &str, size: usize) -> (AnswerFacts, Option<(u64, u64)>) {
        let mut a = JsonAnswer::default();
        body.as_bytes().chunks(size).for_each(|c| a.feed(c));
        (a.facts(), a.usage())
    }

    fn json_shape(body: &str) -> Option<BadAnswer> {
        let (whole, usage) = json(body, body.len().max(1));
        for size in 1..8 {
            assert_eq!(
                json(body, size),
                (whole, usage),
                "{body} in pieces of {size}"
            );
        }
        whole.bad_answer(Endpoint::Chat, false)
    }

    #[test]
    fn json_answers_with_no_answer_in_them() {
        let ok = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        assert_eq!(json_shape(ok), None);
        assert_eq!(json(ok, 3).1, Some((7, 2)));
        let tool = r#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(json_shape(tool), None);
        let parts = r#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}]},"finish_reason":"stop"}]}"#;
        assert_eq!(json_shape(parts), None);
        let legacy = r#"{"choices":[{"text":"x","finish_reason":"stop"}]}"#;
        assert_eq!(json_shape(legacy), None);
        for (body, shape) in [
            (
                r#"{"error":{"message":"upstream overloaded","type":"server_error"}}"#,
                BadAnswer::ErrorObject,
            ),
            (r#"{"error":"quota"}"#, BadAnswer::ErrorObject),
            (
                r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1}}"#,
                BadAnswer::NoChoices,
            ),
            (r#"{"id":"c"}"#, BadAnswer::NoChoices),
            (
                r#"{"choices":[{"message":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#,
                BadAnswer::EmptyMessage,
            ),
            (
                r#"{"choices":[{"message":{"content":null,"tool_calls":[]},"finish_reason":"stop"}]}"#,
                BadAnswer::EmptyMessage,
            ),
        ] {
            assert_eq!(json_shape(body), Some(shape), "{body}");
        }
        // `"error": null` beside a real answer is no error.
        let null_error =
            r#"{"error":null,"choices":[{"message":{"content":"a"},"finish_reason":"stop"}]}"#;
        assert_eq!(json_shape(null_error), None);
        // A nested `error` (in a tool's arguments, say) is not the answer's.
        let nested = r#"{"choices":[{"message":{"content":"{\"error\": 1}","x":{"error":{}}},"finish_reason":"stop"}]}"#;
        assert_eq!(json_shape(nested), None);
    }

    #[test]
    fn finish_reasons_and_cuts_from_json() {
        let cut = r#"{"choices":[{"message":{"content":"H"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#;
        let (facts, usage) = json(cut, 5);
        assert_eq!(facts.finish, Some(Finish::Length));
        assert_eq!(
            facts.cut_short(None, usage.map(|u| u.1)),
            Some(CutShort::Length)
        );
        assert_eq!(facts.cut_short(Some(1), usage.map(|u| u.1)), None);
        let filtered =
            r#"{"choices":[{"message":{"content":""},"finish_reason":"content_filter"}]}"#;
        let (facts, _) = json(filtered, 4);
        assert_eq!(facts.bad_answer(Endpoint::Chat, false), None);
        assert_eq!(
            facts.cut_short(Some(100), None),
            Some(CutShort::ContentFilter)
        );
        // The Responses API says it with a status.
        let incomplete = r#"{"object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[{"type":"message","content":[]}],"usage":{"input_tokens":3,"output_tokens":16}}"#;
        let (facts, usage) = json(incomplete, 7);
        assert_eq!(facts.finish, Some(Finish::Length));
        assert_eq!(usage, Some((3, 16)));
        assert_eq!(facts.bad_answer(Endpoint::Responses, false), None);
        let failed = r#"{"object":"response","status":"failed","error":{"code":"server_error"},"output":[]}"#;
        assert_eq!(
            json(failed, 3).0.bad_answer(Endpoint::Responses, false),
            Some(BadAnswer::ErrorObject)
        );
    }

    /// The facts of an SSE stream's payloads, each fed as one event.
    fn sse(events: &[&str]) -> (AnswerFacts, Vec<EventFacts>) {
        let mut a = SseAnswer::default();
        let mut each = Vec::new();
        for e in events {
            if *e == "[DONE]" {
                a.done();
            } else {
                each.push(a.event(e.as_bytes()));
            }
        }
        (a.facts(), each)
    }

    #[test]
    fn sse_events_say_tokens_usage_and_the_end() {
        let (facts, each) = sse(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#,
            "[DONE]",
        ]);
        assert_eq!(facts.bad_answer(Endpoint::Chat, true), None);
        assert_eq!(
            each.iter().map(|e| (e.token, e.usage)).collect::<Vec<_>>(),
            [(false, false), (true, false), (false, false), (false, true)]
        );
        // A stream that stops: neither a finish reason nor [DONE].
        let (facts, _) = sse(&[r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#]);
        assert_eq!(
            facts.bad_answer(Endpoint::Chat, true),
            Some(BadAnswer::Unfinished)
        );
        // An error event in the middle.
        let (facts, _) = sse(&[
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            facts.bad_answer(Endpoint::Chat, true),
            Some(BadAnswer::ErrorEvent)
        );
        // Nothing but [DONE].
        let (facts, _) = sse(&["[DONE]"]);
        assert_eq!(
            facts.bad_answer(Endpoint::Chat, true),
            Some(BadAnswer::NoChoices)
        );
        // Streamed tool calls are an answer, and their first delta a first token.
        let (facts, each) = sse(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ]);
        assert_eq!(facts.bad_answer(Endpoint::Chat, true), None);
        assert!(each[0].token);
        // A usage chunk that also carries a (last) choice carries usage.
        let (_, each) = sse(&[
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}"#,
        ]);
        assert!(each[0].usage && !each[0].token);
    }

    #[test]
    fn responses_api_streams() {
        let (facts, each) = sse(&[
            r#"{"type":"response.created","response":{"id":"r","status":"in_progress","output":[]}}"#,
            r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
            r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":4,"output_tokens":2}}}"#,
        ]);
        assert_eq!(facts.bad_answer(Endpoint::Responses, true), None);
        assert!(each[1].token && !each[0].token);
        let (facts, _) = sse(&[
            r#"{"type":"response.created","response":{"id":"r"}}"#,
            r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"x"}}}"#,
        ]);
        assert_eq!(
            facts.bad_answer(Endpoint::Responses, true),
            Some(BadAnswer::ErrorEvent)
        );
    }

    #[test]
    fn requests_say_their_model_and_max_tokens() {
        let body = r#"{"messages":[{"role":"user","content":"say \"model\": \"x\""}],"model":"deepseek-chat","max_tokens":64,"tools":[{"max_tokens":1}]}"#;
        for size in [1, 3, body.len()] {
            let mut scan = RequestScan::default();
            body.as_bytes().chunks(size).for_each(|c| scan.feed(c));
            assert!(scan.finish());
            assert_eq!(scan.read.model.as_deref(), Some("deepseek-chat"));
            assert_eq!(scan.read.max_tokens, Some(64));
        }
        let mut scan = RequestScan::default();
        scan.feed(br#"{"model":"a\"b","max_completion_tokens":5,"messages":["#);
        assert!(!scan.finish(), "cut short: not JSON");
        assert_eq!(scan.read.model.as_deref(), Some("a\"b"));
        assert_eq!(scan.read.max_tokens, Some(5));
    }

    /// Tools, the response format and the stream's options are read at any split of the
    /// body, and `stream_options: null` asks for nothing.
    #[test]
    fn requests_say_what_they_ask_of_the_answer_at_any_split() {
        let tools = r#"[{"type":"function","function":{"name":"weather","parameters":{"type":"object","required":["city"]}}}]"#;
        let format =
            r#"{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}"#;
        let body = format!(
            r#"{{"model":"m","stream":true,"stream_options":{{"include_usage":true}},"logprobs":true,"n":2,"tools":{tools},"response_format":{format},"messages":[]}}"#
        );
        for size in 1..=body.len() {
            let mut scan = RequestScan::default();
            body.as_bytes().chunks(size).for_each(|c| scan.feed(c));
            assert!(scan.finish(), "split {size}");
            let r = &scan.read;
            assert!(r.stream && r.include_usage && r.logprobs, "split {size}");
            assert_eq!(r.n, Some(2));
            assert_eq!(r.tools.as_deref(), Some(tools.as_bytes()), "split {size}");
            assert_eq!(r.response_format.as_deref(), Some(format.as_bytes()));
        }
        let mut scan = RequestScan::default();
        scan.feed(br#"{"model":"m","stream":true,"stream_options":null,"messages":[]}"#);
        assert!(scan.finish());
        assert!(scan.read.stream && !scan.read.include_usage);
        assert!(scan.read.tools.is_none());
    }
}
