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
        match name {
            b"choices" => Key::Choices,
            b"completion_tokens" => Key::CompletionTokens,
            b"content" => Key::Content,
            b"delta" => Key::Delta,
            b"error" => Key::Error,
            b"finish_reason" => Key::FinishReason,
            b"function_call" => Key::FunctionCall,
            b"logprobs" => Key::Logprobs,
            b"include_usage" => Key::IncludeUsage,
            b"incomplete_details" => Key::IncompleteDetails,
            b"index" => Key::Index,
            b"input_tokens" => Key::InputTokens,
            b"max_completion_tokens" => Key::MaxCompletionTokens,
            b"max_output_tokens" => Key::MaxOutputTokens,
            b"max_tokens" => Key::MaxTokens,
            b"message" => Key::Message,
            b"model" => Key::Model,
            b"n" => Key::N,
            b"output" => Key::Output,
            b"output_tokens" => Key::OutputTokens,
            b"prompt_tokens" => Key::PromptTokens,
            b"reason" => Key::Reason,
            b"reasoning_content" => Key::ReasoningContent,
            b"refusal" => Key::Refusal,
            b"response" => Key::Response,
            b"response_format" => Key::ResponseFormat,
            b"status" => Key::Status,
            b"stream" => Key::Stream,
            b"stream_options" => Key::StreamOptions,
            b"text" => Key::Text,
            b"tool_calls" => Key::ToolCalls,
            b"tools" => Key::Tools,
            b"type" => Key::Type,
            b"usage" => Key::Usage,
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
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64)
    })
}
