//! Reading what passes without holding it: the request's `model`, the response's
//! `usage` (JSON bodies and SSE streams), and the time of a stream's first token.
//! Everything here looks at bytes as they stream by and keeps at most a few KiB.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use switchyard_core::answer::AnswerFacts;

use crate::answer::SseAnswer;
use crate::features::AnswerDetails;

/// Captures the raw JSON value of one top-level key of a JSON object streaming by.
#[derive(Debug)]
pub struct JsonKey {
    target: &'static [u8],
    depth: u32,
    in_str: bool,
    esc: bool,
    expecting_key: bool,
    key: [u8; 16],
    key_len: usize,
    key_in_progress: bool,
    after_key: bool,
    capturing: bool,
    captured: Vec<u8>,
    found: bool,
    max: usize,
    /// Bytes fed before the current chunk.
    offset: usize,
    /// Where the value (with any white space around it) starts and ends in the stream.
    value_start: usize,
    value_end: usize,
}

impl JsonKey {
    pub fn new(target: &'static str, max: usize) -> Self {
        JsonKey {
            target: target.as_bytes(),
            depth: 0,
            in_str: false,
            esc: false,
            expecting_key: false,
            key: [0; 16],
            key_len: 0,
            key_in_progress: false,
            after_key: false,
            capturing: false,
            captured: Vec::new(),
            found: false,
            max,
            offset: 0,
            value_start: 0,
            value_end: 0,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.found {
            return;
        }
        // Where the value being captured starts in this chunk: copied as one slice when it
        // ends or the chunk does, not byte by byte.
        let mut cap_from = 0;
        let mut i = 0;
        while i < data.len() {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                    self.key_bytes(&data[i..=i]);
                    i += 1;
                    continue;
                }
                // Strings are most of a body: jump to where one can end.
                let Some(off) = memchr::memchr2(b'"', b'\\', &data[i..]) else {
                    self.key_bytes(&data[i..]);
                    break;
                };
                let j = i + off;
                self.key_bytes(&data[i..j]);
                if data[j] == b'\\' {
                    self.esc = true;
                } else {
                    self.in_str = false;
                    if self.key_in_progress {
                        self.key_in_progress = false;
                        self.after_key = true;
                    }
                }
                i = j + 1;
                continue;
            }
            match data[i] {
                b'"' => {
                    self.in_str = true;
                    if self.depth == 1 && self.expecting_key {
                        self.expecting_key = false;
                        self.key_in_progress = true;
                        self.key_len = 0;
                    }
                }
                b'{' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.expecting_key = true;
                    }
                }
                b'[' => self.depth += 1,
                b'}' | b']' => {
                    if self.depth == 1 {
                        self.end_value(&data[cap_from..i], self.offset + i);
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                b',' if self.depth == 1 => {
                    self.end_value(&data[cap_from..i], self.offset + i);
                    self.expecting_key = true;
                }
                b':' if self.depth == 1 && self.after_key => {
                    self.after_key = false;
                    if self.key_len == self.target.len()
                        && &self.key[..self.key_len.min(self.key.len())] == self.target
                    {
                        self.capturing = true;
                        self.captured.clear();
                        cap_from = i + 1;
                        self.value_start = self.offset + i + 1;
                    }
                }
                _ => {}
            }
            if self.found {
                return;
            }
            i += 1;
        }
        if self.capturing {
            self.take(&data[cap_from..]);
        }
        self.offset += data.len();
    }

    /// Bytes of the key being read; only its first 16 are kept, enough to compare.
    fn key_bytes(&mut self, bytes: &[u8]) {
        if self.key_in_progress {
            let from = self.key_len.min(self.key.len());
            let to = (self.key_len + bytes.len()).min(self.key.len());
            self.key[from..to].copy_from_slice(&bytes[..to - from]);
            self.key_len += bytes.len();
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.captured.len() + bytes.len() > self.max {
            // Too large to be what we look for: give up on this value.
            self.capturing = false;
            self.captured.clear();
        } else {
            self.captured.extend_from_slice(bytes);
        }
    }

    /// The value ended just before `rest_of_value`'s end (a `,` or `}` at the top level,
    /// at stream position `at`).
    fn end_value(&mut self, rest_of_value: &[u8], at: usize) {
        if self.capturing {
            self.take(rest_of_value);
            if self.capturing {
                self.capturing = false;
                self.found = !self.captured.trim_ascii().is_empty();
                self.value_end = at;
            }
        }
    }

    /// Where the found value lies in the stream fed so far: `[start, end)`, white space
    /// around it included.
    pub fn span(&self) -> Option<(usize, usize)> {
        self.found.then_some((self.value_start, self.value_end))
    }

    /// The key's value has been seen whole.
    pub fn found(&self) -> bool {
        self.found
    }

    /// The captured value, parsed into `T` (no intermediate `Value`).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        if !self.found {
            return None;
        }
        serde_json::from_slice(&self.captured).ok()
    }
}

