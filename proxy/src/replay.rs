//! Re-deciding recorded decisions under a new policy (`appid policy
//! replay NEW_POLICY.yaml AUDIT.jsonl...`).
//!
//! Design bias: *evidence before enforcement, and never a silent skip*. An
//! operator runs a policy in `mode: audit`, tightens it, and asks: which of
//! the calls that really happened would the new policy decide differently?
//! Every line read ends up in exactly one bucket of the [`Report`]: changed
//! (newly denied, newly allowed, same outcome by another rule), unchanged,
//! not a policy decision (a revoked peer, an invalid request: no policy
//! changes those), not re-decidable (with the reason), or a bad line (with
//! `file:line`).
//!
//! **Where the full claims come from.** An audit line's `claims` holds only
//! what the *old* deciding rule looked at; a new rule looks at other
//! attributes. So the sidecar records both sides' full claims by digest on
//! every line (`peer_appid`, `local_appid`) and the documents themselves once
//! per identity per file (`appids`, see [`crate::audit`]). Replay first
//! collects every document from every file given (so rotated files are
//! simply more arguments, in any order; a document is only accepted if its
//! digest matches), then re-decides each line with exactly the claims that
//! were decided on. We chose this over recovering claims from certificates
//! at replay time (`--certs DIR`): certificates are renewed every hour and
//! their claims (vulnerability counts, labels) change, so they are not what
//! was decided on; and over the full claims on every line (up to 4 KB a
//! line on the hot path). Lines written before the digests existed are
//! reported as not re-decidable.
//!
//! **What a line cannot tell.** Request headers are not recorded (size and
//! secrets): a request whose new decision *reads* a header is not
//! re-decidable (the engine is asked with headers that record whether they
//! were consulted, so a policy with header rules elsewhere does not spoil
//! the rest). Coalesced denials (`"repeated": N`) have no requests, and an
//! HTTP connection line cannot be turned into its requests if the new
//! policy decides per request.
//!
//! **Comparing.** The old outcome is the *enforced* one (an audit-only allow
//! is a denial), and so is the new: replay answers "what happens when I
//! switch to `mode: enforce` with this file".

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use appid_policy::AppIdClaims;
use appid_policy::policy::{
    Callee, Caller, Direction, Headers, Http, HttpRequest, Outcome, Policy, Query,
    SIDECAR_RULE_NAMES,
};
use serde::{Deserialize, Serialize};

use crate::audit::appid_digest;
use crate::sidecar::authz::{AUDIT_FIELD_BYTES, ExternalVerdict, external_verdict};

/// Longest audit line read (bytes); longer ones are bad lines.
const MAX_LINE_BYTES: usize = 1 << 20;

/// A file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{file}: cannot read the audit log: {source}; check the path and permissions")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A line that is not an audit line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    #[serde(flatten)]
    pub at: Place,
    pub error: String,
}

/// One recorded decision, enough of it to show as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    #[serde(flatten)]
    pub at: Place,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub direction: String,
    pub port: u16,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The new decision, in words (`deny by default: no rule matched`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_decision: Option<String>,
}

/// Decisions that changed the same way for the same peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The rule that decided before (or `default`).
    pub old_rule: String,
    /// The rule that decides now (or `default`).
    pub new_rule: String,
    /// The peer's SPIFFE ID; a caller outside the mesh by IP address, a
    /// destination outside it as `external IP (host)`.
    pub peer: String,
    pub count: u64,
    /// The first such line.
    pub example: Example,
}

/// Lines that could not be re-decided for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Undecided {
    pub reason: String,
    pub count: u64,
    /// The first such line.
    pub example: Place,
}

/// What replay found. Every line read is counted exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The new policy's file name.
    pub policy: String,
    pub files: Vec<String>,
    /// Audit lines read (blank lines aside), bad ones included.
    pub lines: u64,
    /// Decided again, with the same outcome and rule.
    pub unchanged: u64,
    /// Allowed before (enforced), denied now.
    pub newly_denied: Vec<Group>,
    /// Denied before (enforced), allowed now.
    pub newly_allowed: Vec<Group>,
    /// Same outcome, another rule.
    pub rule_changed: Vec<Group>,
    /// Decided before policy (a revoked peer, an invalid request): the same
    /// under any policy.
    pub not_policy: u64,
    /// Lines that could not be decided again, by reason.
    pub undecidable: Vec<Undecided>,
    pub bad_lines: Vec<BadLine>,
}

