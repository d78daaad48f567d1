//! `APPID_APP_PROBES`: the app's own kubelet probes, which the health port
//! runs on kubelet's behalf.
//!
//! The value is a JSON object in the shape of Istio's
//! `ISTIO_KUBE_APP_PROBERS`: each key is a path the health port answers,
//! `/app-health/<container>/<livez|readyz|startupz>`, each value the probe
//! to run when it is asked:
//!
//! ```json
//! {"/app-health/web/livez":  {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
//!                                         "httpHeaders": [{"name": "x-probe", "value": "1"}]},
//!                             "timeoutSeconds": 1},
//!  "/app-health/db/readyz":  {"tcpSocket": {"port": 5432}, "timeoutSeconds": 2}}
//! ```
//!
//! Parsed once, at config load, by hand from a `serde_json::Value` so that
//! every error names the variable and the JSON path of the bad value
//! (`APPID_APP_PROBES: $["/app-health/web/livez"].httpGet.port: ...`) and
//! what to write instead. Ports are numbers (`appid inject` resolves named
//! ports); hosts are IP literals (nothing here resolves names); unknown keys
//! are errors.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::APP_PROBES_ENV;

/// The longest `timeoutSeconds` accepted.
pub const MAX_TIMEOUT_SECONDS: u64 = 300;

/// A probe's timeout when `timeoutSeconds` is absent (kubelet's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The probe kinds, as the last segment of an `/app-health/` path.
pub const KINDS: [&str; 3] = ["livez", "readyz", "startupz"];

/// Every configured probe, by the path it is served at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

/// One probe: what to check, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    pub action: ProbeAction,
    pub timeout: Duration,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET` a path; the app's status is the answer.
    Http(HttpGet),
    /// Open a TCP connection; connected is healthy.
    Tcp { target: SocketAddr },
}

/// An `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    pub tls: bool,
    /// `127.0.0.1:<port>`, or `<host>:<port>` when `host` is given.
    pub target: SocketAddr,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `httpHeaders`, in order; a name here replaces the prober's default.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProbeAction {
    /// Where the probe connects.
    pub fn target(&self) -> SocketAddr {
        match self {
            ProbeAction::Http(get) => get.target,
            ProbeAction::Tcp { target } => *target,
        }
    }

    /// One line saying what the probe does, for logs, answers and
    /// `/config` (no header values: they may hold credentials).
    pub fn describe(&self) -> String {
        match self {
            ProbeAction::Http(get) => {
                let scheme = if get.tls { "https" } else { "http" };
                format!("GET {scheme}://{}{}", get.target, get.path)
            }
            ProbeAction::Tcp { target } => format!("tcp connect {target}"),
        }
    }
}

