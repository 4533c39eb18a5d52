//! What a request asked of an answer beyond text, and whether the answer honoured it: the
//! things a provider migration breaks without a single 5xx (tool calls dropped,
//! `response_format` ignored, answers cut at `length`, streams without their usage).
//!
//! The proxy fills [`Asked`] from the request and [`Answered`] from the answer as they
//! stream by, and judges them into [`FeatureFacts`] (two small bitsets) that every request
//! event carries; stats and the shadow comparison read those.

use serde::{Deserialize, Serialize};

use crate::answer::Finish;

/// A capability an answer may honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Asked with `tools`: a call came back, to a tool the request offered, its arguments
    /// JSON valid against that tool's parameter schema. (A model may rightly answer in
    /// words: a side that calls tools less often than the other is what the comparison
    /// shows.)
    ToolCalls,
    /// `response_format: {type: json_object}`: the content is JSON.
    JsonObject,
    /// `response_format: {type: json_schema}`: the content is JSON valid against the schema.
    JsonSchema,
    /// The answer finished by itself (`stop`, `tool_calls`), not cut (`length`,
    /// `content_filter`) or with no reason at all. Judged on every answer.
    FinishReason,
    /// `stream_options: {include_usage: true}` (or the gateway asking on the client's
    /// behalf): the stream carried its usage.
    StreamUsage,
    /// `logprobs: true`: the answer carried log probabilities.
    Logprobs,
    /// `n > 1`: as many choices came back as were asked for.
    N,
}

impl Feature {
    pub const ALL: [Feature; 7] = [
        Feature::ToolCalls,
        Feature::JsonObject,
        Feature::JsonSchema,
        Feature::FinishReason,
        Feature::StreamUsage,
        Feature::Logprobs,
        Feature::N,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Feature::ToolCalls => "tool_calls",
            Feature::JsonObject => "json_object",
            Feature::JsonSchema => "json_schema",
            Feature::FinishReason => "finish_reason",
            Feature::StreamUsage => "stream_usage",
            Feature::Logprobs => "logprobs",
            Feature::N => "n",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Per answer: which features its request asked for, and which of those it honoured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureFacts {
    asked: u8,
    honoured: u8,
}

impl FeatureFacts {
    /// Records `feature` as asked, and whether it was honoured.
    pub fn set(&mut self, feature: Feature, honoured: bool) {
        self.asked |= feature.bit();
        if honoured {
            self.honoured |= feature.bit();
        } else {
            self.honoured &= !feature.bit();
        }
    }

    /// `None` when the request did not ask for it; else whether the answer honoured it.
    pub fn get(&self, feature: Feature) -> Option<bool> {
        (self.asked & feature.bit() != 0).then_some(self.honoured & feature.bit() != 0)
    }

    /// The features asked for, with whether each was honoured.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL
            .into_iter()
            .filter_map(|f| self.get(f).map(|h| (f, h)))
    }

    pub fn is_empty(&self) -> bool {
        self.asked == 0
    }
}

/// A tool the request offered.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// Its `parameters` JSON Schema, when given.
    pub parameters: Option<serde_json::Value>,
}

/// What a request asked of its answer beyond text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Asked {
    pub tools: Vec<Tool>,
    /// `response_format: json_object`.
    pub json_object: bool,
    /// `response_format: json_schema`: its schema (`None` when it came without one).
    pub json_schema: Option<Option<serde_json::Value>>,
    /// A stream that asked for its usage (or had the gateway ask).
    pub stream_usage: bool,
    pub logprobs: bool,
    /// Choices asked for (`n`; 1 when not given).
    pub n: u32,
}

impl Asked {
    /// Whether judging the answer needs its content and tool calls (not only its facts).
    pub fn needs_details(&self) -> bool {
        !self.tools.is_empty()
            || self.json_object
            || self.json_schema.is_some()
            || self.logprobs
            || self.n > 1
    }
}

/// A tool call as it came back: the function's name and its arguments (a JSON text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// What an answer carried, as far as the features go (borrowed from what was read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answered<'a> {
    pub tool_calls: Vec<&'a ToolCall>,
    /// The first choice's text, when captured.
    pub content: Option<&'a str>,
    pub finish: Option<Finish>,
    /// Usage came with the answer.
    pub usage: bool,
    /// Log probabilities came with the answer.
    pub logprobs: bool,
    /// Distinct choices that came back.
    pub choices: u32,
}

/// Validates a JSON value against a schema; `Err` says why not (or why the schema could
/// not be used). Given by whoever judges (the proxy holds the validator).
pub type SchemaCheck<'a> = &'a dyn Fn(&serde_json::Value, &serde_json::Value) -> Result<(), String>;

/// How an answer is judged, beyond what was asked and what it carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Judging {
    /// The answer's content and tool calls were read (else only its finish, usage and
    /// choice count are judged).
    pub details: bool,
    /// Its endpoint's answers carry a finish reason (chat, text completions, the Responses
    /// API; not embeddings or `/models`).
    pub finishes: bool,
    /// The gateway asked the stream for its usage on the client's behalf.
    pub usage_asked: bool,
}