/// Watches an SSE stream: usage from any event that carries it, the first token's time,
/// whether it carried an answer and how it ended ([`SseAnswer`]), and (when `strip`) removes
/// the usage-only chunk the gateway asked for on the client's behalf. Without `strip` frames
/// pass untouched; with it, only whole events are passed on.
#[derive(Debug)]
pub struct SseScan {
    strip: bool,
    /// Without strip: the incomplete last line. With strip: the incomplete last event.
    carry: BytesMut,
    answer: SseAnswer,
    pub first_event: Option<Instant>,
    pub first_token: Option<Instant>,
    overflow: bool,
    /// The answer's text and tool calls, read only when asked for (a request whose
    /// features need them, a shadow comparison).
    pub details: Option<Box<AnswerDetails>>,
}

const MAX_CARRY: usize = 256 * 1024;
impl SseScan {
    pub fn new(strip: bool) -> Self {
        SseScan {
            strip,
            carry: BytesMut::new(),
            answer: SseAnswer::default(),
            first_event: None,
            first_token: None,
            overflow: false,
            details: None,
        }
    }

    /// Also read the answer's text and tool calls (bounded).
    pub fn capturing(mut self) -> Self {
        self.details = Some(Box::default());
        self
    }

    /// Returns what to pass to the client for this frame (possibly empty).
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        if self.overflow {
            return data;
        }
        if !self.strip {
            let mut start = 0;
            let mut carry = std::mem::take(&mut self.carry);
            while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
                let end = start + nl;
                if carry.is_empty() {
                    self.line(&data[start..end]);
                } else {
                    carry.extend_from_slice(&data[start..end]);
                    self.line(&carry);
                    carry.clear();
                }
                start = end + 1;
            }
            carry.extend_from_slice(&data[start..]);
            if carry.len() > MAX_CARRY {
                self.overflow = true;
                carry.clear();
            }
            self.carry = carry;
            return data;
        }
        self.carry.extend_from_slice(&data);
        let Some(cut) = last_event_end(&self.carry) else {
            if self.carry.len() > MAX_CARRY {
                // Not SSE as we know it: stop rewriting, pass everything on.
                self.overflow = true;
                return self.carry.split().freeze();
            }
            return Bytes::new();
        };
        let complete = self.carry.split_to(cut).freeze();
        let mut out = BytesMut::with_capacity(complete.len());
        for event in split_events(&complete) {
            let mut usage = false;
            for line in event.split(|&b| b == b'\n') {
                usage |= self.line(line);
            }
            if !usage {
                out.extend_from_slice(event);
            } else if let Some(kept) = without_usage(event) {
                out.extend_from_slice(&kept);
            }
        }
        out.freeze()
    }

    /// Whatever is left when the stream ends (an event without its blank line).
    pub fn finish(&mut self) -> Bytes {
        if self.strip && !self.carry.is_empty() {
            let rest = self.carry.split().freeze();
            for line in rest.split(|&b| b == b'\n') {
                self.line(line);
            }
            return rest;
        }
        if !self.carry.is_empty() {
            let rest = std::mem::take(&mut self.carry);
            self.line(&rest);
        }
        Bytes::new()
    }

    /// `(prompt, completion)` tokens, when an event carried usage.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.answer.usage()
    }

    /// What the stream said about its answer; `None` when it was not SSE as we know it
    /// (a line too long to read), so nothing can be said.
    pub fn facts(&self) -> Option<AnswerFacts> {
        (!self.overflow).then(|| self.answer.facts())
    }

    /// Looks at one line; true when its event carries usage.
    fn line(&mut self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(event) = line.strip_prefix(b"event:") {
            if event.trim_ascii() == b"error" {
                self.answer.error_event();
            }
            return false;
        }
        let Some(payload) = line.strip_prefix(b"data:") else {
            return false;
        };
        let payload = payload.trim_ascii();
        if payload == b"[DONE]" {
            self.answer.done();
            return false;
        }
        let now = Instant::now();
        self.first_event.get_or_insert(now);
        let event = self.answer.event(payload);
        if self.first_token.is_none() && event.token {
            self.first_token = Some(now);
        }
        if let Some(d) = &mut self.details {
            if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                d.sse_event(&v);
            }
        }
        event.usage
    }
}

