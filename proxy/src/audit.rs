//! The audit log: one JSON line per authorization decision.
//!
//! Design bias: *a decision is never lost silently, and logging never takes
//! the proxy down*. Each record is serialized completely into a buffer first,
//! then written with a single `write_all` under a mutex, so lines from many
//! connections never interleave and a reader never sees half a line from us.
//! The file is opened `O_APPEND` (so `logrotate`'s `copytruncate` and
//! concurrent appenders are safe — a truncation is noticed at the next
//! flush tick, after which the file carries its documents afresh — and
//! [`AuditLog::reopen`] supports move-and-reopen rotation). Writes are synchronous: a slow disk slows
//! decisions down rather than dropping records.
//!
//! The sidecar turns on [`AuditLog::buffer_allows`]: plain *allow* lines
//! then wait in memory, in order, until the next denial or audit-only line,
//! 64 KiB of them, or the sidecar's flush tick (every
//! [`FLUSH_INTERVAL`]), whichever comes first, and shutdown flushes the
//! rest. A write per allowed request was a third of the sidecar's syscalls
//! on a keep-alive workload; the price is that a crash (not a shutdown) can
//! lose up to one tick of allow lines. Denials and audit-only lines are
//! always on disk before the caller moves on.
//!
//! Under attack, denials are cheap to cause, so the sidecar also turns on
//! [`AuditLog::coalesce_denials`]: within one second, the first
//! [`FULL_DENIALS_PER_SECOND`] denials per (direction, rule, source — the
//! peer's SPIFFE ID, or its IP address) are written as usual and the rest
//! are counted; the count follows as one line with `"repeated": N` and no
//! method or path once the second is over (at the next flush tick, or
//! before the next denial of that key). At most
//! [`MAX_COALESCED_KEYS`] keys are tracked; beyond them denials are written
//! one by one, so nothing is lost, only compressed. A failed write is
//! counted ([`AuditLog::write_errors`]) and reported through `tracing` at
//! most once a minute; it never panics and never fails the caller.
//!
//! A file also has a size cap ([`Rotation`], `limits.audit_log_max_bytes`,
//! default 100 MiB): when a write takes it past the cap, it is renamed to
//! `<file>.1` (older ones to `.2` … up to `limits.audit_log_keep`, the
//! oldest removed) and a new file is started, so a flood of decisions can
//! fill at most `(keep + 1) × (max_bytes + one line)` of disk (plus, per
//! file, the count lines of coalesced denials queued with its last line:
//! at most [`MAX_COALESCED_KEYS`] + 1). Rotation happens between lines and is
//! decided as each line is queued: the line that brings the file, with the
//! lines queued before it, to the cap is the file's last; everything queued
//! is written out, the file is rotated, and the next line is encoded for
//! the new file (so it carries the documents it names; below). A line is
//! never split across files. A rotation that fails (e.g. the
//! sidecar may write its log but not rename files in the log's directory)
//! is logged, and the lines go on into the same file, rotation being tried
//! again a cap's worth of bytes later: the cap bounds disk only while
//! rotation works, and no decision is dropped for it.
//!
//! Line format (keys in this order; `method`/`path` only for L7 decisions,
//! `reason` only when given, on denials and audit-only allows):
//!
//! ```json
//! {"time":"2026-11-20T10:00:00.123Z","direction":"inbound","decision":"deny",
//!  "audit_only":false,"rule":"default","peer_id":"spiffe://prod.example/ns/shop/sa/web",
//!  "peer_addr":"10.0.0.7:41234","port":8080,"protocol":"http1","method":"GET",
//!  "path":"/v1/x","reason":"no rule matched","claims":{"from.labels.app":"web"},
//!  "peer_appid":"5f0c…32 hex","local_appid":"9ab1…32 hex",
//!  "appids":{"5f0c…":{"v":1,"id":"spiffe://prod.example/ns/shop/sa/web",…}}}
//! ```
//!
//! **Enough to decide again** (`appid policy replay`). `claims` holds only
//! what the deciding rule looked at, which is not what another policy looks
//! at. So every line also names the *full* claims of both sides by digest:
//! `peer_appid` (meshed peers only) and `local_appid` are the first 128 bits
//! (32 hex digits) of the SHA-256 of the compact claims JSON, and the
//! documents themselves ride in `appids` (digest → document) on the first
//! line of each file that names them — about 0.5–2 KB once per identity per
//! file, and about 100 bytes a line after that. Only a document whose digest the
//! current file has not carried yet is added, so a file stands on its own;
//! after rotation the new file carries them again (no line is queued across
//! a rotation: the test `a_batch_that_crosses_the_cap_…` reads each file
//! alone). Alternatives we did not take:
//! the full claims on every line (up to 4 KB a line, on the hot path), or
//! recovering claims at replay time from certificates (they are not the
//! claims that were decided on: vulnerability counts change at renewal).
//! An outbound decision about a destination outside the mesh also records
//! `external` (`{"ip":…,"host":…}`, with the host the app named).
//! Outbound lines say where the app called in `peer_addr` and who called
//! in `app_addr`; inbound lines of a pooled tunnel stream also carry the
//! calling app's address in `app_addr`, as the peer sidecar reports it. Request headers are not recorded (size, secrets): replay reports
//! a request whose new decision would read headers as not re-decidable.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

use crate::config::AuditTarget;

/// RFC 3339, UTC, milliseconds.
const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// How often the sidecar writes out buffered allow lines.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered allow lines written out at once when they reach this size.
const BUFFER_BYTES: usize = 64 * 1024;

/// Denials per (direction, rule, source) and second written in full before
/// the rest of that second are only counted.
pub const FULL_DENIALS_PER_SECOND: u64 = 10;

/// Most (direction, rule, source) keys whose denials are coalesced at once.
pub const MAX_COALESCED_KEYS: usize = 4096;

/// At most one warning about failed writes per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// The most capacity a thread keeps in its line buffer between lines.
const MAX_LINE_BUFFER: usize = 16 * 1024;

thread_local! {
    /// Where [`AuditLog::log_at`] encodes a line before queueing it.
    static LINE_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The last second [`write_time`] wrote on this thread: its Unix time
    /// and its text up to and including the `.` before the milliseconds
    /// (`i64::MIN`: none yet).
    static LAST_SECOND: Cell<(i64, [u8; 20])> = const { Cell::new((i64::MIN, [0; 20])) };
}

/// One authorization decision. Everything is borrowed: building a record
/// costs nothing beyond what the caller already has.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AuditRecord<'a> {
    /// `inbound` | `outbound`.
    pub direction: &'a str,
    /// `allow` | `deny`.
    pub decision: &'a str,
    /// The policy is in audit mode and allowed what it would have denied.
    pub audit_only: bool,
    /// The rule that decided, or `default`.
    pub rule: &'a str,
    /// The peer's SPIFFE ID; `None` for a peer outside the mesh.
    pub peer_id: Option<&'a str>,
    /// The peer's socket address: informational only, never used to decide.
    /// Inbound, who connected; outbound, the destination the app dialled.
    pub peer_addr: Option<&'a str>,
    /// The calling app's own address: outbound, the local app (`peer_addr`
    /// is where it called); inbound over a pooled tunnel, the peer's app as
    /// its sidecar reports it (`peer_addr` is that sidecar). Informational
    /// only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_addr: Option<&'a str>,
    /// The port policy saw (the one the caller dialled).
    pub port: u16,
    /// `tcp` | `http1` | `http2` | `grpc`.
    pub protocol: &'a str,
    /// HTTP method, when the decision is about a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    /// HTTP path, when the decision is about a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// Why it was denied (or would have been): "metadata API", "no rule
    /// matched", "peer certificate expired", ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Attribute path → value, for the attributes the rule looked at.
    pub claims: Claims<'a>,
    /// A destination outside the mesh (outbound): its address and the host
    /// the app named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDest<'a>>,
    /// The peer's full claims (a meshed peer), written as its digest.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "digest_only"
    )]
    pub peer_appid: Option<&'a AppIdDoc>,
    /// The local workload's full claims, written as its digest.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "digest_only"
    )]
    pub local_appid: Option<&'a AppIdDoc>,
}

/// The attributes a decision looked at, path → value: a JSON object on the
/// line, its keys in order (as `serde_json::Map` writes them), each once.
/// Borrowed pairs rather than a map: a sidecar writes one per HTTP request,
/// and building a map (a node, a key and a value copied) cost more than
/// encoding it. Or the object already encoded by [`Claims::write_json`]
/// (the sidecar keeps those it writes again and again: `sidecar::audit_claims`).
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a>(ClaimsForm<'a>);

#[derive(Debug, Clone, Copy)]
enum ClaimsForm<'a> {
    Pairs(&'a [(&'a str, &'a serde_json::Value)]),
    /// What [`Claims::write_json`] wrote.
    Json(&'a [u8]),
}

impl Default for Claims<'_> {
    fn default() -> Self {
        Claims::NONE
    }
}

impl<'a> Claims<'a> {
    /// No attributes: `{}`.
    pub const NONE: Claims<'static> = Claims(ClaimsForm::Pairs(&[]));

    /// Puts `pairs` in key order and keeps the last value of each key (as
    /// inserting them into a map in turn would).
    pub fn new(pairs: &'a mut Vec<(&'a str, &'a serde_json::Value)>) -> Claims<'a> {
        // Reversed, then a stable sort: of equal keys the last comes first,
        // and `dedup_by` keeps the first of a run.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Claims(ClaimsForm::Pairs(pairs))
    }

    /// Claims as [`Claims::write_json`] wrote them (nothing else: the bytes
    /// go into the line as they are).
    pub(crate) fn from_json(json: &'a [u8]) -> Claims<'a> {
        Claims(ClaimsForm::Json(json))
    }

    /// Appends the JSON object, `{"path":value,...}`.
    pub fn write_json(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        match self.0 {
            ClaimsForm::Json(json) => buf.extend_from_slice(json),
            ClaimsForm::Pairs(pairs) => {
                buf.push(b'{');
                for (i, (path, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    write_json_str(buf, path);
                    buf.push(b':');
                    serde_json::to_writer(&mut *buf, value)?;
                }
                buf.push(b'}');
            }
        }
        Ok(())
    }

    /// About how many bytes [`Claims::write_json`] writes.
    fn size_hint(&self) -> usize {
        match self.0 {
            ClaimsForm::Pairs(pairs) => 2 + 64 * pairs.len(),
            ClaimsForm::Json(json) => json.len(),
        }
    }
}

impl Serialize for Claims<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self.0 {
            ClaimsForm::Pairs(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (path, value) in pairs {
                    map.serialize_entry(path, value)?;
                }
                map.end()
            }
            ClaimsForm::Json(json) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(json).map_err(serde::ser::Error::custom)?;
                map.serialize(s)
            }
        }
    }
}

impl AuditRecord<'_> {
    /// Appends the line [`AuditLog::log_at`] writes for this record at `at`
    /// to a file that already carries the documents it names (no
    /// `appids`), newline included. On error `buf` may hold part of it.
    pub fn write_line(&self, buf: &mut Vec<u8>, at: impl Into<LineTime>) -> Result<(), String> {
        encode_line_into(buf, self, at.into(), None, None)
    }
}

/// A destination outside the mesh, as an audit line records it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExternalDest<'a> {
    pub ip: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
}