impl Report {
    /// Decisions that would be newly denied or newly allowed.
    pub fn changes(&self) -> u64 {
        self.newly_denied
            .iter()
            .chain(&self.newly_allowed)
            .map(|g| g.count)
            .sum()
    }

    pub fn undecidable_count(&self) -> u64 {
        self.undecidable.iter().map(|u| u.count).sum()
    }
}

/// An audit line as replay reads it (unknown keys are ignored).
#[derive(Debug, Deserialize)]
struct AuditLine {
    time: Option<String>,
    direction: String,
    decision: String,
    #[serde(default)]
    audit_only: bool,
    rule: String,
    peer_id: Option<String>,
    peer_addr: Option<String>,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    method: Option<String>,
    path: Option<String>,
    repeated: Option<u64>,
    external: Option<ExternalLine>,
    peer_appid: Option<String>,
    local_appid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ExternalLine {
    ip: IpAddr,
    host: Option<String>,
}

/// Just the documents a line carries.
#[derive(Deserialize)]
struct DocsLine {
    #[serde(default)]
    appids: BTreeMap<String, serde_json::Value>,
}

/// Headers that are not known: remembers whether policy asked for one.
#[derive(Default)]
struct UnrecordedHeaders {
    asked: Cell<bool>,
}

impl Headers for UnrecordedHeaders {
    fn each_value(&self, _name: &str, _visit: &mut dyn FnMut(&[u8])) {
        self.asked.set(true);
    }
}

/// What became of one line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Unchanged,
    NotPolicy,
    Undecidable(String),
    Changed {
        kind: Change,
        old_rule: String,
        new_rule: String,
        new_decision: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    NewlyDenied,
    NewlyAllowed,
    RuleChanged,
}

/// Claims documents by digest, from every file given.
#[derive(Default)]
struct Docs {
    by_digest: HashMap<String, AppIdClaims>,
    /// Digests whose document did not parse or did not match.
    broken: HashMap<String, String>,
}

impl Docs {
    fn add(&mut self, digest: String, value: serde_json::Value) {
        if self.by_digest.contains_key(&digest) {
            return;
        }
        if appid_digest(&value) != digest {
            self.broken
                .insert(digest, "its digest does not match its content".into());
            return;
        }
        match serde_json::from_value::<AppIdClaims>(value) {
            Ok(claims) => {
                self.broken.remove(&digest);
                self.by_digest.insert(digest, claims);
            }
            Err(e) => {
                self.broken
                    .insert(digest, format!("it is not AppID claims: {e}"));
            }
        }
    }

