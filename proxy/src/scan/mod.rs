//! Scanner reports: Trivy and Grype JSON, read into vulnerability counts.
//!
//! The authority vouches for `vulns` in an AppID certificate, so the counts
//! must be exactly what the report says, no more forgiving than the tools
//! themselves: DESIGN.md "Scanner reports" fixes the rules.
//!
//! - The format is detected from the content, never from the file name:
//!   Trivy if the top-level object has `SchemaVersion` (only 2 is supported),
//!   Grype if it has `matches`, `source` and `descriptor`.
//! - One finding is one (vulnerability ID, package name, installed version),
//!   deduplicated across the whole report. Trivy lists the same finding once
//!   per `Results[]` target it was seen in; Grype lists one match per
//!   (vulnerability, package), so one CVE in six packages is six findings,
//!   and a GHSA alias of a CVE is a finding of its own.
//! - Severities are case-insensitive; Grype's `Negligible` counts as `low`;
//!   anything else unrecognised counts as `unknown`. When the same finding
//!   appears twice with different severities the higher one is kept, so a
//!   policy limit errs towards denying.
//!
//! Design bias: *strict about shape, lenient about what is absent*. A field we
//! read that has the wrong JSON type is an error naming the field, because a
//! half-read report would under-count. A field that may be legitimately
//! absent (Trivy omits `Results` when nothing was found; `RepoDigests` is
//! null for a local image) is simply absent. Any input, of any size up to
//! [`MAX_REPORT_BYTES`], gives a report or an error, never a panic.

mod grype;
mod shape;
mod trivy;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use appid_policy::claims::Vulns;
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use shape::{Kind, Slot};

/// Reports larger than this are refused before parsing (256 MiB). Real
/// reports of large images are a few tens of megabytes.
pub const MAX_REPORT_BYTES: usize = 256 * 1024 * 1024;

/// What a report must look like, for messages about files that are neither.
pub const EXPECTED_FORMATS: &str = "a Trivy report (SchemaVersion 2 with Results) \
     or a Grype report (matches + source + descriptor)";

/// The only Trivy `SchemaVersion` understood (Trivy 0.20 and later).
pub const TRIVY_SCHEMA_VERSION: u64 = 2;

/// Which tool wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scanner {
    Trivy,
    Grype,
}

impl Scanner {
    /// The name used in the AppID `vulns.scanner` claim.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scanner::Trivy => "trivy",
            Scanner::Grype => "grype",
        }
    }
}

impl fmt::Display for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scanner::Trivy => "Trivy",
            Scanner::Grype => "Grype",
        })
    }
}

/// A finding's severity, ordered from least to most severe.
///
/// `Unknown` sorts lowest so that when one listing of a finding has a known
/// severity and another does not, the known one is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Reads a scanner's severity label, case-insensitively.
    ///
    /// Grype's `Negligible` is `Low`; anything unrecognised (including a
    /// missing label) is `Unknown`, so it is still counted.
    #[must_use]
    pub fn from_label(label: &str) -> Severity {
        const LABELS: [(&str, Severity); 6] = [
            ("critical", Severity::Critical),
            ("high", Severity::High),
            ("medium", Severity::Medium),
            ("low", Severity::Low),
            ("negligible", Severity::Low),
            ("unknown", Severity::Unknown),
        ];
        LABELS
            .iter()
            .find(|(name, _)| label.eq_ignore_ascii_case(name))
            .map_or(Severity::Unknown, |&(_, sev)| sev)
    }
}

/// Deduplicated finding counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeverityCounts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub unknown: u64,
}

impl SeverityCounts {
    /// All findings.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.critical + self.high + self.medium + self.low + self.unknown
    }

    fn add(&mut self, sev: Severity) {
        let slot = match sev {
            Severity::Critical => &mut self.critical,
            Severity::High => &mut self.high,
            Severity::Medium => &mut self.medium,
            Severity::Low => &mut self.low,
            Severity::Unknown => &mut self.unknown,
        };
        *slot += 1;
    }
}