/// A full claims document and its digest (see the module doc): made once
/// per identity, shared by every line that names it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppIdDoc {
    /// 32 lowercase hex digits: the first 128 bits of the SHA-256 of `json`.
    pub digest: String,
    /// The claims as a JSON value (what audit values are read from).
    pub value: serde_json::Value,
}

impl AppIdDoc {
    pub fn new(claims: &appid_policy::AppIdClaims) -> AppIdDoc {
        let value = claims.to_value();
        AppIdDoc {
            digest: appid_digest(&value),
            value,
        }
    }
}

/// The digest audit lines name a claims document by: the first 128 bits of
/// the SHA-256 of its compact JSON, in hex.
pub fn appid_digest(value: &serde_json::Value) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
    hex::encode(&sum.as_ref()[..16])
}

fn digest_only<S: serde::Serializer>(doc: &Option<&AppIdDoc>, s: S) -> Result<S::Ok, S::Error> {
    match doc {
        Some(doc) => s.serialize_str(&doc.digest),
        None => s.serialize_none(),
    }
}

/// Most digests a file is remembered to carry; beyond, the set starts
/// over (documents are then written again: larger, never wrong).
const MAX_APPIDS_PER_FILE: usize = 4096;

enum Sink {
    Stderr,
    File {
        path: PathBuf,
        file: File,
        /// Bytes in `file` (as far as we know: others may append too).
        size: u64,
        /// The size at which `file` is rotated: the cap, or a cap past
        /// where a rotation failed ([`Rotation::first_due`]).
        rotate_at: u64,
        rotation: Rotation,
    },
    #[cfg(test)]
    Failing,
}

/// Denials of one (direction, rule, source) in one second.
struct Repeats {
    second: i64,
    /// Denials written in full this second.
    written: u64,
    /// Denials not written (counted instead).
    suppressed: u64,
    /// What the summary line shows (from the first denial).
    peer_id: Option<String>,
    peer_addr: Option<String>,
    port: u16,
    protocol: String,
}

/// (direction, rule, source).
type RepeatKey = (String, String, String);

struct State {
    sink: Sink,
    /// Denials being coalesced (see the module doc); empty unless enabled.
    repeats: std::collections::HashMap<RepeatKey, Repeats>,
    last_warning: Option<Instant>,
    /// Complete lines not yet written, and how many (see the module doc).
    pending: Vec<u8>,
    pending_lines: u64,
    /// The claims documents the current file carries.
    appids: CarriedDocs,
}

/// The digests of the claims documents a file carries. Line after line a
/// sidecar names the same few documents (its own, its peer's), so the last
/// [`CarriedDocs::RECENT`] found are compared first, as they are, before the
/// set is hashed into (two SipHashes per line otherwise).
#[derive(Default)]
struct CarriedDocs {
    digests: std::collections::HashSet<String>,
    /// Found in `digests` lately (empty: none). Cleared with it.
    recent: [String; CarriedDocs::RECENT],
}

impl CarriedDocs {
    const RECENT: usize = 4;

    fn contains(&mut self, digest: &str) -> bool {
        if self.recent.iter().any(|recent| recent == digest) {
            return true;
        }
        if !self.digests.contains(digest) {
            return false;
        }
        // The oldest slot takes it, keeping its capacity.
        self.recent.rotate_right(1);
        self.recent[0].clear();
        self.recent[0].push_str(digest);
        true
    }

    fn len(&self) -> usize {
        self.digests.len()
    }

    fn insert(&mut self, digest: String) {
        self.digests.insert(digest);
    }

    fn clear(&mut self) {
        self.digests.clear();
        self.recent.iter_mut().for_each(String::clear);
    }
}

impl State {
    /// Writes out every pending line: (lines written, lines lost, error).
    fn write_pending(&mut self) -> (u64, u64, Option<io::Error>) {
        if self.pending.is_empty() {
            return (0, 0, None);
        }
        let result = match &mut self.sink {
            Sink::Stderr => io::stderr().lock().write_all(&self.pending),
            Sink::File {
                path,
                file,
                size,
                rotate_at,
                rotation,
            } => {
                // All of it goes to this file: the lines were encoded for
                // it (they may lean on documents an earlier line of it
                // carries), and queueing stops at the line that reaches
                // the cap (`reaches_cap`). Only the count lines of
                // coalesced denials, which name no documents, may take a
                // file past it (at most `MAX_COALESCED_KEYS` + 1 of them).
                file.write_all(&self.pending).map(|()| {
                    *size += self.pending.len() as u64;
                    if *size >= *rotate_at {
                        match rotation.rotate(path) {
                            Ok(next) => {
                                *file = next;
                                *size = 0;
                                *rotate_at = rotation.first_due();
                                // The new file carries its documents afresh.
                                self.appids.clear();
                            }
                            // Decisions are worth more than the cap: the
                            // lines go on into this file, and rotation is
                            // tried again a cap's worth of bytes later.
                            Err(e) => {
                                tracing::warn!(
                                    path = %path.display(),
                                    error = %e,
                                    "audit log not rotated at its size cap; \
                                     still writing it (check the directory's permissions)"
                                );
                                *rotate_at = size.saturating_add(rotation.max_bytes);
                            }
                        }
                    }
                })
            }
            #[cfg(test)]
            Sink::Failing => Err(io::Error::other("disk on fire")),
        };
        if result.is_err() {
            // What the lost lines carried is not in the file: the next
            // lines carry it again (larger, never wrong).
            self.appids.clear();
        }
        let lines = std::mem::take(&mut self.pending_lines);
        self.pending.clear();
        if self.pending.capacity() > BUFFER_BYTES * 2 {
            self.pending = Vec::new();
        }
        match result {
            Ok(()) => (lines, 0, None),
            Err(e) => (0, lines, Some(e)),
        }
    }
}

impl State {
    /// A file truncated by someone else (`logrotate`'s `copytruncate`) no
    /// longer carries the documents its earlier lines did, and holds fewer
    /// bytes than counted: both start over, so the lines after carry their
    /// documents again and rotation comes a full cap later. Checked at each
    /// flush tick (one `fstat`), not per line: the lines written within one
    /// tick after the truncation may name documents only the copy holds
    /// (give replay the copy too).
    fn notice_truncation(&mut self) {
        if let Sink::File {
            file,
            size,
            rotate_at,
            rotation,
            ..
        } = &mut self.sink
            && let Ok(meta) = file.metadata()
            && meta.len() < *size
        {
            *size = meta.len();
            *rotate_at = rotation.first_due();
            self.appids.clear();
        }
    }

    /// Switches to a newly opened file at the path (after a move-style
    /// rotation by someone else). On error the old file stays in use.
    fn reopen_file(&mut self) -> io::Result<()> {
        if let Sink::File {
            path,
            file,
            size,
            rotate_at,
            rotation,
        } = &mut self.sink
        {
            let next = open_append(path)?;
            let next_size = next.metadata()?.len();
            *file = next;
            *size = next_size;
            *rotate_at = rotation.first_due();
        }
        self.appids.clear();
        Ok(())
    }

    /// Whether the file reaches its size cap once the queued lines are
    /// written: they are then written out at once (and the file rotated)
    /// before another line is encoded.
    fn reaches_cap(&self) -> bool {
        match &self.sink {
            Sink::File {
                size, rotate_at, ..
            } => size.saturating_add(self.pending.len() as u64) >= *rotate_at,
            _ => false,
        }
    }

    /// Counts `record` into its second's repeats and returns `true` if it
    /// is not to be written (a denial of a key already written this second).
    fn coalesce(&mut self, record: &AuditRecord<'_>, at: LineTime) -> bool {
        let source = match (record.peer_id, record.peer_addr) {
            (Some(id), _) => id.to_string(),
            (None, Some(addr)) => addr
                .parse::<std::net::SocketAddr>()
                .map_or_else(|_| addr.to_string(), |a| a.ip().to_string()),
            (None, None) => String::new(),
        };
        let key = (
            record.direction.to_string(),
            record.rule.to_string(),
            source,
        );
        let second = at.unix_second;
        if let Some(repeats) = self.repeats.get_mut(&key)
            && repeats.second == second
        {
            if repeats.written < FULL_DENIALS_PER_SECOND {
                repeats.written += 1;
                return false;
            }
            repeats.suppressed += 1;
            return true;
        }
        // A new second (or key): the old count first, then this denial.
        if let Some(old) = self.repeats.remove(&key) {
            self.push_repeated(&key, &old, at);
        }
        if self.repeats.len() >= MAX_COALESCED_KEYS {
            self.summarize_repeats(at, true);
        }
        if self.repeats.len() < MAX_COALESCED_KEYS {
            self.repeats.insert(
                key,
                Repeats {
                    second,
                    written: 1,
                    suppressed: 0,
                    peer_id: record.peer_id.map(str::to_string),
                    peer_addr: record.peer_addr.map(str::to_string),
                    port: record.port,
                    protocol: record.protocol.to_string(),
                },
            );
        }
        false
    }

    /// Queues the count lines of repeats whose second is over (`all`: every
    /// one), and forgets them.
    fn summarize_repeats(&mut self, now: LineTime, all: bool) {
        if self.repeats.is_empty() {
            return;
        }
        let second = now.unix_second;
        let done: Vec<RepeatKey> = self
            .repeats
            .iter()
            .filter(|(_, r)| all || r.second < second)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(repeats) = self.repeats.remove(&key) {
                self.push_repeated(&key, &repeats, now);
            }
        }
    }

    /// Queues one count line, if anything was suppressed.
    fn push_repeated(&mut self, key: &RepeatKey, repeats: &Repeats, now: LineTime) {
        if repeats.suppressed == 0 {
            return;
        }
        let start = self.pending.len();
        match encode_repeated_into(&mut self.pending, key, repeats, now) {
            Ok(()) => self.pending_lines += 1,
            // Not a line: nothing of it stays.
            Err(_) => self.pending.truncate(start),
        }
    }
}

struct Inner {
    state: Mutex<State>,
    /// The last write failed (and none succeeded since).
    failing: std::sync::atomic::AtomicBool,
    write_errors: AtomicU64,
    lines: AtomicU64,
    buffer_allows: std::sync::atomic::AtomicBool,
    coalesce_denials: std::sync::atomic::AtomicBool,
    coalesced: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = state.write_pending();
    }
}

/// The audit log. Cheap to clone; all clones write to the same place.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("target", &self.target())
            .field("lines", &self.lines())
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

/// When and how far back an audit file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file reaches this many bytes; 0: never.
    pub max_bytes: u64,
    /// Rotated files kept: `<file>.1` (newest) … `<file>.<keep>`.
    pub keep: u32,
}

impl Rotation {
    /// No size cap (the file only grows, or an external tool rotates it).
    pub const NEVER: Rotation = Rotation {
        max_bytes: 0,
        keep: 0,
    };

    /// The size at which a new file is rotated (never, without a cap).
    fn first_due(&self) -> u64 {
        if self.max_bytes == 0 {
            u64::MAX
        } else {
            self.max_bytes
        }
    }

    /// Shifts `<path>.N-1` → `<path>.N` (dropping the oldest), moves the
    /// file to `<path>.1`, and opens a new one.
    fn rotate(&self, path: &Path) -> io::Result<File> {
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.keep.max(1);
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(path, numbered(1))?;
        open_append(path)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o640);
    }
    opts.open(path)
}