/// Why `APPID_APP_PROBES` was refused: the JSON path of the bad value and
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{APP_PROBES_ENV}: {path}: {message}")]
pub struct ProbesError {
    /// JSONPath of the bad value (`$` for the whole value).
    pub path: String,
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, ProbesError> {
    Err(ProbesError {
        path: path.to_owned(),
        message: message.into(),
    })
}

impl AppProbes {
    /// Parses the variable's value. An empty (or all-blank) value is no
    /// probes.
    pub fn parse(text: &str) -> Result<AppProbes, ProbesError> {
        if text.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return err(
                    "$",
                    format!(
                        "not valid JSON ({e}): write a JSON object like \
                         {{\"/app-health/web/livez\": {{\"httpGet\": {{\"path\": \"/healthz\", \"port\": 8080}}}}}}"
                    ),
                );
            }
        };
        let Value::Object(entries) = value else {
            return err(
                "$",
                format!(
                    "expected a JSON object of probes by path, got {}: write e.g. \
                     {{\"/app-health/web/livez\": {{\"tcpSocket\": {{\"port\": 8080}}}}}}",
                    kind_of(&value)
                ),
            );
        };
        let mut probes = BTreeMap::new();
        for (key, value) in &entries {
            let path = format!("$[{}]", Value::String(key.clone()));
            check_key(key, &path)?;
            probes.insert(key.clone(), probe(value, &path)?);
        }
        Ok(AppProbes(probes))
    }

    /// The probe served at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every probe with the path it is served at, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AppProbe)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The longest timeout of any probe ([`DEFAULT_TIMEOUT`] when none).
    pub fn longest_timeout(&self) -> Duration {
        self.0
            .values()
            .map(|p| p.timeout)
            .max()
            .unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// `/app-health/<container>/<kind>`, the container a DNS label.
fn check_key(key: &str, path: &str) -> Result<(), ProbesError> {
    let shape = "write keys as /app-health/<container>/<livez|readyz|startupz>";
    let Some(rest) = key.strip_prefix("/app-health/") else {
        return err(
            path,
            format!("{} is not a probe path: {shape}", quoted(key)),
        );
    };
    let Some((container, kind)) = rest.split_once('/') else {
        return err(
            path,
            format!("{} is not a probe path: {shape}", quoted(key)),
        );
    };
    let label = !container.is_empty()
        && container.len() <= 63
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-');
    if !label {
        return err(
            path,
            format!(
                "{} is not a container name (lowercase letters, digits and `-`, at most 63): {shape}",
                quoted(container)
            ),
        );
    }
    if !KINDS.contains(&kind) {
        return err(
            path,
            format!("{} is not a probe kind: {shape}", quoted(kind)),
        );
    }
    Ok(())
}

fn probe(value: &Value, path: &str) -> Result<AppProbe, ProbesError> {
    let fields = object(value, path, "a probe like {\"httpGet\": {\"port\": 8080}}")?;
    let mut action = None;
    let mut timeout = DEFAULT_TIMEOUT;
    for (name, v) in fields {
        let here = format!("{path}.{name}");
        match name.as_str() {
            "httpGet" | "tcpSocket" if action.is_some() => {
                return err(
                    path,
                    "both httpGet and tcpSocket are given: a probe has exactly one",
                );
            }
            "httpGet" => action = Some(ProbeAction::Http(http_get(v, &here)?)),
            "tcpSocket" => action = Some(tcp_socket(v, &here)?),
            "timeoutSeconds" => {
                let secs = integer(v, &here, 1, MAX_TIMEOUT_SECONDS, "timeoutSeconds", "1")?;
                timeout = Duration::from_secs(secs);
            }
            "grpc" | "exec" => {
                return err(
                    &here,
                    format!(
                        "{name} probes are not run by the health port: leave them out of \
                         {APP_PROBES_ENV} (only httpGet and tcpSocket probes are rewritten)"
                    ),
                );
            }
            other => {
                return err(
                    &here,
                    format!(
                        "unknown key {}: a probe has httpGet or tcpSocket, and optionally timeoutSeconds",
                        quoted(other)
                    ),
                );
            }
        }
    }
    match action {
        Some(action) => Ok(AppProbe { action, timeout }),
        None => err(
            path,
            "no httpGet or tcpSocket: write e.g. {\"httpGet\": {\"path\": \"/healthz\", \"port\": 8080}}",
        ),
    }
}

fn http_get(value: &Value, path: &str) -> Result<HttpGet, ProbesError> {
    let fields = object(
        value,
        path,
        "{\"path\": \"/healthz\", \"port\": 8080, \"scheme\": \"HTTP\"}",
    )?;
    let mut tls = false;
    let mut probe_path = "/".to_owned();
    let mut port = None;
    let mut host = None;
    let mut headers = Vec::new();
    for (name, v) in fields {
        let here = format!("{path}.{name}");
        match name.as_str() {
            "path" => probe_path = request_path(v, &here)?,
            "port" => port = Some(port_number(v, &here)?),
            "host" => host = optional_host(v, &here)?,
            "scheme" => {
                let s = string(v, &here, "\"HTTP\" or \"HTTPS\"")?;
                tls = match s.to_ascii_uppercase().as_str() {
                    "HTTP" => false,
                    "HTTPS" => true,
                    _ => {
                        return err(
                            &here,
                            format!("{} is not a scheme: write \"HTTP\" or \"HTTPS\"", quoted(s)),
                        );
                    }
                };
            }
            "httpHeaders" => headers = http_headers(v, &here)?,
            other => {
                return err(
                    &here,
                    format!(
                        "unknown key {}: httpGet has path, port, scheme, host and httpHeaders",
                        quoted(other)
                    ),
                );
            }
        }
    }
    let Some(port) = port else {
        return err(
            path,
            "missing `port`: write the container port as a number, e.g. \"port\": 8080",
        );
    };
    Ok(HttpGet {
        tls,
        target: SocketAddr::new(host.unwrap_or(LOCALHOST), port),
        path: probe_path,
        headers,
    })
}

fn tcp_socket(value: &Value, path: &str) -> Result<ProbeAction, ProbesError> {
    let fields = object(value, path, "{\"port\": 5432}")?;
    let mut port = None;
    let mut host = None;
    for (name, v) in fields {
        let here = format!("{path}.{name}");
        match name.as_str() {
            "port" => port = Some(port_number(v, &here)?),
            "host" => host = optional_host(v, &here)?,
            other => {
                return err(
                    &here,
                    format!("unknown key {}: tcpSocket has port and host", quoted(other)),
                );
            }
        }
    }
    let Some(port) = port else {
        return err(
            path,
            "missing `port`: write the container port as a number, e.g. \"port\": 5432",
        );
    };
    Ok(ProbeAction::Tcp {
        target: SocketAddr::new(host.unwrap_or(LOCALHOST), port),
    })
}

/// Where a probe goes without `host`: the app, over loopback, directly (the
/// sidecar's uid is never redirected).
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn http_headers(value: &Value, path: &str) -> Result<Vec<(HeaderName, HeaderValue)>, ProbesError> {
    let example = "[{\"name\": \"x-probe\", \"value\": \"1\"}]";
    let Value::Array(items) = value else {
        return err(
            path,
            format!(
                "expected a list of headers, got {}: write e.g. {example}",
                kind_of(value)
            ),
        );
    };
    let mut headers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let fields = object(item, &here, example)?;
        let (mut name, mut val) = (None, None);
        for (key, v) in fields {
            let field = format!("{here}.{key}");
            match key.as_str() {
                "name" => {
                    let s = string(v, &field, "a header name like \"x-probe\"")?;
                    name = Some(HeaderName::from_bytes(s.as_bytes()).or_else(|_| {
                        err(
                            &field,
                            format!("{} is not a valid HTTP header name", quoted(s)),
                        )
                    })?);
                }
                "value" => {
                    let s = string(v, &field, "the header's value")?;
                    val = Some(HeaderValue::from_str(s).or_else(|_| {
                        err(
                            &field,
                            "not a valid HTTP header value (no control characters or line breaks)",
                        )
                    })?);
                }
                other => {
                    return err(
                        &field,
                        format!("unknown key {}: a header has name and value", quoted(other)),
                    );
                }
            }
        }
        match (name, val) {
            (Some(n), Some(v)) => headers.push((n, v)),
            _ => {
                return err(
                    &here,
                    format!("a header needs both name and value: {example}"),
                );
            }
        }
    }
    Ok(headers)
}

