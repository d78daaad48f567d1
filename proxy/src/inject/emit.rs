//! The few YAML values injection writes, and two ways to write them: block
//! style (the usual Kubernetes look) and JSON (for flow collections, where
//! block style is not allowed; JSON is valid YAML flow).

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    /// A string always written quoted: single quotes in block context when
    /// it holds a `"` (JSON text reads better that way), else double quotes
    /// with JSON escapes; always JSON in flow context.
    Quoted(String),
    Int(i64),
    Bool(bool),
    Map(Vec<(&'static str, Value)>),
    Seq(Vec<Value>),
}

pub(crate) fn s(text: impl Into<String>) -> Value {
    Value::Str(text.into())
}

impl Value {
    fn is_scalar(&self) -> bool {
        matches!(
            self,
            Value::Str(_) | Value::Quoted(_) | Value::Int(_) | Value::Bool(_)
        )
    }
}

/// How to lay out block text: the line break, and how far a nested block
/// sequence's dash sits right of its key (0 or 2 in practice; copied from
/// the manifest's own `containers` list).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout<'a> {
    pub nl: &'a str,
    pub seq_offset: usize,
}

/// A string as a scalar: plain when that cannot be read as anything else
/// (under YAML 1.1 or 1.2 rules), else double-quoted with JSON escapes
/// (which YAML double-quoted scalars accept). In block context a `:` or
/// `@` inside is fine (`registry/app:1.0`); in flow context it is avoided.
pub(crate) fn scalar_text(text: &str, block: bool) -> String {
    if plain_ok(text, block) {
        text.to_owned()
    } else {
        json_string(text)
    }
}

fn plain_ok(text: &str, block: bool) -> bool {
    let inner = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(c, '_' | '.' | '/' | '-')
            || (block && matches!(c, ':' | '@'))
    };
    let Some(first) = text.chars().next() else {
        return false;
    };
    let ambiguous = matches!(
        text.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    // A Kubernetes quantity (`10m`, `32Mi`) is not a number in any YAML.
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let quantity = digits > 0
        && text[digits..].len() <= 2
        && !text[digits..].is_empty()
        && text[digits..].chars().all(|c| c.is_ascii_alphabetic())
        && !text[digits..].eq_ignore_ascii_case("e");
    let word = (first.is_ascii_alphabetic() || first == '/')
        && text.chars().all(inner)
        && !text.ends_with(':');
    !ambiguous && (word || quantity)
}

/// A string as a quoted YAML scalar: single-quoted when it holds a `"` and
/// nothing that needs an escape (so JSON inside stays readable), else
/// double-quoted with JSON escapes.
pub(crate) fn quoted(text: &str) -> String {
    if text.contains('"') && !text.chars().any(|c| c.is_control() || c == '\u{feff}') {
        format!("'{}'", text.replace('\'', "''"))
    } else {
        json_string(text)
    }
}

pub(crate) fn json_string(text: &str) -> String {
    // Serializing a str cannot fail; the fallback keeps this panic-free.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn scalar(value: &Value, block: bool) -> String {
    match value {
        Value::Str(text) => scalar_text(text, block),
        Value::Quoted(text) if block => quoted(text),
        Value::Quoted(text) => json_string(text),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Map(_) | Value::Seq(_) => json(value),
    }
}

/// Block-style sequence items of mappings, the first dash at the current
/// position, later lines indented by `dash` columns, no final line break.
pub(crate) fn block_items(items: &[Value], dash: usize, layout: Layout<'_>) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(layout.nl);
            push_spaces(&mut out, dash);
        }
        out.push_str("- ");
        match item {
            Value::Map(entries) if !entries.is_empty() => {
                map_body(&mut out, entries, dash + 2, layout);
            }
            other => out.push_str(&scalar(other, true)),
        }
    }
    out
}