impl AuditLog {
    /// `"-"`: standard error; anything else: a file path, opened for append
    /// and created with mode 0640 if missing.
    pub fn open(target: &str) -> io::Result<AuditLog> {
        if target == "-" {
            Ok(AuditLog::stderr())
        } else {
            AuditLog::open_path(Path::new(target))
        }
    }

    /// Opens the target of a [`crate::config::ProxyConfig`].
    pub fn open_target(target: &AuditTarget, rotation: Rotation) -> io::Result<AuditLog> {
        match target {
            AuditTarget::Stderr => Ok(AuditLog::stderr()),
            AuditTarget::File(p) => AuditLog::open_rotated(p, rotation),
        }
    }

    /// Appends to `path` (created 0640 if missing), never rotated.
    pub fn open_path(path: &Path) -> io::Result<AuditLog> {
        AuditLog::open_rotated(path, Rotation::NEVER)
    }

    /// Appends to `path` (created 0640 if missing), rotated per `rotation`.
    pub fn open_rotated(path: &Path, rotation: Rotation) -> io::Result<AuditLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog::with_sink(Sink::File {
            path: path.to_owned(),
            file,
            size,
            rotate_at: rotation.first_due(),
            rotation,
        }))
    }

    /// Writes to standard error.
    pub fn stderr() -> AuditLog {
        AuditLog::with_sink(Sink::Stderr)
    }

    fn with_sink(sink: Sink) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    sink,
                    repeats: std::collections::HashMap::new(),
                    last_warning: None,
                    pending: Vec::new(),
                    pending_lines: 0,
                    appids: CarriedDocs::default(),
                }),
                failing: std::sync::atomic::AtomicBool::new(false),
                write_errors: AtomicU64::new(0),
                lines: AtomicU64::new(0),
                buffer_allows: std::sync::atomic::AtomicBool::new(false),
                coalesce_denials: std::sync::atomic::AtomicBool::new(false),
                coalesced: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock cannot leave a half-written
        // line behind (the line is written by one call), so poison is moot.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `-` or the file path.
    pub fn target(&self) -> String {
        match &self.lock().sink {
            Sink::Stderr => "-".to_owned(),
            Sink::File { path, .. } => path.display().to_string(),
            #[cfg(test)]
            Sink::Failing => "failing".to_owned(),
        }
    }

    /// Writes one decision, stamped with the current time.
    pub fn log(&self, record: &AuditRecord<'_>) {
        self.log_at(record, SystemTime::now());
    }

    /// [`AuditLog::log_at`] for a connection whose fields were encoded once
    /// (`connection`, made by [`ConnectionFields::new`] from a record of
    /// the same connection): the same line, the fields copied, not encoded.
    pub fn log_on_connection(
        &self,
        record: &AuditRecord<'_>,
        connection: &ConnectionFields,
        at: impl Into<LineTime>,
    ) {
        // Debug builds (every test) check the kept fields against the
        // record's: a line from them that differs is a bug (stale or
        // another connection's fields).
        #[cfg(debug_assertions)]
        {
            let at = LineTime::from(OffsetDateTime::UNIX_EPOCH);
            let (mut whole, mut kept) = (Vec::new(), Vec::new());
            let _ = encode_line_into(&mut whole, record, at, None, None);
            let _ = encode_line_into(&mut kept, record, at, None, Some(connection));
            assert_eq!(
                String::from_utf8_lossy(&kept),
                String::from_utf8_lossy(&whole),
                "an audit line from a connection's kept fields differs from the record's"
            );
        }
        self.log_encoded(record, at.into(), Some(connection));
    }

    /// Writes one decision with the given time (a request's, tests,
    /// replays).
    pub fn log_at(&self, record: &AuditRecord<'_>, at: impl Into<LineTime>) {
        self.log_encoded(record, at.into(), None);
    }

    fn log_encoded(
        &self,
        record: &AuditRecord<'_>,
        at: LineTime,
        connection: Option<&ConnectionFields>,
    ) {
        // Encoded outside the lock, into this thread's buffer (not a new
        // one per line).
        let mut line = LINE_BUFFER.try_with(Cell::take).unwrap_or_default();
        line.clear();
        match encode_line_into(&mut line, record, at, None, connection) {
            Ok(()) => self.push_line(record, at, &line),
            // Serializing borrowed strings and a JSON map cannot fail in
            // practice; if it ever does, it is a lost record: count it.
            Err(e) => self.failed(&format!("cannot encode audit record: {e}")),
        }
        if line.capacity() <= MAX_LINE_BUFFER {
            let _ = LINE_BUFFER.try_with(|kept| kept.set(line));
        }
    }

    /// Queues `line`, the encoding of `record` (or counts it into a
    /// coalesced denial), and writes out what is due.
    fn push_line(&self, record: &AuditRecord<'_>, at: LineTime, line: &[u8]) {
        let buffered = self.inner.buffer_allows.load(Ordering::Relaxed)
            && record.decision == "allow"
            && !record.audit_only;
        let coalesce = self.inner.coalesce_denials.load(Ordering::Relaxed)
            && record.decision == "deny"
            && !record.audit_only;
        let (written, lost, error) = {
            let mut state = self.lock();
            if coalesce && state.coalesce(record, at) {
                self.inner.coalesced.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let new_docs = state.new_appids(record);
            if new_docs.is_empty() {
                state.pending.extend_from_slice(line);
            } else {
                // Rare (once per identity per file): encode again, with the
                // documents the file does not carry yet.
                let docs = new_docs
                    .iter()
                    .map(|d| (d.digest.as_str(), &d.value))
                    .collect();
                match encode_line(record, at, Some(docs)) {
                    Ok(full) => state.pending.extend_from_slice(&full),
                    Err(_) => state.pending.extend_from_slice(line),
                }
            }
            state.pending_lines += 1;
            if buffered && state.pending.len() < BUFFER_BYTES && !state.reaches_cap() {
                return;
            }
            state.write_pending()
        };
        self.written(written, lost, error);
    }

    /// Keeps plain allow lines in memory until the next [`AuditLog::flush`]
    /// (see the module doc); the caller must flush periodically.
    pub fn buffer_allows(&self) {
        self.inner.buffer_allows.store(true, Ordering::Relaxed);
    }

    /// Coalesces repeated denials (see the module doc); the caller must
    /// flush periodically.
    pub fn coalesce_denials(&self) {
        self.inner.coalesce_denials.store(true, Ordering::Relaxed);
    }

    /// Denials counted into a `repeated` line instead of written, since
    /// start.
    pub fn coalesced(&self) -> u64 {
        self.inner.coalesced.load(Ordering::Relaxed)
    }

    /// Writes out buffered lines, if any (and the counts of coalesced
    /// denials whose second is over).
    pub fn flush(&self) {
        self.flush_at(SystemTime::now());
    }

    /// [`AuditLog::flush`] as of `now` (tests).
    pub fn flush_at(&self, now: impl Into<LineTime>) {
        let (written, lost, error) = {
            let mut state = self.lock();
            state.summarize_repeats(now.into(), false);
            let written = state.write_pending();
            state.notice_truncation();
            written
        };
        self.written(written, lost, error);
    }

    fn written(&self, written: u64, lost: u64, error: Option<io::Error>) {
        self.inner.lines.fetch_add(written, Ordering::Relaxed);
        if written > 0 {
            self.inner.failing.store(false, Ordering::Relaxed);
        }
        if let Some(e) = error {
            self.inner.failing.store(true, Ordering::Relaxed);
            self.inner
                .write_errors
                .fetch_add(lost - 1, Ordering::Relaxed);
            self.failed(&e.to_string());
        }
    }

    fn failed(&self, error: &str) {
        let total = self.inner.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let warn = {
            let mut state = self.lock();
            let due = state
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL);
            if due {
                state.last_warning = Some(now);
            }
            due
        };
        if warn {
            tracing::warn!(
                target: "appid::audit",
                error,
                failed_records = total,
                audit_log = %self.target(),
                "audit record not written (further failures are counted, reported once a minute)"
            );
        }
    }

    /// Closes and reopens the file (after a move-style log rotation). On
    /// error the old file stays in use. No-op for stderr.
    pub fn reopen(&self) -> io::Result<()> {
        let now = LineTime::from(SystemTime::now());
        // One lock for both: a line queued between the old file's last
        // write and the switch would name documents only the old file has.
        let ((written, lost, error), reopened) = {
            let mut state = self.lock();
            state.summarize_repeats(now, false);
            let flushed = state.write_pending();
            (flushed, state.reopen_file())
        };
        self.written(written, lost, error);
        reopened
    }

    /// Whether the last write failed (no write has succeeded since): the
    /// sidecar then reports not ready.
    pub fn failing(&self) -> bool {
        self.inner.failing.load(Ordering::Relaxed)
    }

    /// Records that could not be written since start.
    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }

    /// Records written since start.
    pub fn lines(&self) -> u64 {
        self.inner.lines.load(Ordering::Relaxed)
    }
}

impl State {
    /// The documents `record` names that the current file does not carry
    /// yet, now counted as carried.
    fn new_appids<'a>(&mut self, record: &AuditRecord<'a>) -> Vec<&'a AppIdDoc> {
        let mut new = Vec::new();
        for doc in [record.peer_appid, record.local_appid]
            .into_iter()
            .flatten()
        {
            if self.appids.contains(&doc.digest)
                || new.iter().any(|d: &&AppIdDoc| d.digest == doc.digest)
            {
                continue;
            }
            new.push(doc);
        }
        if !new.is_empty() {
            if self.appids.len() + new.len() > MAX_APPIDS_PER_FILE {
                self.appids.clear();
            }
            for doc in &new {
                self.appids.insert(doc.digest.clone());
            }
        }
        new
    }
}

/// The full line, newline included, with `appids` when given.
fn encode_line(
    record: &AuditRecord<'_>,
    at: impl Into<LineTime>,
    appids: Option<std::collections::BTreeMap<&str, &serde_json::Value>>,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(256 + record.claims.size_hint());
    encode_line_into(&mut buf, record, at, appids.as_ref(), None)?;
    Ok(buf)
}

// The encoders below write JSON by hand, field by field, each value through
// serde_json: the bytes a `#[derive(Serialize)]` struct with `time` first and
// the record `#[serde(flatten)]`ed gave (the tests keep that encoder as the
// reference and compare), without serde's flatten machinery (a map
// serializer per field) or a `time` format description per line. Keys are
// literals that need no escaping.

/// Appends the line for `record` (see [`encode_line`]) to `buf`; on error,
/// `buf` may hold part of it.
fn encode_line_into(
    buf: &mut Vec<u8>,
    record: &AuditRecord<'_>,
    at: impl Into<LineTime>,
    appids: Option<&std::collections::BTreeMap<&str, &serde_json::Value>>,
    connection: Option<&ConnectionFields>,
) -> Result<(), String> {
    buf.extend_from_slice(b"{\"time\":\"");
    write_time(buf, at.into())?;
    buf.push(b'"');
    write_record_fields(buf, record, appids, connection).map_err(|e| e.to_string())?;
    buf.extend_from_slice(b"}\n");
    Ok(())
}

/// The fields of an audit line that every decision on one connection
/// shares (`peer_id` to `port`, and `external` to `local_appid`), encoded
/// once for the connection. Those are 5 of a request line's 11 strings
/// and both of its addresses: encoding them again for every request was a
/// third of the cost of its line (`bench/e2e/instructions.sh`).
#[derive(Debug)]
pub struct ConnectionFields {
    /// From `,"peer_id":` to the port's digits.
    peer: Box<[u8]>,
    /// From `external` (or `peer_appid`, or nothing) to the end of
    /// `local_appid`.
    identities: Box<[u8]>,
}