/// The request target: a path (a missing leading `/` is added, as kubelet
/// does) that forms a valid HTTP request line.
fn request_path(value: &Value, path: &str) -> Result<String, ProbesError> {
    let s = string(value, path, "a path like \"/healthz\"")?;
    let p = if s.starts_with('/') {
        s.to_owned()
    } else {
        format!("/{s}")
    };
    if p.parse::<http::uri::PathAndQuery>().is_err() || p.contains(['#', ' ']) {
        return err(
            path,
            format!(
                "{} is not a request path: write e.g. \"/healthz\" (percent-encode spaces and other special characters)",
                quoted(s)
            ),
        );
    }
    Ok(p)
}

fn port_number(value: &Value, path: &str) -> Result<u16, ProbesError> {
    if let Value::String(s) = value {
        return err(
            path,
            format!(
                "{} is a named port: write the container port's number (`appid inject` resolves named ports)",
                quoted(s)
            ),
        );
    }
    integer(value, path, 1, 65535, "port", "8080").map(|n| n as u16)
}

/// `host`: an IP literal (brackets allowed around IPv6) of this pod's own
/// loopback (or the unspecified address, which is it); `""` is absent.
///
/// Only the app inside the pod: the sidecar runs these probes as its own
/// user, whose connections the redirect lets out uncaptured, no policy
/// decides and no audit line records, and it hands the answer to whoever
/// asks the health port, which anyone who can reach the pod may. A probe
/// of another host (`169.254.169.254`, a service inside the network) would
/// make that port an open proxy to it; kubelet runs such a probe itself,
/// from the node, and `appid inject` leaves it to kubelet.
fn optional_host(value: &Value, path: &str) -> Result<Option<IpAddr>, ProbesError> {
    let s = string(value, path, "an IP address like \"127.0.0.1\"")?;
    if s.is_empty() {
        return Ok(None);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) if ip.to_canonical().is_loopback() || ip.is_unspecified() => Ok(Some(ip)),
        Ok(ip) => err(
            path,
            format!(
                "{ip} is not this pod's loopback: the health port runs probes of the app inside \
                 the pod only (leave `host` out, or write 127.0.0.1); a probe of another host is \
                 kubelet's to run, and `appid inject` leaves it in the pod spec"
            ),
        ),
        Err(_) => err(
            path,
            format!(
                "{} is not an IP address: write one (host names are not resolved), or leave \
                 `host` out to probe the app on 127.0.0.1",
                quoted(s)
            ),
        ),
    }
}

