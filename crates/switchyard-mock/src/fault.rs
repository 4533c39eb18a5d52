//! The ways a relay breaks while still answering 200, for chat completions: set for the
//! whole mock ([`crate::MockConfig::fault`], [`crate::Mock::set_fault`], `--fault`) or per
//! request (`x-mock-fault: NAME`).

use std::str::FromStr;

use serde_json::{json, Value};

/// A hidden failure the mock answers chat completions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 200 with an OpenAI error object and no answer (streamed or not: relays answer a
    /// stream request with the JSON error too).
    ErrorIn200,
    /// 200 with `choices: []` (a stream of chunks with no choices).
    NoChoices,
    /// 200 with an empty message: no content, no tool call.
    EmptyMessage,
    /// A stream that carries an `error` event after its first token (a JSON answer: as
    /// [`Fault::ErrorIn200`]).
    ErrorEvent,
    /// A stream that ends cleanly after a few tokens with neither a `finish_reason` nor
    /// `[DONE]` (a JSON answer: its body cut in half).
    StopEarly,
    /// One token and `finish_reason: "length"`, whatever `max_tokens` asked.
    Truncate,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::ErrorIn200,
        Fault::NoChoices,
        Fault::EmptyMessage,
        Fault::ErrorEvent,
        Fault::StopEarly,
        Fault::Truncate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ErrorIn200 => "error_in_200",
            Fault::NoChoices => "no_choices",
            Fault::EmptyMessage => "empty_message",
            Fault::ErrorEvent => "error_event",
            Fault::StopEarly => "stop_early",
            Fault::Truncate => "truncate",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault `{s}` (one of {})", names.join(", "))
            })
    }
}

/// The error object relays put in a 200.
pub fn error_object(name: &str) -> Value {
    json!({"error": {"message": format!("mock {name}: upstream overloaded"), "type": "server_error", "code": "overloaded"}})
}

/// A non-streamed chat completion as `fault` makes it: the JSON body's bytes.
pub fn json_answer(fault: Fault, name: &str, id: &str, model: &str, prompt_tokens: u64) -> Vec<u8> {
    let completion = |choices: Value, completion_tokens: u64| {
        json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        })
    };
    let body = match fault {
        Fault::ErrorIn200 | Fault::ErrorEvent => error_object(name),
        Fault::NoChoices => completion(json!([]), 0),
        Fault::EmptyMessage => completion(
            json!([{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]),
            0,
        ),
        Fault::Truncate => completion(
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hel"}, "finish_reason": "length"}]),
            1,
        ),
        Fault::StopEarly => {
            let whole = completion(
                json!([{"index": 0, "message": {"role": "assistant", "content": format!("Hello from {name}")}, "finish_reason": "stop"}]),
                5,
            )
            .to_string();
            return whole.as_bytes()[..whole.len() / 2].to_vec();
        }
    };
    body.to_string().into_bytes()
}

/// A streamed chat completion as `fault` makes it: its events (`data:` payloads), and
/// whether it ends with `[DONE]`.
pub fn stream_events(
    fault: Fault,
    name: &str,
    chunk: impl Fn(Value, Value) -> Value,
) -> (Vec<Value>, bool) {
    let role = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let token = |t: &str| chunk(json!({"content": t}), Value::Null);
    match fault {
        // Relays answer a stream request with the JSON error (see `json_answer`); as an
        // event, it is an error event.
        Fault::ErrorIn200 | Fault::ErrorEvent => {
            (vec![role, token("Hel"), error_object(name)], true)
        }
        Fault::NoChoices => {
            let mut empty = chunk(json!({}), Value::Null);
            empty["choices"] = json!([]);
            (vec![empty.clone(), empty], true)
        }
        Fault::EmptyMessage => (vec![role, chunk(json!({}), json!("stop"))], true),
        Fault::StopEarly => (vec![role, token("Hel"), token("lo")], false),
        Fault::Truncate => (
            vec![role, token("Hel"), chunk(json!({}), json!("length"))],
            true,
        ),
    }
}
