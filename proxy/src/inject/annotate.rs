//! Annotations on the pod template's metadata, set by text edits like the
//! rest of injection: a value already there is replaced in place, a missing
//! one is added after the last annotation, and `annotations:` (or
//! `metadata:` itself) is added when missing. Block mappings get block
//! lines at their own indentation, flow mappings (and JSON) get JSON.
//! Running the same edits on their output finds every key in place and
//! writes the same bytes again.

use super::edit::{Edit, Unsupported, indent_of, lead, line_end, line_start};
use super::emit::{self, Layout, Value};
use super::tree::{Kind, Node};

/// The pod template's annotations that are plain strings, in order.
pub(crate) fn existing(template: &Node) -> Vec<(String, String)> {
    template
        .get_all("metadata")
        .next()
        .and_then(|(_, meta)| meta.get_all("annotations").next())
        .and_then(|(_, annotations)| annotations.entries())
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| Some((k.scalar()?.to_owned(), v.scalar()?.to_owned())))
        .collect()
}

/// The edits that make `template.metadata.annotations` hold `values`.
pub(crate) fn set(
    input: &str,
    layout: Layout<'_>,
    template: &Node,
    values: &[(&'static str, String)],
) -> Result<Vec<Edit>, Unsupported> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let Kind::Map { entries, .. } = &template.kind else {
        return Err("the pod template is not a mapping".into());
    };
    let annotations = || {
        values
            .iter()
            .map(|(k, v)| (*k, Value::Quoted(v.clone())))
            .collect::<Vec<_>>()
    };
    let Some((key, meta)) = entries.iter().find(|(k, _)| k.scalar() == Some("metadata")) else {
        let spec = entries
            .iter()
            .position(|(k, _)| k.scalar() == Some("spec"))
            .ok_or("the pod template has no spec")?;
        let metadata = Value::Map(vec![("annotations", Value::Map(annotations()))]);
        return Ok(vec![insert_before(
            input, layout, template, spec, "metadata", metadata,
        )?]);
    };
    if meta.anchored || matches!(meta.kind, Kind::Alias) {
        return Err("the pod template's metadata has a YAML anchor or is an alias".into());
    }
    if meta.is_null() {
        let metadata = vec![("annotations", Value::Map(annotations()))];
        return Ok(vec![replace_null(
            input, layout, template, key, meta, metadata,
        )?]);
    }
    if !matches!(meta.kind, Kind::Map { .. }) {
        return Err("the pod template's metadata is not a mapping".into());
    }
    let Some((akey, found)) = meta.get_all("annotations").next() else {
        let added = vec![("annotations", Value::Map(annotations()))];
        return Ok(vec![append(input, layout, meta, added)?]);
    };
    if found.anchored || matches!(found.kind, Kind::Alias) {
        return Err("the pod template's annotations have a YAML anchor or are an alias".into());
    }
    if found.is_null() {
        return Ok(vec![replace_null(
            input,
            layout,
            meta,
            akey,
            found,
            annotations(),
        )?]);
    }
    let Kind::Map { flow, .. } = &found.kind else {
        return Err("the pod template's metadata.annotations is not a mapping".into());
    };
    let mut edits = Vec::new();
    let mut missing = Vec::new();
    for (name, value) in values {
        match found.get_all(name).next() {
            Some((_, old)) if old.anchored || !matches!(old.kind, Kind::Scalar { .. }) => {
                return Err(format!("annotation {name} is not a plain string"));
            }
            Some((_, old)) => edits.push(Edit {
                start: old.start,
                end: old.end,
                text: if *flow {
                    emit::json_string(value)
                } else {
                    emit::quoted(value)
                },
            }),
            None => missing.push((*name, Value::Quoted(value.clone()))),
        }
    }
    if !missing.is_empty() {
        edits.push(append(input, layout, found, missing)?);
    }
    Ok(edits)
}

/// Adds entries at the end of a (non-empty block, or flow) mapping.
fn append(
    input: &str,
    layout: Layout<'_>,
    map: &Node,
    added: Vec<(&'static str, Value)>,
) -> Result<Edit, Unsupported> {
    let Kind::Map { flow, entries } = &map.kind else {
        return Err("not a mapping".into());
    };
    if *flow {
        let pairs: Vec<String> = added
            .iter()
            .map(|(k, v)| format!("{}: {}", emit::json_string(k), emit::json(v)))
            .collect();
        return Ok(match entries.last() {
            None => Edit {
                start: map.content,
                end: map.end,
                text: format!("{{{}}}", pairs.join(", ")),
            },
            Some((k, v)) => {
                let at = k.end.max(v.end);
                Edit {
                    start: at,
                    end: at,
                    text: format!(", {}", pairs.join(", ")),
                }
            }
        });
    }
    let (first, _) = entries.first().ok_or("an empty block mapping")?;
    let col = indent_of(input, first.start).ok_or("a mapping not on lines of its own")?;
    let at = line_end(input, map.end);
    Ok(Edit {
        start: at,
        end: at,
        text: format!(
            "{}{}{}",
            layout.nl,
            " ".repeat(col),
            emit::block_map(&added, col, layout)
        ),
    })
}

/// Replaces the null value of `key` in `parent` by a mapping.
fn replace_null(
    input: &str,
    layout: Layout<'_>,
    parent: &Node,
    key: &Node,
    value: &Node,
    map: Vec<(&'static str, Value)>,
) -> Result<Edit, Unsupported> {
    // The parser reports an empty value as `~` with an empty span.
    let written = value.end > value.start;
    if matches!(parent.kind, Kind::Map { flow: true, .. }) {
        if !written {
            return Err("an empty value inside a flow mapping".into());
        }
        return Ok(Edit {
            start: value.start,
            end: value.end,
            text: emit::json(&Value::Map(map)),
        });
    }
    let col = indent_of(input, key.start).ok_or("a key not on a line of its own")?;
    let end = if written {
        let between = input.get(key.end..value.end).unwrap_or("\n");
        if between.contains(['\n', '\r']) {
            return Err("a null value on a line of its own".into());
        }
        value.end
    } else {
        let rest = input.get(key.end..).unwrap_or("");
        let colon = rest.find(':').ok_or("a key without `:`")?;
        if !rest[..colon].trim().is_empty() {
            return Err("a key with something before its `:`".into());
        }
        key.end + colon + 1
    };
    let inner = col + 2;
    Ok(Edit {
        start: key.end,
        end,
        text: format!(
            ":{}{}{}",
            layout.nl,
            " ".repeat(inner),
            emit::block_map(&map, inner, layout)
        ),
    })
}

/// Adds `key: value` to `map` right before its entry number `index` (and
/// the comment lines right above that entry).
fn insert_before(
    input: &str,
    layout: Layout<'_>,
    map: &Node,
    index: usize,
    key: &'static str,
    value: Value,
) -> Result<Edit, Unsupported> {
    let Kind::Map { flow, entries } = &map.kind else {
        return Err("not a mapping".into());
    };
    let (before, _) = entries.get(index).ok_or("no such entry")?;
    if *flow {
        return Ok(Edit {
            start: before.start,
            end: before.start,
            text: format!("{}: {}, ", emit::json_string(key), emit::json(&value)),
        });
    }
    let col = indent_of(input, before.start).ok_or("a key not on a line of its own")?;
    let floor = index
        .checked_sub(1)
        .and_then(|i| entries.get(i))
        .map_or(0, |(k, v)| line_end(input, k.end.max(v.end)));
    let at = lead(input, line_start(input, before.start), floor);
    Ok(Edit {
        start: at,
        end: at,
        text: format!(
            "{}{}{}",
            " ".repeat(col),
            emit::block_map(&[(key, value)], col, layout),
            layout.nl
        ),
    })
}
