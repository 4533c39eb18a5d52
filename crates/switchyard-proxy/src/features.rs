//! The answer features ([`switchyard_core::features`]) as the proxy reads them: what a
//! request asked (from its body as it streams: [`asked_of`]), what an answer carried
//! ([`AnswerDetails`], read only when the request asked for something its facts cannot
//! tell, or for a shadow comparison), and the judgement, with JSON Schemas checked by the
//! `jsonschema` crate.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use switchyard_core::answer::{AnswerFacts, Endpoint};
use switchyard_core::features::{self, Answered, Asked, FeatureFacts, Judging, Tool, ToolCall};

use crate::answer::RequestRead;

/// Text kept of an answer for the judgement and a comparison.
pub const MAX_TEXT: usize = 1 << 20;

/// What a request asked, from what its scan read.
pub fn asked_of(read: &RequestRead) -> Asked {
    let tools = read
        .tools
        .as_deref()
        .and_then(|t| serde_json::from_slice::<Value>(t).ok())
        .map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| {
                    let f = &t["function"];
                    Some(Tool {
                        name: f["name"].as_str()?.to_string(),
                        parameters: f.get("parameters").filter(|p| p.is_object()).cloned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let format = read
        .response_format
        .as_deref()
        .and_then(|f| serde_json::from_slice::<Value>(f).ok())
        .unwrap_or(Value::Null);
    let kind = format["type"].as_str().unwrap_or_default();
    Asked {
        tools,
        json_object: kind == "json_object",
        json_schema: (kind == "json_schema").then(|| {
            format["json_schema"]
                .get("schema")
                .filter(|s| s.is_object())
                .cloned()
        }),
        stream_usage: read.stream && read.include_usage,
        logprobs: read.logprobs,
        n: read.n.unwrap_or(1).clamp(1, u32::MAX as u64) as u32,
    }
}

/// Checks `value` against a JSON Schema (the draft the schema names, 2020-12 otherwise).
pub fn check_schema(schema: &Value, value: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    validator.validate(value).map_err(|e| e.to_string())
}

/// What an answer carried beyond its facts: its text, its tool calls, its log
/// probabilities, its choices (bounded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnswerDetails {
    /// The first choice's text.
    pub content: String,
    /// Tool calls by index, their arguments as they came (streams send them in pieces).
    calls: BTreeMap<u64, ToolCall>,
    logprobs: bool,
    choices: BTreeSet<u64>,
}

impl AnswerDetails {
    /// One SSE event of a chat completion stream.
    pub fn sse_event(&mut self, event: &Value) {
        for c in event["choices"].as_array().into_iter().flatten() {
            let index = c["index"].as_u64().unwrap_or(0);
            self.choices.insert(index);
            self.logprobs |= !c["logprobs"].is_null();
            let delta = &c["delta"];
            if index == 0 {
                if let Some(t) = delta["content"].as_str().or_else(|| c["text"].as_str()) {
                    self.text(t);
                }
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let at = call["index"].as_u64().unwrap_or(0);
                let entry = self.calls.entry(at).or_default();
                if let Some(name) = call["function"]["name"].as_str() {
                    entry.name.push_str(name);
                }
                if let Some(args) = call["function"]["arguments"].as_str() {
                    if entry.arguments.len() + args.len() <= MAX_TEXT {
                        entry.arguments.push_str(args);
                    }
                }
            }
        }
        // The Responses API's text deltas.
        if event["type"] == "response.output_text.delta" {
            if let Some(t) = event["delta"].as_str() {
                self.text(t);
            }
        }
    }

    /// A chat completion (or Responses API answer) held whole.
    pub fn of_json(body: &[u8]) -> Option<AnswerDetails> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let mut d = AnswerDetails::default();
        for (i, c) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let index = c["index"].as_u64().unwrap_or(i as u64);
            d.choices.insert(index);
            d.logprobs |= !c["logprobs"].is_null();
            let m = &c["message"];
            if index == 0 {
                if let Some(t) = m["content"].as_str().or_else(|| c["text"].as_str()) {
                    d.text(t);
                }
            }
            for (at, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
                d.calls.insert(
                    at as u64,
                    ToolCall {
                        name: call["function"]["name"].as_str().unwrap_or_default().into(),
                        arguments: call["function"]["arguments"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                    },
                );
            }
        }
        if let Some(t) = v["output_text"].as_str() {
            d.text(t);
        }
        Some(d)
    }

    fn text(&mut self, t: &str) {
        if self.content.len() + t.len() <= MAX_TEXT {
            self.content.push_str(t);
        }
    }
}

/// Judges an answer (its facts, whether usage was read, and its details when they were
/// read) against what its request asked; `usage_asked`: the gateway asked the stream for
/// its usage on the client's behalf.
pub fn judge(
    asked: &Asked,
    endpoint: Endpoint,
    usage_asked: bool,
    facts: Option<&AnswerFacts>,
    usage: bool,
    details: Option<&AnswerDetails>,
) -> FeatureFacts {
    let answered = Answered {
        tool_calls: details.map_or_else(Vec::new, |d| d.calls.values().collect()),
        content: details.map(|d| d.content.as_str()),
        finish: facts.and_then(|f| f.finish),
        usage,
        logprobs: details.is_some_and(|d| d.logprobs),
        choices: details.map_or_else(
            || facts.map_or(0, |f| f.choices),
            |d| d.choices.len() as u32,
        ),
    };
    let how = Judging {
        details: details.is_some(),
        finishes: matches!(
            endpoint,
            Endpoint::Chat | Endpoint::Completions | Endpoint::Responses
        ),
        usage_asked,
    };
    features::judge(asked, &answered, how, &check_schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchyard_core::features::Feature;

    #[test]
    fn schemas_are_checked_by_the_jsonschema_crate() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        assert!(check_schema(&schema, &json!({"city": "Oslo"})).is_ok());
        assert!(check_schema(&schema, &json!({"city": 7})).is_err());
        assert!(check_schema(&schema, &json!({})).is_err());
        assert!(check_schema(&json!({"type": "nonsense"}), &json!(1)).is_err());
    }

    /// A streamed tool call, its arguments in pieces, read event by event.
    #[test]
    fn a_streamed_tool_call_is_put_together() {
        let events = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ];
        let mut d = AnswerDetails::default();
        for e in &events {
            d.sse_event(e);
        }
        let asked = Asked {
            tools: vec![Tool {
                name: "weather".into(),
                parameters: Some(json!({"required": ["city"]})),
            }],
            n: 1,
            ..Asked::default()
        };
        let facts = AnswerFacts {
            finish: Some(switchyard_core::answer::Finish::Stop),
            ..AnswerFacts::default()
        };
        let f = judge(&asked, Endpoint::Chat, false, Some(&facts), false, Some(&d));
        assert_eq!(f.get(Feature::ToolCalls), Some(true));
        // The same answer held whole.
        let whole = json!({"choices": [{"index": 0, "message": {"content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}, "finish_reason": "tool_calls"}]});
        let d = AnswerDetails::of_json(whole.to_string().as_bytes()).unwrap();
        assert_eq!(
            judge(&asked, Endpoint::Chat, false, Some(&facts), false, Some(&d))
                .get(Feature::ToolCalls),
            Some(true)
        );
    }
}
