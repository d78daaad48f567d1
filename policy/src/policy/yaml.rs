//! A YAML document as a tree of nodes, each marked with its line and column.
//!
//! Design bias: *positions over convenience*. Serde-style deserialization
//! stops at the first error and loses track of where a value came from; the
//! policy loader instead walks this small tree by hand so that every error —
//! an unknown key, a bad CIDR three levels deep, a duplicate rule name — can
//! point at the exact node. Scalars stay text (with a flag for "was quoted");
//! the loader decides what a scalar means from where it appears.
//!
//! Anchors and aliases are resolved by copying the anchored node, within a
//! budget ([`MAX_ALIAS_NODES`]): nested aliases grow exponentially ("billion
//! laughs": a few hundred bytes that expand to gigabytes), so a document
//! whose aliases copy more nodes than that is an error, not a crash. Tags
//! are ignored; a second document in the stream is an error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use granit_parser::{Event, Parser, ScalarStyle, Span};

use super::error::Diag;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn of(span: &Span) -> Mark {
        Mark {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub mark: Mark,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Scalar { text: Cow<'a, str>, quoted: bool },
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The scalar's text, if this is a scalar (quoted or not).
    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A plain (unquoted) `~`, `null` or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false }
            if matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A plain `true`/`false`.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar {
                text,
                quoted: false,
            } => match text.as_ref() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// What kind of node this is, for messages ("a list", "a map", ...).
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "an empty value",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// The node in YAML flow style, for clause texts (`{lte: 0}`, `[a, b]`).
    pub fn flow(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = write_flow(self, &mut out);
        out
    }
}

fn write_flow(node: &Node<'_>, out: &mut String) -> fmt::Result {
    match &node.value {
        Value::Scalar { text, quoted } => {
            let needs_quotes = *quoted
                || text.is_empty()
                || text.contains([',', '{', '}', '[', ']', ':', '#', '"', '\''])
                || text.starts_with(['*', '&', '!', '|', '>', '%', '@', '`', ' '])
                || text.ends_with(' ');
            if needs_quotes {
                write!(out, "{:?}", text.as_ref())
            } else {
                out.write_str(text)
            }
        }
        Value::Seq(items) => {
            out.write_char('[')?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_str(", ")?;
                }
                write_flow(item, out)?;
            }
            out.write_char(']')
        }
        Value::Map(entries) => {
            out.write_char('{')?;
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.write_str(", ")?;
                }
                write_flow(k, out)?;
                out.write_str(": ")?;
                write_flow(v, out)?;
            }
            out.write_char('}')
        }
    }
}

/// The most nodes all aliases of one document may copy in total. Far more
/// than any hand-written policy shares; far less than a memory problem.
pub(crate) const MAX_ALIAS_NODES: usize = 100_000;

/// The nodes in `node`'s tree, counting no further than `limit + 1`.
fn count_nodes(node: &Node<'_>, limit: usize) -> usize {
    let mut count = 1;
    let mut pending: Vec<&Node<'_>> = vec![node];
    while let Some(node) = pending.pop() {
        if count > limit {
            break;
        }
        match &node.value {
            Value::Scalar { .. } => {}
            Value::Seq(items) => {
                count += items.len();
                pending.extend(items);
            }
            Value::Map(entries) => {
                count += 2 * entries.len();
                for (k, v) in entries {
                    pending.push(k);
                    pending.push(v);
                }
            }
        }
    }
    count
}

enum Frame<'a> {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node<'a>>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node<'a>, Node<'a>)>,
        key: Option<Node<'a>>,
    },
}

