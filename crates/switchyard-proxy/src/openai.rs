//! What the gateway knows of the OpenAI API beyond forwarding bytes: which requests are
//! chat completions, and asking a stream for its usage on the client's behalf. Reading
//! `usage` and `model` as bodies pass is in [`crate::sniff`].

use bytes::Bytes;
use http::{Method, Uri};

use crate::answer::RequestRead;

/// `POST …/chat/completions`.
pub fn is_chat_completion(method: &Method, uri: &Uri) -> bool {
    method == Method::POST && uri.path().ends_with("/chat/completions")
}

/// Adds `stream_options.include_usage` to a streaming chat request that lacks it
/// (`stream_options` missing, `null`, or without `include_usage: true`), given what its
/// body was read to ask (`read`). Returns the body to send, and whether the usage chunk
/// must be stripped. Only a stream to rewrite is parsed.
pub fn inject_stream_usage(bytes: Bytes, read: &RequestRead) -> (Bytes, bool) {
    if !read.stream || read.include_usage {
        return (bytes, false);
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (bytes, false);
    };
    let Some(obj) = v.as_object_mut() else {
        return (bytes, false);
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    // `null` is valid in the OpenAI spec and means what leaving it out means.
    if opts.is_null() {
        *opts = serde_json::json!({});
    }
    match opts.as_object_mut() {
        Some(o) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        None => return (bytes, false),
    }
    match serde_json::to_vec(&v) {
        Ok(out) => (Bytes::from(out), true),
        Err(_) => (bytes, false),
    }
}

/// The start of a JSON request body, read until its top-level `model` is known (or the
/// body ended, or it did not look like a JSON object soon enough): what a request needs
/// before its model can be renamed for a provider. The rest of the body is not read.
#[derive(Debug, Clone)]
pub struct ModelPrefix {
    /// The body's bytes read so far.
    pub held: Bytes,
    /// The client's model name and where its value lies in `held`.
    pub model: Option<(Box<str>, usize, usize)>,
}

impl ModelPrefix {
    /// The model as the client named it.
    pub fn client_model(&self) -> Option<&str> {
        self.model.as_ref().map(|(m, ..)| &**m)
    }

    /// `held` with the model value replaced by `name`.
    pub fn renamed(&self, name: &str) -> Bytes {
        let Some((_, start, end)) = &self.model else {
            return self.held.clone();
        };
        let value = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
        let mut out = Vec::with_capacity(self.held.len() + value.len());
        out.extend_from_slice(&self.held[..*start]);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(&self.held[*end..]);
        Bytes::from(out)
    }
}

/// How far into a body the top-level `model` is looked for: a request that names its
/// model later than this is passed on as it is.
pub const MODEL_SEARCH_MAX: usize = 64 << 10;

/// Feeds `chunk` to the search; `Some(prefix)` once the model is known or the search is
/// over (`held` then has every byte fed).
pub struct ModelSearch {
    key: crate::sniff::JsonKey,
    held: bytes::BytesMut,
}

impl Default for ModelSearch {
    fn default() -> Self {
        ModelSearch {
            key: crate::sniff::JsonKey::new("model", 1024),
            held: bytes::BytesMut::new(),
        }
    }
}

impl ModelSearch {
    /// Takes the next chunk; answers the prefix when the search is over.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<ModelPrefix> {
        self.key.feed(chunk);
        self.held.extend_from_slice(chunk);
        if self.key.found() || self.held.len() >= MODEL_SEARCH_MAX {
            return Some(self.finish());
        }
        None
    }

    /// The body ended: what was found, if anything.
    pub fn finish(&mut self) -> ModelPrefix {
        ModelPrefix {
            model: self.found(),
            held: std::mem::take(&mut self.held).freeze(),
        }
    }

    /// A body the gateway holds whole: `held` is the body itself, not a copy.
    pub fn whole(body: Bytes) -> ModelPrefix {
        let mut search = ModelSearch::default();
        search.key.feed(&body);
        ModelPrefix {
            model: search.found(),
            held: body,
        }
    }

    fn found(&self) -> Option<(Box<str>, usize, usize)> {
        match (self.key.span(), self.key.parse::<String>()) {
            (Some((start, end)), Some(name)) => Some((name.into_boxed_str(), start, end)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(chunks: &[&[u8]]) -> ModelPrefix {
        let mut s = ModelSearch::default();
        for c in chunks {
            if let Some(p) = s.feed(c) {
                return p;
            }
        }
        s.finish()
    }

    /// The body as the provider gets it: the held prefix renamed, then the rest.
    fn rewritten(body: &[u8], split: usize, name: &str) -> (Option<String>, serde_json::Value) {
        let p = search(&[&body[..split], &body[split..]]);
        let mut out = p.renamed(name).to_vec();
        out.extend_from_slice(&body[p.held.len()..]);
        (
            p.client_model().map(str::to_string),
            serde_json::from_slice(&out).expect("still JSON"),
        )
    }

    #[test]
    fn the_top_level_model_is_renamed_wherever_the_body_is_split() {
        let body = br#"{"messages":[{"role":"user","content":"say \"model\": no","model":"nested"}], "model" : "deepseek-chat" ,"temperature":0.2,"x":"\u00e9\u4e2d"}"#;
        for split in 0..=body.len() {
            let (client, v) = rewritten(body, split, "deepseek-v3.2");
            assert_eq!(client.as_deref(), Some("deepseek-chat"), "split {split}");
            assert_eq!(v["model"], "deepseek-v3.2", "split {split}");
            assert_eq!(
                v["messages"][0]["model"], "nested",
                "nested untouched at {split}"
            );
            assert_eq!(v["messages"][0]["content"], "say \"model\": no");
            assert_eq!(v["temperature"], 0.2);
            assert_eq!(v["x"], "é中");
        }
    }

    #[test]
    fn model_first_last_escaped_or_unicode() {
        for (body, client) in [
            (&br#"{"model":"a\"b","stream":true}"#[..], "a\"b"),
            (
                br#"{"stream":true,"model":"\u00fcber-m\u00f6del"}"#,
                "über-mödel",
            ),
        ] {
            for split in 0..=body.len() {
                let (got, v) = rewritten(body, split, "mapped/ü");
                assert_eq!(got.as_deref(), Some(client), "split {split}");
                assert_eq!(v["model"], "mapped/ü");
            }
        }
        let (got, _) = rewritten(br#"{"model":"\u00fcber"}"#, 3, "x");
        assert_eq!(got.as_deref(), Some("über"));
    }

    #[test]
    fn no_model_or_not_json_is_passed_as_it_is() {
        let p = search(&[br#"{"input":"hello"}"#]);
        assert_eq!(p.client_model(), None);
        assert_eq!(&p.renamed("x")[..], br#"{"input":"hello"}"#);
        let p = search(&[b"not json at all"]);
        assert_eq!(p.client_model(), None);
        let p = search(&[br#"{"model":42}"#]);
        assert_eq!(p.client_model(), None, "not a string");
    }

    /// A stream is asked for its usage whatever its client sent: no options, `null`
    /// options, options without `include_usage`; a client that asked itself is left alone.
    #[test]
    fn usage_is_asked_for_on_every_stream_that_lacks_it() {
        let read = |body: &str| {
            let mut scan = crate::answer::RequestScan::default();
            scan.feed(body.as_bytes());
            assert!(scan.finish());
            scan.read
        };
        for body in [
            r#"{"model":"m","stream":true}"#,
            r#"{"model":"m","stream":true,"stream_options":null}"#,
            r#"{"model":"m","stream":true,"stream_options":{}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
        ] {
            let (out, injected) = inject_stream_usage(Bytes::from(body), &read(body));
            assert!(injected, "{body}");
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{body}");
        }
        for body in [
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m"}"#,
        ] {
            let (out, injected) = inject_stream_usage(Bytes::from(body), &read(body));
            assert!(!injected, "{body}");
            assert_eq!(out, body.as_bytes());
        }
    }
}