impl ConnectionFields {
    /// `record`'s connection fields, as [`AuditLog::log`] would write them.
    pub fn new(record: &AuditRecord<'_>) -> serde_json::Result<ConnectionFields> {
        let mut peer = Vec::new();
        write_peer_fields(&mut peer, record);
        let mut identities = Vec::new();
        write_identity_fields(&mut identities, record)?;
        Ok(ConnectionFields {
            peer: peer.into(),
            identities: identities.into(),
        })
    }
}

/// `record`'s fields after `time`, in [`AuditRecord`]'s order, skipping
/// what its `skip_serializing_if`s skip, then `appids`; the connection's
/// fields copied from `connection` when given.
fn write_record_fields(
    buf: &mut Vec<u8>,
    record: &AuditRecord<'_>,
    appids: Option<&std::collections::BTreeMap<&str, &serde_json::Value>>,
    connection: Option<&ConnectionFields>,
) -> serde_json::Result<()> {
    match verdict_literal(record.direction, record.decision, record.audit_only) {
        Some(literal) => buf.extend_from_slice(literal),
        None => {
            field_str(buf, key!("direction"), record.direction);
            field_str(buf, key!("decision"), record.decision);
            buf.extend_from_slice(if record.audit_only {
                key!("audit_only", "true")
            } else {
                key!("audit_only", "false")
            });
        }
    }
    field_str(buf, key!("rule"), record.rule);
    match connection {
        Some(connection) => buf.extend_from_slice(&connection.peer),
        None => write_peer_fields(buf, record),
    }
    match protocol_literal(record.protocol) {
        Some(literal) => buf.extend_from_slice(literal),
        None => field_str(buf, key!("protocol"), record.protocol),
    }
    if let Some(method) = record.method {
        field_str(buf, key!("method"), method);
    }
    if let Some(path) = record.path {
        field_str(buf, key!("path"), path);
    }
    if let Some(reason) = record.reason {
        field_str(buf, key!("reason"), reason);
    }
    buf.extend_from_slice(key!("claims"));
    record.claims.write_json(buf)?;
    match connection {
        Some(connection) => buf.extend_from_slice(&connection.identities),
        None => write_identity_fields(buf, record)?,
    }
    if let Some(appids) = appids {
        field(buf, key!("appids"), appids)?;
    }
    Ok(())
}

/// `direction`, `decision` and `audit_only` as one literal, for the values
/// a sidecar writes (`None` for any other: written field by field). Three
/// fields whose values come from a handful: copying one piece saves two
/// escape checks and five copies per line.
fn verdict_literal(direction: &str, decision: &str, audit_only: bool) -> Option<&'static [u8]> {
    macro_rules! verdict {
        ($direction:literal, $decision:literal, $audit_only:literal) => {
            concat!(
                ",\"direction\":\"",
                $direction,
                "\",\"decision\":\"",
                $decision,
                "\",\"audit_only\":",
                $audit_only
            )
            .as_bytes()
        };
    }
    Some(match (direction, decision, audit_only) {
        ("inbound", "allow", false) => verdict!("inbound", "allow", "false"),
        ("inbound", "allow", true) => verdict!("inbound", "allow", "true"),
        ("inbound", "deny", false) => verdict!("inbound", "deny", "false"),
        ("inbound", "deny", true) => verdict!("inbound", "deny", "true"),
        ("outbound", "allow", false) => verdict!("outbound", "allow", "false"),
        ("outbound", "allow", true) => verdict!("outbound", "allow", "true"),
        ("outbound", "deny", false) => verdict!("outbound", "deny", "false"),
        ("outbound", "deny", true) => verdict!("outbound", "deny", "true"),
        _ => return None,
    })
}

/// `protocol` as one literal for the protocols a sidecar names (`None`
/// for any other).
fn protocol_literal(protocol: &str) -> Option<&'static [u8]> {
    Some(match protocol {
        "tcp" => key!("protocol", "\"tcp\""),
        "http1" => key!("protocol", "\"http1\""),
        "http2" => key!("protocol", "\"http2\""),
        "grpc" => key!("protocol", "\"grpc\""),
        _ => return None,
    })
}

/// `peer_id`, `peer_addr`, `app_addr` and `port`.
fn write_peer_fields(buf: &mut Vec<u8>, record: &AuditRecord<'_>) {
    field_opt_str(buf, key!("peer_id"), record.peer_id);
    field_opt_str(buf, key!("peer_addr"), record.peer_addr);
    if let Some(app_addr) = record.app_addr {
        field_str(buf, key!("app_addr"), app_addr);
    }
    buf.extend_from_slice(key!("port"));
    buf.extend_from_slice(itoa::Buffer::new().format(record.port).as_bytes());
}

/// `external`, `peer_appid` and `local_appid`.
fn write_identity_fields(buf: &mut Vec<u8>, record: &AuditRecord<'_>) -> serde_json::Result<()> {
    if let Some(external) = &record.external {
        field(buf, key!("external"), external)?;
    }
    // `digest_only`: the digest, not the document.
    if let Some(doc) = record.peer_appid {
        field_str(buf, key!("peer_appid"), &doc.digest);
    }
    if let Some(doc) = record.local_appid {
        field_str(buf, key!("local_appid"), &doc.digest);
    }
    Ok(())
}

/// Appends the count line of coalesced denials (key: direction, rule,
/// source) to `buf`.
fn encode_repeated_into(
    buf: &mut Vec<u8>,
    key: &RepeatKey,
    repeats: &Repeats,
    now: impl Into<LineTime>,
) -> serde_json::Result<()> {
    buf.extend_from_slice(b"{\"time\":\"");
    // As before: a time that cannot be formatted (none can) is left empty
    // rather than losing the count.
    let _ = write_time(buf, now.into());
    buf.push(b'"');
    field(buf, key!("direction"), key.0.as_str())?;
    buf.extend_from_slice(b",\"decision\":\"deny\",\"audit_only\":false");
    field(buf, key!("rule"), key.1.as_str())?;
    field(buf, key!("peer_id"), &repeats.peer_id)?;
    field(buf, key!("peer_addr"), &repeats.peer_addr)?;
    field(buf, key!("port"), &repeats.port)?;
    field(buf, key!("protocol"), repeats.protocol.as_str())?;
    let reason = format!(
        "{} more denials by this rule from this source in the same second (coalesced after {})",
        repeats.suppressed, repeats.written
    );
    field(buf, key!("reason"), reason.as_str())?;
    field(buf, key!("repeated"), &repeats.suppressed)?;
    buf.extend_from_slice(b",\"claims\":{}}\n");
    Ok(())
}

/// `,"<key>":` as one literal (and with a second argument, the literal
/// value after it): one copy per key, where writing the separator, the
/// quoted key and the colon one by one made three calls to `memcpy` (about
/// a fifth of encoding a line). Keys are literals that need no escaping.
macro_rules! key {
    ($key:literal) => {
        concat!(",\"", $key, "\":").as_bytes()
    };
    ($key:literal, $value:literal) => {
        concat!(",\"", $key, "\":", $value).as_bytes()
    };
}
use key;

/// Appends `key` (a [`key!`]) and `value` as JSON.
fn field<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    key: &[u8],
    value: &T,
) -> serde_json::Result<()> {
    buf.extend_from_slice(key);
    serde_json::to_writer(&mut *buf, value)
}

/// [`field`] for a string.
fn field_str(buf: &mut Vec<u8>, key: &[u8], value: &str) {
    buf.extend_from_slice(key);
    write_json_str(buf, value);
}

/// [`field`] for an optional string (`null` when absent).
fn field_opt_str(buf: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    buf.extend_from_slice(key);
    match value {
        Some(value) => write_json_str(buf, value),
        None => buf.extend_from_slice(b"null"),
    }
}

/// Appends `text` as a JSON string, byte for byte as serde_json writes it.
/// Nearly every audit field has nothing to escape (identities, addresses,
/// rule names, digests): those are checked eight bytes at a time and copied
/// whole, where serde_json walks its escape table a byte at a time (that
/// walk was 6% of a sidecar's instructions per HTTP/1.1 request:
/// `bench/e2e/instructions.sh`).
fn write_json_str(buf: &mut Vec<u8>, text: &str) {
    if !needs_escaping(text.as_bytes()) {
        buf.reserve(text.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
    } else {
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *buf, text);
    }
}

/// Whether `bytes` hold a byte JSON strings escape: a control character
/// (below 0x20), `"` or `\`; eight bytes at a time ([`crate::swar`]).
fn needs_escaping(bytes: &[u8]) -> bool {
    let (mut words, rest) = crate::swar::words(bytes);
    words.any(|word| crate::swar::has_byte_below_or(word, 0x20, b"\"\\"))
        || rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// An audit line's time as its text needs it: the Unix second (the key of
/// the text kept per second, [`LAST_SECOND`], and of coalescing) and the
/// millisecond. From a `SystemTime` (the sidecar's lines) no calendar
/// arithmetic is done: a date is worked out once per second, for the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTime {
    unix_second: i64,
    milli: u16,
}

impl From<SystemTime> for LineTime {
    fn from(at: SystemTime) -> LineTime {
        let (unix_second, nanos) = crate::sidecar::clock::since_epoch(at);
        LineTime {
            unix_second,
            milli: (nanos / 1_000_000) as u16,
        }
    }
}

impl From<OffsetDateTime> for LineTime {
    fn from(at: OffsetDateTime) -> LineTime {
        LineTime {
            unix_second: at.unix_timestamp(),
            milli: at.millisecond(),
        }
    }
}

/// Appends `at` in UTC as [`TIME_FORMAT`] writes it
/// (`2026-11-20T10:00:00.123Z`): digit by digit for years 0 to 9999 (every
/// line a sidecar writes), through `time` otherwise. Nothing is appended on
/// error (a time no date holds).
///
/// Lines come many to a second, so the text up to the second is kept per
/// thread ([`LAST_SECOND`]) and only the milliseconds are written for the
/// next line in the same second: the calendar date was most of the cost.
fn write_time(buf: &mut Vec<u8>, at: LineTime) -> Result<(), String> {
    let kept = LAST_SECOND
        .try_with(Cell::get)
        .ok()
        .filter(|(second, _)| *second == at.unix_second);
    let up_to_second = match kept {
        Some((_, text)) => text,
        None => {
            let date = OffsetDateTime::from_unix_timestamp(at.unix_second)
                .map_err(|e| format!("audit line time: {e}"))?;
            let Some(text) = text_up_to_second(date) else {
                let date = date + time::Duration::milliseconds(at.milli.into());
                let text = date.format(TIME_FORMAT).map_err(|e| e.to_string())?;
                buf.extend_from_slice(text.as_bytes());
                return Ok(());
            };
            let _ = LAST_SECOND.try_with(|last| last.set((at.unix_second, text)));
            text
        }
    };
    let milli = at.milli;
    buf.extend_from_slice(&up_to_second);
    buf.extend_from_slice(&[
        b'0' + (milli / 100) as u8,
        b'0' + (milli / 10 % 10) as u8,
        b'0' + (milli % 10) as u8,
        b'Z',
    ]);
    Ok(())
}

