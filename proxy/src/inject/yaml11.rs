//! A scalar's value as Kubernetes reads it, for the few fields the injector
//! judges (`hostNetwork`, the securityContexts).
//!
//! Why not as our parser reads it: Kubernetes (kubectl, the API server)
//! turns YAML into JSON with sigs.k8s.io/yaml, which runs go-yaml v2, a
//! YAML 1.1 reader. There `hostNetwork: yes` is `true` and
//! `runAsUser: 0x539` is `1337`; read as text, the first pod would be
//! injected (and `appid-init` would rewrite the *node's* nat table) and the
//! second would run as the sidecar's uid without being refused.
//!
//! go-yaml v2's rules for a plain (unquoted, untagged) scalar, and so ours:
//! - a boolean is exactly one of `y Y yes Yes YES n N no No NO true True
//!   TRUE false False FALSE on On ON off Off OFF`;
//! - an integer starts with a digit or a sign, and is what Go's
//!   `strconv.ParseInt(s, 0, 64)` makes of it once every `_` is removed:
//!   `0x`/`0o`/`0b` prefixes, and a leading `0` is octal (`02471` = 1337);
//! - failing that, a float (`1337.0`, `1.337e3`), which the JSON step
//!   writes as `1337`, so that an integer field reads it as 1337: we count
//!   a float with an integral value as that integer.
//!
//! A quoted scalar is a string, whatever it looks like (`"1337"`, `"yes"`):
//! Kubernetes refuses it for an integer or boolean field. A tag decides the
//! type itself (`!!int "1337"` is 1337), and an alias stands for a node
//! elsewhere: neither is resolved here ([`Value::Unresolved`]); callers
//! skip the workload, as the injector does with aliases it cannot edit
//! through.

use serde_saphyr::granit_parser::ScalarStyle;

use super::tree::{Kind, Node};

/// A field's value, or why it has none we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<T> {
    /// `~`, `null` or nothing: as if the field were absent.
    Null,
    Is(T),
    /// An alias or a tag (`"a YAML alias"`, `"a YAML tag"`): not read here.
    Unresolved(&'static str),
    /// Not of the field's type (a quoted scalar, other text, a list, a
    /// mapping): Kubernetes refuses the object.
    Wrong,
}

/// A boolean field (`hostNetwork`, `runAsNonRoot`, `privileged`, ...).
pub(crate) fn bool(node: &Node) -> Value<bool> {
    read(node, plain_bool)
}

/// An integer field (`runAsUser`, ...).
pub(crate) fn int(node: &Node) -> Value<i64> {
    read(node, plain_int)
}

fn read<T>(node: &Node, plain: impl Fn(&str) -> Option<T>) -> Value<T> {
    if matches!(node.kind, Kind::Alias) {
        return Value::Unresolved("a YAML alias");
    }
    if node.tagged {
        return Value::Unresolved("a YAML tag");
    }
    match &node.kind {
        Kind::Scalar {
            value,
            style: ScalarStyle::Plain,
        } => {
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                Value::Null
            } else {
                plain(value).map_or(Value::Wrong, Value::Is)
            }
        }
        _ => Value::Wrong,
    }
}

/// A plain scalar as a YAML 1.1 boolean (go-yaml v2's list, exactly).
pub(crate) fn plain_bool(text: &str) -> Option<bool> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

/// A plain scalar as the integer a Kubernetes integer field gets from it:
/// a YAML 1.1 integer, or a float with an integral value.
pub(crate) fn plain_int(text: &str) -> Option<i64> {
    // go-yaml tries numbers only for text that starts with a digit or a
    // sign (and `.`, for floats like `.5e4`).
    let first = text.chars().next()?;
    if first.is_ascii_digit() || first == '+' || first == '-' {
        let plain: String = text.chars().filter(|&c| c != '_').collect();
        go_parse_int(&plain).or_else(|| integral(&plain))
    } else if first == '.' {
        integral(text)
    } else {
        None
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: an optional sign, then `0x`, `0o`,
/// `0b` (any case) or a leading `0` (octal), else decimal.
fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, unsigned) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if lower.len() >= 3 && lower.starts_with("0x") {
        (16, &unsigned[2..])
    } else if lower.len() >= 3 && lower.starts_with("0o") {
        (8, &unsigned[2..])
    } else if lower.len() >= 3 && lower.starts_with("0b") {
        (2, &unsigned[2..])
    } else if let Some(rest) = unsigned.strip_prefix('0') {
        (8, rest) // `0` alone is zero, `02471` octal
    } else if unsigned.is_empty() {
        return None;
    } else {
        (10, unsigned)
    };
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = if digits.is_empty() {
        0
    } else {
        u64::from_str_radix(digits, radix).ok()?
    };
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    i64::try_from(value).ok()
}

