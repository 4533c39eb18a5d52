//! What a chat request asks of its answer beyond text, answered as a provider that honours
//! it: a call to the first tool offered (its arguments made to fit the tool's parameter
//! schema), `response_format` (a JSON object, fitting the schema when one is given),
//! `logprobs`, `n`, and the stream's usage — and [`Ignore`], the switches that make the
//! mock drop them as relays that lose parameters do.

use std::str::FromStr;

use serde_json::{json, Map, Value};

/// What the mock leaves unanswered: `--ignore tools,response_format`, or per request
/// `x-mock-ignore: …`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignore {
    /// Answer in words, never with a tool call.
    pub tools: bool,
    /// Answer in prose, not JSON.
    pub response_format: bool,
    /// Never send the stream's usage chunk.
    pub stream_options: bool,
    /// Never send log probabilities.
    pub logprobs: bool,
    /// Always one choice.
    pub n: bool,
}

const NAMES: [&str; 5] = [
    "tools",
    "response_format",
    "stream_options",
    "logprobs",
    "n",
];

impl FromStr for Ignore {
    type Err = String;

    fn from_str(s: &str) -> Result<Ignore, String> {
        let mut i = Ignore::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "tools" => i.tools = true,
                "response_format" => i.response_format = true,
                "stream_options" => i.stream_options = true,
                "logprobs" => i.logprobs = true,
                "n" => i.n = true,
                _ => {
                    return Err(format!(
                        "unknown parameter `{name}` (one of {})",
                        NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(i)
    }
}

impl Ignore {
    /// Either's switches.
    pub fn or(self, o: Ignore) -> Ignore {
        Ignore {
            tools: self.tools || o.tools,
            response_format: self.response_format || o.response_format,
            stream_options: self.stream_options || o.stream_options,
            logprobs: self.logprobs || o.logprobs,
            n: self.n || o.n,
        }
    }
}

/// How a chat request is answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// A call to this tool with these arguments (a JSON text), instead of content.
    pub(crate) tool_call: Option<(String, String)>,
    /// The content when it must be exactly this (JSON asked for); else the mock's words.
    pub(crate) json: Option<String>,
    pub(crate) logprobs: bool,
    pub(crate) choices: usize,
    pub(crate) usage: bool,
}

impl Plan {
    pub(crate) fn of(req: &Value, ignore: Ignore) -> Plan {
        let tool_call = req["tools"]
            .as_array()
            .filter(|_| !ignore.tools && req["tool_choice"] != "none")
            .and_then(|tools| tools.first())
            .and_then(|t| {
                let f = &t["function"];
                let name = f["name"].as_str()?.to_string();
                let args = f
                    .get("parameters")
                    .map_or_else(|| json!({}), instance)
                    .to_string();
                Some((name, args))
            });
        let format = &req["response_format"];
        let json = match format["type"].as_str() {
            _ if ignore.response_format => None,
            Some("json_object") => Some(json!({"answer": "Hello"}).to_string()),
            Some("json_schema") => Some(
                format["json_schema"]
                    .get("schema")
                    .map_or_else(|| json!({}), instance)
                    .to_string(),
            ),
            _ => None,
        };
        Plan {
            tool_call,
            json,
            logprobs: !ignore.logprobs && req["logprobs"] == true,
            choices: if ignore.n {
                1
            } else {
                req["n"].as_u64().unwrap_or(1).clamp(1, 8) as usize
            },
            usage: !ignore.stream_options && req["stream_options"]["include_usage"] == true,
        }
    }

    /// A choice's `logprobs` for `text`.
    pub(crate) fn logprobs_of(&self, text: &str) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        json!({"content": [{"token": text, "logprob": -0.25, "bytes": text.as_bytes(), "top_logprobs": []}]})
    }
}

/// A value valid against `schema`, for the schemas tools and formats use: objects with
/// their properties, arrays, strings, numbers, booleans, enums and constants.
pub fn instance(schema: &Value) -> Value {
    if let Some(v) = schema.get("const") {
        return v.clone();
    }
    if let Some(v) = schema["enum"].as_array().and_then(|e| e.first()) {
        return v.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema[key].as_array().and_then(|a| a.first()) {
            return instance(first);
        }
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "object",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    out.insert(k.clone(), instance(v));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = schema["minItems"].as_u64().unwrap_or(1).max(1) as usize;
            Value::Array(vec![instance(&schema["items"]); n])
        }
        "string" => {
            let n = schema["minLength"].as_u64().unwrap_or(1).max(1) as usize;
            Value::String("x".repeat(n))
        }
        "integer" => json!(schema["minimum"].as_i64().unwrap_or(1)),
        "number" => json!(schema["minimum"].as_f64().unwrap_or(1.0)),
        "boolean" => Value::Bool(true),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_fit_their_schemas() {
        let schema = json!({"type": "object", "required": ["city", "days"], "properties": {
            "city": {"type": "string", "minLength": 3}, "days": {"type": "integer", "minimum": 2},
            "unit": {"enum": ["c", "f"]}, "tags": {"type": "array", "items": {"type": "string"}},
            "ok": {"type": ["boolean", "null"]}}});
        assert_eq!(
            instance(&schema),
            json!({"city": "xxx", "days": 2, "unit": "c", "tags": ["x"], "ok": true})
        );
    }

    #[test]
    fn a_request_is_answered_as_asked_unless_ignored() {
        let req = json!({"tools": [{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "logprobs": true, "n": 2, "stream_options": {"include_usage": true}});
        let plan = Plan::of(&req, Ignore::default());
        assert_eq!(
            plan.tool_call,
            Some(("weather".into(), r#"{"city":"x"}"#.into()))
        );
        assert!(plan.logprobs && plan.usage);
        assert_eq!(plan.choices, 2);
        let ignored = Plan::of(&req, "tools, stream_options,n".parse().unwrap());
        assert_eq!(
            (ignored.tool_call, ignored.usage, ignored.choices),
            (None, false, 1)
        );
        assert!("tool".parse::<Ignore>().is_err());
        let req = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}});
        assert_eq!(
            Plan::of(&req, Ignore::default()).json.as_deref(),
            Some(r#"{"n":1}"#)
        );
        let plan = Plan::of(&req, "response_format".parse().unwrap());
        assert_eq!(plan.json, None);
    }
}
