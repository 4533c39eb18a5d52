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

/// Every key looked for, by name.
const NAMES: [(&[u8], Key); 34] = [
    (b"choices", Key::Choices),
    (b"completion_tokens", Key::CompletionTokens),
    (b"content", Key::Content),
    (b"delta", Key::Delta),
    (b"error", Key::Error),
    (b"finish_reason", Key::FinishReason),
    (b"function_call", Key::FunctionCall),
    (b"logprobs", Key::Logprobs),
    (b"include_usage", Key::IncludeUsage),
    (b"incomplete_details", Key::IncompleteDetails),
    (b"index", Key::Index),
    (b"input_tokens", Key::InputTokens),
    (b"max_completion_tokens", Key::MaxCompletionTokens),
    (b"max_output_tokens", Key::MaxOutputTokens),
    (b"max_tokens", Key::MaxTokens),
    (b"message", Key::Message),
    (b"model", Key::Model),
    (b"n", Key::N),
    (b"output", Key::Output),
    (b"output_tokens", Key::OutputTokens),
    (b"prompt_tokens", Key::PromptTokens),
    (b"reason", Key::Reason),
    (b"reasoning_content", Key::ReasoningContent),
    (b"refusal", Key::Refusal),
    (b"response", Key::Response),
    (b"response_format", Key::ResponseFormat),
    (b"status", Key::Status),
    (b"stream", Key::Stream),
    (b"stream_options", Key::StreamOptions),
    (b"text", Key::Text),
    (b"tool_calls", Key::ToolCalls),
    (b"tools", Key::Tools),
    (b"type", Key::Type),
    (b"usage", Key::Usage),
];

/// A slot per name: (length, first byte, last byte) tell these names apart, and one
/// multiplication spreads them over 64 slots with none shared (checked as the table is
/// built, at compile time).
const SLOTS: [(&[u8], Key); 64] = slots();

/// Where `name` (not empty) would be in [`SLOTS`].
const fn slot(name: &[u8]) -> usize {
    let x = name.len() as u64 | (name[0] as u64) << 8 | (name[name.len() - 1] as u64) << 16;
    (x.wrapping_mul(0xfad7_4333_2cc0_92bd) >> 58) as usize
}

const fn slots() -> [(&'static [u8], Key); 64] {
    let mut table: [(&[u8], Key); 64] = [(b"", Key::Other); 64];
    let mut i = 0;
    while i < NAMES.len() {
        let at = slot(NAMES[i].0);
        assert!(
            table[at].0.is_empty(),
            "two keys share a slot: find another multiplier"
        );
        table[at] = NAMES[i];
        i += 1;
    }
    table
}

impl Key {
    pub(crate) fn of(name: &[u8]) -> Key {
        // One slot to look in and one compare: a key is looked up for every key of every
        // body, and a match over the names compiled to 3 KB of compares, a cache's worth of
        // code per request.
        if name.is_empty() {
            return Key::Other;
        }
        match SLOTS[slot(name)] {
            (known, key) if same(known, name) => key,
            _ => Key::Other,
        }
    }
}

/// `a == b` in at most three word compares and no call (`==` on slices calls `memcmp`,
/// dearer than the lookup); no key is longer than 24 bytes.
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    let word4 =
        |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes"));
    let word8 =
        |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"));
    n == b.len()
        && match n {
            0..=3 => a.first() == b.first() && a.get(n / 2) == b.get(n / 2) && a.last() == b.last(),
            4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
            8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
            17..=24 => {
                word8(a, 0) == word8(b, 0)
                    && word8(a, 8) == word8(b, 8)
                    && word8(a, n - 8) == word8(b, n - 8)
            }
            _ => false,
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
    fn word_compares_tell_what_slice_compares_tell() {
        let a: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'F').collect();
        for n in 0..=a.len() {
            assert_eq!(same(&a[..n], &a[..n]), n <= 24, "{n}");
            assert!(!same(&a[..n], &a[..n.saturating_sub(1)]) || n == 0);
            // Any one byte changed, wherever it is, tells them apart.
            for at in 0..n {
                let mut b = a[..n].to_vec();
                b[at] ^= 1;
                assert!(!same(&a[..n], &b), "{n} {at}");
            }
        }
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