/// Judges an answer against what its request asked.
pub fn judge(asked: &Asked, answered: &Answered, how: Judging, check: SchemaCheck) -> FeatureFacts {
    let mut f = FeatureFacts::default();
    if how.finishes {
        f.set(Feature::FinishReason, answered.finish == Some(Finish::Stop));
    }
    if asked.stream_usage || how.usage_asked {
        f.set(Feature::StreamUsage, answered.usage);
    }
    if asked.n > 1 {
        f.set(Feature::N, answered.choices >= asked.n);
    }
    if !how.details {
        return f;
    }
    if asked.logprobs {
        f.set(Feature::Logprobs, answered.logprobs);
    }
    if !asked.tools.is_empty() {
        let called = !answered.tool_calls.is_empty()
            && answered.tool_calls.iter().all(|c| {
                let Some(tool) = asked.tools.iter().find(|t| t.name == c.name) else {
                    return false;
                };
                let Ok(args) = serde_json::from_str::<serde_json::Value>(&c.arguments) else {
                    return false;
                };
                tool.parameters
                    .as_ref()
                    .is_none_or(|schema| check(schema, &args).is_ok())
            });
        f.set(Feature::ToolCalls, called);
    }
    let content = answered
        .content
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
    if asked.json_object {
        f.set(
            Feature::JsonObject,
            content.as_ref().is_some_and(serde_json::Value::is_object),
        );
    }
    if let Some(schema) = &asked.json_schema {
        let valid = match (&content, schema) {
            (Some(c), Some(s)) => check(s, c).is_ok(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        f.set(Feature::JsonSchema, valid);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A schema check that only knows `required`.
    fn required(schema: &serde_json::Value, v: &serde_json::Value) -> Result<(), String> {
        for k in schema["required"].as_array().into_iter().flatten() {
            if v.get(k.as_str().unwrap_or_default()).is_none() {
                return Err(format!("{k} missing"));
            }
        }
        Ok(())
    }

    #[test]
    fn facts_keep_what_was_asked_and_what_was_honoured() {
        let mut f = FeatureFacts::default();
        assert!(f.is_empty());
        f.set(Feature::ToolCalls, false);
        f.set(Feature::N, true);
        assert_eq!(f.get(Feature::ToolCalls), Some(false));
        assert_eq!(f.get(Feature::N), Some(true));
        assert_eq!(f.get(Feature::Logprobs), None);
        let all: Vec<_> = f.iter().collect();
        assert_eq!(all, [(Feature::ToolCalls, false), (Feature::N, true)]);
    }

    #[test]
    fn tool_calls_and_schemas_are_judged_against_what_was_asked() {
        let asked = Asked {
            tools: vec![Tool {
                name: "weather".into(),
                parameters: Some(json!({"type": "object", "required": ["city"]})),
            }],
            json_schema: Some(Some(json!({"required": ["answer"]}))),
            n: 1,
            ..Asked::default()
        };
        let call = |name: &str, args: &str| ToolCall {
            name: name.into(),
            arguments: args.into(),
        };
        let all = Judging {
            details: true,
            finishes: true,
            usage_asked: false,
        };
        let judge = |a: &Answered| judge(&asked, a, all, &required);
        let (oslo, news, cut, empty) = (
            call("weather", r#"{"city":"Oslo"}"#),
            call("news", "{}"),
            call("weather", "{\"city\":"),
            call("weather", "{}"),
        );
        let good = Answered {
            tool_calls: vec![&oslo],
            content: Some(r#"{"answer": 42}"#),
            finish: Some(Finish::Stop),
            ..Answered::default()
        };
        let f = judge(&good);
        assert_eq!(f.get(Feature::ToolCalls), Some(true));
        assert_eq!(f.get(Feature::JsonSchema), Some(true));
        assert_eq!(f.get(Feature::FinishReason), Some(true));
        for bad in [
            Answered::default(),
            Answered {
                tool_calls: vec![&news],
                ..Answered::default()
            },
            Answered {
                tool_calls: vec![&cut],
                ..Answered::default()
            },
            Answered {
                tool_calls: vec![&empty],
                ..Answered::default()
            },
        ] {
            assert_eq!(judge(&bad).get(Feature::ToolCalls), Some(false), "{bad:?}");
        }
        let words = Answered {
            content: Some("the answer is 42"),
            finish: Some(Finish::Length),
            ..Answered::default()
        };
        let f = judge(&words);
        assert_eq!(f.get(Feature::JsonSchema), Some(false));
        assert_eq!(f.get(Feature::FinishReason), Some(false));
        // Without the answer's details only what its facts say is judged.
        let facts_only = Judging {
            details: false,
            ..all
        };
        let f = super::judge(&asked, &good, facts_only, &required);
        assert_eq!(f.get(Feature::ToolCalls), None);
        assert_eq!(f.get(Feature::FinishReason), Some(true));
        // Embeddings have no finish reason to judge.
        let f = super::judge(&asked, &good, Judging::default(), &required);
        assert_eq!(f.get(Feature::FinishReason), None);
    }
}
