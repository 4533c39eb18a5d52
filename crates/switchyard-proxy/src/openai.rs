//! What the gateway knows of the OpenAI API beyond forwarding bytes: which requests are
//! chat completions, and asking a stream for its usage on the client's behalf. Reading
//! `usage` and `model` as bodies pass is in [`crate::sniff`].

use bytes::Bytes;
use http::{Method, Uri};

/// `POST …/chat/completions`.
pub fn is_chat_completion(method: &Method, uri: &Uri) -> bool {
    method == Method::POST && uri.path().ends_with("/chat/completions")
}

/// Adds `stream_options.include_usage` to a streaming chat request that lacks it.
/// Returns the body to send, the model, and whether the usage chunk must be stripped.
pub fn inject_stream_usage(bytes: Bytes) -> (Bytes, Option<String>, bool) {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (bytes, None, false);
    };
    let model = v
        .get("model")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let streaming = v.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    let asked = v
        .pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    if !streaming || asked {
        return (bytes, model, false);
    }
    let Some(obj) = v.as_object_mut() else {
        return (bytes, model, false);
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    match opts.as_object_mut() {
        Some(o) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        None => return (bytes, model, false),
    }
    match serde_json::to_vec(&v) {
        Ok(out) => (Bytes::from(out), model, true),
        Err(_) => (bytes, model, false),
    }
}
