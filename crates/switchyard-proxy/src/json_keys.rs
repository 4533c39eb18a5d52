//! The vocabulary of the JSON walker: the keys the gateway looks for, a value's path
//! steps, and how a scalar reads as a count.

/// The keys anyone here looks for; every other key is [`Key::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Other,
    Choices,
    CompletionTokens,
    Content,
    Delta,
    Error,
    FinishReason,
    FunctionCall,
    Logprobs,
    IncludeUsage,
    IncompleteDetails,
    Index,
    InputTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    MaxTokens,
    Message,
    Model,
    N,
    Output,
    OutputTokens,
    PromptTokens,
    Reason,
    ReasoningContent,
    Refusal,
    Response,
    ResponseFormat,
    Status,
    Stream,
    StreamOptions,
    Text,
    ToolCalls,
    Tools,
    Type,
    Usage,
}

impl Key {
    pub(crate) fn of(name: &[u8]) -> Key {
        // By length first: one jump, then a compare or two of equal-length words, where
        // one match over every name compared them one after another.
        match name.len() {
            1 => match name {
                b"n" => Key::N,
                _ => Key::Other,
            },
            4 => match name {
                b"text" => Key::Text,
                b"type" => Key::Type,
                _ => Key::Other,
            },
            5 => match name {
                b"delta" => Key::Delta,
                b"error" => Key::Error,
                b"index" => Key::Index,
                b"model" => Key::Model,
                b"tools" => Key::Tools,
                b"usage" => Key::Usage,
                _ => Key::Other,
            },
            6 => match name {
                b"output" => Key::Output,
                b"reason" => Key::Reason,
                b"status" => Key::Status,
                b"stream" => Key::Stream,
                _ => Key::Other,
            },
            7 => match name {
                b"choices" => Key::Choices,
                b"content" => Key::Content,
                b"message" => Key::Message,
                b"refusal" => Key::Refusal,
                _ => Key::Other,
            },
            8 => match name {
                b"logprobs" => Key::Logprobs,
                b"response" => Key::Response,
                _ => Key::Other,
            },
            10 => match name {
                b"max_tokens" => Key::MaxTokens,
                b"tool_calls" => Key::ToolCalls,
                _ => Key::Other,
            },
            12 => match name {
                b"input_tokens" => Key::InputTokens,
                _ => Key::Other,
            },
            13 => match name {
                b"finish_reason" => Key::FinishReason,
                b"function_call" => Key::FunctionCall,
                b"include_usage" => Key::IncludeUsage,
                b"output_tokens" => Key::OutputTokens,
                b"prompt_tokens" => Key::PromptTokens,
                _ => Key::Other,
            },
            14 => match name {
                b"stream_options" => Key::StreamOptions,
                _ => Key::Other,
            },
            15 => match name {
                b"response_format" => Key::ResponseFormat,
                _ => Key::Other,
            },
            17 => match name {
                b"completion_tokens" => Key::CompletionTokens,
                b"max_output_tokens" => Key::MaxOutputTokens,
                b"reasoning_content" => Key::ReasoningContent,
                _ => Key::Other,
            },
            18 => match name {
                b"incomplete_details" => Key::IncompleteDetails,
                _ => Key::Other,
            },
            21 => match name {
                b"max_completion_tokens" => Key::MaxCompletionTokens,
                _ => Key::Other,
            },
            _ => Key::Other,
        }
    }
}

/// One step of a value's path: a key of an object, or an index in an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Key(Key),
    Index(u32),
}

/// A number value as a count (`12`, `12.0`); `None` for anything else.
pub fn as_count(bytes: &[u8]) -> Option<u64> {
    // Counts are plain digits all but always: read here, without the parsers' set-up.
    if (1..=19).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_digit) {
        return Some(bytes.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key's name, spelled from its variant (`FinishReason`: `finish_reason`).
    fn name_of(key: Key) -> String {
        let mut name = String::new();
        for c in format!("{key:?}").chars() {
            if c.is_ascii_uppercase() && !name.is_empty() {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        }
        name
    }

    #[test]
    fn every_key_is_known_by_its_name_and_no_other() {
        use Key::*;
        let all = [
            Choices,
            CompletionTokens,
            Content,
            Delta,
            Error,
            FinishReason,
            FunctionCall,
            Logprobs,
            IncludeUsage,
            IncompleteDetails,
            Index,
            InputTokens,
            MaxCompletionTokens,
            MaxOutputTokens,
            MaxTokens,
            Message,
            Model,
            N,
            Output,
            OutputTokens,
            PromptTokens,
            Reason,
            ReasoningContent,
            Refusal,
            Response,
            ResponseFormat,
            Status,
            Stream,
            StreamOptions,
            Text,
            ToolCalls,
            Tools,
            Type,
            Usage,
        ];
        for key in all {
            let name = name_of(key);
            assert_eq!(Key::of(name.as_bytes()), key, "{name}");
            // One byte off, one byte short, one byte more: not the key.
            let mut off = name.clone().into_bytes();
            off[0] ^= 0x20;
            assert_eq!(Key::of(&off), Other, "{name}");
            assert_eq!(Key::of(&name.as_bytes()[1..]), Other, "{name}");
            assert_eq!(Key::of(format!("{name}s").as_bytes()), Other, "{name}");
        }
        assert_eq!(Key::of(b""), Other);
    }

    #[test]
    fn a_count_is_read_from_digits_or_a_whole_float() {
        for (text, want) in [
            ("0", Some(0)),
            ("17", Some(17)),
            ("007", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            // Past u64: the float reading saturates, as it always did.
            ("18446744073709551616", Some(u64::MAX)),
            ("12.0", Some(12)),
            ("1e3", Some(1000)),
            ("-1", None),
            ("", None),
            ("1x", None),
            ("null", None),
        ] {
            assert_eq!(as_count(text.as_bytes()), want, "{text}");
        }
    }
}
