//! The value side of a selector: `web`, `[aws, gcp]`, `{lte: 0}`,
//! `{glob: "spiffe://td/ns/*"}`, `{not: {in: [a, b]}}`.
//!
//! Design bias: *a predicate is a plain boolean function of one attribute
//! value*, so `not` is always exact negation and there is no three-valued
//! logic to remember. What that means for a missing attribute:
//!
//! | form                       | attribute missing |
//! |----------------------------|-------------------|
//! | plain value, list, `in`    | no match          |
//! | `glob`                     | no match          |
//! | `lt`, `lte`, `gt`, `gte`   | no match          |
//! | `exists: true`             | no match          |
//! | `exists: false`            | match             |
//! | `not_in` (= `not: {in}`)   | match             |
//! | `not: X`                   | the opposite of X |
//!
//! A plain value (or list entry) with a `*` in it is a glob, as in the
//! DESIGN example `id: "spiffe://prod.example/ns/shop/sa/*"`. `in` and
//! `not_in` compare exactly, and so a `*` in them is refused at load: read
//! literally it would match no SPIFFE ID, label or image name (none has a
//! `*`), and `{not_in: ["spiffe://td/ns/legacy/**"]}` would exclude nothing.
//! A plain list, `{not: [...]}` or `{glob: ...}` says it as a glob.
//!
//! An unquoted `yes`, `no`, `on` or `off` (any case) is refused: YAML 1.1
//! reads them as booleans, this YAML (1.2) as text, so `root: yes` would
//! never meet the claim `root: true`. Write `true`/`false` for a boolean,
//! `"yes"` for the text.
//!
//! An operator map is a map like any other: a repeated operator (`{in: [a],
//! in: [b]}`) is refused, not read as both.
//!
//! Equality compares text with text: a string attribute equals a literal
//! when the literal, as written, is the same text (`labels.v: 1` matches the
//! label `"1"`). A numeric attribute (`vulns.*`, numbers under `reported`)
//! equals a literal that reads as the same number. The numeric operators
//! compare numbers; a string attribute that is a decimal number (labels are
//! always strings) compares as that number; anything else — missing, text,
//! a map — does not match, and so `not` of it does. Several operators in one
//! map must all hold (`{gte: 1, lte: 5}`).

use super::attr::{Attr, AttrValue};
use super::error::{Diags, choices_hint};
use super::glob::Glob;
use super::load::map_entries;
use super::yaml::{Node, Value};

/// A literal from the policy: its text as written, and its number if it is one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lit {
    pub text: Box<str>,
    pub num: Option<f64>,
}

impl Lit {
    pub fn new(text: &str) -> Lit {
        Lit {
            text: text.into(),
            num: number(text),
        }
    }

    fn equals(&self, v: AttrValue<'_>) -> bool {
        match v {
            AttrValue::Str(s) => s == &*self.text,
            AttrValue::Num(n) => self.num == Some(n),
            // YAML 1.2 spells a boolean `true`, `True` or `TRUE`.
            AttrValue::Bool(b) => self
                .text
                .eq_ignore_ascii_case(if b { "true" } else { "false" }),
            AttrValue::Missing | AttrValue::Compound => false,
        }
    }
}

/// A finite number (decimal, or YAML 1.2's `0x` hex and `0o` octal
/// integers), or nothing.
fn number(text: &str) -> Option<f64> {
    let t = text.trim();
    for (prefix, radix) in [("0x", 16), ("0o", 8)] {
        if let Some(digits) = t.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).ok().map(|n| n as f64);
        }
    }
    // `inf`, `nan` and friends parse as f64 but are not numbers here.
    if !t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.') {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A compiled selector value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pred {
    /// A plain value.
    Eq(Lit),
    /// A list, or `in`.
    AnyOf(Box<[Lit]>),
    /// `not_in`: exactly `not: {in: ...}`.
    NotIn(Box<[Lit]>),
    /// `glob`: one pattern or a list (any of).
    Glob(Box<[Glob]>),
    Exists(bool),
    Cmp(CmpOp, f64),
    Not(Box<Pred>),
    /// Several operators in one map.
    All(Box<[Pred]>),
}

pub(crate) const OPERATORS: &[&str] = &[
    "in", "not_in", "glob", "exists", "lt", "lte", "gt", "gte", "not",
];