/// What one scanner report says about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub scanner: Scanner,
    pub counts: SeverityCounts,
    /// Listings before deduplication (Trivy vulnerabilities across all
    /// results, Grype matches); at least `counts.total()`.
    pub listed: u64,
    /// The preferred image digest, `sha256:<64 lowercase hex>`: Trivy
    /// `Metadata.RepoDigests` then `Metadata.ImageID`; Grype
    /// `source.target.manifestDigest`, then `imageID`, then `repoDigests`.
    pub image_digest: Option<String>,
    /// Every well-formed digest the report names for the image, preferred
    /// first, without repeats. A report names the same image by several
    /// digests (config, manifest, repository index); the authority can match
    /// a registered digest against any of them.
    pub image_digests: Vec<String>,
    /// Trivy `ArtifactName`, Grype `source.target.userInput`.
    pub image_name: Option<String>,
    /// When the scan ran (Trivy `CreatedAt`, Grype `descriptor.timestamp`),
    /// normalised to UTC whole seconds `YYYY-MM-DDTHH:MM:SSZ`; absent when the
    /// report has no valid RFC 3339 time.
    pub scanned_at: Option<String>,
    /// `sha256:<hex>` of the exact report bytes.
    pub report_sha256: String,
}

impl ScanReport {
    /// The AppID `vulns` claim for this report.
    #[must_use]
    pub fn to_vulns(&self) -> Vulns {
        Vulns {
            critical: self.counts.critical,
            high: self.counts.high,
            medium: self.counts.medium,
            low: self.counts.low,
            unknown: self.counts.unknown,
            scanner: self.scanner.as_str().to_owned(),
            report: self.report_sha256.clone(),
            scanned_at: self.scanned_at.clone(),
        }
    }

    /// Fills the claims from this report: `vulns` always, and the image
    /// digest and name only where the claims have none (an explicit
    /// `--image-digest` or a registered digest wins over the report's).
    pub fn fill_claims(&self, claims: &mut appid_policy::AppIdClaims) {
        claims.vulns = Some(self.to_vulns());
        let image = claims.image.get_or_insert_with(Default::default);
        if image.digest.is_none() {
            image.digest = self.image_digest.clone();
        }
        if image.name.is_none() {
            image.name = self.image_name.clone();
        }
        if image.digest.is_none() && image.name.is_none() {
            claims.image = None;
        }
    }
}

/// Why a report could not be read. The caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error(
        "the report is {size} bytes, over the {limit}-byte limit; is this really a scanner report?"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("the file is empty; expected {EXPECTED_FORMATS}")]
    Empty,
    #[error(
        "not valid JSON at line {line}, column {column}: {message}; expected {EXPECTED_FORMATS}"
    )]
    NotJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("JSON, but not a scanner report: found {found}; expected {EXPECTED_FORMATS}")]
    UnknownFormat { found: String },
    #[error(
        "Trivy report with SchemaVersion {found}; only SchemaVersion 2 is supported \
         (re-run with Trivy 0.20 or later, `--format json`)"
    )]
    UnsupportedTrivySchema { found: String },
    #[error("{scanner} report: `{field}` {problem}")]
    Field {
        scanner: Scanner,
        /// Path in the report, e.g. `Results[2].Vulnerabilities[0].Severity`.
        field: String,
        problem: String,
    },
}

impl ScanError {
    fn wrong(scanner: Scanner, field: impl Into<String>, expected: &str, found: Kind) -> Self {
        ScanError::Field {
            scanner,
            field: field.into(),
            problem: format!("should be {expected}, found {found}"),
        }
    }

    fn missing(scanner: Scanner, field: impl Into<String>) -> Self {
        ScanError::Field {
            scanner,
            field: field.into(),
            problem: "is missing".to_owned(),
        }
    }
}

/// Reads a Trivy or Grype JSON report.
///
/// `bytes` is the exact file content: `report_sha256` is computed over it.
/// A UTF-8 byte-order mark is tolerated (PowerShell writes one).
///
/// # Errors
///
/// A [`ScanError`] when the input is too large, empty, not JSON, neither
/// format, an unsupported Trivy schema, or has a field of the wrong type.
/// The message says what was expected; the caller adds the file name.
pub fn parse_report(bytes: &[u8]) -> Result<ScanReport, ScanError> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(ScanError::TooLarge {
            size: bytes.len(),
            limit: MAX_REPORT_BYTES,
        });
    }
    let report_sha256 = format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
    );
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ScanError::Empty);
    }
    if body.starts_with(b"\xFF\xFE") || body.starts_with(b"\xFE\xFF") {
        return Err(ScanError::NotJson {
            line: 1,
            column: 1,
            message: "the file is UTF-16 (it starts with a UTF-16 byte-order mark); \
                      save it as UTF-8"
                .to_owned(),
        });
    }
    let top: Top = serde_json::from_slice(body).map_err(not_json)?;
    let mut report = match top {
        Top::Object(obj) => obj.into_report()?,
        Top::Array { legacy_trivy: true } => {
            return Err(ScanError::UnsupportedTrivySchema {
                found: "absent (a bare array of results, as Trivy before 0.20 wrote)".to_owned(),
            });
        }
        Top::Array {
            legacy_trivy: false,
        } => return Err(unknown("an array")),
        Top::Scalar(kind) => return Err(unknown(kind.to_string())),
    };
    report.report_sha256 = report_sha256;
    Ok(report)
}

