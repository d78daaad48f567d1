//! Writing YAML text by hand, safely: strings as double-quoted scalars and
//! whole files (a policy, a PEM bundle) as literal block scalars that read
//! back byte for byte.

/// A string as a double-quoted YAML scalar (JSON escapes, which YAML's
/// double-quoted style accepts): never read as a number, a boolean or null.
pub fn quote(text: &str) -> String {
    // Serializing a str cannot fail; the fallback keeps this panic-free.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// `text` as the value of a mapping key whose entries sit at `indent`
/// columns: a literal block scalar (`|`, `|-` or `|+`, with an indentation
/// indicator when the text starts with a space or a line break), its lines
/// indented by two more columns. Text a literal block cannot carry (control
/// characters, a carriage return, a byte-order mark, YAML 1.1's extra line
/// breaks) or nothing but line breaks is written double-quoted instead, on the key's
/// line. The result starts with the character after `key: `.
pub fn block(text: &str, indent: usize) -> String {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}' | '\u{85}')
    };
    let body = text.trim_end_matches('\n');
    if body.is_empty() || text.chars().any(unsafe_char) {
        return quote(text);
    }
    let trailing = text.len() - body.len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    // Auto-detected indentation would be wrong for a first line starting
    // with a space, and is ambiguous after leading empty lines.
    let indicator = if text.starts_with([' ', '\n']) {
        "2"
    } else {
        ""
    };
    let pad = " ".repeat(indent + 2);
    let mut out = format!("|{indicator}{chomp}");
    // Lines of `text` (its trailing line breaks are the chomping's).
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(text: &str) {
        let doc = format!("data:\n  key: {}\n  next: x\n", block(text, 2));
        let parsed: serde_json::Value =
            serde_saphyr::from_str(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(parsed["data"]["key"], text, "{doc:?}");
        assert_eq!(parsed["data"]["next"], "x", "{doc:?}");
    }

    #[test]
    fn literal_blocks_read_back_exactly() {
        for text in [
            "version: 1\nrules: []\n",
            "no newline",
            "two\n\n",
            "\n\nleading blank lines\n",
            "  indented first line\nsecond\n",
            "tabs\tinside\n\tand first\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "# a comment\n---\n...\nkey: 'q' \"dq\"\n",
            "trailing spaces   \n  \n",
            "",
            "carriage\r\nreturns",
            "nul\u{0}",
            "\u{feff}bom",
            " ",
            "\n",
        ] {
            round_trip(text);
        }
        assert_eq!(block("a\nb\n", 2), "|\n    a\n    b");
        assert_eq!(block("a", 0), "|-\n  a");
        assert_eq!(block("a\n\n", 0), "|+\n  a\n");
        assert_eq!(block(" a\n", 0), "|2\n   a");
        assert_eq!(quote("true"), "\"true\"");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        #[test]
        fn any_text_reads_back(text in "[ a-z#:'\"\\-\t\n\r\u{e9}\u{1f600}\u{85}]{0,40}") {
            round_trip(&text);
        }
    }
}