impl Pred {
    /// Whether the attribute value satisfies the predicate. No allocation.
    pub fn matches(&self, v: AttrValue<'_>) -> bool {
        match self {
            Pred::Eq(l) => l.equals(v),
            Pred::AnyOf(ls) => ls.iter().any(|l| l.equals(v)),
            Pred::NotIn(ls) => !ls.iter().any(|l| l.equals(v)),
            Pred::Glob(gs) => match v {
                AttrValue::Str(s) => gs.iter().any(|g| g.matches(s)),
                _ => false,
            },
            Pred::Exists(want) => (!matches!(v, AttrValue::Missing)) == *want,
            Pred::Cmp(op, rhs) => {
                let lhs = match v {
                    AttrValue::Num(n) => n,
                    AttrValue::Str(s) => match number(s) {
                        Some(n) => n,
                        None => return false,
                    },
                    _ => return false,
                };
                match op {
                    CmpOp::Lt => lhs < *rhs,
                    CmpOp::Lte => lhs <= *rhs,
                    CmpOp::Gt => lhs > *rhs,
                    CmpOp::Gte => lhs >= *rhs,
                }
            }
            Pred::Not(p) => !p.matches(v),
            Pred::All(ps) => ps.iter().all(|p| p.matches(v)),
        }
    }

    /// Only `exists` (possibly under `not` or in a map of several).
    fn only_exists(&self) -> bool {
        match self {
            Pred::Exists(_) => true,
            Pred::Not(p) => p.only_exists(),
            Pred::All(ps) => ps.iter().all(Pred::only_exists),
            _ => false,
        }
    }

    /// The literal texts an attribute must equal one of for this to match,
    /// if the predicate is that simple (for the exact-value index).
    pub fn required_values(&self) -> Option<Vec<&str>> {
        match self {
            Pred::Eq(l) => Some(vec![&*l.text]),
            Pred::AnyOf(ls) => Some(ls.iter().map(|l| &*l.text).collect()),
            Pred::Glob(gs) => gs.iter().map(Glob::exact).collect(),
            _ => None,
        }
    }

    /// Separator-ended literal prefixes one of which every match starts
    /// with (for the prefix index), if every pattern has one.
    pub fn required_prefixes(&self) -> Option<Vec<&str>> {
        match self {
            Pred::Glob(gs) => gs
                .iter()
                .map(|g| Some(g.separator_prefix()).filter(|p| !p.is_empty()))
                .collect(),
            _ => None,
        }
    }
}

/// Parses the value of a claim-path selector, checked against the path.
pub(crate) fn parse(node: &Node<'_>, attr: &Attr, diags: &mut Diags) -> Option<Pred> {
    let pred = parse_value(node, attr, diags)?;
    if attr.is_section() && !pred.only_exists() {
        diags.push(
            node.mark,
            format!("`{attr}` is a map of claims; only `exists` can test it"),
            format!("select one entry with `{attr}.<key>: value`, or write `{{exists: true}}`"),
        );
        return None;
    }
    Some(pred)
}

