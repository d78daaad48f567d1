//! Text edits: put our items first in a pod spec list (`initContainers`,
//! `volumes`), replacing any earlier copies of them, and touch nothing else.
//!
//! Every edit is computed on the original text from node positions, so
//! whatever lies outside the edited ranges (comments, quoting, key order,
//! blank lines, other documents) is copied byte for byte. The ranges are
//! chosen so that running the same edits on their own output lands on the
//! same positions: our items always end up as the first items of the list,
//! written with the list's own indentation.

use super::emit::{self, Layout, Value};
use super::tree::{Kind, Node};

/// Replace `start..end` of the input with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// Why a workload cannot be edited safely (it is then left alone, with a
/// warning).
pub(crate) type Unsupported = String;

/// Applies non-overlapping edits (ties keep their order, so two insertions
/// at one point come out in the order they were made).
pub(crate) fn apply(input: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(input.len() + edits.len() * 1024);
    let mut at = 0;
    for edit in &edits {
        if edit.start < at || edit.end < edit.start {
            return None;
        }
        out.push_str(input.get(at..edit.start)?);
        out.push_str(&edit.text);
        at = edit.end;
    }
    out.push_str(input.get(at..)?);
    Some(out)
}

/// Checks that a set of edits can be applied together.
pub(crate) fn disjoint(edits: &[Edit]) -> bool {
    let mut sorted: Vec<_> = edits.iter().map(|e| (e.start, e.end)).collect();
    sorted.sort_unstable();
    sorted.windows(2).all(|w| w[0].1 <= w[1].0) && sorted.iter().all(|(s, e)| s <= e)
}

pub(crate) fn line_start(input: &str, pos: usize) -> usize {
    input
        .get(..pos)
        .and_then(|head| head.rfind(['\n', '\r']))
        .map_or(0, |i| i + 1)
}

/// The end of the line `pos` is on (the position of its line break).
pub(crate) fn line_end(input: &str, pos: usize) -> usize {
    input
        .get(pos..)
        .and_then(|tail| tail.find(['\n', '\r']))
        .map_or(input.len(), |i| pos + i)
}

fn is_comment_line(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Walks up from the line starting at `ls` over the comment lines right
/// above it (not past `floor`, not over blank lines): those comments belong
/// to what follows, and new text goes before them.
pub(crate) fn lead(input: &str, ls: usize, floor: usize) -> usize {
    let mut cur = ls;
    while cur > floor {
        let prev = line_start(input, cur.saturating_sub(1));
        if prev < floor {
            break;
        }
        let line = input.get(prev..cur).unwrap_or("");
        if is_comment_line(line) {
            cur = prev;
        } else {
            break;
        }
    }
    cur
}

/// The `-` of a block sequence item whose node starts at `start`: on the
/// same line, or alone on an earlier line (`-` then the item below it).
fn dash_of(input: &str, start: usize) -> Option<usize> {
    let ls = line_start(input, start);
    let prefix = input.get(ls..start)?;
    let trimmed = prefix.trim_end();
    if let Some(before) = trimmed.strip_suffix('-') {
        return before
            .chars()
            .all(|c| c == ' ')
            .then_some(ls + before.len());
    }
    if !prefix.chars().all(|c| c == ' ' || c == '\t') {
        return None;
    }
    // `-` alone on an earlier line (blank and comment lines in between).
    let mut cur = ls;
    while cur > 0 {
        let prev = line_start(input, cur - 1);
        let line = input.get(prev..cur)?.trim_end_matches(['\n', '\r']);
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            cur = prev;
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = line.get(indent..)?;
        let after = rest.strip_prefix('-')?;
        let alone = after.trim().is_empty()
            || (after.starts_with([' ', '\t']) && after.trim_start().starts_with('#'));
        return alone.then_some(prev + indent);
    }
    None
}

/// The column (in spaces) of `pos`, if only spaces precede it on its line.
pub(crate) fn indent_of(input: &str, pos: usize) -> Option<usize> {
    let ls = line_start(input, pos);
    let prefix = input.get(ls..pos)?;
    prefix.chars().all(|c| c == ' ').then_some(prefix.len())
}

/// How far right of `key` the dashes of its block sequence `seq` are.
pub(crate) fn list_offset(input: &str, key: &Node, seq: &Node) -> Option<usize> {
    let first = match &seq.kind {
        Kind::Seq { flow: false, items } => items.first()?,
        _ => return None,
    };
    let dash = indent_of(input, dash_of(input, first.start)?)?;
    let key = indent_of(input, key.start)?;
    dash.checked_sub(key)
}

/// A list in the pod spec to put our items into.
pub(crate) struct Slot<'a> {
    /// `initContainers` or `volumes`.
    pub key: &'static str,
    /// Ours, in order.
    pub items: &'a [Value],
    /// Whether an existing item is one of ours (to be replaced).
    pub is_ours: &'a dyn Fn(&Node) -> bool,
}

