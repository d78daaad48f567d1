//! Policy load errors: every one names file, line, column, what is wrong and
//! what to write instead.
//!
//! Design bias: *collect, don't stop*. The loader records every problem it
//! finds in a [`Diags`] and keeps going, so one `appid policy check` run shows
//! all of them; only at the end are positions bound to the file name and the
//! whole list returned as [`PolicyErrors`]. Nothing is ever partially loaded.

use std::fmt;

use thiserror::Error;

use super::yaml::Mark;

/// One problem in a policy file, displayed as `FILE:LINE:COL: message; hint`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}:{column}: {message}; {hint}")]
pub struct PolicyError {
    /// The file name given to [`super::Policy::load`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub hint: String,
}

/// Every problem found in a policy file, in source order (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The errors, in source order.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for errors returned by the loader; here for clippy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A problem at a position, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diag {
    pub mark: Mark,
    pub message: String,
    pub hint: String,
}

impl Diag {
    pub fn new(mark: Mark, message: impl Into<String>, hint: impl Into<String>) -> Diag {
        Diag {
            mark,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// The loader's error collector.
#[derive(Debug, Default)]
pub(crate) struct Diags(Vec<Diag>);

impl Diags {
    pub fn push(&mut self, mark: Mark, message: impl Into<String>, hint: impl Into<String>) {
        self.0.push(Diag::new(mark, message, hint));
    }

    pub fn add(&mut self, diag: Diag) {
        self.0.push(diag);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Binds the positions to `file`, sorted by position.
    pub fn into_errors(mut self, file: &str) -> PolicyErrors {
        self.0.sort_by_key(|d| (d.mark.line, d.mark.column));
        PolicyErrors(
            self.0
                .into_iter()
                .map(|d| PolicyError {
                    file: file.to_string(),
                    line: d.mark.line,
                    column: d.mark.column,
                    message: d.message,
                    hint: d.hint,
                })
                .collect(),
        )
    }
}

/// The closest of `known` to `word` (for "did you mean"), if reasonably close.
pub(crate) fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// "did you mean `x`? " or "", followed by the list of valid choices.
pub(crate) fn choices_hint(word: &str, known: &[&str], what: &str) -> String {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match suggest(word, known) {
        Some(s) => format!("did you mean `{s}`? {what} are {list}"),
        None => format!("{what} are {list}"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_line_col_message_hint() {
        let mut d = Diags::default();
        d.push(Mark { line: 3, column: 5 }, "second", "fix b");
        d.push(Mark { line: 1, column: 2 }, "first", "fix a");
        let errors = d.into_errors("p.yaml");
        assert_eq!(
            errors.to_string(),
            "p.yaml:1:2: first; fix a\np.yaml:3:5: second; fix b"
        );
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(suggest("acton", &["action", "name"]), Some("action"));
        assert_eq!(suggest("zzzzzz", &["action", "name"]), None);
        assert!(choices_hint("lte", &["lt", "gt"], "operators").starts_with("did you mean `lt`?"));
    }
}
