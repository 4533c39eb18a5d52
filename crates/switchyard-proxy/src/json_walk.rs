//! A streaming JSON walker: fed a body in pieces, it tells a [`Visit`] where each value
//! lies (its path of known keys and array indices) and what its scalars and the first bytes
//! of its strings are (of wanted ones at least), and whether the body is JSON at all. It
//! keeps no copy of the body: a fixed path stack, a few bytes of the scalar or wanted
//! string being read.
//!
//! It is a structural check, not a full parser: brackets, strings, colons and commas must
//! be where JSON puts them; a scalar must be a literal or look like a number. That is what
//! tells a cut-short or garbled body from JSON, which is what the gateway needs to know.

use crate::json_bytes::{quote_or_escape, ENDS_SCALAR, IN_SCALAR, SCALAR_CLASS};
pub use crate::json_keys::{as_count, Key, Step};

/// What a walker reports. Paths are the steps from the top; values nested deeper than
/// [`PATH_MAX`] are walked but not reported.
pub trait Visit {
    /// Whether to keep the first bytes of the string value at `path` (see [`Visit::string`]).
    fn wants(&self, _path: &[Step]) -> bool {
        false
    }
    /// An object or array starts at `path`.
    fn open(&mut self, _path: &[Step], _array: bool) {}
    /// The object or array at `path` ended, with `count` members or elements.
    fn close(&mut self, _path: &[Step], _array: bool, _count: u32) {}
    /// A string value at `path` ended: its length in bytes (as sent, escapes included), and
    /// its first bytes (up to the walker's cap) when [`Visit::wants`] asked for them. A
    /// string read whole from one piece hands them over unasked (asking costs a call per
    /// value); one read across pieces hands over nothing unless asked.
    fn string(&mut self, _path: &[Step], _head: &[u8], _len: usize) {}
    /// A number, `true`, `false` or `null` at `path` (up to [`SCALAR_MAX`] bytes of it).
    fn scalar(&mut self, _path: &[Step], _bytes: &[u8]) {}
    /// Whether to copy the object or array opening at `path` whole (up to [`CAPTURE_MAX`]
    /// bytes; one at a time): it comes back to [`Visit::captured`] when it closes.
    fn captures(&self, _path: &[Step]) -> bool {
        false
    }
    /// The object or array at `path` asked for by [`Visit::captures`], as sent.
    fn captured(&mut self, _path: &[Step], _bytes: &[u8]) {}
}

/// Longest value copied for [`Visit::captured`] (a larger one is not handed over).
pub const CAPTURE_MAX: usize = 256 << 10;

/// A container being copied whole.
#[derive(Debug)]
struct Capture {
    /// The depth it ends at (its parent's).
    depth: u32,
    path: [Step; PATH_MAX],
    path_len: usize,
    bytes: Vec<u8>,
    /// Where the copy goes on in the piece being fed ([`PENDING`] until its first byte
    /// is placed).
    from: usize,
    /// Its closing bracket was just read.
    done: bool,
    over: bool,
}

const PENDING: usize = usize::MAX;

impl Capture {
    fn append(&mut self, bytes: &[u8]) {
        if self.bytes.len() + bytes.len() > CAPTURE_MAX {
            self.over = true;
        }
        if !self.over {
            self.bytes.extend_from_slice(bytes);
        }
    }
}

/// Deepest path reported.
pub const PATH_MAX: usize = 8;
/// Longest scalar kept (numbers longer than this are still checked, not kept).
pub const SCALAR_MAX: usize = 32;
/// Longest key compared (every known key is shorter).
const KEY_MAX: usize = 24;
/// Nesting beyond this is refused as not JSON we will read (half serde_json's own limit;
/// the deepest tool schemas seen are a few tens).
const DEPTH_MAX: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (the top one, after `:` or after `,` in an array).
    Value,
    /// A value or `]` (just after `[`).
    ValueOrClose,
    /// A key or `}` (just after `{`).
    KeyOrClose,
    /// A key (after `,` in an object).
    Key,
    Colon,
    /// `,` or the close of the container.
    CommaOrClose,
    /// Nothing but white space: the top value is complete.
    End,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    None,
    /// Inside a string: a key or a value, `esc` after a backslash.
    Str {
        key: bool,
        esc: bool,
    },
    /// Inside a number or literal.
    Scalar,
}