/// The edits that make `slot` start with our items in the pod spec
/// mapping `pod`, whose entry number `anchor` is `containers` (new keys go
/// right before it).
pub(crate) fn slot_edits(
    input: &str,
    layout: Layout<'_>,
    pod: &Node,
    anchor: usize,
    slot: &Slot<'_>,
) -> Result<Vec<Edit>, Unsupported> {
    let Kind::Map {
        flow: pod_flow,
        entries,
    } = &pod.kind
    else {
        return Err("the pod spec is not a mapping".into());
    };
    let Some((anchor_key, _)) = entries.get(anchor) else {
        return Err("the pod spec has no containers".into());
    };
    // Comments right above `containers` stay with it, but never reach back
    // into the entry before it (a block scalar may hold `#` lines).
    let floor = anchor
        .checked_sub(1)
        .and_then(|i| entries.get(i))
        .map_or(0, |(k, v)| line_end(input, k.end.max(v.end)));
    let found: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k.scalar() == Some(slot.key))
        .map(|(i, _)| i)
        .collect();
    let mut edits = Vec::new();
    match found.as_slice() {
        [] => {}
        [i] => {
            let (key, value) = &entries[*i];
            if value.anchored {
                return Err(format!("spec.{} has a YAML anchor", slot.key));
            }
            let items = value.items().unwrap_or_default();
            if items.iter().any(|i| i.anchored && (slot.is_ours)(i)) {
                return Err(format!(
                    "an item of ours in spec.{} has a YAML anchor",
                    slot.key
                ));
            }
            if !value.is_null() {
                return match &value.kind {
                    Kind::Seq { flow: false, items } => {
                        block_seq_edits(input, layout, key, items, slot)
                    }
                    Kind::Seq { flow: true, items } => {
                        flow_seq_edits(input, layout, *pod_flow, key, value, items, slot)
                    }
                    Kind::Alias => Err(format!("spec.{} is a YAML alias", slot.key)),
                    _ => Err(format!("spec.{} is not a list", slot.key)),
                };
            }
            // `key:` with no value: drop the line, then add the key anew.
            if *pod_flow {
                return Err(format!("spec.{} is null inside a flow mapping", slot.key));
            }
            let Some(_) = indent_of(input, key.start) else {
                return Err(format!("spec.{} is not on a line of its own", slot.key));
            };
            let start = line_start(input, key.start);
            let end = line_end(input, key.end.max(value.end));
            let end = if input.get(end..).is_some_and(|t| t.starts_with("\r\n")) {
                end + 2
            } else if end < input.len() {
                end + 1
            } else {
                end
            };
            edits.push(Edit {
                start,
                end,
                text: String::new(),
            });
        }
        _ => return Err(format!("spec.{} appears twice", slot.key)),
    }

    // The key is absent (or was null): add it before `containers`.
    if *pod_flow {
        let items: Vec<String> = slot.items.iter().map(emit::json).collect();
        edits.push(Edit {
            start: anchor_key.start,
            end: anchor_key.start,
            text: format!("\"{}\": [{}], ", slot.key, items.join(", ")),
        });
    } else {
        let Some(col) = indent_of(input, anchor_key.start) else {
            return Err("spec.containers is not on a line of its own".into());
        };
        let at = lead(input, line_start(input, anchor_key.start), floor);
        let dash = col + layout.seq_offset;
        edits.push(Edit {
            start: at,
            end: at,
            text: format!(
                "{}{}:{}{}{}{}",
                " ".repeat(col),
                slot.key,
                layout.nl,
                " ".repeat(dash),
                emit::block_items(slot.items, dash, layout),
                layout.nl
            ),
        });
    }
    Ok(edits)
}