/// `at` (UTC) up to and including the `.` before the milliseconds,
/// `2026-11-20T10:00:00.`; `None` outside the years 0 to 9999.
fn text_up_to_second(at: OffsetDateTime) -> Option<[u8; 20]> {
    let (year, month, day) = at.to_calendar_date();
    let year @ 0..=9999 = u16::try_from(year).ok()? else {
        return None;
    };
    let (hour, minute, second) = at.to_hms();
    let mut text = *b"0000-00-00T00:00:00.";
    let mut digits = |from: usize, width: usize, mut n: u16| {
        for i in (from..from + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(0, 4, year);
    digits(5, 2, month as u16);
    digits(8, 2, day.into());
    digits(11, 2, hour.into());
    digits(14, 2, minute.into());
    digits(17, 2, second.into());
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::io::BufRead;

    fn claims() -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("from.labels.app".into(), json!("web"));
        m.insert("from.vulns.critical".into(), json!(0));
        m
    }

    /// `map` as a record's claims (leaked: tests only).
    fn leaked(map: serde_json::Map<String, Value>) -> Claims<'static> {
        let map: &'static serde_json::Map<String, Value> = Box::leak(Box::new(map));
        Claims::new(Box::leak(Box::new(pairs(map))))
    }

    /// `map`'s entries, in its (key) order, for [`Claims::new`].
    fn pairs(map: &serde_json::Map<String, Value>) -> Vec<(&str, &Value)> {
        map.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    fn record(claims: Claims<'_>) -> AuditRecord<'_> {
        AuditRecord {
            direction: "inbound",
            decision: "deny",
            audit_only: false,
            rule: "default",
            peer_id: Some("spiffe://prod.example/ns/shop/sa/web"),
            peer_addr: Some("10.0.0.7:41234"),
            app_addr: None,
            port: 8080,
            protocol: "http1",
            method: Some("GET"),
            path: Some("/v1/\"quoted\"\n"),
            reason: Some("no rule matched"),
            claims,
            external: None,
            peer_appid: None,
            local_appid: None,
        }
    }

    fn read_lines(path: &Path) -> Vec<Value> {
        let f = File::open(path).unwrap();
        io::BufReader::new(f)
            .lines()
            .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn carried_documents_are_found_until_cleared() {
        let mut carried = CarriedDocs::default();
        assert!(!carried.contains("a"));
        let all = ["a", "b", "c", "d", "e", "f"];
        for digest in all {
            carried.insert(digest.to_string());
        }
        // More than `RECENT` of them, in turn and repeated.
        for _ in 0..3 {
            for digest in all {
                assert!(carried.contains(digest), "{digest}");
            }
        }
        assert!(!carried.contains("g"));
        assert_eq!(carried.len(), all.len());
        carried.clear();
        for digest in all {
            assert!(!carried.contains(digest), "{digest} after clear");
        }
        assert_eq!(carried.len(), 0);
    }

    #[test]
    fn repeated_denials_are_coalesced_per_rule_source_and_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        log.coalesce_denials();
        let c = leaked(claims());
        let second = OffsetDateTime::from_unix_timestamp(1_795_341_600).unwrap();
        let plain = |addr| AuditRecord {
            peer_id: None,
            peer_addr: Some(addr),
            ..record(c)
        };
        for i in 0..1000 {
            let at = second + time::Duration::milliseconds(i % 900);
            log.log_at(&record(c), at);
            // Another source: its own first line and count.
            log.log_at(&plain("10.0.0.9:1234"), at);
            log.log_at(&plain("10.0.0.9:5678"), at); // the same IP
        }
        // An allow is never coalesced.
        let allow = AuditRecord {
            decision: "allow",
            ..record(c)
        };
        log.log_at(&allow, second);
        log.log_at(&allow, second);
        let full = FULL_DENIALS_PER_SECOND as usize;
        assert_eq!(
            read_lines(&path).len(),
            2 * full + 2,
            "the first denials of each key, two allows"
        );
        assert_eq!(log.coalesced(), 3000 - 2 * FULL_DENIALS_PER_SECOND);

        log.flush_at(second + time::Duration::seconds(1));
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 2 * full + 4);
        let mut counts: Vec<u64> = lines[2 * full + 2..]
            .iter()
            .map(|l| l["repeated"].as_u64().unwrap())
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                1000 - FULL_DENIALS_PER_SECOND,
                2000 - FULL_DENIALS_PER_SECOND
            ]
        );
        for l in &lines[2 * full + 2..] {
            assert_eq!(l["decision"], "deny");
            assert_eq!(l["rule"], "default");
            assert!(l.get("path").is_none());
        }
        // A new second starts afresh: written, not counted.
        log.log_at(&record(c), second + time::Duration::seconds(2));
        assert_eq!(read_lines(&path).len(), 2 * full + 5);
    }

    #[test]
    fn line_format_and_fields() {
        let c = leaked(claims());
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_341_600_123_456_789).unwrap();
        let line = encode_line(&record(c), at, None).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        assert!(text.starts_with("{\"time\":\"2026-11-22T"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2026-11-22T10:00:00.123Z");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["audit_only"], false);
        assert_eq!(v["rule"], "default");
        assert_eq!(v["peer_id"], "spiffe://prod.example/ns/shop/sa/web");
        assert_eq!(v["peer_addr"], "10.0.0.7:41234");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["protocol"], "http1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/v1/\"quoted\"\n");
        assert_eq!(v["reason"], "no rule matched");
        assert_eq!(v["claims"]["from.labels.app"], "web");
        assert_eq!(v["claims"]["from.vulns.critical"], 0);
    }

    #[test]
    fn l4_allow_omits_l7_fields_and_keeps_null_peer() {
        let c = Claims::NONE;
        let r = AuditRecord {
            direction: "outbound",
            decision: "allow",
            audit_only: false,
            rule: "api-to-stripe",
            peer_id: None,
            peer_addr: None,
            app_addr: None,
            port: 443,
            protocol: "tcp",
            method: None,
            path: None,
            reason: None,
            claims: c,
            external: None,
            peer_appid: None,
            local_appid: None,
        };
        let v: Value =
            serde_json::from_slice(&encode_line(&r, OffsetDateTime::UNIX_EPOCH, None).unwrap())
                .unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["peer_id"], Value::Null);
        assert_eq!(v["peer_addr"], Value::Null);
        assert_eq!(v["claims"], json!({}));
        let o = v.as_object().unwrap();
        assert!(!o.contains_key("method") && !o.contains_key("path") && !o.contains_key("reason"));
    }

    #[test]
    fn file_append_mode_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(path.to_str().unwrap()).unwrap();
        let c = leaked(claims());
        log.log(&record(c));
        log.clone().log(&AuditRecord {
            decision: "allow",
            audit_only: true,
            ..record(c)
        });
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["earlier"], true);
        assert_eq!(lines[1]["decision"], "deny");
        assert_eq!(lines[2]["audit_only"], true);
        assert_eq!(log.lines(), 2);
        assert_eq!(log.write_errors(), 0);
        assert_eq!(log.target(), path.display().to_string());
    }

    #[cfg(unix)]
    #[test]
    fn new_file_is_0640() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        let _log =
            AuditLog::open_target(&AuditTarget::File(path.clone()), Rotation::NEVER).unwrap();
        // The process umask can only remove bits.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    }

    /// A log at `path` that rotates when the third line of `record` is
    /// written to a file, keeping `keep` rotated files.
    fn rotated_every_three_lines(path: &Path, record: &AuditRecord<'_>, keep: u32) -> AuditLog {
        let line_len = encode_line(record, OffsetDateTime::UNIX_EPOCH, None)
            .unwrap()
            .len() as u64;
        let rotation = Rotation {
            max_bytes: 3 * line_len,
            keep,
        };
        AuditLog::open_rotated(path, rotation).unwrap()
    }

    #[test]
    fn rotates_at_the_size_cap_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let claims = leaked(claims());
        let log = rotated_every_three_lines(&path, &record(claims), 2);
        for _ in 0..10 {
            log.log_at(&record(claims), OffsetDateTime::UNIX_EPOCH);
        }
        log.flush();
        let lines = |name: &str| read_lines(&dir.path().join(name)).len();
        // 10 lines: 3 rotated away (dropped), then .2 and .1 full, 1 current.
        assert_eq!(lines("audit.jsonl"), 1);
        assert_eq!(lines("audit.jsonl.1"), 3);
        assert_eq!(lines("audit.jsonl.2"), 3);
        assert!(!dir.path().join("audit.jsonl.3").exists());
        assert_eq!(log.lines(), 10);
        // Every file holds whole lines only.
        for name in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn a_rotation_that_fails_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        block_rotation(dir.path());
        let claims = leaked(claims());
        // Keeping one: nothing to shift first, the one rename fails.
        let log = rotated_every_three_lines(&path, &record(claims), 1);
        for _ in 0..10 {
            log.log_at(&record(claims), OffsetDateTime::UNIX_EPOCH);
            log.flush();
        }
        assert_eq!(read_lines(&path).len(), 10, "every line in the log");
        assert_eq!(log.write_errors(), 0);
        assert_eq!(log.lines(), 10);
    }

    #[test]
    fn reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let c = leaked(claims());
        log.log(&record(c));
        std::fs::rename(&path, dir.path().join("a.jsonl.1")).unwrap();
        log.reopen().unwrap();
        log.log(&record(c));
        assert_eq!(read_lines(&path).len(), 1);
        assert_eq!(read_lines(&dir.path().join("a.jsonl.1")).len(), 1);
    }

    #[test]
    fn open_error_is_returned() {
        assert!(AuditLog::open("/nonexistent-dir/x/audit.jsonl").is_err());
        assert_eq!(AuditLog::open("-").unwrap().target(), "-");
    }

    #[test]
    fn buffered_allows_wait_for_a_denial_or_a_flush_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        log.buffer_allows();
        let c = leaked(claims());
        let allow = |rule| AuditRecord {
            decision: "allow",
            rule,
            ..record(c)
        };
        log.log(&allow("a1"));
        log.log(&allow("a2"));
        assert_eq!(read_lines(&path).len(), 0, "allows are buffered");
        assert_eq!(log.lines(), 0);
        // A denial goes out at once, after the allows it follows.
        log.log(&record(c));
        let rules: Vec<_> = read_lines(&path)
            .iter()
            .map(|l| l["rule"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(rules, ["a1", "a2", record(c).rule]);
        // So does an audit-only allow.
        log.log(&AuditRecord {
            audit_only: true,
            ..allow("would-deny")
        });
        assert_eq!(read_lines(&path).len(), 4);
        log.log(&allow("a3"));
        assert_eq!(read_lines(&path).len(), 4);
        log.flush();
        assert_eq!(read_lines(&path).len(), 5);
        assert_eq!(log.lines(), 5);
        // Dropping the last handle writes what is left.
        log.log(&allow("a4"));
        drop(log);
        assert_eq!(read_lines(&path).len(), 6);
    }

    #[test]
    fn write_errors_are_counted_not_fatal() {
        let log = AuditLog::with_sink(Sink::Failing);
        let c = leaked(claims());
        for _ in 0..5 {
            log.log(&record(c));
        }
        assert_eq!(log.write_errors(), 5);
        assert_eq!(log.lines(), 0);
        // Only the first failure warned; the next warning is a minute away.
        assert!(log.lock().last_warning.is_some());
    }

    #[test]
    fn concurrent_lines_stay_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        const THREADS: usize = 16;
        const PER: usize = 200;
        let big = "x".repeat(3000); // lines larger than PIPE_BUF
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let log = log.clone();
                let big = &big;
                s.spawn(move || {
                    for i in 0..PER {
                        let mut c = serde_json::Map::new();
                        c.insert("t".into(), json!(t));
                        c.insert("i".into(), json!(i));
                        c.insert("pad".into(), json!(big));
                        let rule = format!("rule-{t}");
                        log.log(&AuditRecord {
                            direction: "outbound",
                            decision: "allow",
                            audit_only: false,
                            rule: &rule,
                            peer_id: None,
                            peer_addr: Some("127.0.0.1:1"),
                            app_addr: None,
                            port: 1,
                            protocol: "tcp",
                            method: None,
                            path: None,
                            reason: None,
                            claims: Claims::new(&mut pairs(&c)),
                            external: None,
                            peer_appid: None,
                            local_appid: None,
                        });
                    }
                });
            }
        });
        let lines = read_lines(&path);
        assert_eq!(lines.len(), THREADS * PER);
        let mut seen = [0usize; THREADS];
        for v in &lines {
            let t = v["claims"]["t"].as_u64().unwrap() as usize;
            assert_eq!(v["rule"], format!("rule-{t}"));
            assert_eq!(v["claims"]["pad"].as_str().unwrap().len(), 3000);
            // Per-thread order is preserved.
            assert_eq!(v["claims"]["i"].as_u64().unwrap() as usize, seen[t]);
            seen[t] += 1;
        }
        assert_eq!(log.lines(), (THREADS * PER) as u64);
    }

    fn doc(id: &str) -> AppIdDoc {
        let claims: appid_policy::AppIdClaims = serde_json::from_value(json!({
            "v": 1, "id": id, "labels": {"app": "web"}, "attestation": "manual"
        }))
        .unwrap();
        AppIdDoc::new(&claims)
    }

    #[test]
    fn claims_documents_ride_once_per_file_and_again_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let peer = doc("spiffe://t/peer");
        let local = doc("spiffe://t/local");
        assert_eq!(peer.digest.len(), 32);
        assert_ne!(peer.digest, local.digest);
        assert_eq!(peer, doc("spiffe://t/peer"), "the digest is stable");
        let c = leaked(claims());
        let with = |peer_appid| AuditRecord {
            peer_appid,
            local_appid: Some(&local),
            ..record(c)
        };
        let probe = encode_line(&with(Some(&peer)), OffsetDateTime::UNIX_EPOCH, None).unwrap();
        // Rotation after about four plain lines.
        let log = AuditLog::open_rotated(
            &path,
            Rotation {
                max_bytes: 4 * probe.len() as u64 + 1,
                keep: 1,
            },
        )
        .unwrap();
        log.log(&with(Some(&peer)));
        log.log(&with(Some(&peer)));
        log.log(&with(None));
        let lines = read_lines(&path);
        assert_eq!(lines[0]["peer_appid"], peer.digest.as_str());
        assert_eq!(lines[0]["local_appid"], local.digest.as_str());
        assert_eq!(lines[0]["appids"][&peer.digest]["id"], "spiffe://t/peer");
        assert_eq!(lines[0]["appids"][&local.digest]["id"], "spiffe://t/local");
        assert!(lines[1].get("appids").is_none(), "{}", lines[1]);
        assert!(lines[2].get("peer_appid").is_none());
        // The first line was larger than the cap allows for: rotated now,
        // and the next line carries the documents again.
        for _ in 0..3 {
            log.log(&with(Some(&peer)));
        }
        let rotated = read_lines(&dir.path().join("audit.jsonl.1"));
        let current = read_lines(&path);
        assert!(!current.is_empty() && !rotated.is_empty());
        assert!(
            current[0]["appids"][&peer.digest].is_object(),
            "{}",
            current[0]
        );
        // reopen starts afresh too.
        let other = dir.path().join("other.jsonl");
        let log = AuditLog::open_path(&other).unwrap();
        log.log(&with(Some(&peer)));
        log.log(&with(Some(&peer)));
        log.reopen().unwrap();
        log.log(&with(Some(&peer)));
        let carried: Vec<bool> = read_lines(&other)
            .iter()
            .map(|l| l["appids"][&local.digest].is_object())
            .collect();
        assert_eq!(carried, [true, false, true]);
    }

    /// Every file, read on its own, carries the document of every digest
    /// its lines name, in a line at or before the first that names it.
    fn each_file_carries_its_documents(dir: &Path, names: &[impl AsRef<str>]) -> usize {
        let mut lines_read = 0;
        for name in names.iter().map(AsRef::as_ref) {
            let mut carried = std::collections::HashSet::new();
            for line in read_lines(&dir.join(name)) {
                if let Some(docs) = line.get("appids").and_then(Value::as_object) {
                    carried.extend(docs.keys().cloned());
                }
                for field in ["peer_appid", "local_appid"] {
                    if let Some(digest) = line.get(field).and_then(Value::as_str) {
                        assert!(
                            carried.contains(digest),
                            "{name}: {field} {digest} without its document in that file: {line}"
                        );
                    }
                }
                lines_read += 1;
            }
        }
        lines_read
    }

    /// `record(claims)` as `decision`, naming both sides' documents.
    fn naming<'a>(
        claims: Claims<'a>,
        decision: &'a str,
        peer: &'a AppIdDoc,
        local: &'a AppIdDoc,
    ) -> AuditRecord<'a> {
        AuditRecord {
            decision,
            peer_appid: Some(peer),
            local_appid: Some(local),
            ..record(claims)
        }
    }

    /// The log in `dir` and those of its rotated files (`.1` … `.keep`)
    /// that exist.
    fn log_files(dir: &Path, keep: u32) -> Vec<String> {
        std::iter::once("audit.jsonl".to_owned())
            .chain((1..=keep).map(|n| format!("audit.jsonl.{n}")))
            .filter(|name| dir.join(name).exists())
            .collect()
    }

    /// What `logrotate`'s copytruncate does last: empties the file under
    /// the sidecar's open descriptor.
    fn truncate(path: &Path) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    /// Makes renaming `<dir>/audit.jsonl` to `.1` fail, for root too:
    /// `.1` is a directory with a file in it.
    fn block_rotation(dir: &Path) {
        std::fs::create_dir(dir.join("audit.jsonl.1")).unwrap();
        std::fs::write(dir.join("audit.jsonl.1/x"), b"x").unwrap();
    }

    #[test]
    fn a_batch_that_crosses_the_cap_leaves_each_file_carrying_its_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let peers = [doc("spiffe://t/a"), doc("spiffe://t/b")];
        let local = doc("spiffe://t/local");
        let c = leaked(claims());
        let with = |peer| naming(c, "allow", peer, &local);
        let plain = encode_line(&with(&peers[0]), OffsetDateTime::UNIX_EPOCH, None).unwrap();
        // Allow lines are buffered and written out in one batch that is
        // several caps long: the file is rotated inside it, more than once.
        let log = AuditLog::open_rotated(
            &path,
            Rotation {
                max_bytes: 5 * plain.len() as u64 + 7,
                keep: 8,
            },
        )
        .unwrap();
        log.buffer_allows();
        for i in 0..20 {
            log.log(&with(&peers[i % 2]));
        }
        log.flush();
        let files = log_files(dir.path(), 8);
        assert!(files.len() >= 4, "rotated several times: {files:?}");
        assert_eq!(each_file_carries_its_documents(dir.path(), &files), 20);
    }

    #[test]
    fn a_file_truncated_by_copytruncate_carries_its_documents_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let peer = doc("spiffe://t/peer");
        let local = doc("spiffe://t/local");
        let line = naming(leaked(claims()), "allow", &peer, &local);
        let plain = encode_line(&line, OffsetDateTime::UNIX_EPOCH, None).unwrap();
        // The cap is 8 lines: counted from the truncation, not from start.
        let max_bytes = 8 * plain.len() as u64;
        let log = AuditLog::open_rotated(&path, Rotation { max_bytes, keep: 1 }).unwrap();
        log.buffer_allows();
        for _ in 0..6 {
            log.log(&line);
        }
        log.flush();
        // logrotate's copytruncate: the lines so far go to a copy, the file
        // is emptied under the sidecar's open descriptor.
        std::fs::copy(&path, dir.path().join("audit.jsonl.copy")).unwrap();
        truncate(&path);
        log.flush(); // the next tick notices
        for _ in 0..4 {
            log.log(&line);
        }
        log.flush();
        assert_eq!(
            each_file_carries_its_documents(dir.path(), &["audit.jsonl"]),
            4
        );
        assert!(
            !dir.path().join("audit.jsonl.1").exists(),
            "not rotated early"
        );
    }

    /// A rotation that failed leaves the file past its cap; a truncation
    /// right after it (before another write) is still noticed.
    #[test]
    fn a_truncation_after_a_failed_rotation_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        block_rotation(dir.path());
        let peer = doc("spiffe://t/peer");
        let local = doc("spiffe://t/local");
        let line = naming(leaked(claims()), "deny", &peer, &local);
        let log = rotated_every_three_lines(&path, &line, 1);
        for _ in 0..3 {
            log.log(&line); // denials: written at once; the third fails to rotate
        }
        truncate(&path);
        log.flush();
        log.log(&line);
        assert_eq!(
            each_file_carries_its_documents(dir.path(), &["audit.jsonl"]),
            1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the cap, the mix of buffered allows and denials, and
        /// when they are flushed: no line is lost or split, each file read
        /// alone carries the documents its lines name, and none holds more
        /// than one line past its cap.
        #[test]
        fn rotated_files_stand_on_their_own(
            // (which peer, allow or deny, flush after it)
            steps in proptest::collection::vec((0usize..3, proptest::bool::ANY, proptest::bool::ANY), 1..40),
            cap_in_lines in 1u64..7,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let peers = [doc("spiffe://t/a"), doc("spiffe://t/b"), doc("spiffe://t/c")];
            let local = doc("spiffe://t/local");
            let c = leaked(claims());
            let with = |peer: usize, allow: bool| {
                naming(c, if allow { "allow" } else { "deny" }, &peers[peer], &local)
            };
            let plain = encode_line(&with(0, true), OffsetDateTime::UNIX_EPOCH, None).unwrap();
            let max_bytes = cap_in_lines * plain.len() as u64;
            let log = AuditLog::open_rotated(&path, Rotation { max_bytes, keep: 64 }).unwrap();
            log.buffer_allows();
            let mut longest = 0;
            for &(peer, allow, flush) in &steps {
                let full = encode_line(
                    &with(peer, allow),
                    OffsetDateTime::UNIX_EPOCH,
                    Some([&peers[peer], &local].iter().map(|d| (d.digest.as_str(), &d.value)).collect()),
                ).unwrap();
                longest = longest.max(full.len() as u64);
                log.log(&with(peer, allow));
                if flush {
                    log.flush();
                }
            }
            log.flush();
            let files = log_files(dir.path(), 64);
            for name in &files {
                let text = std::fs::read(dir.path().join(name)).unwrap();
                proptest::prop_assert!(text.is_empty() || text.ends_with(b"\n"), "{}", name);
                proptest::prop_assert!(
                    (text.len() as u64) < max_bytes + longest,
                    "{}: {} bytes, cap {}", name, text.len(), max_bytes
                );
            }
            proptest::prop_assert_eq!(each_file_carries_its_documents(dir.path(), &files), steps.len());
            proptest::prop_assert_eq!(log.lines(), steps.len() as u64);
        }
    }
}