/// The walker. `cap`: how many bytes of a wanted string it keeps.
#[derive(Debug)]
pub struct JsonWalk {
    expect: Expect,
    token: Token,
    depth: u32,
    /// Bit `d`: the container at depth `d + 1` is an array.
    arrays: u64,
    /// The container at the current depth is an array (bit `depth - 1` of `arrays`, kept
    /// apart: it is asked at every value).
    here_array: bool,
    /// The path down to the current depth (first [`PATH_MAX`] levels).
    path: [Step; PATH_MAX],
    /// Members or elements seen so far, per reported level.
    counts: [u32; PATH_MAX],
    /// The key being read, or the scalar being read, or the wanted string's head.
    buf: Vec<u8>,
    cap: usize,
    /// The current value string is kept (up to `cap`).
    keep: bool,
    len: usize,
    invalid: bool,
    capture: Option<Box<Capture>>,
}

impl JsonWalk {
    pub fn new(cap: usize) -> JsonWalk {
        JsonWalk {
            expect: Expect::Value,
            token: Token::None,
            depth: 0,
            arrays: 0,
            here_array: false,
            path: [Step::Index(0); PATH_MAX],
            counts: [0; PATH_MAX],
            buf: Vec::new(),
            cap,
            keep: false,
            len: 0,
            invalid: false,
            capture: None,
        }
    }

    /// Ready for another document (an SSE stream's next event), keeping its buffer.
    pub fn reset(&mut self) {
        self.expect = Expect::Value;
        self.token = Token::None;
        self.depth = 0;
        self.here_array = false;
        self.buf.clear();
        self.invalid = false;
        self.capture = None;
    }

    /// Not JSON, as far as fed.
    pub fn invalid(&self) -> bool {
        self.invalid
    }

    /// The body ended: whether it was one whole JSON value.
    pub fn finish<V: Visit>(&mut self, v: &mut V) -> bool {
        // A top-level number may end the body, unless the body is already known not to be JSON.
        if matches!(self.token, Token::Scalar) && self.depth == 0 && !self.invalid {
            self.end_scalar(v);
        }
        !self.invalid && self.expect == Expect::End && matches!(self.token, Token::None)
    }

    fn in_array(&self) -> bool {
        self.here_array
    }

    /// The path of the value at the current depth; `None` when it is nested too deep to
    /// report (its path would be an ancestor's).
    fn path_here(&self) -> Option<&[Step]> {
        self.path.get(..self.depth as usize)
    }

    fn fail(&mut self) {
        self.invalid = true;
    }

    /// A value just ended: what may come next.
    fn after_value(&mut self) {
        self.expect = if self.depth == 0 {
            Expect::End
        } else {
            Expect::CommaOrClose
        };
    }

    pub fn feed<V: Visit>(&mut self, data: &[u8], v: &mut V) {
        self.feed_piece(data, v);
        if self.invalid {
            self.capture = None;
        }
        // A copy still open goes on with the next piece.
        if let Some(c) = &mut self.capture {
            if c.from != PENDING {
                c.append(&data[c.from.min(data.len())..]);
                c.from = 0;
            }
        }
    }