    fn get(&self, digest: &str, side: &str) -> Result<&AppIdClaims, String> {
        if let Some(claims) = self.by_digest.get(digest) {
            return Ok(claims);
        }
        Err(match self.broken.get(digest) {
            Some(why) => format!("the {side} claims document is unusable: {why}"),
            None => format!(
                "the {side} claims document is not in the files given \
                 (add the rotated files, audit.jsonl.1 …)"
            ),
        })
    }
}

/// Reads every file, re-decides every line under `policy`, and groups what
/// changed. Bad lines are part of the report; only an unreadable file is an
/// error.
pub fn replay(policy: &Policy, files: &[PathBuf]) -> Result<Report, ReplayError> {
    let mut docs = Docs::default();
    for file in files {
        for_each_line(file, |_, text| {
            // Cheap first pass: only lines that carry documents are parsed.
            if text.contains("\"appids\"")
                && let Ok(line) = serde_json::from_str::<DocsLine>(text)
            {
                for (digest, value) in line.appids {
                    docs.add(digest, value);
                }
            }
        })?;
    }
    let mut report = Report {
        policy: policy.file_name().to_string(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        ..Report::default()
    };
    let mut groups: BTreeMap<(Change, String, String, String), Group> = BTreeMap::new();
    let mut undecided: BTreeMap<String, Undecided> = BTreeMap::new();
    for file in files {
        let name = file.display().to_string();
        for_each_line(file, |number, text| {
            report.lines += 1;
            let at = Place {
                file: name.clone(),
                line: number,
            };
            let line = match parse_line(text) {
                Ok(line) => line,
                Err(error) => {
                    report.bad_lines.push(BadLine { at, error });
                    return;
                }
            };
            match decide_again(policy, &docs, &line) {
                Verdict::Unchanged => report.unchanged += 1,
                Verdict::NotPolicy => report.not_policy += 1,
                Verdict::Undecidable(reason) => {
                    undecided
                        .entry(reason.clone())
                        .or_insert_with(|| Undecided {
                            reason,
                            count: 0,
                            example: at,
                        })
                        .count += 1;
                }
                Verdict::Changed {
                    kind,
                    old_rule,
                    new_rule,
                    new_decision,
                } => {
                    let peer = peer_name(&line);
                    groups
                        .entry((kind, old_rule.clone(), new_rule.clone(), peer.clone()))
                        .or_insert_with(|| Group {
                            old_rule,
                            new_rule,
                            peer,
                            count: 0,
                            example: example(at, &line, new_decision),
                        })
                        .count += 1;
                }
            }
        })?;
    }
    for ((kind, ..), group) in groups {
        match kind {
            Change::NewlyDenied => report.newly_denied.push(group),
            Change::NewlyAllowed => report.newly_allowed.push(group),
            Change::RuleChanged => report.rule_changed.push(group),
        }
    }
    report.undecidable = undecided.into_values().collect();
    Ok(report)
}

/// Calls `each(line number, text)` for every non-blank line of `file`; a
/// line that is not UTF-8 or too long is passed as a marker that fails to
/// parse.
fn for_each_line(file: &Path, mut each: impl FnMut(usize, &str)) -> Result<(), ReplayError> {
    let read_error = |source| ReplayError::Read {
        file: file.display().to_string(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(file).map_err(read_error)?);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(read_error)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            // Skip the rest of the long line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest).map_err(read_error)?;
            each(number, "\u{0}line longer than 1 MiB");
            continue;
        }
        match std::str::from_utf8(&buf) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => each(number, text.trim_end()),
            Err(_) => each(number, "\u{0}not UTF-8"),
        }
    }
}

/// Parses one line; the error says what is wrong with it.
fn parse_line(text: &str) -> Result<AuditLine, String> {
    if let Some(marker) = text.strip_prefix('\u{0}') {
        return Err(marker.to_string());
    }
    let line: AuditLine = serde_json::from_str(text)
        .map_err(|e| format!("not an audit line ({e}); give only appid audit logs (JSON lines)"))?;
    if !matches!(line.direction.as_str(), "inbound" | "outbound") {
        return Err(format!(
            "direction `{}` is neither inbound nor outbound",
            line.direction
        ));
    }
    if !matches!(line.decision.as_str(), "allow" | "deny") {
        return Err(format!(
            "decision `{}` is neither allow nor deny",
            line.decision
        ));
    }
    Ok(line)
}

/// The peer a group is about.
fn peer_name(line: &AuditLine) -> String {
    if let Some(id) = &line.peer_id {
        return id.clone();
    }
    if let Some(external) = &line.external {
        return match &external.host {
            Some(host) => format!("external {} ({host})", external.ip),
            None => format!("external {}", external.ip),
        };
    }
    match line.peer_addr.as_deref().map(str::parse::<SocketAddr>) {
        Some(Ok(addr)) => addr.ip().to_string(),
        Some(Err(_)) => line.peer_addr.clone().unwrap_or_default(),
        None => "(unknown peer)".to_string(),
    }
}

fn example(at: Place, line: &AuditLine, new_decision: String) -> Example {
    Example {
        at,
        time: line.time.clone(),
        direction: line.direction.clone(),
        port: line.port,
        protocol: line.protocol.clone().unwrap_or_default(),
        method: line.method.clone(),
        path: line.path.clone(),
        new_decision: Some(new_decision),
    }
}