/// Runs of consecutive items of ours, as inclusive index ranges.
fn runs(items: &[Node], is_ours: &dyn Fn(&Node) -> bool) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if !is_ours(item) {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

fn block_seq_edits(
    input: &str,
    layout: Layout<'_>,
    key: &Node,
    items: &[Node],
    slot: &Slot<'_>,
) -> Result<Vec<Edit>, Unsupported> {
    let unsupported = || {
        format!(
            "spec.{} has a list layout this tool does not edit",
            slot.key
        )
    };
    let dashes: Vec<usize> = items
        .iter()
        .map(|item| dash_of(input, item.start))
        .collect::<Option<_>>()
        .ok_or_else(unsupported)?;
    let (Some(&first), Some(last)) = (dashes.first(), items.last()) else {
        return Err(unsupported());
    };
    let col = indent_of(input, first).ok_or_else(unsupported)?;
    if dashes.iter().any(|&d| indent_of(input, d) != Some(col)) {
        return Err(unsupported());
    }
    let ours_text = format!(
        "{}{}",
        " ".repeat(col),
        emit::block_items(slot.items, col, layout)
    );
    let n = items.len();
    let runs = runs(items, slot.is_ours);
    let mut edits = Vec::new();

    if runs == [(0, n - 1)] {
        // Only ours: rewrite them in place.
        edits.push(Edit {
            start: line_start(input, first),
            end: line_end(input, last.end),
            text: ours_text,
        });
        return Ok(edits);
    }
    let leading = runs.first().is_some_and(|r| r.0 == 0);
    if !leading {
        let floor = line_end(input, key.end);
        let at = lead(input, line_start(input, first), floor);
        edits.push(Edit {
            start: at,
            end: at,
            text: format!("{ours_text}{}", layout.nl),
        });
    }
    for &(i, j) in &runs {
        if j + 1 < n {
            let floor = line_end(input, items[j].end);
            let end = lead(input, line_start(input, dashes[j + 1]), floor);
            let text = if i == 0 {
                format!("{ours_text}{}", layout.nl)
            } else {
                String::new()
            };
            edits.push(Edit {
                start: line_start(input, dashes[i]),
                end,
                text,
            });
        } else {
            // A run at the end (after an item not ours).
            let prev = items.get(i.wrapping_sub(1)).ok_or_else(unsupported)?;
            edits.push(Edit {
                start: line_end(input, prev.end),
                end: line_end(input, last.end),
                text: String::new(),
            });
        }
    }
    Ok(edits)
}

fn flow_seq_edits(
    input: &str,
    layout: Layout<'_>,
    pod_flow: bool,
    key: &Node,
    seq: &Node,
    items: &[Node],
    slot: &Slot<'_>,
) -> Result<Vec<Edit>, Unsupported> {
    let runs = runs(items, slot.is_ours);
    let n = items.len();
    let all_ours = n == 0 || runs == [(0, n - 1)];

    // `key: []` in a block mapping becomes a block list.
    if all_ours && !pod_flow {
        let between = input.get(key.end..seq.start).unwrap_or("");
        let simple = between.trim_matches([' ', '\t']) == ":";
        if let (true, Some(col)) = (simple, indent_of(input, key.start)) {
            let dash = col + layout.seq_offset;
            return Ok(vec![Edit {
                start: key.end,
                end: seq.end,
                text: format!(
                    ":{}{}{}",
                    layout.nl,
                    " ".repeat(dash),
                    emit::block_items(slot.items, dash, layout)
                ),
            }]);
        }
    }

    let json = slot
        .items
        .iter()
        .map(emit::json)
        .collect::<Vec<_>>()
        .join(", ");
    if n == 0 {
        return Ok(vec![Edit {
            start: seq.content,
            end: seq.end,
            text: format!("[{json}]"),
        }]);
    }
    if all_ours {
        return Ok(vec![Edit {
            start: items[0].start,
            end: items[n - 1].end,
            text: json,
        }]);
    }
    let mut edits = Vec::new();
    if runs.first().is_none_or(|r| r.0 != 0) {
        edits.push(Edit {
            start: items[0].start,
            end: items[0].start,
            text: format!("{json}, "),
        });
    }
    for &(i, j) in &runs {
        if j + 1 < n {
            edits.push(Edit {
                start: items[i].start,
                end: items[j + 1].start,
                text: if i == 0 {
                    format!("{json}, ")
                } else {
                    String::new()
                },
            });
        } else if let Some(prev) = i.checked_sub(1).and_then(|p| items.get(p)) {
            edits.push(Edit {
                start: prev.end,
                end: items[n - 1].end,
                text: String::new(),
            });
        }
    }
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_are_found() {
        let text = "a:\n  - x: 1\n  -\n    # c\n    y: 2\n";
        assert_eq!(dash_of(text, 7), Some(5));
        let y = text.find("y:").unwrap();
        assert_eq!(dash_of(text, y), Some(text.find("  -\n").unwrap() + 2));
        assert_eq!(dash_of("a: b", 3), None);
    }

    #[test]
    fn lead_takes_comment_lines_only() {
        let text = "a: 1\n\n# one\n# two\nb: 2\n";
        let b = text.find("b:").unwrap();
        assert_eq!(lead(text, b, 0), text.find("# one").unwrap());
        let text = "a: 1\n# one\n\nb: 2\n";
        let b = text.find("b:").unwrap();
        assert_eq!(lead(text, b, 0), b);
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let e = |start, end| Edit {
            start,
            end,
            text: String::new(),
        };
        assert!(apply("abcdef", vec![e(1, 3), e(2, 4)]).is_none());
        assert_eq!(
            apply("abcdef", vec![e(1, 3), e(3, 3), e(4, 6)]).as_deref(),
            Some("ad")
        );
        assert!(!disjoint(&[e(1, 3), e(2, 4)]));
    }
}