    /// [`JsonWalk::feed`] before a copy in progress takes the piece's rest.
    fn feed_piece<V: Visit>(&mut self, data: &[u8], v: &mut V) {
        let mut i = 0;
        while i < data.len() && !self.invalid {
            match self.token {
                Token::Str { key, esc } => {
                    if esc {
                        self.token = Token::Str { key, esc: false };
                        self.string_bytes(&data[i..=i], key);
                        i += 1;
                        continue;
                    }
                    // Strings are most of a body: jump to where one can end.
                    let Some(off) = quote_or_escape(&data[i..]) else {
                        self.string_bytes(&data[i..], key);
                        return;
                    };
                    let j = i + off;
                    self.string_bytes(&data[i..j], key);
                    if data[j] == b'\\' {
                        self.string_bytes(b"\\", key);
                        self.token = Token::Str { key, esc: true };
                    } else {
                        self.token = Token::None;
                        self.end_string(key, v);
                    }
                    i = j + 1;
                }
                Token::Scalar => {
                    let b = data[i];
                    match SCALAR_CLASS[usize::from(b)] {
                        ENDS_SCALAR => {
                            self.end_scalar(v);
                            // The delimiter is read by `run` next.
                            continue;
                        }
                        IN_SCALAR => {
                            if self.buf.len() < SCALAR_MAX {
                                self.buf.push(b);
                            }
                            i += 1;
                        }
                        _ => {
                            self.fail();
                            return;
                        }
                    }
                }
                Token::None => i = self.run(data, i, v),
            }
        }
    }

