//! The few YAML values injection writes, and two ways to write them: block
//! style (the usual Kubernetes look) and JSON (for flow collections, where
//! block style is not allowed; JSON is valid YAML flow).

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
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
        matches!(self, Value::Str(_) | Value::Int(_) | Value::Bool(_))
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
/// (which YAML double-quoted scalars accept).
pub(crate) fn scalar_text(text: &str) -> String {
    let first_ok = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/');
    let rest_ok = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
    let ambiguous = matches!(
        text.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    );
    if first_ok && rest_ok && !ambiguous {
        text.to_owned()
    } else {
        json_string(text)
    }
}

fn json_string(text: &str) -> String {
    // Serializing a str cannot fail; the fallback keeps this panic-free.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Str(text) => scalar_text(text),
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
            other => out.push_str(&scalar(other)),
        }
    }
    out
}

/// `key: value` lines at `indent`; the first line starts at the current
/// position.
fn map_body(out: &mut String, entries: &[(&'static str, Value)], indent: usize, layout: Layout<'_>) {
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
                // Short scalar lists read best inline: `args: [a, b]`.
                let inline: Vec<String> = items.iter().map(scalar).collect();
                let _ = write!(out, " [{}]", inline.join(", "));
            }
            Value::Map(_) => out.push_str(" {}"),
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
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
        Value::Str(text) => json_string(text),
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
        assert_eq!(scalar_text("appid-init"), "appid-init");
        assert_eq!(scalar_text("/etc/appid"), "/etc/appid");
        assert_eq!(scalar_text("1337"), "\"1337\"");
        assert_eq!(scalar_text("10m"), "\"10m\"");
        assert_eq!(scalar_text("--config"), "\"--config\"");
        assert_eq!(scalar_text("appid/appid:0.1.0"), "\"appid/appid:0.1.0\"");
        assert_eq!(scalar_text("on"), "\"on\"");
        assert_eq!(scalar_text("No"), "\"No\"");
        assert_eq!(scalar_text(""), "\"\"");
        assert_eq!(scalar_text("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn block_and_json_layouts() {
        let item = Value::Map(vec![
            ("name", s("x")),
            ("args", Value::Seq(vec![s("a"), s("1")])),
            ("ports", Value::Seq(vec![Value::Map(vec![("containerPort", Value::Int(1))])])),
            ("empty", Value::Map(vec![])),
            ("sc", Value::Map(vec![("ro", Value::Bool(true))])),
        ]);
        let layout = Layout {
            nl: "\n",
            seq_offset: 0,
        };
        assert_eq!(
            block_items(std::slice::from_ref(&item), 2, layout),
            "- name: x\n    args: [a, \"1\"]\n    ports:\n    - containerPort: 1\n    empty: {}\n    sc:\n      ro: true"
        );
        assert_eq!(
            json(&item),
            r#"{"name": "x", "args": ["a", "1"], "ports": [{"containerPort": 1}], "empty": {}, "sc": {"ro": true}}"#
        );
    }
}