/// One line under the new policy.
fn decide_again(policy: &Policy, docs: &Docs, line: &AuditLine) -> Verdict {
    if SIDECAR_RULE_NAMES.contains(&line.rule.as_str()) {
        return Verdict::NotPolicy;
    }
    if let Some(n) = line.repeated {
        return Verdict::Undecidable(format!(
            "coalesced denials (`repeated`, {n} here) record no request or claims"
        ));
    }
    let direction = match line.direction.as_str() {
        "inbound" => Direction::Inbound,
        _ => Direction::Outbound,
    };
    let Some(local_digest) = &line.local_appid else {
        return Verdict::Undecidable(
            "no `local_appid`: written by an appid that did not record full claims".into(),
        );
    };
    let local = match docs.get(local_digest, "local") {
        Ok(claims) => claims,
        Err(why) => return Verdict::Undecidable(why),
    };
    let peer;
    let (caller, callee) = if line.peer_id.is_some() {
        let Some(digest) = &line.peer_appid else {
            return Verdict::Undecidable(
                "no `peer_appid`: written by an appid that did not record full claims".into(),
            );
        };
        peer = match docs.get(digest, "peer") {
            Ok(claims) => claims,
            Err(why) => return Verdict::Undecidable(why),
        };
        match direction {
            Direction::Inbound => (Caller::Meshed(peer), Callee::Meshed(local)),
            Direction::Outbound => (Caller::Meshed(local), Callee::Meshed(peer)),
        }
    } else if let Some(external) = &line.external {
        (
            Caller::Meshed(local),
            Callee::External {
                ip: external.ip,
                host: external.host.as_deref(),
            },
        )
    } else if direction == Direction::Inbound {
        match line.peer_addr.as_deref().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => (Caller::Unauthenticated(addr.ip()), Callee::Meshed(local)),
            _ => {
                return Verdict::Undecidable(
                    "a caller outside the mesh without a source address".into(),
                );
            }
        }
    } else {
        return Verdict::Undecidable(
            "an outbound destination outside the mesh without `external`: written by an \
             appid that did not record it"
                .into(),
        );
    };
    let headers = UnrecordedHeaders::default();
    let http = match (&line.method, &line.path) {
        (Some(_), Some(path)) if path.len() + 4 > AUDIT_FIELD_BYTES => {
            return Verdict::Undecidable("the request path was cut short in the audit line".into());
        }
        (Some(method), Some(path)) => Http::Request(HttpRequest {
            method,
            path,
            headers: &headers,
        }),
        _ if line.protocol.as_deref() == Some("tcp") => Http::NotHttp,
        _ => Http::Unknown,
    };
    let query = Query {
        direction,
        caller,
        callee,
        port: line.port,
        http,
    };
    let decision = policy.decide(&query);
    if headers.asked.get() {
        return Verdict::Undecidable(
            "the new policy reads request headers, which audit lines do not record".into(),
        );
    }
    // A destination outside the mesh, read as the sidecar reads it.
    let external = match &callee {
        Callee::External { .. } => Some(external_verdict(
            &decision,
            || policy.metadata_by_name_only(&query),
            || policy.decide_as_external(&query),
        )),
        _ => None,
    };
    let (new_outcome, new_rule) = match (decision.outcome, external) {
        (Outcome::DeferToL7, _) => {
            return Verdict::Undecidable(
                "the new policy decides each HTTP request; the line records a connection".into(),
            );
        }
        // The sidecar only passes a destination through when a rule takes
        // it outside the mesh; otherwise it tries mTLS to it, which a
        // server outside the mesh cannot answer.
        (_, Some(ExternalVerdict::NotExternal | ExternalVerdict::Refused)) => {
            (Outcome::Deny, decision.rule)
        }
        _ => (decision.enforced_outcome(), decision.rule),
    };
    let old_denied = line.decision == "deny" || line.audit_only;
    let new_denied = new_outcome == Outcome::Deny;
    let kind = match (old_denied, new_denied) {
        (false, true) => Change::NewlyDenied,
        (true, false) => Change::NewlyAllowed,
        _ if line.rule != new_rule => Change::RuleChanged,
        _ => return Verdict::Unchanged,
    };
    let mut new_decision = decision.to_string();
    if external == Some(ExternalVerdict::NotExternal) {
        new_decision = "deny: no rule names this destination outside the mesh".into();
    }
    Verdict::Changed {
        kind,
        old_rule: line.rule.clone(),
        new_rule: new_rule.to_string(),
        new_decision,
    }
}