/// Block-style `key: value` lines of a mapping, the first at the current
/// position, later ones indented by `indent` columns, no final line break.
pub(crate) fn block_map(
    entries: &[(&'static str, Value)],
    indent: usize,
    layout: Layout<'_>,
) -> String {
    let mut out = String::new();
    map_body(&mut out, entries, indent, layout);
    out
}

/// `key: value` lines at `indent`; the first line starts at the current
/// position.
fn map_body(
    out: &mut String,
    entries: &[(&'static str, Value)],
    indent: usize,
    layout: Layout<'_>,
) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push_str(layout.nl);
            push_spaces(out, indent);
        }
        out.push_str(key);
        out.push(':');
        match value {
            Value::Map(inner) if !inner.is_empty() => {
                out.push_str(layout.nl);
                push_spaces(out, indent + 2);
                map_body(out, inner, indent + 2, layout);
            }
            Value::Seq(items) if !items.is_empty() && !items.iter().all(Value::is_scalar) => {
                let dash = indent + layout.seq_offset;
                out.push_str(layout.nl);
                push_spaces(out, dash);
                out.push_str(&block_items(items, dash, layout));
            }
            Value::Seq(items) => {
                // Short scalar lists read best inline: `args: [a, b]`,
                // quoted all alike if any needs it.
                let all_plain = items.iter().all(|v| match v {
                    Value::Str(text) => plain_ok(text, false),
                    Value::Quoted(_) => false,
                    _ => true,
                });
                let inline: Vec<String> = items
                    .iter()
                    .map(|v| if all_plain { scalar(v, false) } else { json(v) })
                    .collect();
                let _ = write!(out, " [{}]", inline.join(", "));
            }
            Value::Map(_) => out.push_str(" {}"),
            other => {
                out.push(' ');
                out.push_str(&scalar(other, true));
            }
        }
    }
}

fn push_spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Compact JSON (`{"a": 1, "b": [2]}`): valid in any YAML flow context.
pub(crate) fn json(value: &Value) -> String {
    match value {
        Value::Str(text) | Value::Quoted(text) => json_string(text),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Seq(items) => {
            let inner: Vec<String> = items.iter().map(json).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Map(entries) => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", json_string(k), json(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_only_when_needed() {
        let block = |t| scalar_text(t, true);
        assert_eq!(block("appid-init"), "appid-init");
        assert_eq!(block("/etc/appid"), "/etc/appid");
        assert_eq!(block("1337"), "\"1337\"");
        assert_eq!(block("10m"), "10m");
        assert_eq!(block("32Mi"), "32Mi");
        assert_eq!(block("1e"), "\"1e\"");
        assert_eq!(block("1e3"), "\"1e3\"");
        assert_eq!(block("0x1F"), "\"0x1F\"");
        assert_eq!(block("--config"), "\"--config\"");
        assert_eq!(block("appid/appid:0.1.0"), "appid/appid:0.1.0");
        assert_eq!(
            scalar_text("appid/appid:0.1.0", false),
            "\"appid/appid:0.1.0\""
        );
        assert_eq!(block("app:"), "\"app:\"");
        assert_eq!(block("on"), "\"on\"");
        assert_eq!(block("No"), "\"No\"");
        assert_eq!(block(""), "\"\"");
        assert_eq!(block("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn quoted_strings_prefer_single_quotes_around_json() {
        assert_eq!(quoted("true"), "\"true\"");
        assert_eq!(quoted(r#"{"a":"it's"}"#), r#"'{"a":"it''s"}'"#);
        assert_eq!(quoted("{\"a\":\"\n\"}"), r#""{\"a\":\"\n\"}""#);
        let layout = Layout {
            nl: "\n",
            seq_offset: 0,
        };
        let map = [("k", Value::Quoted(r#"{"x":1}"#.into()))];
        assert_eq!(block_map(&map, 0, layout), r#"k: '{"x":1}'"#);
        assert_eq!(json(&Value::Map(map.to_vec())), r#"{"k": "{\"x\":1}"}"#);
    }

    #[test]
    fn block_and_json_layouts() {
        let item = Value::Map(vec![
            ("name", s("x")),
            ("args", Value::Seq(vec![s("a"), s("1")])),
            (
                "ports",
                Value::Seq(vec![Value::Map(vec![("containerPort", Value::Int(1))])]),
            ),
            ("empty", Value::Map(vec![])),
            ("sc", Value::Map(vec![("ro", Value::Bool(true))])),
        ]);
        let layout = Layout {
            nl: "\n",
            seq_offset: 0,
        };
        assert_eq!(
            block_items(std::slice::from_ref(&item), 2, layout),
            "- name: x\n    args: [\"a\", \"1\"]\n    ports:\n    - containerPort: 1\n    empty: {}\n    sc:\n      ro: true"
        );
        assert_eq!(
            json(&item),
            r#"{"name": "x", "args": ["a", "1"], "ports": [{"containerPort": 1}], "empty": {}, "sc": {"ro": true}}"#
        );
    }
}
