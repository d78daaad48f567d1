//! Value parsers shared by several commands (`k=v`, digests, durations),
//! and the `-o/--output` flag of every command that prints a report.
//!
//! Each parser returns a message clap prints as `invalid value '…' for
//! '--flag': …`, so the user sees the flag, the value and what to write
//! instead.

use serde::Serialize;

/// How a report is printed: `-o text` (default, for people), `-o json`,
/// `-o yaml` (for machines; the same document in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    Yaml,
}

/// `-o/--output text|json|yaml`, flattened into a command's arguments.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Output {
    /// Output format: text (for people), json or yaml (for machines)
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Text
    )]
    pub format: OutputFormat,
}

impl Output {
    /// Whether the report is for people.
    pub fn is_text(&self) -> bool {
        self.format == OutputFormat::Text
    }

    /// Prints `report` as JSON (pretty) or YAML; `Text` prints nothing and
    /// returns `false` (the caller prints its own text).
    pub fn print<T: Serialize>(&self, report: &T) -> anyhow::Result<bool> {
        let text = self.render(report)?;
        match text {
            Some(text) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The report as it would be printed; `None` for `Text`.
    pub fn render<T: Serialize>(&self, report: &T) -> anyhow::Result<Option<String>> {
        Ok(match self.format {
            OutputFormat::Text => None,
            OutputFormat::Json => Some(serde_json::to_string_pretty(report)? + "\n"),
            OutputFormat::Yaml => {
                let yaml = serde_saphyr::to_string(report)
                    .map_err(|e| anyhow::anyhow!("cannot write the report as YAML: {e}"))?;
                Some(if yaml.ends_with('\n') {
                    yaml
                } else {
                    yaml + "\n"
                })
            }
        })
    }
}

/// A `key=value` pair, as given to `--label` and `--cloud-tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// Parses `key=value`. Keys are Kubernetes-style: letters, digits, `.`, `-`,
/// `_` and `/`; values may be empty but hold no control characters.
pub fn key_value(input: &str) -> Result<KeyValue, String> {
    let (key, value) = input
        .split_once('=')
        .ok_or_else(|| "expected key=value, e.g. app=web".to_string())?;
    if key.is_empty() || key.len() > 317 {
        return Err("the key must be 1 to 317 characters, e.g. app=web".into());
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
    {
        return Err(format!(
            "the key `{key}` may only hold letters, digits, '.', '-', '_' and '/'"
        ));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err("the value must be at most 256 characters without control characters".into());
    }
    Ok(KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Parses an image digest, `sha256:` and 64 lowercase hex digits.
pub fn image_digest(input: &str) -> Result<String, String> {
    let hex = input
        .strip_prefix("sha256:")
        .ok_or_else(|| "expected sha256:<64 hex digits>".to_string())?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("expected sha256: followed by 64 lowercase hex digits".into());
    }
    Ok(input.to_string())
}

/// A trust domain (`prod.example`), as SPIFFE spells one.
pub fn trust_domain(input: &str) -> Result<String, String> {
    crate::identity::spiffe::validate_trust_domain(input)
        .map(|()| input.to_string())
        .map_err(|e| e.to_string())
}

/// Parses a duration such as `30s`, `15m`, `1h`, `2h30m`.
pub fn duration(input: &str) -> Result<time::Duration, String> {
    let std = humantime::parse_duration(input)
        .map_err(|e| format!("{e}; write e.g. 30s, 15m, 1h or 2h30m"))?;
    time::Duration::try_from(std).map_err(|_| "duration out of range".to_string())
}

/// `--log-format`: `text` or `json`.
pub fn log_format(input: &str) -> Result<crate::telemetry::LogFormat, String> {
    match input {
        "text" => Ok(crate::telemetry::LogFormat::Text),
        "json" => Ok(crate::telemetry::LogFormat::Json),
        other => Err(format!("`{other}`: write `text` or `json`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_renders_json_and_yaml() {
        #[derive(Serialize)]
        struct R {
            name: &'static str,
            count: u32,
        }
        let r = R {
            name: "x",
            count: 2,
        };
        let json = Output {
            format: OutputFormat::Json,
        };
        let v: serde_json::Value =
            serde_json::from_str(&json.render(&r).unwrap().unwrap()).unwrap();
        assert_eq!(v["count"], 2);
        let yaml = Output {
            format: OutputFormat::Yaml,
        }
        .render(&r)
        .unwrap()
        .unwrap();
        assert!(
            yaml.contains("name: x") && yaml.contains("count: 2"),
            "{yaml}"
        );
        assert!(Output::default().render(&r).unwrap().is_none());
        assert!(Output::default().is_text());
    }

    #[test]
    fn key_values() {
        assert_eq!(
            key_value("app.kubernetes.io/name=web").unwrap(),
            KeyValue {
                key: "app.kubernetes.io/name".into(),
                value: "web".into()
            }
        );
        assert_eq!(key_value("empty=").unwrap().value, "");
        assert_eq!(key_value("a=b=c").unwrap().value, "b=c");
        assert!(key_value("noequals").unwrap_err().contains("key=value"));
        assert!(key_value("=v").is_err());
        assert!(key_value("bad key=v").is_err());
        assert!(key_value("k=line\nbreak").is_err());
    }

    #[test]
    fn digests_and_durations() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(image_digest(&good).unwrap(), good);
        assert!(image_digest("sha256:abc").is_err());
        assert!(image_digest(&good.to_uppercase()).is_err());
        assert!(image_digest(&"ab".repeat(32)).is_err());
        assert_eq!(duration("1h").unwrap(), time::Duration::hours(1));
        assert_eq!(duration("2h30m").unwrap(), time::Duration::minutes(150));
        assert!(duration("soon").is_err());
    }
}