/// go-yaml's float (`[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`),
/// when its value is a whole number in range.
fn integral(s: &str) -> Option<i64> {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(whole)
        && digits(fraction)
        && (!whole.is_empty() || !fraction.is_empty())
        && (!whole.is_empty() || mantissa.contains('.'));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    let value: f64 = s.parse().ok()?;
    // -2^63 and 2^63 are exact as f64; everything strictly between them
    // that is whole fits an i64.
    let in_range = (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&value);
    (value.fract() == 0.0 && in_range).then_some(value as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_1337_kubernetes_accepts() {
        for text in [
            "1337",
            "+1337",
            "0x539",
            "0X539",
            "02471",
            "0o2471",
            "0O2471",
            "0b10100111001",
            "1_337",
            "0x5_39",
            "1337.0",
            "1.337e3",
            "13370e-1",
            "1337.",
        ] {
            assert_eq!(plain_int(text), Some(1337), "{text}");
        }
        assert_eq!(plain_int(".1337e4"), Some(1337));
        // Not octal, so go-yaml reads it as the float 8: 8 to Kubernetes.
        assert_eq!(plain_int("08"), Some(8));
        assert_eq!(plain_int("0"), Some(0));
        assert_eq!(plain_int("-0"), Some(0));
        assert_eq!(plain_int("00"), Some(0));
        assert_eq!(plain_int("-1"), Some(-1));
        assert_eq!(plain_int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(plain_int("-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn what_is_not_an_integer() {
        for text in [
            "",
            "_1337",
            "0x",
            "0b",
            "0b2",
            "1337.5",
            "1e400",
            ".inf",
            "-.inf",
            ".nan",
            "inf",
            "nan",
            "infinity",
            "1337e",
            "1.3.3.7",
            "e3",
            ".",
            "+",
            "-",
            "0x-539",
            "1337 ",
            "yes",
            "9223372036854775808",
            "1e19",
        ] {
            assert_eq!(plain_int(text), None, "{text:?}");
        }
    }

    #[test]
    fn yaml_1_1_booleans_exactly() {
        for text in [
            "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
        ] {
            assert_eq!(plain_bool(text), Some(true), "{text}");
        }
        for text in [
            "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
        ] {
            assert_eq!(plain_bool(text), Some(false), "{text}");
        }
        for text in ["tRUE", "yES", "oN", "1", "0", "", "t", "f", "enabled"] {
            assert_eq!(plain_bool(text), None, "{text}");
        }
    }

    /// Quoted text is a string, a tag or an alias is not resolved, `~` is
    /// no value.
    #[test]
    fn only_plain_untagged_scalars_are_read() {
        let value = |yaml: &str| {
            let docs = super::super::tree::parse(&format!("a: &x 1\nb: {yaml}\n")).unwrap();
            let (_, node) = docs[0].root.get_all("b").next().unwrap();
            (int(node), bool(node))
        };
        assert_eq!(value("0x539"), (Value::Is(1337), Value::Wrong));
        assert_eq!(value("&u 0x539"), (Value::Is(1337), Value::Wrong));
        assert_eq!(value("yes"), (Value::Wrong, Value::Is(true)));
        assert_eq!(value("\"1337\""), (Value::Wrong, Value::Wrong));
        assert_eq!(value("'yes'"), (Value::Wrong, Value::Wrong));
        assert_eq!(value("|\n  1337"), (Value::Wrong, Value::Wrong));
        assert_eq!(value("[1337]"), (Value::Wrong, Value::Wrong));
        assert_eq!(value("~"), (Value::Null, Value::Null));
        assert_eq!(value(""), (Value::Null, Value::Null));
        let tag = (
            Value::Unresolved("a YAML tag"),
            Value::Unresolved("a YAML tag"),
        );
        assert_eq!(value("!!int \"1337\""), tag);
        assert_eq!(value("!!str 1337"), tag);
        let alias = (
            Value::Unresolved("a YAML alias"),
            Value::Unresolved("a YAML alias"),
        );
        assert_eq!(value("*x"), alias);
    }
}