fn object<'a>(
    value: &'a Value,
    path: &str,
    example: &str,
) -> Result<&'a Map<String, Value>, ProbesError> {
    match value {
        Value::Object(m) => Ok(m),
        other => err(
            path,
            format!(
                "expected an object, got {}: write e.g. {example}",
                kind_of(other)
            ),
        ),
    }
}

fn string<'a>(value: &'a Value, path: &str, example: &str) -> Result<&'a str, ProbesError> {
    match value {
        Value::String(s) => Ok(s),
        other => err(
            path,
            format!("expected a string, got {}: write {example}", kind_of(other)),
        ),
    }
}

fn integer(
    value: &Value,
    path: &str,
    min: u64,
    max: u64,
    name: &str,
    example: &str,
) -> Result<u64, ProbesError> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => err(
            path,
            format!(
                "{n} is out of range: write a whole number from {min} to {max}, e.g. \"{name}\": {example}"
            ),
        ),
        None => err(
            path,
            format!(
                "expected a whole number, got {}: write e.g. \"{name}\": {example}",
                describe_value(value)
            ),
        ),
    }
}

/// A value from the variable, for a message: in backticks, control
/// characters escaped, cut at 80 characters.
fn quoted(s: &str) -> String {
    let escaped: String = s.escape_debug().collect();
    match escaped.char_indices().nth(80) {
        Some((i, _)) => format!("`{}…`", &escaped[..i]),
        None => format!("`{escaped}`"),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a scalar (`-1`, `"x"`), else its kind.
fn describe_value(value: &Value) -> String {
    match value {
        Value::Number(_) | Value::String(_) | Value::Bool(_) => {
            let s = value.to_string();
            if s.len() <= 40 {
                s
            } else {
                kind_of(value).to_owned()
            }
        }
        other => kind_of(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> AppProbe {
        let probes = AppProbes::parse(json).unwrap();
        assert_eq!(probes.len(), 1);
        probes.iter().next().unwrap().1.clone()
    }

    fn refused(json: &str) -> ProbesError {
        AppProbes::parse(json).expect_err("should be refused")
    }

    #[test]
    fn istio_shaped_probes_parse() {
        let probes = AppProbes::parse(
            r#"{
              "/app-health/web/livez": {"httpGet": {"path": "/healthz?full=1", "port": 8080, "scheme": "HTTP",
                  "httpHeaders": [{"name": "X-Probe", "value": "1"}, {"name": "Host", "value": "web.local"}]},
                  "timeoutSeconds": 3},
              "/app-health/web/readyz": {"httpGet": {"path": "ready", "port": 8443, "scheme": "HTTPS", "host": "[::1]"}},
              "/app-health/db-0/startupz": {"tcpSocket": {"port": 5432, "host": ""}, "timeoutSeconds": 2}
            }"#,
        )
        .unwrap();
        assert_eq!(probes.len(), 3);
        let live = probes.get("/app-health/web/livez").unwrap();
        assert_eq!(live.timeout, Duration::from_secs(3));
        let ProbeAction::Http(get) = &live.action else {
            panic!("httpGet expected");
        };
        assert!(!get.tls);
        assert_eq!(get.target, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(get.path, "/healthz?full=1");
        assert_eq!(get.headers.len(), 2);
        assert_eq!(get.headers[0].0, "x-probe");
        assert_eq!(get.headers[1].1, "web.local");

        let ready = probes.get("/app-health/web/readyz").unwrap();
        assert_eq!(ready.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ready.action.describe(), "GET https://[::1]:8443/ready");

        let start = probes.get("/app-health/db-0/startupz").unwrap();
        assert_eq!(
            start.action,
            ProbeAction::Tcp {
                target: "127.0.0.1:5432".parse().unwrap()
            }
        );
        assert_eq!(probes.longest_timeout(), Duration::from_secs(3));
        assert!(probes.get("/app-health/web/startupz").is_none());
    }

    #[test]
    fn empty_is_no_probes() {
        assert!(AppProbes::parse("").unwrap().is_empty());
        assert!(AppProbes::parse("  \n").unwrap().is_empty());
        assert!(AppProbes::parse("{}").unwrap().is_empty());
    }

    #[test]
    fn scheme_is_case_insensitive_and_path_defaults_to_root() {
        let p = one(r#"{"/app-health/a/livez": {"httpGet": {"port": 80, "scheme": "https"}}}"#);
        let ProbeAction::Http(get) = p.action else {
            panic!("httpGet expected");
        };
        assert!(get.tls);
        assert_eq!(get.path, "/");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_json_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("{nope", "$", "not valid JSON"),
            ("[1]", "$", "expected a JSON object"),
            (
                r#"{"/healthz": {"tcpSocket": {"port": 1}}}"#,
                r#"$["/healthz"]"#,
                "/app-health/<container>/<livez|readyz|startupz>",
            ),
            (
                r#"{"/app-health/Web/livez": {"tcpSocket": {"port": 1}}}"#,
                r#"$["/app-health/Web/livez"]"#,
                "not a container name",
            ),
            (
                r#"{"/app-health/web/alive": {"tcpSocket": {"port": 1}}}"#,
                r#"$["/app-health/web/alive"]"#,
                "not a probe kind",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": "http"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.port"#,
                "named port",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 70000}}}"#,
                r#"$["/app-health/web/livez"].httpGet.port"#,
                "out of range",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"path": "/x"}}}"#,
                r#"$["/app-health/web/livez"].httpGet"#,
                "missing `port`",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "scheme": "FTP"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.scheme"#,
                "not a scheme",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "path": "/a b"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.path"#,
                "not a request path",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "path": "/a\r\nX: y"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.path"#,
                "not a request path",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "host": "web.svc"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.host"#,
                "not an IP address",
            ),
            // Another host: the health port would be an open proxy to it.
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 80, "host": "169.254.169.254"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.host"#,
                "not this pod's loopback",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 80, "host": "[fd00:ec2::254]"}}}"#,
                r#"$["/app-health/web/livez"].httpGet.host"#,
                "not this pod's loopback",
            ),
            (
                r#"{"/app-health/db/readyz": {"tcpSocket": {"port": 5432, "host": "10.0.0.7"}}}"#,
                r#"$["/app-health/db/readyz"].tcpSocket.host"#,
                "not this pod's loopback",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "httpHeaders": [{"name": "bad name", "value": "v"}]}}}"#,
                r#"$["/app-health/web/livez"].httpGet.httpHeaders[0].name"#,
                "not a valid HTTP header name",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "httpHeaders": [{"name": "x", "value": "a\nb"}]}}}"#,
                r#"$["/app-health/web/livez"].httpGet.httpHeaders[0].value"#,
                "not a valid HTTP header value",
            ),
            (
                r#"{"/app-health/web/livez": {"httpGet": {"port": 1, "httpHeaders": [{"name": "x"}]}}}"#,
                r#"$["/app-health/web/livez"].httpGet.httpHeaders[0]"#,
                "both name and value",
            ),
            (
                r#"{"/app-health/web/livez": {"tcpSocket": {"port": 1}, "timeoutSeconds": 0}}"#,
                r#"$["/app-health/web/livez"].timeoutSeconds"#,
                "out of range",
            ),
            (
                r#"{"/app-health/web/livez": {"tcpSocket": {"port": 1}, "timeoutSeconds": 1.5}}"#,
                r#"$["/app-health/web/livez"].timeoutSeconds"#,
                "whole number, got 1.5",
            ),
            (
                r#"{"/app-health/web/livez": {"tcpSocket": {"port": 1}, "httpGet": {"port": 1}}}"#,
                r#"$["/app-health/web/livez"]"#,
                "exactly one",
            ),
            (
                r#"{"/app-health/web/livez": {"timeoutSeconds": 1}}"#,
                r#"$["/app-health/web/livez"]"#,
                "no httpGet or tcpSocket",
            ),
            (
                r#"{"/app-health/web/livez": {"grpc": {"port": 9000}}}"#,
                r#"$["/app-health/web/livez"].grpc"#,
                "not run by the health port",
            ),
            (
                r#"{"/app-health/web/livez": {"tcpSocket": {"port": 1, "hots": "x"}}}"#,
                r#"$["/app-health/web/livez"].tcpSocket.hots"#,
                "unknown key `hots`",
            ),
            (
                r#"{"/app-health/web/livez": "tcp:8080"}"#,
                r#"$["/app-health/web/livez"]"#,
                "expected an object, got a string",
            ),
        ];
        for (json, path, needle) in cases {
            let e = refused(json);
            assert_eq!(&e.path, path, "{json}: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("APPID_APP_PROBES: {path}: ")),
                "{json}: {shown}"
            );
            assert!(shown.contains(needle), "{json}: {shown}");
            assert!(!shown.contains('\n'), "one line: {shown}");
        }
    }
}