fn unknown(found: impl Into<String>) -> ScanError {
    ScanError::UnknownFormat {
        found: found.into(),
    }
}

fn not_json(err: serde_json::Error) -> ScanError {
    let (line, column) = (err.line(), err.column());
    let full = err.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    ScanError::NotJson {
        line,
        column,
        message,
    }
}

/// The top level of a JSON document, read just far enough to detect the format.
enum Top {
    Object(Box<TopObject>),
    /// `legacy_trivy`: the first element looks like a Trivy result (`Target`),
    /// i.e. the array format Trivy wrote before `SchemaVersion` existed.
    Array {
        legacy_trivy: bool,
    },
    Scalar(Kind),
}

/// The top-level keys of both formats. Each format's fields are read in the
/// same single pass; detection then looks at which keys were present.
#[derive(Default)]
struct TopObject {
    trivy: trivy::TopFields,
    grype: grype::TopFields,
    /// A few of the other keys seen, for the "neither format" message.
    other_keys: Vec<String>,
    other_key_count: usize,
}

impl TopObject {
    fn into_report(self) -> Result<ScanReport, ScanError> {
        if self.trivy.is_present() {
            return self.trivy.into_report();
        }
        if self.grype.is_present() {
            return self.grype.into_report();
        }
        Err(unknown(self.describe()))
    }

    /// What the object looks like, for the "neither format" message, e.g.
    /// "an object with keys `matches`, `source`, `x` and 3 more; it has part
    /// of a Grype report but not `descriptor`".
    fn describe(&self) -> String {
        use std::fmt::Write as _;
        let quote = |k: &str| format!("`{k}`");
        let mut keys: Vec<String> = self
            .trivy
            .present_keys()
            .chain(self.grype.present_keys())
            .map(quote)
            .collect();
        keys.extend(self.other_keys.iter().map(|k| quote(k)));
        let unquoted = self.other_key_count - self.other_keys.len();
        let mut out = if keys.is_empty() {
            "an empty object".to_owned()
        } else {
            format!("an object with keys {}", keys.join(", "))
        };
        if unquoted > 0 {
            let _ = write!(out, " and {unquoted} more");
        }
        if self.trivy.present_keys().next().is_some() {
            out.push_str("; it has part of a Trivy report but no `SchemaVersion`");
        }
        let missing = self.grype.missing_keys();
        if missing.len() < 3 {
            let missing: Vec<String> = missing.into_iter().map(quote).collect();
            let _ = write!(
                out,
                "; it has part of a Grype report but not {}",
                missing.join(", ")
            );
        }
        out
    }
}

/// How many unrecognised top-level key names to quote in messages, and how
/// long each may be.
const QUOTED_KEYS: usize = 6;
const QUOTED_KEY_CHARS: usize = 40;

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_FORMATS)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::Bool))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::Number))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::Number))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::Number))
    }
    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::String))
    }
    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Scalar(Kind::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        let first = seq.next_element::<Slot<trivy::LegacyResult>>()?;
        let legacy_trivy = matches!(first, Some(Slot::Got(r)) if r.looks_like_trivy());
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Array { legacy_trivy })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = TopObject::default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            // A repeated key would let two readers of the same file see two
            // different reports; refuse it rather than pick one.
            let known =
                top.trivy.read_field(&key, &mut map)? || top.grype.read_field(&key, &mut map)?;
            if known {
                if seen.contains(&key) {
                    return Err(A::Error::custom(format!("duplicate key `{key}`")));
                }
                seen.push(key);
            } else {
                map.next_value::<IgnoredAny>()?;
                top.other_key_count += 1;
                if top.other_keys.len() < QUOTED_KEYS {
                    top.other_keys
                        .push(key.chars().take(QUOTED_KEY_CHARS).collect());
                }
            }
        }
        Ok(Top::Object(Box::new(top)))
    }
}