/// An event that carried usage the gateway asked for on the client's behalf, as the client
/// gets it: nothing when usage was all it carried — `choices: []` (OpenAI), or choices with
/// empty deltas and no finish reason (LiteLLM's proxy) — else the event with only its
/// `usage` taken out (a last chunk carrying both its finish and the usage). One event per
/// stream, so parsing it is cheap.
fn without_usage(event: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(event.len());
    let mut data = false;
    for line in event.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        let Some(payload) = bare.strip_prefix(b"data:") else {
            out.extend_from_slice(line);
            continue;
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(payload) else {
            out.extend_from_slice(line);
            data = true;
            continue;
        };
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
        }
        if carries_nothing(&v) {
            continue;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        out.extend_from_slice(&line[bare.len()..]);
        data = true;
    }
    data.then_some(out)
}

/// A chunk with no choice that says anything: every choice's values (its delta's too) are
/// absent, null, empty or its index.
fn carries_nothing(chunk: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    chunk["choices"].as_array().is_none_or(|choices| {
        choices.iter().all(|c| {
            c.as_object().is_some_and(|c| {
                c.iter().all(|(k, v)| match (k.as_str(), v) {
                    ("index", _) => true,
                    ("delta", Value::Object(d)) => d.values().all(empty),
                    _ => empty(v),
                })
            })
        })
    })
}

/// End of the last complete event (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let a = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let b = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    a.max(b)
}