fn parse_value(node: &Node<'_>, attr: &Attr, diags: &mut Diags) -> Option<Pred> {
    match &node.value {
        Value::Scalar { text, .. } => {
            if node.is_null() {
                diags.push(
                    node.mark,
                    format!("empty value for `{attr}`"),
                    "write the value to match, a list of values, or `{exists: true}`",
                );
                return None;
            }
            if yaml_1_1_boolean(node, diags) {
                return None;
            }
            if text.contains('*') {
                return glob_value(node, text, diags).map(|g| Pred::Glob(Box::new([g])));
            }
            Some(Pred::Eq(Lit::new(text)))
        }
        Value::Seq(items) => {
            let lits = literals(node, "a list of values", diags)?;
            if !lits.iter().any(|l| l.text.contains('*')) {
                return Some(Pred::AnyOf(lits));
            }
            // Some entries are patterns: the whole list becomes globs,
            // the plain entries exact ones.
            let mut ok = true;
            let mut globs = Vec::with_capacity(items.len());
            for (item, lit) in items.iter().zip(lits.iter()) {
                if lit.text.contains('*') {
                    match glob_value(item, &lit.text, diags) {
                        Some(g) => globs.push(g),
                        None => ok = false,
                    }
                } else {
                    globs.push(Glob::literal(&lit.text));
                }
            }
            ok.then(|| Pred::Glob(globs.into()))
        }
        Value::Map(entries) => {
            if entries.is_empty() {
                diags.push(
                    node.mark,
                    format!("empty operator map for `{attr}`"),
                    "write an operator such as `{exists: true}` or `{lte: 0}`, or remove the selector",
                );
                return None;
            }
            // Names, each once, as in every other map.
            let errors_before = diags.len();
            let entries = map_entries(node, &format!("the operators of `{attr}`"), diags)?;
            let mut ok = diags.len() == errors_before;
            let mut preds = Vec::with_capacity(entries.len());
            for e in &entries {
                match parse_operator(e.key_node, e.value, attr, diags) {
                    Some(p) => preds.push(p),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            if preds.len() == 1 {
                preds.pop()
            } else {
                Some(Pred::All(preds.into()))
            }
        }
    }
}

fn parse_operator(
    key: &Node<'_>,
    value: &Node<'_>,
    attr: &Attr,
    diags: &mut Diags,
) -> Option<Pred> {
    let Some(op) = key.scalar() else {
        diags.push(key.mark, "an operator must be a name", operators_hint(""));
        return None;
    };
    match op {
        "in" => Some(Pred::AnyOf(exact_literals(value, op, diags)?)),
        "not_in" => Some(Pred::NotIn(exact_literals(value, op, diags)?)),
        "glob" => {
            let items: Vec<&Node<'_>> = match &value.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![value],
            };
            if items.is_empty() {
                diags.push(
                    value.mark,
                    "empty `glob` list matches nothing",
                    "list at least one pattern",
                );
                return None;
            }
            let want = items.len();
            let mut globs = Vec::with_capacity(want);
            for item in items {
                match item.scalar().filter(|_| !item.is_null()) {
                    Some(text) => match Glob::path(text) {
                        Ok(g) => globs.push(g),
                        Err(e) => diags.push(item.mark, format!("bad glob: {}", e.message), e.hint),
                    },
                    None => diags.push(
                        item.mark,
                        format!(
                            "`glob` takes a pattern or a list of patterns, found {}",
                            item.kind()
                        ),
                        "write e.g. `{glob: \"spiffe://td/ns/*\"}`",
                    ),
                }
            }
            (globs.len() == want).then(|| Pred::Glob(globs.into()))
        }
        "exists" => match value.as_bool() {
            Some(b) => Some(Pred::Exists(b)),
            None => {
                diags.push(
                    value.mark,
                    format!("`exists` takes true or false, found `{}`", value.flow()),
                    "write `{exists: true}` or `{exists: false}`",
                );
                None
            }
        },
        "lt" | "lte" | "gt" | "gte" => {
            let cmp = match op {
                "lt" => CmpOp::Lt,
                "lte" => CmpOp::Lte,
                "gt" => CmpOp::Gt,
                _ => CmpOp::Gte,
            };
            match value.scalar().and_then(number) {
                Some(n) => Some(Pred::Cmp(cmp, n)),
                None => {
                    diags.push(
                        value.mark,
                        format!("`{op}` needs a number, found `{}`", value.flow()),
                        format!("write a number, e.g. `{{{op}: 0}}`"),
                    );
                    None
                }
            }
        }
        "not" => parse_value(value, attr, diags).map(|p| Pred::Not(Box::new(p))),
        other => {
            let hint = if attr.is_section() {
                format!(
                    "claim paths are flattened with dots: write `{attr}.{other}: ...` instead of a nested map"
                )
            } else {
                operators_hint(other)
            };
            diags.push(key.mark, format!("unknown operator `{other}`"), hint);
            None
        }
    }
}

/// The values of `in` or `not_in` (`op`), which compare exactly: one with
/// a `*` is refused (see the module documentation).
fn exact_literals(node: &Node<'_>, op: &str, diags: &mut Diags) -> Option<Box<[Lit]>> {
    let lits = literals(node, &format!("`{op}`"), diags)?;
    let items: Vec<&Node<'_>> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut ok = true;
    for (item, lit) in items.iter().zip(lits.iter()) {
        if lit.text.contains('*') {
            ok = false;
            let glob = match op {
                "not_in" => format!("`{{not: [{}]}}`", item.flow()),
                _ => format!("`[{}]`", item.flow()),
            };
            diags.push(
                item.mark,
                format!(
                    "`{op}` compares exactly, and no claim has a `*`: `{}` would match nothing",
                    item.flow()
                ),
                format!(
                    "for a glob write a plain list ({glob}) or `{{glob: {}}}`; `{{not: ...}}` \
                     of either excludes",
                    item.flow()
                ),
            );
        }
    }
    ok.then_some(lits)
}

/// Whether `node` is an unquoted `yes`, `no`, `on` or `off` (any case),
/// which is reported: a YAML 1.1 boolean, text here (see the module
/// documentation).
fn yaml_1_1_boolean(node: &Node<'_>, diags: &mut Diags) -> bool {
    let Value::Scalar {
        text,
        quoted: false,
    } = &node.value
    else {
        return false;
    };
    let boolean = match text.to_ascii_lowercase().as_str() {
        "yes" | "on" => "true",
        "no" | "off" => "false",
        _ => return false,
    };
    diags.push(
        node.mark,
        format!(
            "`{text}` is a boolean in YAML 1.1 but text in the YAML policies are read as (1.2), \
             so it would never equal a `{boolean}` claim"
        ),
        format!("write `{boolean}` for the boolean, or `\"{text}\"` for the text"),
    );
    true
}

/// A plain value with `*` in it: a glob.
fn glob_value(node: &Node<'_>, text: &str, diags: &mut Diags) -> Option<Glob> {
    match Glob::path(text) {
        Ok(g) => Some(g),
        Err(e) => {
            diags.push(node.mark, format!("bad glob: {}", e.message), e.hint);
            None
        }
    }
}

fn operators_hint(word: &str) -> String {
    choices_hint(word, OPERATORS, "operators")
}

/// A scalar or a non-empty list of scalars.
fn literals(node: &Node<'_>, what: &str, diags: &mut Diags) -> Option<Box<[Lit]>> {
    let items: Vec<&Node<'_>> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Scalar { .. } if !node.is_null() => vec![node],
        _ => {
            diags.push(
                node.mark,
                format!("{what} takes a list of values, found {}", node.kind()),
                "write e.g. `[aws, gcp]`",
            );
            return None;
        }
    };
    if items.is_empty() {
        diags.push(
            node.mark,
            format!("empty {what} matches nothing"),
            "list at least one value",
        );
        return None;
    }
    let want = items.len();
    let mut out = Vec::with_capacity(want);
    for item in items {
        match item.scalar().filter(|_| !item.is_null()) {
            Some(_) if yaml_1_1_boolean(item, diags) => {}
            Some(text) => out.push(Lit::new(text)),
            None => diags.push(
                item.mark,
                format!(
                    "{what}: each entry must be a plain value, found {}",
                    item.kind()
                ),
                "write scalar values such as `web` or `8080`",
            ),
        }
    }
    (out.len() == want).then(|| out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::yaml;

    fn pred(attr: &str, src: &str) -> Pred {
        let doc = format!("x: {src}\n");
        let root = yaml::parse(&doc).unwrap().unwrap();
        let Value::Map(e) = &root.value else { panic!() };
        let mut d = Diags::default();
        let p = parse(&e[0].1, &Attr::parse(attr).unwrap(), &mut d);
        assert!(d.is_empty(), "{d:?}");
        p.unwrap()
    }

    fn err(attr: &str, src: &str) -> String {
        let doc = format!("x: {src}\n");
        let root = yaml::parse(&doc).unwrap().unwrap();
        let Value::Map(e) = &root.value else { panic!() };
        let mut d = Diags::default();
        assert!(parse(&e[0].1, &Attr::parse(attr).unwrap(), &mut d).is_none());
        d.into_errors("f").to_string()
    }

    use AttrValue::{Bool, Compound, Missing, Num, Str};

    /// (selector, attribute value, expected) for every operator, including
    /// missing and wrongly-typed attributes.
    #[test]
    fn every_operator() {
        let cases: &[(&str, AttrValue<'_>, bool)] = &[
            // plain value: equals
            ("web", Str("web"), true),
            ("web", Str("api"), false),
            ("web", Missing, false),
            ("1", Str("1"), true),
            ("1", Num(1.0), true),
            ("1.0", Num(1.0), true),
            ("1.0", Str("1"), false),
            ("\"0\"", Num(0.0), true),
            ("true", Bool(true), true),
            ("true", Bool(false), false),
            ("web", Compound, false),
            // plain value or list entry with `*`: glob
            ("\"spiffe://td/ns/*\"", Str("spiffe://td/ns/a"), true),
            ("\"spiffe://td/ns/*\"", Str("spiffe://td/ns/a/b"), false),
            ("\"spiffe://td/ns/*\"", Str("spiffe://td/ns/*"), true),
            ("[web, \"api-*\"]", Str("api-v2"), true),
            ("[web, \"api-*\"]", Str("web"), true),
            ("[web, \"api-*\"]", Str("db"), false),
            // list: any of
            ("[web, api]", Str("api"), true),
            ("[web, api]", Str("db"), false),
            ("[web, api]", Missing, false),
            // in / not_in
            ("{in: [aws, gcp]}", Str("gcp"), true),
            ("{in: [aws, gcp]}", Str("azure"), false),
            ("{in: [aws, gcp]}", Missing, false),
            ("{not_in: [aws, gcp]}", Str("azure"), true),
            ("{not_in: [aws, gcp]}", Str("aws"), false),
            ("{not_in: [aws, gcp]}", Missing, true),
            // glob
            (
                "{glob: \"spiffe://td/ns/*\"}",
                Str("spiffe://td/ns/a"),
                true,
            ),
            (
                "{glob: \"spiffe://td/ns/*\"}",
                Str("spiffe://td/ns/a/b"),
                false,
            ),
            ("{glob: [\"a*\", \"b*\"]}", Str("bee"), true),
            ("{glob: \"*\"}", Missing, false),
            ("{glob: \"1*\"}", Num(10.0), false),
            // exists
            ("{exists: true}", Str(""), true),
            ("{exists: true}", Compound, true),
            ("{exists: true}", Missing, false),
            ("{exists: false}", Missing, true),
            ("{exists: false}", Num(0.0), false),
            // numeric
            ("{lt: 1}", Num(0.0), true),
            ("{lt: 1}", Num(1.0), false),
            ("{lte: 0}", Num(0.0), true),
            ("{lte: 0}", Num(2.0), false),
            ("{gt: 0}", Num(2.0), true),
            ("{gt: 0}", Num(0.0), false),
            ("{gte: 1000}", Num(1000.0), true),
            ("{gte: 1000}", Num(999.0), false),
            ("{gte: 2}", Str("3"), true),
            ("{gte: 2}", Str("1"), false),
            ("{lte: 0}", Missing, false),
            ("{lte: 0}", Str("zero"), false),
            ("{lte: 0}", Str("inf"), false),
            ("{lte: 0}", Bool(false), false),
            ("{lte: 0}", Compound, false),
            ("{gte: 1, lte: 5}", Num(3.0), true),
            ("{gte: 1, lte: 5}", Num(6.0), false),
            // not
            ("{not: web}", Str("api"), true),
            ("{not: web}", Str("web"), false),
            ("{not: web}", Missing, true),
            ("{not: {lte: 0}}", Missing, true),
            ("{not: {lte: 0}}", Str("zero"), true),
            ("{not: {lte: 0}}", Num(0.0), false),
            ("{not: {in: [a, b]}}", Str("c"), true),
            ("{not: [a, b]}", Str("a"), false),
            ("{not: {exists: true}}", Missing, true),
        ];
        for (src, value, want) in cases {
            assert_eq!(
                pred("labels.x", src).matches(*value),
                *want,
                "{src} on {value:?}"
            );
        }
    }

    #[test]
    fn index_hints() {
        assert_eq!(pred("id", "a").required_values(), Some(vec!["a"]));
        assert_eq!(pred("id", "[a, b]").required_values(), Some(vec!["a", "b"]));
        assert_eq!(pred("id", "{in: [a]}").required_values(), Some(vec!["a"]));
        assert_eq!(
            pred("id", "{glob: x/y}").required_values(),
            Some(vec!["x/y"])
        );
        assert_eq!(pred("id", "{glob: x/*}").required_values(), None);
        assert_eq!(pred("id", "{not: a}").required_values(), None);
        assert_eq!(
            pred("id", "{glob: [\"a/b/*\", c/*]}").required_prefixes(),
            Some(vec!["a/b/", "c/"])
        );
        assert_eq!(
            pred("id", "{glob: [\"a/b/*\", \"*\"]}").required_prefixes(),
            None
        );
    }

    #[test]
    fn bad_selectors_say_what_to_write() {
        let mut bad = Vec::new();
        for (attr, src, needle) in [
            (
                "labels.x",
                "{lt3: 1}",
                "1:5: unknown operator `lt3`; did you mean `lt`?",
            ),
            (
                "labels.x",
                "{lte: abc}",
                "1:10: `lte` needs a number, found `abc`",
            ),
            (
                "labels.x",
                "{exists: yes}",
                "1:13: `exists` takes true or false",
            ),
            (
                "labels.x",
                "{glob: \"a**\"}",
                "1:11: bad glob: `**` must be a whole segment",
            ),
            ("labels.x", "{in: []}", "1:9: empty `in` matches nothing"),
            ("labels.x", "{}", "1:4: empty operator map"),
            ("labels.x", "", "empty value for `labels.x`"),
            (
                "labels.x",
                "[a, [b]]",
                "1:8: a list of values: each entry must be a plain value",
            ),
            (
                "labels",
                "{app: web}",
                "write `labels.app: ...` instead of a nested map",
            ),
            (
                "labels",
                "web",
                "`labels` is a map of claims; only `exists` can test it",
            ),
        ] {
            let e = err(attr, src);
            if !e.contains(needle) {
                bad.push(format!("{src}: {e}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        assert_eq!(pred("labels", "{exists: true}"), Pred::Exists(true));
    }
}
