//! The two text formats `/metrics` speaks, chosen by the scraper's `Accept`.
//!
//! Design bias: *one registry, rendered once, converted at the edge*. The
//! registry renders OpenMetrics 1.0 (what Prometheus asks for first). Tools
//! that read the older Prometheus text format 0.0.4 — `promtool check
//! metrics`, `curl | grep`, scrapers that send no `Accept` — get the same
//! samples with the two differences that format has: a counter's `# HELP`
//! and `# TYPE` name its `_total` samples, and there is no `# UNIT` or
//! `# EOF` line. Samples are copied unchanged, so the two can never disagree
//! on a value.

/// OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the scraper's `Accept` names it (Prometheus does,
    /// first); the classic text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::PrometheusText => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        match descriptor(line) {
            Some((kind, name, rest)) if counters.contains(&name) => {
                out.push_str(&format!("# {kind} {name}_total{rest}"));
            }
            Some((kind @ "TYPE", name, rest)) => {
                out.push_str(&format!("# {kind} {name} {}", prometheus_type(rest.trim())));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `# HELP name text` / `# TYPE name type` as (kind, name, rest with its
/// leading space).
fn descriptor(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (kind, rest) = rest.split_once(' ')?;
    if kind != "HELP" && kind != "TYPE" {
        return None;
    }
    let split = rest.find(' ').unwrap_or(rest.len());
    Some((kind, &rest[..split], &rest[split..]))
}

/// OpenMetrics types the older format lacks become `untyped`.
fn prometheus_type(openmetrics_type: &str) -> &str {
    match openmetrics_type {
        t @ ("counter" | "gauge" | "histogram" | "summary") => t,
        _ => "untyped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP appid_bytes Bytes carried.
# TYPE appid_bytes counter
appid_bytes_total{direction=\"inbound\"} 7
# HELP appid_buffer_bytes Bytes held now.
# TYPE appid_buffer_bytes gauge
# UNIT appid_buffer_bytes bytes
appid_buffer_bytes 0
# HELP appid_build Build.
# TYPE appid_build info
appid_build_info{version=\"0.1.0\"} 1
# EOF
";

    #[test]
    fn counters_name_their_total_samples_and_openmetrics_only_lines_go() {
        let text = to_prometheus_text(OPENMETRICS);
        assert_eq!(
            text,
            "\
# HELP appid_bytes_total Bytes carried.
# TYPE appid_bytes_total counter
appid_bytes_total{direction=\"inbound\"} 7
# HELP appid_buffer_bytes Bytes held now.
# TYPE appid_buffer_bytes gauge
appid_buffer_bytes 0
# HELP appid_build Build.
# TYPE appid_build untyped
appid_build_info{version=\"0.1.0\"} 1
"
        );
    }

    #[test]
    fn prometheus_asks_for_openmetrics_and_everyone_else_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
    }
}