/// Splits complete events, each keeping its terminating blank line.
fn split_events(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            out.push(&buf[start..i + 2]);
            i += 2;
            start = i;
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            out.push(&buf[start..i + 4]);
            i += 4;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < buf.len() {
        out.push(&buf[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(key: &'static str, chunks: &[&str]) -> Option<Value> {
        let mut s = JsonKey::new(key, 4096);
        for c in chunks {
            s.feed(c.as_bytes());
        }
        s.parse::<Value>()
    }

    #[test]
    fn finds_top_level_keys_across_chunks() {
        let body = r#"{"messages":[{"role":"user","content":"say \"model\": \"x\" {"}],"model" : "deepseek-chat","stream":true}"#;
        assert_eq!(scan("model", &[body]), Some(Value::from("deepseek-chat")));
        let (a, b) = body.split_at(60);
        assert_eq!(scan("model", &[a, b]), Some(Value::from("deepseek-chat")));
        assert_eq!(
            scan("model", &one_char_each(body)),
            Some(Value::from("deepseek-chat"))
        );
        // nested "model" keys are not top-level
        assert_eq!(
            scan("model", &[r#"{"tools":[{"model":"no"}],"x":1}"#]),
            None
        );
        // A nested value captured whole: the token counts in it.
        let usage = |chunks: &[&str]| {
            let mut s = JsonKey::new("usage", 4096);
            chunks.iter().for_each(|c| s.feed(c.as_bytes()));
            let v = s.parse::<Value>()?;
            let n = |a: &str, b: &str| v[a].as_u64().or(v[b].as_u64()).unwrap_or(0);
            Some((
                n("prompt_tokens", "input_tokens"),
                n("completion_tokens", "output_tokens"),
            ))
        };
        let resp = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        assert_eq!(usage(&[resp]), Some((12, 5)));
        let (a, b) = resp.split_at(40);
        assert_eq!(usage(&[a, b]), Some((12, 5)));
        assert_eq!(
            usage(&[r#"{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#]),
            Some((3, 4))
        );
        assert_eq!(
            usage(&[r#"{"usage":{"input_tokens":9,"output_tokens":1,"x":{"y":[1]}}}"#]),
            Some((9, 1))
        );
        // escaped quotes and backslashes inside strings, split at every byte
        let tricky = r#"{"a":"\\","b":"q\"}","usage":{"prompt_tokens":2},"c":"\\\""}"#;
        assert_eq!(usage(&[tricky]), Some((2, 0)));
        assert_eq!(usage(&one_char_each(tricky)), Some((2, 0)));
        // a value over the limit is given up, not truncated
        let mut s = JsonKey::new("usage", 8);
        s.feed(br#"{"usage":{"prompt_tokens":12345}}"#);
        assert_eq!(s.parse::<Value>(), None);
    }

    /// `text` cut into one-character chunks: every split point at once.
    fn one_char_each(text: &str) -> Vec<&str> {
        text.char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect()
    }

    /// [`STREAM`] through `scan` in chunks of `size` bytes: what the client gets.
    fn pass(scan: &mut SseScan, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in STREAM.as_bytes().chunks(size) {
            out.extend_from_slice(&scan.feed(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&scan.finish());
        out
    }

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    #[test]
    fn sse_usage_and_first_token_without_touching_frames() {
        let mut s = SseScan::new(false);
        let out = pass(&mut s, 7);
        assert_eq!(out, STREAM.as_bytes());
        assert_eq!(s.usage(), Some((7, 2)));
        assert!(s.first_token.is_some() && s.first_event.is_some());
        assert!(s.first_token >= s.first_event);
    }

    #[test]
    fn sse_strip_removes_only_the_usage_chunk() {
        let mut s = SseScan::new(true);
        let text = String::from_utf8(pass(&mut s, 5)).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert!(
            text.contains("\"Hi\"") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        assert_eq!(s.usage(), Some((7, 2)));
    }

    /// What the features are judged on — a streamed tool call, its arguments in pieces, the
    /// text of a JSON answer, log probabilities, several choices — reads the same at every
    /// split of the stream, rewritten or not.
    #[test]
    fn answer_details_read_the_same_at_every_split() {
        use switchyard_core::features::{Asked, Feature, Tool};
        let tool = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Oslo\\\"}\"}}]}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let json = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"{\\\"ci\"},\"logprobs\":{\"content\":[]}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ty\\\": 1}\"},\"logprobs\":{\"content\":[]}}]}\n\n\
            data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"{}\"},\"finish_reason\":\"stop\"}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let asked_tool = Asked {
            tools: vec![Tool {
                name: "weather".into(),
                parameters: Some(serde_json::json!({"type": "object", "required": ["city"]})),
            }],
            stream_usage: true,
            n: 1,
            ..Asked::default()
        };
        // The same JSON text, asked as a JSON object (and its stream's usage, which it lacks).
        let asked_object = Asked {
            json_object: true,
            stream_usage: true,
            n: 1,
            ..Asked::default()
        };
        let asked_json = Asked {
            // `{"city": 1}` comes back: not the string the schema asks for.
            json_schema: Some(Some(
                serde_json::json!({"type": "object", "required": ["city"],
                "properties": {"city": {"type": "string"}}}),
            )),
            logprobs: true,
            n: 2,
            ..Asked::default()
        };
        for (stream, asked, want) in [
            (
                tool,
                &asked_tool,
                vec![
                    (Feature::ToolCalls, true),
                    (Feature::FinishReason, true),
                    (Feature::StreamUsage, true),
                ],
            ),
            (
                json,
                &asked_object,
                vec![
                    (Feature::JsonObject, true),
                    (Feature::FinishReason, true),
                    (Feature::StreamUsage, false),
                ],
            ),
            (
                json,
                &asked_json,
                vec![
                    (Feature::JsonSchema, false),
                    (Feature::FinishReason, true),
                    (Feature::Logprobs, true),
                    (Feature::N, true),
                ],
            ),
        ] {
            for strip in [false, true] {
                for size in 1..=stream.len() {
                    let mut s = SseScan::new(strip).capturing();
                    for chunk in stream.as_bytes().chunks(size) {
                        drop(s.feed(Bytes::copy_from_slice(chunk)));
                    }
                    drop(s.finish());
                    let facts = s.facts();
                    let got = crate::features::judge(
                        asked,
                        switchyard_core::answer::Endpoint::Chat,
                        false,
                        facts.as_ref(),
                        s.usage().is_some(),
                        s.details.as_deref(),
                    );
                    let mut got: Vec<_> = got.iter().collect();
                    got.sort();
                    let mut want = want.clone();
                    want.sort();
                    assert_eq!(got, want, "split {size}, strip {strip}: {stream}");
                }
            }
        }
    }

    /// The usage chunk the gateway asked for is taken out in every shape providers send it,
    /// at any split, and its tokens are still read; what else the chunk carried stays.
    #[test]
    fn sse_strip_takes_usage_out_of_every_shape() {
        let hi = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
        let usage = r#""usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}"#;
        let stop =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        let cases = [
            // OpenAI: its own chunk with no choices.
            (
                format!("{hi}{stop}data: {{\"choices\":[],{usage}}}\n\ndata: [DONE]\n\n"),
                format!("{hi}{stop}data: [DONE]\n\n"),
            ),
            // LiteLLM's proxy: a choice with an empty delta (and nulls) beside the usage.
            (
                format!("{hi}{stop}data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":null}},\"finish_reason\":null,\"logprobs\":null}}],{usage}}}\r\n\r\ndata: [DONE]\n\n"),
                format!("{hi}{stop}data: [DONE]\n\n"),
            ),
            // The last chunk carries both its finish and the usage: only `usage` goes.
            (
                format!("{hi}data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],{usage}}}\n\ndata: [DONE]\n\n"),
                format!("{hi}data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\",\"index\":0}}]}}\n\ndata: [DONE]\n\n"),
            ),
            // No `choices` at all.
            (
                format!("{hi}{stop}data: {{{usage}}}\n\n"),
                format!("{hi}{stop}"),
            ),
        ];
        for (stream, want) in cases {
            for size in 1..=stream.len() {
                let mut s = SseScan::new(true);
                let mut out = Vec::new();
                for chunk in stream.as_bytes().chunks(size) {
                    out.extend_from_slice(&s.feed(Bytes::copy_from_slice(chunk)));
                }
                out.extend_from_slice(&s.finish());
                let out = String::from_utf8(out).unwrap();
                assert_eq!(out, want, "{stream} in frames of {size}");
                assert_eq!(s.usage(), Some((7, 2)), "{stream}");
            }
        }
    }

    /// Each hidden failure a stream can carry, read the same whatever the frames' sizes,
    /// rewritten or not; and what reaches the client is what the provider sent (the usage
    /// chunk aside, when the gateway asked for it).
    #[test]
    fn hidden_failures_in_streams_at_every_split() {
        use switchyard_core::answer::{BadAnswer, Endpoint, Finish};
        let hi =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
        let cases = [
            (STREAM.to_string(), None),
            (hi.to_string(), Some(BadAnswer::Unfinished)),
            (
                format!("{hi}data: {{\"error\":{{\"message\":\"overloaded\"}}}}\n\ndata: [DONE]\n\n"),
                Some(BadAnswer::ErrorEvent),
            ),
            (
                format!("{hi}event: error\ndata: {{\"message\":\"overloaded\"}}\n\n"),
                Some(BadAnswer::ErrorEvent),
            ),
            ("data: [DONE]\n\n".to_string(), Some(BadAnswer::NoChoices)),
            (
                "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_string(),
                Some(BadAnswer::EmptyMessage),
            ),
        ];
        for (stream, shape) in cases {
            for strip in [false, true] {
                for size in 1..=stream.len() {
                    let mut s = SseScan::new(strip);
                    let mut out = Vec::new();
                    for chunk in stream.as_bytes().chunks(size) {
                        out.extend_from_slice(&s.feed(Bytes::copy_from_slice(chunk)));
                    }
                    out.extend_from_slice(&s.finish());
                    if !strip {
                        assert_eq!(out, stream.as_bytes(), "untouched: {stream}");
                    }
                    let facts = s.facts().unwrap();
                    assert_eq!(
                        facts.bad_answer(Endpoint::Chat, true),
                        shape,
                        "{stream} in frames of {size} (strip {strip})"
                    );
                }
            }
        }
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"H\"},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
        for size in 1..=cut.len() {
            let mut s = SseScan::new(false);
            cut.as_bytes()
                .chunks(size)
                .for_each(|c| drop(s.feed(Bytes::copy_from_slice(c))));
            s.finish();
            assert_eq!(s.facts().unwrap().finish, Some(Finish::Length));
        }
    }
}