/// The hand-written encoders against the serde encoders they replaced
/// (kept here, as they were, as the reference): the same bytes, for every
/// field combination and any string.
#[cfg(test)]
mod encoder_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    /// `map`'s entries, in its (key) order, for [`Claims::new`].
    fn pairs(map: &serde_json::Map<String, Value>) -> Vec<(&str, &Value)> {
        map.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// The encoders as they were before they were written by hand.
    mod old {
        use super::super::*;

        /// The serialized line: `time` first, then the record's fields.
        #[derive(Serialize)]
        struct Line<'r, 'a> {
            time: &'r str,
            #[serde(flatten)]
            record: &'r AuditRecord<'a>,
            /// Documents named by this line that the file does not carry yet.
            #[serde(skip_serializing_if = "Option::is_none")]
            appids: Option<std::collections::BTreeMap<&'r str, &'r serde_json::Value>>,
        }

        /// The full line, newline included, with `appids` when given.
        pub fn encode_line(
            record: &AuditRecord<'_>,
            at: OffsetDateTime,
            appids: Option<std::collections::BTreeMap<&str, &serde_json::Value>>,
        ) -> Result<Vec<u8>, String> {
            let time = at
                .to_offset(time::UtcOffset::UTC)
                .format(TIME_FORMAT)
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::with_capacity(256 + record.claims.size_hint());
            serde_json::to_writer(
                &mut buf,
                &Line {
                    time: &time,
                    record,
                    appids,
                },
            )
            .map_err(|e| e.to_string())?;
            buf.push(b'\n');
            Ok(buf)
        }

        /// The summary of coalesced denials, as one line.
        #[derive(Serialize)]
        struct RepeatedLine<'r> {
            time: &'r str,
            direction: &'r str,
            decision: &'static str,
            audit_only: bool,
            rule: &'r str,
            peer_id: Option<&'r str>,
            peer_addr: Option<&'r str>,
            port: u16,
            protocol: &'r str,
            reason: String,
            repeated: u64,
            claims: serde_json::Map<String, serde_json::Value>,
        }

        /// What `State::push_repeated` queued.
        pub fn encode_repeated(key: &RepeatKey, repeats: &Repeats, now: OffsetDateTime) -> Vec<u8> {
            let time = now
                .to_offset(time::UtcOffset::UTC)
                .format(TIME_FORMAT)
                .unwrap_or_default();
            let line = RepeatedLine {
                time: &time,
                direction: &key.0,
                decision: "deny",
                audit_only: false,
                rule: &key.1,
                peer_id: repeats.peer_id.as_deref(),
                peer_addr: repeats.peer_addr.as_deref(),
                port: repeats.port,
                protocol: &repeats.protocol,
                reason: format!(
                    "{} more denials by this rule from this source in the same second (coalesced after {})",
                    repeats.suppressed, repeats.written
                ),
                repeated: repeats.suppressed,
                claims: serde_json::Map::new(),
            };
            let mut bytes = serde_json::to_vec(&line).unwrap();
            bytes.push(b'\n');
            bytes
        }
    }

    /// Strings that need escaping, or look as if they might.
    const NASTY: [&str; 12] = [
        "",
        "plain",
        "quo\"te\"",
        "back\\slash\\",
        "\\\"",
        "ctl \u{0}\u{1}\u{8}\u{b}\u{c}\u{1b}\u{1f}\u{7f}",
        "tab\t nl\n cr\r",
        "/v1/\"quoted\"\n",
        "non-ASCII é ß 日本語 🦀",
        "\u{2028}\u{2029}\u{feff}\u{fffd}",
        "</script><!--",
        "spiffe://prod.example/ns/shop/sa/web",
    ];

    fn utc(nanos: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap()
    }

    fn assert_same_line(
        record: &AuditRecord<'_>,
        at: OffsetDateTime,
        appids: Option<BTreeMap<&str, &Value>>,
    ) {
        let want = old::encode_line(record, at, appids.clone()).unwrap();
        let got = encode_line(record, at, appids.clone()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{record:?}"
        );
        assert_eq!(got, want);
        // And with the connection's fields encoded once, as a keep-alive
        // connection's lines are.
        let connection = ConnectionFields::new(record).unwrap();
        let mut kept = Vec::new();
        encode_line_into(&mut kept, record, at, appids.as_ref(), Some(&connection)).unwrap();
        assert_eq!(kept, want, "with ConnectionFields: {record:?}");
    }

    fn doc(digest: &str, id: &str) -> AppIdDoc {
        AppIdDoc {
            digest: digest.to_owned(),
            value: json!({"v": 1, "id": id, "labels": {"app": id, "q\"": [1, 2.5, null, true]}}),
        }
    }

    #[test]
    fn hand_written_lines_equal_the_serde_flatten_lines_for_every_field_combination() {
        let mut claims = serde_json::Map::new();
        claims.insert("from.labels.app".into(), json!("web"));
        claims.insert("from.vulns.critical".into(), json!(0));
        claims.insert("to.labels.\"odd\"\\key\n".into(), json!("é\u{1}"));
        claims.insert(
            "from.cloud.tags".into(),
            json!({"env": "prod", "n": [1.5, -2]}),
        );
        let mut claims_pairs = pairs(&claims);
        let claims = Claims::new(&mut claims_pairs);
        let peer = doc("5f0c0123456789abcdef0123456789ab", "spiffe://t/peer");
        let local = doc("9ab10123456789abcdef0123456789ab", "spiffe://t/\"local\"");
        let times = [
            utc(0),
            utc(1_795_341_600_123_456_789),
            utc(951_868_799_999_999_999), // 2000-02-29T23:59:59.999
            OffsetDateTime::from_unix_timestamp_nanos(1_735_689_599_999_000_000)
                .unwrap()
                .to_offset(time::macros::offset!(+05:30)),
        ];
        let mut lines = 0;
        // Each bit of `mask` turns an optional part on; the strings cycle
        // through the nasty ones.
        for mask in 0u32..1 << 13 {
            let on = |bit: u32| mask & (1 << bit) != 0;
            let s = |i: u32| NASTY[(mask as usize + i as usize * 5) % NASTY.len()];
            let external = match (on(8), on(9)) {
                (false, _) => None,
                (true, host) => Some(ExternalDest {
                    ip: if host { "2001:db8::1" } else { "10.0.0.1" },
                    host: host.then(|| s(7)),
                }),
            };
            let record = AuditRecord {
                direction: if on(0) { "outbound" } else { "inbound" },
                decision: if on(1) { "deny" } else { "allow" },
                audit_only: on(2),
                rule: s(0),
                peer_id: on(3).then(|| s(1)),
                peer_addr: on(4).then_some("10.0.0.7:41234"),
                app_addr: on(5).then(|| s(2)),
                port: (mask as u16).wrapping_mul(40_503),
                protocol: ["tcp", "http1", "http2", "grpc"][mask as usize % 4],
                method: on(6).then(|| s(3)),
                path: on(6).then(|| s(4)),
                reason: on(7).then(|| s(5)),
                claims: if on(10) { claims } else { Claims::NONE },
                external,
                peer_appid: on(11).then_some(&peer),
                local_appid: on(12).then_some(&local),
            };
            let at = times[mask as usize % times.len()];
            assert_same_line(&record, at, None);
            // With the documents, as the first line of a file has them.
            let appids: BTreeMap<&str, &Value> = [record.peer_appid, record.local_appid]
                .into_iter()
                .flatten()
                .map(|d| (d.digest.as_str(), &d.value))
                .collect();
            if !appids.is_empty() {
                assert_same_line(&record, at, Some(appids));
            }
            lines += 1;
        }
        assert_eq!(lines, 8192);
    }

    #[test]
    fn hand_written_lines_equal_the_serde_flatten_lines_for_nasty_strings() {
        let claims_of = |s: &str| {
            let mut c = serde_json::Map::new();
            c.insert(s.to_owned(), json!(s));
            c.insert(format!("from.{s}"), json!([s, 1]));
            c
        };
        for (i, a) in NASTY.iter().enumerate() {
            for b in NASTY {
                let claims = claims_of(b);
                let mut claims_pairs = pairs(&claims);
                let record = AuditRecord {
                    direction: a,
                    decision: b,
                    audit_only: i % 2 == 0,
                    rule: a,
                    peer_id: Some(b),
                    peer_addr: Some(a),
                    app_addr: Some(b),
                    port: 8080,
                    protocol: a,
                    method: Some(b),
                    path: Some(a),
                    reason: Some(b),
                    claims: Claims::new(&mut claims_pairs),
                    external: Some(ExternalDest {
                        ip: a,
                        host: Some(b),
                    }),
                    peer_appid: None,
                    local_appid: None,
                };
                assert_same_line(&record, utc(1_795_341_600_123_456_789), None);
            }
        }
    }

    #[test]
    fn hand_written_repeated_lines_equal_the_serde_lines() {
        for (i, s) in NASTY.iter().enumerate() {
            let key: RepeatKey = (
                s.to_string(),
                NASTY[(i + 3) % NASTY.len()].into(),
                "src".into(),
            );
            let repeats = Repeats {
                second: 0,
                written: FULL_DENIALS_PER_SECOND,
                suppressed: [1, 990, u64::MAX][i % 3],
                peer_id: (i % 2 == 0).then(|| s.to_string()),
                peer_addr: (i % 3 != 0).then(|| NASTY[(i + 1) % NASTY.len()].to_string()),
                port: [0, 443, u16::MAX][i % 3],
                protocol: NASTY[(i + 2) % NASTY.len()].to_string(),
            };
            let now = utc(1_795_341_601_999_999_999 + i as i128 * 86_400_000_000_000);
            let mut got = Vec::new();
            encode_repeated_into(&mut got, &key, &repeats, now).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&old::encode_repeated(&key, &repeats, now))
            );
        }
    }

    /// What `TIME_FORMAT` gives for `at` in UTC.
    fn formatted(at: OffsetDateTime) -> String {
        at.to_offset(time::UtcOffset::UTC)
            .format(TIME_FORMAT)
            .unwrap()
    }

    fn hand_written(at: OffsetDateTime) -> String {
        let mut buf = b"prefix".to_vec();
        write_time(&mut buf, at.into()).unwrap();
        String::from_utf8(buf[6..].to_vec()).unwrap()
    }

    proptest::proptest! {
        /// A line's time from the wall clock is the time `OffsetDateTime`
        /// reads from it, to the millisecond, before 1970 too.
        #[test]
        fn a_system_time_is_its_calendar_time(
            nanos in -62_135_596_800_000_000_000i128..253_402_300_799_999_999_999i128,
        ) {
            let abs = nanos.unsigned_abs();
            let magnitude = Duration::new((abs / 1_000_000_000) as u64, (abs % 1_000_000_000) as u32);
            let at = if nanos >= 0 {
                SystemTime::UNIX_EPOCH + magnitude
            } else {
                SystemTime::UNIX_EPOCH - magnitude
            };
            let calendar = OffsetDateTime::from(at);
            proptest::prop_assert_eq!(LineTime::from(at), LineTime::from(calendar));
            let mut buf = Vec::new();
            write_time(&mut buf, at.into()).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(buf).unwrap(), formatted(calendar));
        }
    }

    #[test]
    fn time_digits_equal_the_format_description_on_every_day_and_at_the_edges() {
        let day = 86_400i64;
        let check = |secs: i64, nanos: i64| {
            let at = utc(secs as i128 * 1_000_000_000 + nanos as i128);
            assert_eq!(hand_written(at), formatted(at), "{at}");
        };
        // Every day from 1900 to 2100 (leap days, 1900 and 2100 not leap,
        // 2000 leap), at a time of day that moves through the day.
        let from = time::macros::datetime!(1900-01-01 0:00 UTC).unix_timestamp();
        let to = time::macros::datetime!(2101-01-01 0:00 UTC).unix_timestamp();
        for (n, secs) in (from..to).step_by(day as usize).enumerate() {
            let n = n as i64;
            check(secs + (n * 3_607) % day, (n * 7_919_777) % 1_000_000_000);
        }
        // The last and first instants of days, months and years, and every
        // day of the first and last years the digits are written for.
        for year in [
            0, 1, 4, 100, 400, 1600, 1969, 1970, 1999, 2000, 2024, 2400, 9996, 9999,
        ] {
            let start = time::Date::from_calendar_date(year, time::Month::January, 1)
                .unwrap()
                .midnight()
                .assume_utc()
                .unix_timestamp();
            let days = if time::util::is_leap_year(year) {
                366
            } else {
                365
            };
            for d in 0..days {
                let midnight = start + d * day;
                check(midnight, 0);
                check(midnight, 999_999);
                check(midnight, 1_000_000);
                check(midnight + day - 1, 999_999_999);
                check(midnight + 43_200 + 59, 500_000_000);
            }
        }
        // Outside 0–9999 `time` writes it (a sign, more digits).
        for at in [
            time::macros::datetime!(-1-12-31 23:59:59.999 UTC),
            time::macros::datetime!(-9999-01-01 0:00 UTC),
        ] {
            assert_eq!(hand_written(at), formatted(at));
            assert!(hand_written(at).starts_with('-'), "{}", hand_written(at));
        }
        assert_eq!(
            hand_written(utc(1_795_341_600_123_456_789)),
            "2026-11-22T10:00:00.123Z"
        );
    }

    /// The second kept per thread is only reused within that second:
    /// milliseconds of one second, the next second, an earlier one, and a
    /// year `time` writes, in turn.
    #[test]
    fn a_kept_second_is_used_only_within_it() {
        let second = 1_795_341_600i128 * 1_000_000_000;
        for nanos in [
            second + 123_000_000,
            second + 999_999_999,
            second,
            second + 1_000_000_000,
            second - 1,
            second + 5_000_000,
            -62_167_219_200i128 * 1_000_000_000 - 1, // year -1
            second + 7_000_000,
            second + 86_400_000_000_000,
        ] {
            let at = utc(nanos);
            assert_eq!(hand_written(at), formatted(at), "{at}");
        }
    }

    /// Lines through `AuditLog::log_at` (a thread's reused buffer, the
    /// documents on first use) are the reference lines, byte for byte.
    #[test]
    fn logged_bytes_equal_the_serde_flatten_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let peer = doc("5f0c0123456789abcdef0123456789ab", "spiffe://t/peer");
        let local = doc("9ab10123456789abcdef0123456789ab", "spiffe://t/local");
        let mut claims = serde_json::Map::new();
        claims.insert("from.labels.app".into(), json!("web"));
        let mut claims_pairs = pairs(&claims);
        let claims = Claims::new(&mut claims_pairs);
        let long = "/x".repeat(20_000);
        let record = |path: &'static str| AuditRecord {
            direction: "inbound",
            decision: "allow",
            audit_only: false,
            rule: "web",
            peer_id: Some("spiffe://t/peer"),
            peer_addr: Some("10.0.0.7:41234"),
            app_addr: None,
            port: 8080,
            protocol: "http2",
            method: Some("GET"),
            path: Some(path),
            reason: None,
            claims,
            external: None,
            peer_appid: Some(&peer),
            local_appid: Some(&local),
        };
        let long_record = AuditRecord {
            path: Some(&long),
            ..record("")
        };
        let at = utc(1_795_341_600_123_456_789);
        let mut want = Vec::new();
        let docs: BTreeMap<&str, &Value> = [&peer, &local]
            .map(|d| (d.digest.as_str(), &d.value))
            .into_iter()
            .collect();
        want.extend(old::encode_line(&record("/first"), at, Some(docs)).unwrap());
        log.log_at(&record("/first"), at);
        // A long line, then short ones: the buffer holds only the current one.
        for r in [
            long_record,
            record("/a"),
            record("/b\"\n"),
            long_record,
            record(""),
        ] {
            want.extend(old::encode_line(&r, at, None).unwrap());
            log.log_at(&r, at);
        }
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\"\\\\/\\u{0}-\\u{1f}\\u{7f}a-zé日🦀\\u{2028}]{0,24}",
            // The words `verdict_literal` and `protocol_literal` write whole.
            prop::sample::select(
                &[
                    "inbound", "outbound", "allow", "deny", "tcp", "http1", "http2", "grpc",
                    "Inbound", "allow ",
                ][..]
            )
            .prop_map(str::to_string),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            text().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
            proptest::collection::vec(text(), 0..3).prop_map(Value::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        #[test]
        fn hand_written_lines_equal_the_serde_flatten_lines_for_any_strings(
            strings in proptest::collection::vec(text(), 12),
            options in proptest::collection::vec(any::<bool>(), 12),
            claims in proptest::collection::btree_map(text(), value(), 0..4),
            audit_only in any::<bool>(),
            port in any::<u16>(),
            nanos in -62_167_219_200_000_000_000i128..253_402_300_800_000_000_000,
            offset_secs in -86_399i32..86_400,
        ) {
            let on = |i: usize| options[i];
            let opt = |i: usize| on(i).then_some(strings[i].as_str());
            let claims: serde_json::Map<String, Value> = claims.into_iter().collect();
            let mut claims_pairs = pairs(&claims);
            let peer = AppIdDoc { digest: strings[10].clone(), value: json!(strings[11]) };
            let local = AppIdDoc { digest: strings[11].clone(), value: json!({"v": 1}) };
            let record = AuditRecord {
                direction: &strings[0],
                decision: &strings[1],
                audit_only,
                rule: &strings[2],
                peer_id: opt(3),
                peer_addr: opt(4),
                app_addr: opt(5),
                port,
                protocol: &strings[6],
                method: opt(7),
                path: opt(8),
                reason: opt(9),
                claims: Claims::new(&mut claims_pairs),
                external: on(0).then(|| ExternalDest { ip: &strings[10], host: opt(1) }),
                peer_appid: on(10).then_some(&peer),
                local_appid: on(11).then_some(&local),
            };
            // Any instant of years 0–9999, seen from any offset.
            let at = utc(nanos);
            let offset = time::UtcOffset::from_whole_seconds(offset_secs).unwrap();
            let at = at.checked_to_offset(offset).unwrap_or(at);
            prop_assert_eq!(hand_written(at), formatted(at));
            let text = |line: Vec<u8>| String::from_utf8(line).unwrap();
            let want = text(old::encode_line(&record, at, None).unwrap());
            prop_assert_eq!(text(encode_line(&record, at, None).unwrap()), want);
            let appids: BTreeMap<&str, &Value> =
                [(strings[2].as_str(), &peer.value), (strings[11].as_str(), &local.value)].into();
            let want = text(old::encode_line(&record, at, Some(appids.clone())).unwrap());
            prop_assert_eq!(text(encode_line(&record, at, Some(appids)).unwrap()), want);
        }

        #[test]
        fn escaping_is_needed_exactly_for_controls_quotes_and_backslashes(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0u8..0x20, 0x1eu8..0x24],
                0..40,
            ),
        ) {
            let want = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escaping(&bytes), want);
        }

        /// Clean words (what the eight-byte loop mostly sees), with bytes
        /// near the special ones (`0x20`, `0xa2` and `0xdc`: `"` and `\`
        /// with the high bit set), and at most one special byte anywhere.
        #[test]
        fn clean_words_need_no_escaping_and_one_special_byte_does(
            mut bytes in proptest::collection::vec(
                prop_oneof![
                    (0x20u8..=0xff).prop_filter("clean", |b| *b != b'"' && *b != b'\\'),
                    Just(0x20u8), Just(0x21), Just(0x23), Just(0x5b), Just(0x5d),
                    Just(0xa2), Just(0xdc), Just(0x80), Just(0xff),
                ],
                8..40,
            ),
            special in proptest::option::of((any::<prop::sample::Index>(), prop_oneof![0u8..0x20, Just(b'"'), Just(b'\\')])),
        ) {
            prop_assert!(!needs_escaping(&bytes));
            if let Some((at, byte)) = special {
                let at = at.index(bytes.len());
                bytes[at] = byte;
                prop_assert!(needs_escaping(&bytes), "{:?} at {}", byte, at);
            }
        }

        /// A decision's attributes come in rule order, a path maybe twice
        /// (two clauses on one attribute, the same value both times): on the
        /// line they are the object a map of them makes.
        #[test]
        fn claims_are_written_as_the_map_of_them(
            paths in proptest::collection::vec(prop_oneof![text(), Just("from.labels.app".to_string())], 0..6),
        ) {
            // A value per occurrence: which of a repeated path's wins shows.
            let values: Vec<Value> = paths.iter().enumerate().map(|(i, p)| json!([p, i])).collect();
            let mut pairs: Vec<(&str, &Value)> =
                paths.iter().map(String::as_str).zip(&values).collect();
            let map: serde_json::Map<String, Value> =
                pairs.iter().map(|(p, v)| (p.to_string(), (*v).clone())).collect();
            let claims = Claims::new(&mut pairs);
            prop_assert_eq!(serde_json::to_string(&claims).unwrap(), serde_json::to_string(&map).unwrap());
            let record = AuditRecord {
                direction: "inbound",
                decision: "allow",
                audit_only: false,
                rule: "r",
                peer_id: None,
                peer_addr: None,
                app_addr: None,
                port: 1,
                protocol: "http1",
                method: None,
                path: None,
                reason: None,
                claims,
                external: None,
                peer_appid: None,
                local_appid: None,
            };
            let line = String::from_utf8(encode_line(&record, utc(0), None).unwrap()).unwrap();
            let want = format!("\"claims\":{}", serde_json::to_string(&map).unwrap());
            prop_assert!(line.contains(&want), "{} lacks {}", line, want);

            // Kept as JSON (`sidecar::audit_claims`): the same line, the
            // same serialization.
            let mut json = Vec::new();
            claims.write_json(&mut json).unwrap();
            let kept = AuditRecord { claims: Claims::from_json(&json), ..record };
            let kept_line = String::from_utf8(encode_line(&kept, utc(0), None).unwrap()).unwrap();
            prop_assert_eq!(&kept_line, &line);
            prop_assert_eq!(
                serde_json::to_string(&kept.claims).unwrap(),
                serde_json::to_string(&map).unwrap()
            );
        }

        #[test]
        fn a_json_string_is_what_serde_json_writes(text in text()) {
            let mut buf = b"x".to_vec();
            write_json_str(&mut buf, &text);
            let want = format!("x{}", serde_json::to_string(&text).unwrap());
            prop_assert_eq!(String::from_utf8(buf).unwrap(), want);
        }

    }
}