impl std::fmt::Display for Report {
    /// The text report, for people.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let undecidable = self.undecidable_count();
        writeln!(
            f,
            "replayed {} line{} from {} file{} under {}",
            self.lines,
            plural(self.lines),
            self.files.len(),
            plural(self.files.len() as u64),
            self.policy
        )?;
        let groups = |f: &mut std::fmt::Formatter<'_>, title: &str, list: &[Group]| {
            let n: u64 = list.iter().map(|g| g.count).sum();
            if list.is_empty() {
                return writeln!(f, "{title}: none");
            }
            writeln!(f, "{title}: {n} decision{}", plural(n))?;
            for g in list {
                writeln!(
                    f,
                    "  {:>5} × {}: {} -> {}",
                    g.count, g.peer, g.old_rule, g.new_rule
                )?;
                let e = &g.example;
                let request = match (&e.method, &e.path) {
                    (Some(m), Some(p)) => format!(" {m} {p}"),
                    _ => String::new(),
                };
                writeln!(
                    f,
                    "          e.g. {} {} port {} {}{request}: {}",
                    e.at,
                    e.direction,
                    e.port,
                    e.protocol,
                    e.new_decision.as_deref().unwrap_or("")
                )?;
            }
            Ok(())
        };
        groups(f, "newly denied", &self.newly_denied)?;
        groups(f, "newly allowed", &self.newly_allowed)?;
        groups(f, "same outcome, another rule", &self.rule_changed)?;
        writeln!(f, "unchanged: {}", self.unchanged)?;
        writeln!(
            f,
            "decided before policy (revoked peer, invalid request): {}",
            self.not_policy
        )?;
        if undecidable == 0 {
            writeln!(f, "not re-decidable: none")?;
        } else {
            writeln!(
                f,
                "not re-decidable: {undecidable} line{}",
                plural(undecidable)
            )?;
            for u in &self.undecidable {
                writeln!(f, "  {:>5} × {} (e.g. {})", u.count, u.reason, u.example)?;
            }
        }
        if self.bad_lines.is_empty() {
            writeln!(f, "bad lines: none")?;
        } else {
            writeln!(f, "bad lines: {}", self.bad_lines.len())?;
            for b in &self.bad_lines {
                writeln!(f, "  {}: {}", b.at, b.error)?;
            }
        }
        Ok(())
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AppIdDoc;
    use serde_json::json;

    fn claims(id: &str, app: &str) -> AppIdClaims {
        serde_json::from_value(json!({
            "v": 1, "id": id, "labels": {"app": app}, "attestation": "manual"
        }))
        .unwrap()
    }

    struct Log {
        dir: tempfile::TempDir,
        web: AppIdDoc,
        batch: AppIdDoc,
        api: AppIdDoc,
    }

    impl Log {
        fn new() -> Log {
            Log {
                dir: tempfile::tempdir().unwrap(),
                web: AppIdDoc::new(&claims("spiffe://t/web", "web")),
                batch: AppIdDoc::new(&claims("spiffe://t/batch", "batch")),
                api: AppIdDoc::new(&claims("spiffe://t/api", "api")),
            }
        }

        /// An inbound line at the api from `peer`.
        fn line(&self, peer: &AppIdDoc, decision: &str, rule: &str, path: &str) -> String {
            let mut appids = serde_json::Map::new();
            appids.insert(peer.digest.clone(), peer.value.clone());
            appids.insert(self.api.digest.clone(), self.api.value.clone());
            json!({
                "time": "2026-11-20T10:00:00.000Z", "direction": "inbound",
                "decision": decision, "audit_only": false, "rule": rule,
                "peer_id": peer.value["id"], "peer_addr": "10.0.0.7:4000", "port": 8080,
                "protocol": "http1", "method": "GET", "path": path, "claims": {},
                "peer_appid": peer.digest, "local_appid": self.api.digest, "appids": appids,
            })
            .to_string()
        }

        fn write(&self, name: &str, lines: &[String]) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            path
        }
    }

    const OLD: &str =
        "version: 1\nrules:\n  - name: all\n    action: allow\n    from: {}\n    to: {}\n";
    const NEW: &str = r#"version: 1
rules:
  - name: web-reads
    action: allow
    from: { labels.app: web }
    to: { labels.app: api }
    http: { methods: [GET], paths: ["/v1/**"] }
  - name: no-debug
    action: deny
    from: { labels.app: batch }
    to: { labels.app: api }
    http: { paths: ["/debug/**"], headers: { x-debug: "1" } }
