//! `os-release(5)`: which distribution and version a root file system is.

use serde::Serialize;

/// The fields of `os-release` a policy may care about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
}

impl OsRelease {
    pub fn is_empty(&self) -> bool {
        self == &OsRelease::default()
    }
}

/// Reads `ID`, `VERSION_ID` and `PRETTY_NAME` from the text of an
/// `os-release` file: `KEY=value` lines, values optionally in single or
/// double quotes (with `\"`, `\\`, `` \` `` and `\$` escapes in double
/// quotes); comments and anything else are skipped.
pub fn parse(text: &str) -> OsRelease {
    let mut release = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let slot = match key {
            "ID" => &mut release.id,
            "VERSION_ID" => &mut release.version_id,
            "PRETTY_NAME" => &mut release.pretty_name,
            _ => continue,
        };
        if let Some(value) = unquote(raw).filter(|v| !v.is_empty()) {
            *slot = Some(value);
        }
    }
    release
}

fn unquote(raw: &str) -> Option<String> {
    if let Some(inner) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        None // unterminated
    } else if let Some(inner) = raw.strip_prefix('\'') {
        inner.strip_suffix('\'').map(str::to_owned)
    } else {
        Some(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_ubuntu_and_alpine() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                      VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            parse(debian),
            OsRelease {
                id: Some("debian".into()),
                version_id: Some("12".into()),
                pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            }
        );
        let alpine = "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME='Alpine Linux v3.20'\n";
        let a = parse(alpine);
        assert_eq!(a.id.as_deref(), Some("alpine"));
        assert_eq!(a.version_id.as_deref(), Some("3.20.3"));
        assert_eq!(a.pretty_name.as_deref(), Some("Alpine Linux v3.20"));
    }

    #[test]
    fn escapes_comments_and_junk() {
        let text = "# a comment\n\n  ID=\"my\\\"os\"  \nVERSION_ID=\"unterminated\nPRETTY_NAME=\nnonsense\n=x\n";
        let r = parse(text);
        assert_eq!(r.id.as_deref(), Some("my\"os"));
        assert_eq!(r.version_id, None);
        assert_eq!(r.pretty_name, None);
        assert!(parse("").is_empty());
    }
}
