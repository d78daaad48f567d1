//! A YAML stream as a tree of nodes that remember where their text is.
//!
//! Injection edits the input *text*, so every node here carries byte offsets
//! into it: where it starts (anchor and tag included), where its content
//! starts, and where its last token ends. Scalars keep their value and
//! style; nothing is resolved or copied (an alias stays an alias: the
//! injector refuses to edit through one).

use serde_saphyr::granit_parser::{Event, Marker, Options, Parser, ScalarStyle, Span};

/// A parse failure, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub kind: Kind,
    /// First byte, properties (`&anchor`, `!tag`) included.
    pub start: usize,
    /// First byte of the content itself (for a block collection: of its
    /// first entry).
    pub content: usize,
    /// One past the last byte of the last token (trailing blank lines of
    /// block scalars excluded).
    pub end: usize,
    /// 1-based line of `content`.
    pub line: usize,
    /// 0-based column (in characters) of `content`.
    pub col: usize,
    /// An anchor or a tag is attached.
    pub props: bool,
    /// An anchor is attached (aliases elsewhere may refer to this node).
    pub anchored: bool,
    /// An explicit tag (`!!str`, `!!int`, `!custom`) is attached: a scalar's
    /// type is then the tag's, not what its text looks like.
    pub tagged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Scalar {
        value: String,
        style: ScalarStyle,
    },
    Seq {
        flow: bool,
        items: Vec<Node>,
    },
    Map {
        flow: bool,
        entries: Vec<(Node, Node)>,
    },
    Alias,
}

impl Node {
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A plain `~`, `null` or nothing, without a tag.
    pub fn is_null(&self) -> bool {
        !self.props
            && matches!(&self.kind, Kind::Scalar { value, style: ScalarStyle::Plain }
                if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map { entries, .. } => Some(entries),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq { items, .. } => Some(items),
            _ => None,
        }
    }

    /// Every entry whose key is the scalar `key` (more than one is a
    /// duplicate key, which the caller reports).
    pub fn get_all<'n>(&'n self, key: &str) -> impl Iterator<Item = &'n (Node, Node)> {
        self.entries()
            .unwrap_or_default()
            .iter()
            .filter(move |(k, _)| k.scalar() == Some(key))
    }
}

/// One document of the stream; `root` is a null scalar when it is empty.
#[derive(Debug)]
pub(crate) struct Document {
    pub root: Node,
}

enum Frame {
    Seq {
        node: Node,
        items: Vec<Node>,
        flow: bool,
    },
    Map {
        node: Node,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        flow: bool,
    },
}

impl Frame {
    fn node_mut(&mut self) -> &mut Node {
        match self {
            Frame::Seq { node, .. } | Frame::Map { node, .. } => node,
        }
    }
}

/// Byte offset of a marker (the parser gives one for `&str` input; the
/// character index is the fallback).
fn byte(input: &str, mark: &Marker) -> usize {
    mark.byte_offset()
        .unwrap_or_else(|| {
            input
                .char_indices()
                .nth(mark.index())
                .map_or(input.len(), |(i, _)| i)
        })
        .min(input.len())
}

fn leaf(input: &str, kind: Kind, span: &Span) -> Node {
    let content = byte(input, &span.start);
    let mut end = byte(input, &span.end).max(content);
    if let Kind::Scalar {
        style: ScalarStyle::Literal | ScalarStyle::Folded,
        ..
    } = &kind
    {
        // A block scalar's span runs over the blank lines that follow it.
        let text = input.get(content..end).unwrap_or("");
        end = content + text.trim_end_matches([' ', '\t', '\r', '\n']).len();
    }
    let start = span
        .tag_start()
        .map_or(content, |t| byte(input, &t).min(content));
    Node {
        kind,
        start,
        content,
        end,
        line: span.start.line(),
        col: span.start.col(),
        props: span.tag_start().is_some(),
        anchored: false,
        tagged: span.tag_start().is_some(),
    }
}