/// Collects findings and keeps the highest severity of each.
#[derive(Default)]
struct Findings {
    seen: HashMap<(String, String, String), Severity>,
    listed: u64,
}

/// One finding as a report lists it, before deduplication.
struct Listed {
    id: String,
    package: Option<String>,
    version: Option<String>,
    severity: Option<String>,
}

impl Findings {
    /// Adds one listed finding, the same way for every scanner: the ID must
    /// be non-empty (`id_field` names it in the error), a missing package or
    /// version counts as empty, a missing severity as `unknown`.
    fn add_listed(
        &mut self,
        scanner: Scanner,
        id_field: impl FnOnce() -> String,
        listed: Listed,
    ) -> Result<(), ScanError> {
        if listed.id.is_empty() {
            return Err(ScanError::Field {
                scanner,
                field: id_field(),
                problem: "is empty".to_owned(),
            });
        }
        let severity = listed
            .severity
            .as_deref()
            .map_or(Severity::Unknown, Severity::from_label);
        self.add(
            listed.id,
            listed.package.unwrap_or_default(),
            listed.version.unwrap_or_default(),
            severity,
        );
        Ok(())
    }

    fn add(&mut self, id: String, package: String, version: String, sev: Severity) {
        self.listed += 1;
        match self.seen.entry((id, package, version)) {
            Entry::Occupied(mut e) => {
                if sev > *e.get() {
                    e.insert(sev);
                }
            }
            Entry::Vacant(e) => {
                e.insert(sev);
            }
        }
    }

    fn counts(&self) -> SeverityCounts {
        let mut counts = SeverityCounts::default();
        for &sev in self.seen.values() {
            counts.add(sev);
        }
        counts
    }
}

/// Collects image digests: only `sha256:<64 lowercase hex>`, preferred first,
/// without repeats. Anything else (a `sha512:`, a truncated ID, upper case)
/// is ignored rather than half-trusted.
#[derive(Default)]
struct Digests(Vec<String>);

impl Digests {
    /// A bare digest (`sha256:…`).
    fn add(&mut self, candidate: &str) {
        if is_sha256_digest(candidate) && !self.0.iter().any(|d| d == candidate) {
            self.0.push(candidate.to_owned());
        }
    }

    /// A repository digest (`registry/repo@sha256:…`): the part after the last `@`.
    fn add_repo_digest(&mut self, candidate: &str) {
        if let Some((_, digest)) = candidate.rsplit_once('@') {
            self.add(digest);
        }
    }
}

/// `sha256:` followed by exactly 64 lowercase hex digits.
#[must_use]
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An RFC 3339 time as UTC whole seconds (`2026-11-20T10:00:00Z`), so that the
/// claim is short and compares correctly as a string. `None` for anything
/// that is not RFC 3339 (Grype writes `""` when it has no time).
fn normalize_time(s: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let t = t.checked_to_offset(time::UtcOffset::UTC)?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .ok()
}

/// A non-empty string field, if present.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Reads an optional field: absent or `null` is `None`; a value of the wrong
/// type is an error naming the field. `field` is only called on error.
fn optional<T: shape::Shaped>(
    slot: Option<Slot<T>>,
    scanner: Scanner,
    field: impl FnOnce() -> String,
) -> Result<Option<T>, ScanError> {
    match slot {
        None | Some(Slot::Wrong(Kind::Null)) => Ok(None),
        Some(Slot::Got(value)) => Ok(Some(value)),
        Some(Slot::Wrong(found)) => Err(ScanError::wrong(scanner, field(), T::EXPECTED, found)),
    }
}

/// Reads a required field: absent or `null` is "missing".
fn required<T: shape::Shaped>(
    slot: Option<Slot<T>>,
    scanner: Scanner,
    field: impl FnOnce() -> String,
) -> Result<T, ScanError> {
    match slot {
        None | Some(Slot::Wrong(Kind::Null)) => Err(ScanError::missing(scanner, field())),
        Some(Slot::Got(value)) => Ok(value),
        Some(Slot::Wrong(found)) => Err(ScanError::wrong(scanner, field(), T::EXPECTED, found)),
    }
}

/// Reads one element of an array: every element must have the expected type.
fn element<T: shape::Shaped>(
    slot: Slot<T>,
    scanner: Scanner,
    field: impl FnOnce() -> String,
) -> Result<T, ScanError> {
    match slot {
        Slot::Got(value) => Ok(value),
        Slot::Wrong(found) => Err(ScanError::wrong(scanner, field(), T::EXPECTED, found)),
    }
}
