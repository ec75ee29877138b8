//! The only module that parses YAML (serde_yaml is archived; a swap must touch one file).
//!
//! Two passes over the text: yaml-rust2's event parser builds a [`SpanIndex`] (the position of every key and
//! value, by key path) and rejects duplicate keys, deep nesting and alias bombs before anything is expanded;
//! then serde_yaml builds the value that serde models deserialize from.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::Span;

pub use serde_yaml::Value;

/// Deeper nesting than this is refused: no plan needs it, and it bounds recursion later.
pub const MAX_DEPTH: usize = 64;
/// Nodes a document may expand to through aliases ("billion laughs" stops here).
pub const MAX_NODES: usize = 200_000;

/// A YAML problem with its position, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub message: String,
    pub span: Option<Span>,
    pub help: Option<String>,
}

/// Where each key and value sits in the source, by key path (`steps.train.needs[0]`).
#[derive(Debug, Default)]
pub struct SpanIndex {
    keys: HashMap<String, Span>,
    values: HashMap<String, Span>,
}

impl SpanIndex {
    /// The position of the key at `path`, falling back to its value.
    pub fn key(&self, path: &str) -> Option<Span> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .copied()
    }

    /// The position of the value at `path`, falling back to its key.
    pub fn value(&self, path: &str) -> Option<Span> {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .copied()
    }

    /// The value at `path`, or the nearest enclosing node that has a position.
    pub fn nearest(&self, path: &str) -> Option<Span> {
        let mut p = path;
        loop {
            if let Some(span) = self.value(p) {
                return Some(span);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Appends a map key to a key path, quoting keys that would make the path ambiguous.
pub fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// A parsed document: the value and, built on first use, where everything in it is.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    pub spans: LazySpans,
}

/// Positions are only needed to report problems, so the second (event) pass that finds them runs only when a
/// diagnostic asks: a valid 10,000-step plan is parsed once.
#[derive(Debug, Default)]
pub struct LazySpans {
    source: String,
    index: std::cell::OnceCell<SpanIndex>,
}

impl LazySpans {
    pub fn new(source: &str) -> LazySpans {
        LazySpans {
            source: source.to_string(),
            index: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> &SpanIndex {
        self.index.get_or_init(|| index(&self.source).0)
    }

    pub fn key(&self, path: &str) -> Option<Span> {
        self.get().key(path)
    }

    pub fn value(&self, path: &str) -> Option<Span> {
        self.get().value(path)
    }

    pub fn nearest(&self, path: &str) -> Option<Span> {
        self.get().nearest(path)
    }
}

/// The event pass: positions of every key and value, and the first structural problem found (duplicate keys,
/// nesting, alias bombs, several documents), all without expanding anything.
fn index(source: &str) -> (SpanIndex, Option<YamlError>) {
    let mut builder = IndexBuilder::default();
    // yaml-rust2 refuses a tab after `key:` that YAML (and serde_yaml) allow; one space for one tab keeps every
    // line and column, so the positions survive.
    let spaced;
    let source = if source.contains(":\t") {
        spaced = tabs_after_colons(source);
        spaced.as_str()
    } else {
        source
    };
    let mut parser = Parser::new_from_str(source);
    if let Err(e) = parser.load(&mut builder, true) {
        let m = e.marker();
        // yaml-rust2 has its own recursion limit; say what it means for a plan.
        let message = if e.info().contains("recursion limit") {
            format!("YAML is nested deeper than {MAX_DEPTH} levels")
        } else {
            format!("invalid YAML: {}", e.info())
        };
        let err = YamlError {
            message,
            span: Some(span_at(m, 1)),
            help: None,
        };
        return (builder.index, Some(err));
    }
    let err = builder.error.take();
    (builder.index, err)
}

/// `key:<tabs and spaces>value` with the tabs in that gap replaced by spaces (same length).
fn tabs_after_colons(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut after_colon = false;
    for c in source.chars() {
        match c {
            '\t' if after_colon => out.push(' '),
            _ => out.push(c),
        }
        after_colon = match c {
            ':' => true,
            '\t' | ' ' => after_colon,
            _ => false,
        };
    }
    out
}

/// Parses one YAML document. serde_yaml refuses duplicate keys, deep nesting, alias bombs and several documents
/// by itself; when it refuses anything, the event pass explains where and why.
pub fn parse(source: &str) -> Result<Document, YamlError> {
    // libyaml's scanner is quadratic in flow nesting (`[[[[...`): refuse deep documents with the event pass,
    // which stops at the limit, before serde_yaml ever sees them.
    if flow_depth_exceeds(source, MAX_DEPTH) {
        if let Some(err) = index(source).1 {
            return Err(err);
        }
    }
    let value = match serde_yaml::from_str::<Value>(source) {
        Ok(v) if depth(&v) <= MAX_DEPTH => v,
        Ok(_) => {
            return Err(index(source).1.unwrap_or(YamlError {
                message: format!("YAML is nested deeper than {MAX_DEPTH} levels"),
                span: None,
                help: None,
            }))
        }
        Err(e) => return Err(index(source).1.unwrap_or_else(|| serde_yaml_error(e))),
    };
    if value.is_null() {
        return Err(YamlError {
            message: "the plan file is empty".into(),
            span: None,
            help: Some(
                "a plan needs at least `plan:` and `steps:`; see examples/quickstart.yaml".into(),
            ),
        });
    }
    Ok(Document {
        value,
        spans: LazySpans::new(source),
    })
}

/// Whether brackets open deeper than `limit` somewhere (quotes are not tracked: a false alarm only costs the
/// event pass).
fn flow_depth_exceeds(source: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    for b in source.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Nesting depth of a value, without recursion (serde_yaml already bounds it at 128).
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    // Counts nested collections, as the event pass does.
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Sequence(items) => {
                deepest = deepest.max(d);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Mapping(map) => {
                deepest = deepest.max(d);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            Value::Tagged(t) => stack.push((&t.value, d)),
            _ => {}
        }
    }
    deepest
}

/// Deserializes a standalone YAML file (a `--var-file`) into `T`.
pub fn from_str<T: DeserializeOwned>(source: &str) -> Result<T, YamlError> {
    let doc = parse(source)?;
    serde_yaml::from_value(doc.value).map_err(serde_yaml_error)
}

/// Converts a YAML value to JSON for templates and state (YAML-only keys become strings).
pub fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => serde_json::to_value(n).unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Sequence(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Mapping(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (scalar_text(k), to_json(v)))
                .collect(),
        ),
        Value::Tagged(tagged) => to_json(&tagged.value),
    }
}

/// The text of a scalar YAML value, as a key or variable value.
pub fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    }
}