/// Parses one YAML document into a marked tree. An empty document is `None`.
pub(crate) fn parse(src: &str) -> Result<Option<Node<'_>>, Diag> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut anchors: HashMap<usize, Node<'_>> = HashMap::new();
    let mut root: Option<Node<'_>> = None;
    let mut documents = 0usize;
    let mut alias_nodes = 0usize;

    for event in Parser::new_from_str(src) {
        let (event, span) = event.map_err(|e| {
            let m = e.marker();
            Diag::new(
                Mark {
                    line: m.line(),
                    column: m.col() + 1,
                },
                format!("invalid YAML: {}", e.info()),
                "fix the YAML syntax (indentation, quotes, `key: value` pairs)",
            )
        })?;
        let mark = Mark::of(&span);
        let done = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(Diag::new(
                        mark,
                        "a policy file holds one YAML document, found a second",
                        "remove the `---` separator and everything after it, or split the file",
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    mark,
                    value: Value::Scalar {
                        text,
                        quoted: !matches!(style, ScalarStyle::Plain),
                    },
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    alias_nodes += count_nodes(node, MAX_ALIAS_NODES - alias_nodes);
                    if alias_nodes > MAX_ALIAS_NODES {
                        return Err(Diag::new(
                            mark,
                            format!(
                                "aliases in this file expand to more than {MAX_ALIAS_NODES} nodes"
                            ),
                            "write the shared values out, or use fewer nested `*aliases`",
                        ));
                    }
                    Some(Node {
                        mark,
                        value: node.value.clone(),
                    })
                }
                None => {
                    return Err(Diag::new(
                        mark,
                        "alias refers to an anchor that is not defined before it",
                        "define the `&anchor` before using `*anchor`, or write the value out",
                    ));
                }
            },
            Event::SequenceStart(_, anchor, _) => {
                stack.push(Frame::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push(Frame::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    mark,
                    anchor,
                    items,
                }) => {
                    let node = Node {
                        mark,
                        value: Value::Seq(items),
                    };
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                Some(Frame::Map {
                    mark,
                    anchor,
                    entries,
                    ..
                }) => {
                    let node = Node {
                        mark,
                        value: Value::Map(entries),
                    };
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                None => None,
            },
            _ => None,
        };
        if let Some(node) = done {
            match stack.last_mut() {
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map { entries, key, .. }) => match key.take() {
                    Some(k) => entries.push((k, node)),
                    None => *key = Some(node),
                },
                None => root = Some(node),
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_keys<'a>(node: &'a Node<'a>) -> Vec<(&'a str, Mark)> {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, _)| (k.scalar().unwrap(), k.mark))
                .collect(),
            _ => panic!("not a map"),
        }
    }

    #[test]
    fn marks_are_one_based_line_and_column() {
        let root = parse("a: 1\nrules:\n  - name: x\n").unwrap().unwrap();
        let keys = map_keys(&root);
        assert_eq!(keys[0], ("a", Mark { line: 1, column: 1 }));
        assert_eq!(keys[1], ("rules", Mark { line: 2, column: 1 }));
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(
            map_keys(&items[0]),
            vec![("name", Mark { line: 3, column: 5 })]
        );
    }

    #[test]
    fn scalars_remember_quoting_and_nulls() {
        let root = parse("a: \"1\"\nb: 1\nc:\nd: ~\n").unwrap().unwrap();
        let Value::Map(e) = &root.value else { panic!() };
        assert_eq!(
            e[0].1.value,
            Value::Scalar {
                text: "1".into(),
                quoted: true
            }
        );
        assert_eq!(
            e[1].1.value,
            Value::Scalar {
                text: "1".into(),
                quoted: false
            }
        );
        assert!(e[2].1.is_null());
        assert!(e[3].1.is_null());
        assert!(!e[0].1.is_null());
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let root = parse("a: &x {k: v}\nb: *x\n").unwrap().unwrap();
        let Value::Map(e) = &root.value else { panic!() };
        assert_eq!(e[0].1.value, e[1].1.value);
        assert_eq!(e[1].1.mark, Mark { line: 2, column: 4 });
    }

    #[test]
    fn alias_bombs_are_refused_not_expanded() {
        // Each level doubles... ten times over: 10^9 leaves if expanded.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let letters = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut previous = "a";
        for l in letters {
            let refs = vec![format!("*{previous}"); 9].join(",");
            bomb.push_str(&format!("{l}: &{l} [{refs}]\n"));
            previous = l;
        }
        let err = parse(&bomb).unwrap_err();
        assert!(
            err.message.contains("aliases in this file expand"),
            "{err:?}"
        );
        // Ordinary sharing stays fine.
        assert!(parse("a: &x [1, 2, 3]\nb: *x\nc: *x\n").is_ok());
    }

    #[test]
    fn syntax_errors_and_second_documents_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{err:?}");
        assert!(err.mark.line >= 1);
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.mark.line, 2);
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn flow_rendering() {
        let root = parse("a: {lte: 0}\nb: [x, \"1\", 'a b']\nc: {glob: \"spiffe://td/*\"}\n")
            .unwrap()
            .unwrap();
        let Value::Map(e) = &root.value else { panic!() };
        assert_eq!(e[0].1.flow(), "{lte: 0}");
        assert_eq!(e[1].1.flow(), "[x, \"1\", \"a b\"]");
        assert_eq!(e[2].1.flow(), "{glob: \"spiffe://td/*\"}");
    }
}
