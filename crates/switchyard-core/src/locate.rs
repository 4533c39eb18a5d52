//! Maps key paths (`migration.phases[1].percent`) to the line they stand on, so
//! that validation errors found after deserializing can still name a line.
//! serde has no spans for YAML, so we walk the parser's events once.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path → 1-based line number.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    pub fn build(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by the deserializer with its own location;
        // whatever was indexed before it is still useful.
        let _ = parser.load(&mut walker, false);
        LineIndex {
            lines: walker.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k) } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// A value (scalar or collection) starts here: sequence items get a line.
    fn value_starts(&mut self, line: usize) {
        if let Some(Frame::Seq { .. }) = self.stack.last() {
            let p = self.path();
            self.lines.entry(p).or_insert(line);
        }
    }

    /// A value ended: the parent moves on to its next key or item.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key: key @ None }) = self.stack.last_mut() {
                    *key = Some(value);
                    let p = self.path();
                    self.lines.entry(p).or_insert(line);
                } else {
                    self.value_starts(line);
                    self.value_done();
                }
            }
            Event::MappingStart(..) => {
                self.value_starts(line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.value_starts(line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Alias(_) => {
                self.value_starts(line);
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_block_and_flow_keys() {
        let text = "listen: 0.0.0.0:8080\nmigration:\n  from: old\n  phases:\n    - { name: a, percent: 10 }\n    - name: b\n      percent: 20\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("listen"), Some(1));
        assert_eq!(idx.line_of("migration.from"), Some(3));
        assert_eq!(idx.line_of("migration.phases[0].percent"), Some(5));
        assert_eq!(idx.line_of("migration.phases[1].percent"), Some(7));
        assert_eq!(idx.line_of("migration.phases[1]"), Some(6));
        // unknown child falls back to its parent
        assert_eq!(idx.line_of("migration.phases[1].hold"), Some(6));
    }
}