fn serde_yaml_error(e: serde_yaml::Error) -> YamlError {
    YamlError {
        span: e.location().map(|l| Span {
            line: l.line(),
            column: l.column(),
            len: 1,
        }),
        message: format!("invalid YAML: {}", strip_location(&e.to_string())),
        help: None,
    }
}

/// serde_yaml appends " at line X column Y" to its messages; we show the position ourselves.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn span_at(m: &Marker, len: usize) -> Span {
    Span {
        line: m.line(),
        column: m.col() + 1,
        len,
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: HashMap<String, Span>,
        size: usize,
        anchor: usize,
    },
    Seq {
        path: String,
        index: usize,
        size: usize,
        anchor: usize,
    },
}

#[derive(Default)]
struct IndexBuilder {
    index: SpanIndex,
    stack: Vec<Frame>,
    anchors: HashMap<usize, usize>,
    documents: usize,
    root_is_null: Option<bool>,
    error: Option<YamlError>,
}

impl IndexBuilder {
    fn fail(&mut self, message: String, span: Span, help: Option<String>) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                message,
                span: Some(span),
                help,
            });
        }
    }

    /// Where the next node goes. `None` means the node is a map key (handled by the caller).
    fn node_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key, .. }) => {
                Some(join_key(path, key.as_deref().unwrap_or("")))
            }
            Some(Frame::Seq { path, index, .. }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }

    /// A finished node of `size` expanded nodes: count it into its parent, remember anchors.
    fn finish_node(&mut self, size: usize, anchor: usize, span: Span) {
        if size > MAX_NODES {
            self.fail(
                format!("YAML aliases expand to more than {MAX_NODES} nodes"),
                span,
                Some(
                    "this looks like an alias bomb (\"billion laughs\"); use fewer nested aliases"
                        .into(),
                ),
            );
            return;
        }
        if anchor != 0 {
            self.anchors.insert(anchor, size);
        }
        match self.stack.last_mut() {
            Some(Frame::Map { key, size: s, .. }) => {
                *s = s.saturating_add(size);
                // A finished value ends the key/value pair.
                *key = None;
            }
            Some(Frame::Seq { size: s, .. }) => *s = s.saturating_add(size),
            None => {}
        }
    }

    fn value_node(&mut self, span: Span, size: usize, anchor: usize) {
        match self.node_path() {
            Some(path) => {
                self.index.values.insert(path, span);
                self.finish_node(size, anchor, span);
            }
            None => self.fail(
                "a mapping key must be a plain value, not an alias".into(),
                span,
                None,
            ),
        }
    }

    fn open(&mut self, event: &Event, mark: &Marker) {
        let span = span_at(mark, 1);
        if self.stack.len() >= MAX_DEPTH {
            self.fail(
                format!("YAML is nested deeper than {MAX_DEPTH} levels"),
                span,
                None,
            );
            return;
        }
        let Some(path) = self.node_path() else {
            self.fail(
                "a mapping key must be a plain value, not a mapping or a list".into(),
                span,
                None,
            );
            return;
        };
        if self.stack.is_empty() {
            self.root_is_null = Some(false);
        }
        self.index.values.insert(path.clone(), span);
        let frame = match event {
            Event::MappingStart(anchor, _) => Frame::Map {
                path,
                key: None,
                seen: HashMap::new(),
                size: 1,
                anchor: *anchor,
            },
            _ => Frame::Seq {
                path,
                index: 0,
                size: 1,
                anchor: match event {
                    Event::SequenceStart(anchor, _) => *anchor,
                    _ => 0,
                },
            },
        };
        self.stack.push(frame);
    }

    fn close(&mut self, mark: &Marker) {
        let (size, anchor) = match self.stack.pop() {
            Some(Frame::Map { size, anchor, .. }) | Some(Frame::Seq { size, anchor, .. }) => {
                (size, anchor)
            }
            None => return,
        };
        self.finish_node(size, anchor, span_at(mark, 1));
    }

    fn scalar(&mut self, value: String, style: TScalarStyle, anchor: usize, mark: &Marker) {
        let len = match style {
            TScalarStyle::Plain => value.chars().count(),
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => value.chars().count() + 2,
            _ => 1,
        };
        let span = span_at(mark, len.max(1));
        if self.stack.is_empty() {
            self.root_is_null =
                Some(matches!(value.as_str(), "" | "~" | "null") && style == TScalarStyle::Plain);
            self.index.values.insert(String::new(), span);
            return;
        }
        if let Some(Frame::Map {
            path, key, seen, ..
        }) = self.stack.last_mut()
        {
            if key.is_none() {
                let full = join_key(path, &value);
                if let Some(first) = seen.get(&value) {
                    let message = format!("duplicate key `{full}`");
                    let help = format!("it is already defined on line {}", first.line);
                    self.fail(message, span, Some(help));
                    return;
                }
                seen.insert(value.clone(), span);
                self.index.keys.insert(full, span);
                *key = Some(value);
                return;
            }
        }
        self.value_node(span, 1, anchor);
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(
                        "a plan file holds one YAML document, but this one has more".into(),
                        span_at(&mark, 3),
                        Some("remove the second `---`".into()),
                    );
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => self.open(&event, &mark),
            Event::MappingEnd | Event::SequenceEnd => self.close(&mark),
            Event::Scalar(value, style, anchor, _) => self.scalar(value, style, anchor, &mark),
            Event::Alias(id) => {
                let size = self.anchors.get(&id).copied().unwrap_or(1);
                self.value_node(span_at(&mark, 1), size, 0);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_and_values() {
        let doc = parse("plan: x\nsteps:\n  a:\n    needs: [b, c]\n").expect("valid");
        let key = doc.spans.key("steps.a.needs").expect("key");
        assert_eq!((key.line, key.column), (4, 5));
        let second = doc.spans.value("steps.a.needs[1]").expect("value");
        assert_eq!((second.line, second.column), (4, 16));
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = parse("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.span.map(|s| s.line), Some(3));
    }

    #[test]
    fn rejects_alias_bombs_before_expanding() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = parse(&text).expect_err("bomb");
        assert!(err.message.contains("aliases expand"), "{}", err.message);
    }

    #[test]
    fn rejects_deep_nesting() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse(&text).expect_err("deep");
        assert!(err.message.contains("nested deeper"), "{}", err.message);
    }
}