"#;

    fn policy(text: &str) -> Policy {
        Policy::load("new.yaml", text).unwrap()
    }

    #[test]
    fn groups_changes_by_rules_and_peer_with_counts_and_first_example() {
        let log = Log::new();
        let file = log.write(
            "audit.jsonl",
            &[
                log.line(&log.web, "allow", "all", "/v1/a"), // unchanged? rule changes
                log.line(&log.web, "allow", "all", "/admin"), // newly denied
                log.line(&log.web, "allow", "all", "/admin/2"), // newly denied, same group
                log.line(&log.batch, "allow", "all", "/v1/a"), // newly denied, other peer
                log.line(&log.web, "deny", "default", "/v1/b"), // newly allowed
                log.line(&log.web, "allow", "web-reads", "/v1/c"), // unchanged
            ],
        );
        let report = replay(&policy(NEW), &[file]).unwrap();
        assert_eq!(report.lines, 6);
        assert_eq!(report.unchanged, 1);
        assert_eq!(report.changes(), 4);
        let denied: Vec<_> = report
            .newly_denied
            .iter()
            .map(|g| {
                (
                    g.peer.as_str(),
                    g.old_rule.as_str(),
                    g.new_rule.as_str(),
                    g.count,
                )
            })
            .collect();
        assert_eq!(
            denied,
            [
                ("spiffe://t/batch", "all", "default", 1),
                ("spiffe://t/web", "all", "default", 2)
            ]
        );
        let web = &report.newly_denied[1];
        assert_eq!(web.example.at.line, 2, "the first line is the example");
        assert_eq!(web.example.path.as_deref(), Some("/admin"));
        assert!(
            web.example
                .new_decision
                .as_deref()
                .unwrap()
                .starts_with("deny")
        );
        assert_eq!(report.newly_allowed.len(), 1);
        assert_eq!(report.newly_allowed[0].new_rule, "web-reads");
        assert_eq!(report.rule_changed.len(), 1);
        assert_eq!(report.rule_changed[0].new_rule, "web-reads");
        assert!(report.bad_lines.is_empty() && report.undecidable.is_empty());
        let text = report.to_string();
        assert!(text.contains("newly denied: 3 decisions"), "{text}");
        assert!(
            text.contains("2 × spiffe://t/web: all -> default"),
            "{text}"
        );

        // The old policy changes nothing.
        let same = replay(&policy(OLD), &[log.dir.path().join("audit.jsonl")]).unwrap();
        assert_eq!(same.changes(), 1, "only the line denied by default");
    }

    /// A line to a destination outside the mesh is decided again as the
    /// sidecar decides one (`external_verdict`): a policy that no longer
    /// takes it outside denies it, whatever its default (the sidecar would
    /// try mTLS to it); one that still does keeps it.
    #[test]
    fn destinations_outside_the_mesh_are_read_as_the_sidecar_reads_them() {
        let log = Log::new();
        let mut appids = serde_json::Map::new();
        appids.insert(log.web.digest.clone(), log.web.value.clone());
        let line = json!({
            "time": "2026-11-20T10:00:00.000Z", "direction": "outbound",
            "decision": "allow", "audit_only": false, "rule": "stripe",
            "peer_addr": "203.0.113.9:443", "port": 443, "protocol": "tcp", "claims": {},
            "external": { "ip": "203.0.113.9", "host": "api.stripe.com" },
            "local_appid": log.web.digest, "appids": appids,
        })
        .to_string();
        let file = log.write("audit.jsonl", &[line]);
        let rule = |to: &str| {
            format!(
                "  - name: stripe\n    action: allow\n    from: {{ labels.app: web }}\n    to: {to}\n"
            )
        };
        let taken = format!(
            "version: 1\nrules:\n{}",
            rule("{ external: { hosts: [api.stripe.com], ports: [443] } }")
        );
        let report = replay(&policy(&taken), std::slice::from_ref(&file)).unwrap();
        assert_eq!((report.unchanged, report.changes()), (1, 0));
        for default in ["deny", "allow"] {
            // The rule names another host: nothing takes this one outside.
            let elsewhere = format!(
                "version: 1\ndefault: {default}\nrules:\n{}",
                rule("{ external: { hosts: [api.other.test], ports: [443] } }")
            );
            let report = replay(&policy(&elsewhere), std::slice::from_ref(&file)).unwrap();
            assert_eq!(report.newly_denied.len(), 1, "default {default}");
            let denied = &report.newly_denied[0];
            assert_eq!(denied.new_rule, "default", "default {default}");
            assert_eq!(
                denied.example.new_decision.as_deref(),
                Some("deny: no rule names this destination outside the mesh"),
                "default {default}"
            );
        }
    }

    #[test]
    fn bad_and_undecidable_lines_are_reported_not_skipped() {
        let log = Log::new();
        let mut missing_doc: serde_json::Value =
            serde_json::from_str(&log.line(&log.web, "allow", "all", "/v1/a")).unwrap();
        missing_doc.as_object_mut().unwrap().remove("appids");
        missing_doc["peer_appid"] = json!("00".repeat(16));
        let mut old_format: serde_json::Value = missing_doc.clone();
        old_format.as_object_mut().unwrap().remove("local_appid");
        let mut tampered: serde_json::Value =
            serde_json::from_str(&log.line(&log.web, "allow", "all", "/v1/a")).unwrap();
        tampered["appids"][&log.web.digest]["labels"]["app"] = json!("batch");
        let file = log.write(
            "audit.jsonl",
            &[
                "not json".to_string(),
                r#"{"direction":"sideways","decision":"allow","rule":"x","port":1}"#.to_string(),
                String::new(),
                missing_doc.to_string(),
                old_format.to_string(),
                // Headers: the batch /debug request needs them under NEW.
                log.line(&log.batch, "allow", "all", "/debug/x"),
                tampered.to_string(),
                json!({"direction":"inbound","decision":"deny","rule":"revoked","peer_id":"spiffe://t/web",
                       "peer_addr":"10.0.0.7:1","port":8080,"protocol":"tcp","claims":{}})
                .to_string(),
                json!({"direction":"inbound","decision":"deny","rule":"default","peer_id":"spiffe://t/web",
                       "peer_addr":"10.0.0.7:1","port":8080,"protocol":"http1","repeated":40,"claims":{}})
                .to_string(),
            ],
        );
        let report = replay(&policy(NEW), std::slice::from_ref(&file)).unwrap();
        let name = file.display().to_string();
        assert_eq!(report.lines, 8, "the blank line is not counted");
        let bad: Vec<_> = report.bad_lines.iter().map(|b| b.at.to_string()).collect();
        assert_eq!(bad, [format!("{name}:1"), format!("{name}:2")]);
        assert!(report.bad_lines[1].error.contains("sideways"));
        assert_eq!(report.not_policy, 1);
        let reasons: Vec<_> = report
            .undecidable
            .iter()
            .map(|u| (u.reason.as_str(), u.example.line))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        let find = |needle: &str| {
            reasons
                .iter()
                .find(|(r, _)| r.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {reasons:?}"))
                .1
        };
        assert_eq!(find("not in the files given"), 4);
        assert_eq!(find("no `local_appid`"), 5);
        assert_eq!(find("headers"), 6);
        assert_eq!(find("digest does not match"), 7);
        assert_eq!(find("coalesced"), 9);
        assert_eq!(report.changes(), 0);
        let text = report.to_string();
        assert!(
            text.contains(&format!("{name}:1: not an audit line")),
            "{text}"
        );
    }

    #[test]
    fn documents_from_rotated_files_serve_the_current_one() {
        let log = Log::new();
        let full = log.line(&log.web, "allow", "all", "/admin");
        let mut bare: serde_json::Value = serde_json::from_str(&full).unwrap();
        bare.as_object_mut().unwrap().remove("appids");
        let current = log.write("audit.jsonl", &[bare.to_string()]);
        let rotated = log.write("audit.jsonl.1", &[full]);
        let alone = replay(&policy(NEW), std::slice::from_ref(&current)).unwrap();
        assert_eq!(alone.undecidable_count(), 1);
        let both = replay(&policy(NEW), &[current, rotated]).unwrap();
        assert_eq!(both.undecidable_count(), 0);
        assert_eq!(both.changes(), 2);
        assert!(matches!(
            replay(&policy(NEW), &[log.dir.path().join("missing")]),
            Err(ReplayError::Read { .. })
        ));
    }
}