    /// Structure from `data[i]` on, each string and scalar that ends in the piece read from
    /// the piece itself (most lie whole in one): where it stopped, at the piece's end, in a
    /// token that goes on in the next piece, or where the body stopped being JSON. The byte
    /// is looked at first, the state after: most bytes here open a key or a value.
    fn run<V: Visit>(&mut self, data: &[u8], mut i: usize, v: &mut V) -> usize {
        while i < data.len() {
            let b = data[i];
            i += 1;
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => {}
                b'"' => {
                    let rest = &data[i..];
                    // Most strings end in the piece with no escape: read from it at once.
                    let whole = quote_or_escape(rest).filter(|&end| rest[end] == b'"');
                    match (self.expect, whole) {
                        (Expect::KeyOrClose | Expect::Key, Some(end)) => {
                            self.count_here();
                            i += end + 1;
                            self.key_here(Key::of(&rest[..end]));
                            // The colon mostly follows at once (or after one space,
                            // pretty-printed): taken here, not by another turn of the loop.
                            self.expect = match data.get(i) {
                                Some(b':') => {
                                    i += 1;
                                    Expect::Value
                                }
                                Some(b' ') if data.get(i + 1) == Some(&b':') => {
                                    i += 2;
                                    Expect::Value
                                }
                                _ => Expect::Colon,
                            };
                        }
                        (Expect::Value | Expect::ValueOrClose, Some(end)) => {
                            self.count_element();
                            i += end + 1;
                            if let Some(p) = self.path_here() {
                                v.string(p, &rest[..end.min(self.cap)], end);
                            }
                            self.after_value();
                        }
                        // An escape, or it goes on in the next piece: read a run at a time.
                        (Expect::KeyOrClose | Expect::Key, None) => {
                            self.count_here();
                            return self.open_string(i, true);
                        }
                        (Expect::Value | Expect::ValueOrClose, None) => {
                            self.count_element();
                            // Only a string read across pieces asks whether its head is
                            // wanted: one read whole hands its head over anyway.
                            self.keep = self.path_here().is_some_and(|p| v.wants(p));
                            return self.open_string(i, false);
                        }
                        _ => {
                            self.fail();
                            return i;
                        }
                    }
                }
                b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
                    if matches!(self.expect, Expect::Value | Expect::ValueOrClose) =>
                {
                    self.count_element();
                    match self.whole_scalar(&data[i - 1..], v) {
                        Some(_) if self.invalid => return i,
                        Some(end) => i += end - 1,
                        // It goes on in the next piece: kept, and read a byte at a time.
                        None => {
                            self.buf.clear();
                            self.buf.push(b);
                            self.token = Token::Scalar;
                            return i;
                        }
                    }
                }
                b',' if self.expect == Expect::CommaOrClose => {
                    if self.in_array() {
                        let d = self.depth as usize;
                        if d <= PATH_MAX {
                            if let Step::Index(n) = &mut self.path[d - 1] {
                                *n += 1;
                            }
                        }
                        self.expect = Expect::Value;
                    } else {
                        self.expect = Expect::Key;
                    }
                }
                b':' if self.expect == Expect::Colon => self.expect = Expect::Value,
                _ => {
                    self.container(b, v);
                    if self.invalid {
                        return i;
                    }
                    if self.capture.is_some() {
                        self.placed(data, i - 1, v);
                    }
                }
            }
        }
        i
    }

    /// A copy's first byte, or its last, is at `data[i]`.
    fn placed<V: Visit>(&mut self, data: &[u8], i: usize, v: &mut V) {
        let Some(c) = &mut self.capture else { return };
        if c.from == PENDING {
            c.from = i;
        }
        if c.done {
            c.append(&data[c.from..=i]);
            if let Some(c) = self.capture.take() {
                if !c.over {
                    v.captured(&c.path[..c.path_len], &c.bytes);
                }
            }
        }
    }

    /// A string that [`JsonWalk::run`] could not read whole from the piece starts at
    /// `data[i]`: read a run at a time from here on.
    fn open_string(&mut self, i: usize, key: bool) -> usize {
        self.len = 0;
        self.buf.clear();
        self.token = Token::Str { key, esc: false };
        i
    }

    /// The scalar that `rest` starts with, if it ends in `rest`: read and closed from the
    /// piece itself, answering how much of `rest` it took (not its delimiter).
    fn whole_scalar<V: Visit>(&mut self, rest: &[u8], v: &mut V) -> Option<usize> {
        // One pass to its end: a byte that cannot be in a scalar fails it there.
        let mut end = 1;
        loop {
            match SCALAR_CLASS[usize::from(*rest.get(end)?)] {
                IN_SCALAR => end += 1,
                ENDS_SCALAR => break,
                _ => {
                    self.fail();
                    return Some(end);
                }
            }
        }
        let whole = &rest[..end];
        let ok = match whole[0] {
            b't' => whole == b"true",
            b'f' => whole == b"false",
            b'n' => whole == b"null",
            _ => true,
        };
        if !ok {
            self.fail();
            return Some(end);
        }
        self.token = Token::None;
        if let Some(p) = self.path_here() {
            v.scalar(p, &whole[..end.min(SCALAR_MAX)]);
        }
        self.after_value();
        Some(end)
    }

    fn string_bytes(&mut self, bytes: &[u8], key: bool) {
        self.len += bytes.len();
        // Keys are kept to compare with the known ones (all shorter than KEY_MAX).
        let cap = if key { KEY_MAX } else { self.cap };
        if (key || self.keep) && self.buf.len() < cap {
            let room = cap - self.buf.len();
            self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn end_string<V: Visit>(&mut self, key: bool, v: &mut V) {
        if key {
            self.key_here(Key::of(&self.buf));
            self.expect = Expect::Colon;
        } else {
            let head = if self.keep { &self.buf[..] } else { &[][..] };
            if let Some(p) = self.path_here() {
                v.string(p, head, self.len);
            }
            self.after_value();
        }
        self.buf.clear();
    }

    fn end_scalar<V: Visit>(&mut self, v: &mut V) {
        self.token = Token::None;
        let ok = match self.buf.first() {
            Some(b't') => self.buf == b"true",
            Some(b'f') => self.buf == b"false",
            Some(b'n') => self.buf == b"null",
            Some(b) => *b == b'-' || b.is_ascii_digit(),
            None => false,
        };
        if !ok {
            self.fail();
            return;
        }
        if let Some(p) = self.path_here() {
            v.scalar(p, &self.buf);
        }
        self.buf.clear();
        self.after_value();
    }

    /// A container's bracket (or a byte that is not JSON where it stands).
    fn container<V: Visit>(&mut self, b: u8, v: &mut V) {
        match (self.expect, b) {
            (Expect::Value | Expect::ValueOrClose, b'{' | b'[') => {
                let array = b == b'[';
                self.count_element();
                if let Some(p) = self.path_here() {
                    v.open(p, array);
                    if self.capture.is_none() && v.captures(p) {
                        let mut path = [Step::Index(0); PATH_MAX];
                        path[..p.len()].copy_from_slice(p);
                        self.capture = Some(Box::new(Capture {
                            depth: self.depth,
                            path,
                            path_len: p.len(),
                            bytes: Vec::new(),
                            from: PENDING,
                            done: false,
                            over: false,
                        }));
                    }
                }
                if self.depth >= DEPTH_MAX {
                    return self.fail();
                }
                if array {
                    self.arrays |= 1u64 << self.depth;
                } else {
                    self.arrays &= !(1u64 << self.depth);
                }
                self.depth += 1;
                self.here_array = array;
                let d = self.depth as usize;
                if d <= PATH_MAX {
                    self.path[d - 1] = if array {
                        Step::Index(0)
                    } else {
                        Step::Key(Key::Other)
                    };
                    self.counts[d - 1] = 0;
                }
                self.expect = if array {
                    Expect::ValueOrClose
                } else {
                    Expect::KeyOrClose
                };
            }
            (Expect::CommaOrClose | Expect::ValueOrClose | Expect::KeyOrClose, b']' | b'}') => {
                let array = self.in_array();
                if array != (b == b']') {
                    return self.fail();
                }
                let d = self.depth as usize;
                let count = if d <= PATH_MAX { self.counts[d - 1] } else { 0 };
                self.depth -= 1;
                if let Some(c) = &mut self.capture {
                    c.done |= c.depth == self.depth;
                }
                self.here_array = self.depth > 0 && self.arrays & (1u64 << (self.depth - 1)) != 0;
                if let Some(p) = self.path_here() {
                    v.close(p, array, count);
                }
                self.after_value();
            }
            _ => self.fail(),
        }
    }

    /// The key just read names the member at the current depth.
    fn key_here(&mut self, key: Key) {
        // Depth 0 wraps to no slot, as a depth past PATH_MAX has none: one compare.
        if let Some(step) = self.path.get_mut((self.depth as usize).wrapping_sub(1)) {
            *step = Step::Key(key);
        }
    }

    /// A value starts: in an array, one more element.
    fn count_element(&mut self) {
        if self.in_array() {
            self.count_here();
        }
    }

    /// One more member or element in the container at the current depth.
    fn count_here(&mut self) {
        if let Some(count) = self.counts.get_mut((self.depth as usize).wrapping_sub(1)) {
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the walker reports, as text.
    #[derive(Default)]
    struct Log(Vec<String>);

    fn show(path: &[Step]) -> String {
        path.iter()
            .map(|s| match s {
                Step::Key(k) => format!("{k:?}"),
                Step::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    impl Visit for Log {
        fn wants(&self, _: &[Step]) -> bool {
            true
        }
        fn open(&mut self, p: &[Step], array: bool) {
            self.0.push(format!("open {} {array}", show(p)));
        }
        fn close(&mut self, p: &[Step], array: bool, n: u32) {
            self.0.push(format!("close {} {array} {n}", show(p)));
        }
        fn string(&mut self, p: &[Step], head: &[u8], len: usize) {
            self.0.push(format!(
                "str {} {} {len}",
                show(p),
                String::from_utf8_lossy(head)
            ));
        }
        fn scalar(&mut self, p: &[Step], b: &[u8]) {
            self.0
                .push(format!("scalar {} {}", show(p), String::from_utf8_lossy(b)));
        }
    }

    fn walk(pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut w = JsonWalk::new(8);
        let mut log = Log::default();
        for p in pieces {
            w.feed(p, &mut log);
        }
        let ok = w.finish(&mut log);
        (log.0, ok)
    }

    const DOC: &str = r#"{"id":"x","choices":[{"index":0,"message":{"content":"Hi \"there\"","tool_calls":[]},"finish_reason":"stop"},{"text":""}],"usage":{"prompt_tokens":12,"completion_tokens":5},"n":null, "ok" : true}"#;

    #[test]
    fn reports_paths_and_values_whatever_the_split() {
        let (whole, ok) = walk(&[DOC.as_bytes()]);
        assert!(ok);
        for want in [
            "str Other x 1",
            "open Choices true",
            "str Choices.0.Message.Content Hi \\\"the 12",
            "close Choices.0.Message.ToolCalls true 0",
            "str Choices.0.FinishReason stop 4",
            "str Choices.1.Text  0",
            "close Choices true 2",
            "scalar Usage.PromptTokens 12",
            "scalar Usage.CompletionTokens 5",
            "close Usage false 2",
            "scalar N null",
            "scalar Other true",
            "close  false 5",
        ] {
            assert!(whole.contains(&want.to_string()), "{want}: {whole:#?}");
        }
        // Split at every byte, and pretty-printed: the same report.
        let pretty = DOC.replace(",\"", ",\n  \"").replace(':', " : ");
        for doc in [DOC, pretty.as_str()] {
            let bytes: Vec<&[u8]> = doc.as_bytes().chunks(1).collect();
            assert_eq!(walk(&bytes), (whole.clone(), true));
            for at in 0..doc.len() {
                let (a, b) = doc.as_bytes().split_at(at);
                assert_eq!(walk(&[a, b]), (whole.clone(), true), "split at {at}");
            }
        }
    }

    #[test]
    fn tells_json_from_what_is_not() {
        for good in [
            "{}",
            "[]",
            " [1, -2.5e3, \"a\", {\"b\": [null]}] ",
            "\"s\"",
            "12",
            "{\"a\":{}}",
            "{\"a\" :1, \"b\"  :  2,\"c\":3}",
        ] {
            assert!(walk(&[good.as_bytes()]).1, "{good}");
        }
        for bad in [
            "",
            "{\"model\":",
            "{\"a\":1",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "{\"a\"::1}",
            "[1 2]",
            "{\"a\":1]",
            "[1}",
            "{1:2}",
            "nope",
            "{\"a\":tru}",
            "{} {}",
            "{\"a\":\"unterminated}",
            "model=x&stream=true",
        ] {
            assert!(!walk(&[bad.as_bytes()]).1, "{bad}");
        }
        // A top-level number cut by a byte no scalar holds: nothing reported, however fed
        // (fed a byte at a time, it was once reported when the body ended).
        let cut = b"1234567890[1";
        assert_eq!(walk(&[cut]), (vec![], false));
        let bytes: Vec<&[u8]> = cut.chunks(1).collect();
        assert_eq!(walk(&bytes), (vec![], false));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(!walk(&[deep.as_bytes()]).1);
        assert_eq!(as_count(b"12"), Some(12));
        assert_eq!(as_count(b"12.0"), Some(12));
        assert_eq!(as_count(b"-1"), None);
    }

    /// Copies what `wanted` names, as [`Visit::captured`] hands it over.
    struct Copies {
        wanted: fn(&[Step]) -> bool,
        got: Vec<(String, String)>,
    }

    impl Visit for Copies {
        fn captures(&self, p: &[Step]) -> bool {
            (self.wanted)(p)
        }
        fn captured(&mut self, p: &[Step], bytes: &[u8]) {
            self.got
                .push((show(p), String::from_utf8_lossy(bytes).into_owned()));
        }
    }

    #[test]
    fn a_container_is_copied_whole_whatever_the_split() {
        let body = r#"{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}}], "response_format" : {"type":"json_schema","json_schema":{"schema":{"required":["x"]}}},"n":2}"#;
        let tools = r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string"}}}}}]"#;
        let format = r#"{"type":"json_schema","json_schema":{"schema":{"required":["x"]}}}"#;
        for size in 1..=body.len() {
            let mut w = JsonWalk::new(8);
            let mut c = Copies {
                wanted: |p| matches!(p, [Step::Key(Key::Tools | Key::ResponseFormat)]),
                got: Vec::new(),
            };
            for piece in body.as_bytes().chunks(size) {
                w.feed(piece, &mut c);
            }
            assert!(w.finish(&mut c), "size {size}");
            assert_eq!(
                c.got,
                [
                    ("Tools".to_string(), tools.to_string()),
                    ("ResponseFormat".to_string(), format.to_string())
                ],
                "size {size}"
            );
        }
        // A body that is not JSON hands nothing over.
        let mut w = JsonWalk::new(8);
        let mut c = Copies {
            wanted: |p| matches!(p, [Step::Key(Key::Tools)]),
            got: Vec::new(),
        };
        w.feed(br#"{"tools":[1,}"#, &mut c);
        assert!(c.got.is_empty());
    }
}