/// Parses every document of `input`.
pub(crate) fn parse(input: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut options = Options::default();
    options.set_emit_comments(false);
    options.emit_anchor_events = true;
    let parser = Parser::new_from_str_with_options(input, options);

    let mut documents = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // A finished scalar or alias waits here one event, in case an anchor
    // event for it follows.
    let mut pending: Option<Node> = None;
    let mut root: Option<Node> = None;

    for next in parser {
        let (event, span) = next.map_err(|e| SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info(),
        })?;
        if let Event::Anchor(..) = event {
            let at = byte(input, &span.start);
            let target = match pending.as_mut() {
                Some(node) => Some(node),
                None => stack.last_mut().map(Frame::node_mut),
            };
            if let Some(node) = target {
                node.start = node.start.min(at);
                node.props = true;
                node.anchored = true;
            }
            continue;
        }
        if let Some(node) = pending.take() {
            attach(&mut stack, &mut root, node);
        }
        match event {
            Event::Scalar(value, style, _, _) => {
                let kind = Kind::Scalar {
                    value: value.into_owned(),
                    style,
                };
                pending = Some(leaf(input, kind, &span));
            }
            Event::Alias(_) | Event::UnresolvedAlias(_) => {
                pending = Some(leaf(input, Kind::Alias, &span));
            }
            Event::SequenceStart(style, _, _) | Event::MappingStart(style, _, _) => {
                let flow = style == serde_saphyr::granit_parser::StructureStyle::Flow;
                let mut node = leaf(input, Kind::Alias, &span);
                // Content end is only known at the closing event.
                node.end = node.content;
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        node,
                        items: Vec::new(),
                        flow,
                    }
                } else {
                    Frame::Map {
                        node,
                        entries: Vec::new(),
                        key: None,
                        flow,
                    }
                };
                stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else { continue };
                let close = byte(input, &span.end);
                let node = match frame {
                    Frame::Seq {
                        mut node,
                        items,
                        flow,
                    } => {
                        node.end = if flow {
                            close.max(node.content)
                        } else {
                            items.iter().map(|n| n.end).fold(node.content, usize::max)
                        };
                        node.kind = Kind::Seq { flow, items };
                        node
                    }
                    Frame::Map {
                        mut node,
                        mut entries,
                        key,
                        flow,
                    } => {
                        if let Some(key) = key {
                            // A key without a value event (not produced by
                            // the parser, but cheap to tolerate).
                            let mut null = key.clone();
                            null.kind = Kind::Scalar {
                                value: String::new(),
                                style: ScalarStyle::Plain,
                            };
                            null.start = key.end;
                            null.content = key.end;
                            entries.push((key, null));
                        }
                        node.end = if flow {
                            close.max(node.content)
                        } else {
                            entries
                                .iter()
                                .map(|(k, v)| k.end.max(v.end))
                                .fold(node.content, usize::max)
                        };
                        node.kind = Kind::Map { flow, entries };
                        node
                    }
                };
                attach(&mut stack, &mut root, node);
            }
            Event::DocumentEnd => {
                stack.clear();
                let root = root.take().unwrap_or_else(|| {
                    let at = byte(input, &span.start);
                    Node {
                        kind: Kind::Scalar {
                            value: String::new(),
                            style: ScalarStyle::Plain,
                        },
                        start: at,
                        content: at,
                        end: at,
                        line: span.start.line(),
                        col: span.start.col(),
                        props: false,
                        anchored: false,
                        tagged: false,
                    }
                });
                documents.push(Document { root });
            }
            _ => {}
        }
    }
    Ok(documents)
}

fn attach(stack: &mut [Frame], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(Frame::Seq { items, .. }) => items.push(node),
        Some(Frame::Map { entries, key, .. }) => match key.take() {
            None => *key = Some(node),
            Some(k) => entries.push((k, node)),
        },
        None => *root = Some(node),
    }
}
