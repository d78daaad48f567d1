//! Prometheus metrics (`appid_*`), served on the admin API's `/metrics`.
//!
//! Design bias: *cheap on the hot path, bounded in cardinality*. Every
//! per-direction series is created up front and kept as a handle, so opening
//! a connection or counting bytes is one atomic add, with no lock, map lookup
//! or allocation; the series exist (at 0) from the first scrape, so rates and
//! alerts work before the first event. Only series keyed by a rule name or a
//! reason go through a label map. Their label values come from the policy
//! file (rule names) or from the code (reasons), never from the network,
//! and are escaped so a rule name cannot break the exposition. Certificate
//! expiry is kept as a deadline and turned into "seconds left" at scrape
//! time, so it never goes stale between renewals.
//!
//! Names (the `_total` suffix of counters and the unit suffix are added by
//! the encoder, per OpenMetrics):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `appid_connections_opened_total` | counter | `direction` |
//! | `appid_connections_closed_total` | counter | `direction` |
//! | `appid_connections_active` | gauge | `direction` |
//! | `appid_connections_refused_total` | counter | `direction`, `reason` (e.g. `max_connections`; `not_ready`: no valid identity, before the first certificate or after expiry) |
//! | `appid_authz_decisions_total` | counter | `direction`, `decision`, `rule` |
//! | `appid_handshake_failures_total` | counter | `direction`, `reason` |
//! | `appid_bytes_total` | counter | `direction` |
//! | `appid_http_requests_total` | counter | `direction`, `code` (`2xx`…) |
//! | `appid_http_request_duration_seconds` | histogram | `direction` |
//! | `appid_certificate_expiry_seconds` | gauge | — (absent until set) |
//! | `appid_mesh_connections_total` | counter | `direction`, `alpn` (`appid/1`, `appid-mux/1`) |
//! | `appid_tunnel_streams_total` | counter | `direction` |
//! | `appid_audit_lines_dropped_total` | counter | — (audit lines that could not be written) |
//! | `appid_audit_denials_coalesced_total` | counter | — (denials counted into a `repeated` line) |
//! | `appid_h2_floods_closed_total` | counter | `direction` (HTTP/2 connections closed for control-frame floods and rapid resets) |
//! | `appid_buffer_bytes` | gauge | — (bytes held for peers now, of `limits.max_buffer_bytes`; absent until the sidecar runs) |
//! | `appid_handshake_duration_seconds` | histogram | `direction` (successful mesh TLS handshakes) |
//! | `appid_authz_decision_duration_seconds` | histogram | `direction` (policy decisions, connection and request; one in 16 per thread is timed, `TIMED_DECISIONS`) |
//! | `appid_build_info` | gauge | `version` (always 1) |
//! | `appid_process_cpu_seconds_total`, `appid_process_resident_memory_bytes`, `appid_process_open_fds`, `appid_process_max_fds`, `appid_process_start_time_seconds` | counter, gauges | — (read from `/proc/self` at scrape time: [`process`]) |
//! | `appid_streams_shed_total` | counter | `direction`, `reason` (`memory`: tunnel streams refused while the byte budget is used up) |
//! | `appid_worker_connections` | gauge | `worker` (`1`…`N`: connections each data-plane worker holds now, all listeners; only with `workers` ≥ 2) |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

pub mod exposition;
pub mod process;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = exposition::OPENMETRICS_CONTENT_TYPE;

/// Which way a connection goes, as seen from this sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<appid_policy::policy::Direction> for Direction {
    fn from(d: appid_policy::policy::Direction) -> Self {
        match d {
            appid_policy::policy::Direction::Inbound => Direction::Inbound,
            appid_policy::policy::Direction::Outbound => Direction::Outbound,
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A label value from configuration or code, escaped for the text format
/// (`\`, `"` and newlines would otherwise corrupt the exposition).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Text(Box<str>);

impl Text {
    fn new(s: &str) -> Text {
        Text(s.into())
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.0;
        if !s.contains(['\\', '"', '\n']) {
            return encoder.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkerLabels {
    worker: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    direction: Direction,
    reason: Text,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    direction: Direction,
    decision: Text,
    rule: Text,
}

/// Rule name → the (direction, decision) counters made for it: a handful
/// per rule, as many rules as the policies had.
type DecisionCounters =
    std::sync::RwLock<std::collections::HashMap<Box<str>, Vec<(Direction, Box<str>, Counter)>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlpnLabels {
    direction: Direction,
    alpn: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    direction: Direction,
    code: &'static str,
}

type HistogramFamily = Family<DirLabels, Histogram, fn() -> Histogram>;

/// Request latency buckets, seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Policy decisions take microseconds: 1 µs to 10 ms.
const DECISION_BUCKETS: [f64; 9] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.001,
    0.01,
];

fn decision_histogram() -> Histogram {
    Histogram::new(DECISION_BUCKETS)
}

/// Unset marker for the certificate deadline.
const NO_DEADLINE: i64 = i64::MIN;

/// `appid_certificate_expiry_seconds`, computed at scrape time.
#[derive(Debug)]
struct CertExpiry {
    /// Unix seconds of the certificate's notAfter, or [`NO_DEADLINE`].
    not_after: Arc<AtomicI64>,
}

impl Collector for CertExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let not_after = self.not_after.load(Ordering::Relaxed);
        if not_after == NO_DEADLINE {
            return Ok(());
        }
        let gauge = ConstGauge::new(not_after.saturating_sub(unix_now()));
        let metric = encoder.encode_descriptor(
            "certificate_expiry",
            "Seconds until this workload's own certificate expires (negative: expired)",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Where the byte budget's use is read at scrape time (set once the
/// sidecar's budget exists; nothing is exported before).
#[derive(Clone, Default)]
struct BufferUse(Arc<std::sync::OnceLock<Arc<dyn Fn() -> i64 + Send + Sync>>>);

impl std::fmt::Debug for BufferUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BufferUse")
    }
}

impl Collector for BufferUse {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(read) = self.0.get() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(read());
        let metric = encoder.encode_descriptor(
            "buffer",
            "Bytes held now for peers that have not read them (of limits.max_buffer_bytes)",
            Some(&Unit::Bytes),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// All of the sidecar's metrics. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: [Counter; 2],
    closed: [Counter; 2],
    active: [Gauge; 2],
    bytes: [Counter; 2],
    latency: [Histogram; 2],
    refused: Family<ReasonLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    /// `decisions`' counters already made, by rule: see [`Self::authz_decision`].
    decision_counters: DecisionCounters,
    http_requests: Family<CodeLabels, Counter>,
    /// `http_requests`' counters, by direction and status class, once made
    /// (made on first use: a series appears when it is first counted).
    request_counters: [[std::sync::OnceLock<Counter>; STATUS_CLASSES.len()]; 2],
    mesh_connections: Family<AlpnLabels, Counter>,
    tunnel_streams: [Counter; 2],
    h2_floods: [Counter; 2],
    shed: Family<ReasonLabels, Counter>,
    audit_dropped: Counter,
    audit_coalesced: Counter,
    cert_not_after: Arc<AtomicI64>,
    buffer_use: BufferUse,
    worker_connections: Family<WorkerLabels, Gauge>,
    handshake_latency: [Histogram; 2],
    decision_latency: [Histogram; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("appid");

        let per_dir_counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<DirLabels, Counter>::default();
            registry.register(name, help, family.clone());
            Direction::ALL.map(|direction| family.get_or_create_owned(&DirLabels { direction }))
        };
        let opened = per_dir_counter(&mut registry, "connections_opened", "Connections accepted");
        let closed = per_dir_counter(&mut registry, "connections_closed", "Connections finished");
        let bytes = per_dir_counter(
            &mut registry,
            "bytes",
            "Bytes carried through the proxy, both ways, by connection direction",
        );

        let active_family = Family::<DirLabels, Gauge>::default();
        registry.register(
            "connections_active",
            "Connections open now",
            active_family.clone(),
        );
        let active = Direction::ALL
            .map(|direction| active_family.get_or_create_owned(&DirLabels { direction }));

        let refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before authorization (e.g. reason=max_connections)",
            refused.clone(),
        );

        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "authz_decisions",
            "Authorization decisions by direction, decision and deciding rule",
            decisions.clone(),
        );

        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "handshake_failures",
            "Failed mTLS handshakes by reason",
            handshake_failures.clone(),
        );

        let http_requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests through the proxy by direction and response status class",
            http_requests.clone(),
        );

        let mesh_connections = Family::<AlpnLabels, Counter>::default();
        registry.register(
            "mesh_connections",
            "Verified sidecar-to-sidecar TLS connections by direction and ALPN protocol",
            mesh_connections.clone(),
        );
        let tunnel_streams = per_dir_counter(
            &mut registry,
            "tunnel_streams",
            "App connections carried as streams in pooled appid-mux/1 connections",
        );

        let h2_floods = per_dir_counter(
            &mut registry,
            "h2_floods_closed",
            "HTTP/2 connections closed for a control-frame flood or a rapid reset (most requests cancelled as soon as sent)",
        );

        let shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "streams_shed",
            "Tunnel streams refused under load (reason=memory: the byte budget is used up)",
            shed.clone(),
        );

        let latency_family: HistogramFamily =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency through the proxy, until the response head",
            Unit::Seconds,
            latency_family.clone(),
        );
        let latency = Direction::ALL
            .map(|direction| latency_family.get_or_create_owned(&DirLabels { direction }));

        let audit_dropped = Counter::default();
        registry.register(
            "audit_lines_dropped",
            "Audit lines that could not be written (disk full, file gone)",
            audit_dropped.clone(),
        );

        let audit_coalesced = Counter::default();
        registry.register(
            "audit_denials_coalesced",
            "Repeated denials (same direction, rule and source within a second) counted into one audit line",
            audit_coalesced.clone(),
        );

        let cert_not_after = Arc::new(AtomicI64::new(NO_DEADLINE));
        registry.register_collector(Box::new(CertExpiry {
            not_after: cert_not_after.clone(),
        }));
        let buffer_use = BufferUse::default();
        registry.register_collector(Box::new(buffer_use.clone()));
        registry.register_collector(Box::new(process::ProcessCollector));

        let worker_connections = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_connections",
            "Connections each data-plane worker holds now (workers >= 2; kept even across them)",
            worker_connections.clone(),
        );

        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the running appid's version",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        let handshake_family: HistogramFamily =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "handshake_duration",
            "Successful mTLS handshakes with peer sidecars: how long the TLS handshake took",
            Unit::Seconds,
            handshake_family.clone(),
        );
        let handshake_latency = Direction::ALL
            .map(|direction| handshake_family.get_or_create_owned(&DirLabels { direction }));

        let decision_family: HistogramFamily =
            Family::new_with_constructor(decision_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "authz_decision_duration",
            "How long policy took to decide a connection or request (one decision in 16 is timed)",
            Unit::Seconds,
            decision_family.clone(),
        );
        let decision_latency = Direction::ALL
            .map(|direction| decision_family.get_or_create_owned(&DirLabels { direction }));

        Metrics {
            registry,
            opened,
            closed,
            active,
            bytes,
            latency,
            refused,
            handshake_failures,
            decisions,
            decision_counters: DecisionCounters::default(),
            http_requests,
            request_counters: Default::default(),
            mesh_connections,
            tunnel_streams,
            h2_floods,
            shed,
            audit_dropped,
            audit_coalesced,
            cert_not_after,
            buffer_use,
            worker_connections,
            handshake_latency,
            decision_latency,
        }
    }

    /// Reports `read()` (bytes held now) as `appid_buffer_bytes` at every
    /// scrape. Only the first call counts.
    pub fn watch_buffer(&self, read: impl Fn() -> i64 + Send + Sync + 'static) {
        let _ = self.buffer_use.0.set(Arc::new(read));
    }

    /// The count of connections data-plane worker `worker` (1-based)
    /// holds: the one [`crate::sidecar::balance`] keeps even, exported.
    pub fn worker_connections(&self, worker: usize) -> Gauge {
        self.worker_connections
            .get_or_create(&WorkerLabels {
                worker: worker as u64,
            })
            .clone()
    }

    /// A tunnel stream was refused to shed load; `reason` is a fixed word.
    pub fn stream_shed(&self, direction: Direction, reason: &str) {
        self.shed
            .get_or_create(&ReasonLabels {
                direction,
                reason: Text::new(reason),
            })
            .inc();
    }

    /// An HTTP/2 connection was closed for a control-frame flood.
    pub fn h2_flood_closed(&self, direction: Direction) {
        self.h2_floods[direction.index()].inc();
    }

    /// `denials` more denials were coalesced.
    pub fn audit_denials_coalesced(&self, denials: u64) {
        self.audit_coalesced.inc_by(denials);
    }

    /// `lines` more audit lines could not be written.
    pub fn audit_lines_dropped(&self, lines: u64) {
        self.audit_dropped.inc_by(lines);
    }

    /// A connection was accepted: opened +1, active +1.
    pub fn connection_opened(&self, direction: Direction) {
        self.opened[direction.index()].inc();
        self.active[direction.index()].inc();
    }

    /// A connection ended (call exactly once per `connection_opened`).
    pub fn connection_closed(&self, direction: Direction) {
        self.closed[direction.index()].inc();
        self.active[direction.index()].dec();
    }

    /// A connection was refused before authorization; `reason` is a fixed
    /// word from the code, e.g. `max_connections`.
    pub fn connection_refused(&self, direction: Direction, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                direction,
                reason: Text::new(reason),
            })
            .inc();
    }

    /// A sidecar-to-sidecar TLS connection was verified; `alpn` is what it
    /// negotiated.
    pub fn mesh_connection(&self, direction: Direction, alpn: &'static str) {
        self.mesh_connections
            .get_or_create(&AlpnLabels { direction, alpn })
            .inc();
    }

    /// An app connection was carried as a stream in a pooled tunnel.
    pub fn tunnel_stream(&self, direction: Direction) {
        self.tunnel_streams[direction.index()].inc();
    }

    /// A TLS handshake failed; `reason` is a fixed word from the code.
    pub fn handshake_failure(&self, direction: Direction, reason: &str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels {
                direction,
                reason: Text::new(reason),
            })
            .inc();
    }

    /// One authorization decision (`allow` | `deny`) by `rule` (or `default`).
    ///
    /// Every decision counts here (one per HTTP request), so the counter is
    /// found by the rule's name as borrowed, in a map of the counters made
    /// so far; the family's own lookup needs an owned label set (two
    /// allocations) and hashes all three labels (together 1.7% of a
    /// sidecar's instructions per HTTP/1.1 request before).
    pub fn authz_decision(&self, direction: Direction, decision: &str, rule: &str) {
        self.decision_counter(direction, decision, rule).inc();
    }

    /// The counter [`Metrics::authz_decision`] counts into, for a caller
    /// that keeps it (a connection whose requests keep meeting one rule).
    pub fn decision_counter(&self, direction: Direction, decision: &str, rule: &str) -> Counter {
        let found = {
            let by_rule = self
                .decision_counters
                .read()
                .unwrap_or_else(|e| e.into_inner());
            by_rule.get(rule).and_then(|made| {
                made.iter()
                    .find(|(d, what, _)| *d == direction && &**what == decision)
                    .map(|(_, _, counter)| counter.clone())
            })
        };
        match found {
            Some(counter) => counter,
            None => {
                let counter = self.decisions.get_or_create_owned(&DecisionLabels {
                    direction,
                    decision: Text::new(decision),
                    rule: Text::new(rule),
                });
                let mut by_rule = self
                    .decision_counters
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                let made = by_rule.entry(rule.into()).or_default();
                // Another thread may have made it meanwhile (the same counter).
                if !made
                    .iter()
                    .any(|(d, what, _)| *d == direction && &**what == decision)
                {
                    made.push((direction, decision.into(), counter.clone()));
                }
                counter
            }
        }
    }

    /// Bytes carried (both ways) on a connection of `direction`.
    pub fn bytes(&self, direction: Direction, n: u64) {
        self.bytes[direction.index()].inc_by(n);
    }

    /// The `appid_bytes_total` counter of `direction`, for a connection to
    /// count into as its bytes move (a shared atomic: no lookup per read).
    pub fn bytes_counter(&self, direction: Direction) -> Counter {
        self.bytes[direction.index()].clone()
    }

    /// One HTTP request finished with `status` after `elapsed`.
    /// The counter is kept once made (per direction and status class), so
    /// a request costs no label hashing.
    pub fn http_request(&self, direction: Direction, status: u16, elapsed: Duration) {
        let slot = status_slot(status);
        self.request_counters[direction.index()][slot]
            .get_or_init(|| {
                self.http_requests.get_or_create_owned(&CodeLabels {
                    direction,
                    code: STATUS_CLASSES[slot],
                })
            })
            .inc();
        self.latency[direction.index()].observe(elapsed.as_secs_f64());
    }

    /// A mesh TLS handshake of `direction` succeeded after `elapsed`.
    pub fn handshake_done(&self, direction: Direction, elapsed: Duration) {
        self.handshake_latency[direction.index()].observe(elapsed.as_secs_f64());
    }

    /// Policy decided in `elapsed`.
    pub fn decision_took(&self, direction: Direction, elapsed: Duration) {
        self.decision_latency[direction.index()].observe(elapsed.as_secs_f64());
    }

    /// Our own certificate expires in `seconds_left` seconds from now. Kept
    /// as a deadline: each scrape reports the time left at that moment.
    pub fn set_certificate_expiry(&self, seconds_left: i64) {
        self.cert_not_after
            .store(unix_now().saturating_add(seconds_left), Ordering::Relaxed);
    }

    /// Our own certificate's notAfter, as a time.
    pub fn set_certificate_not_after(&self, not_after: SystemTime) {
        let secs = match not_after.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.cert_not_after.store(secs, Ordering::Relaxed);
    }

    /// Connections open now in `direction`.
    pub fn active_connections(&self, direction: Direction) -> i64 {
        self.active[direction.index()].get()
    }

    /// The OpenMetrics text exposition (see [`CONTENT_TYPE`]), `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a label encoder could. Never
            // serve a truncated exposition.
            tracing::warn!(error = %e, "metrics encoding failed");
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }

    /// The exposition in `format` ([`exposition`]).
    pub fn encode_as(&self, format: exposition::Format) -> String {
        match format {
            exposition::Format::OpenMetrics => self.encode(),
            exposition::Format::PrometheusText => exposition::to_prometheus_text(&self.encode()),
        }
    }
}

/// `2xx`-style class of an HTTP status; bounded to six values.
/// The `code` label's values, in [`status_slot`]'s order.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Where a status's class is in [`STATUS_CLASSES`].
fn status_slot(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

#[cfg(test)]
fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_slot(status)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    fn value(text: &str, series: &str) -> f64 {
        let l = text
            .lines()
            .find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
        l.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn per_direction_series_exist_at_zero() {
        let m = Metrics::new();
        let t = m.encode();
        for d in ["inbound", "outbound"] {
            assert_eq!(
                value(
                    &t,
                    &format!("appid_connections_opened_total{{direction=\"{d}\"}}")
                ),
                0.0
            );
            assert_eq!(
                value(
                    &t,
                    &format!("appid_connections_closed_total{{direction=\"{d}\"}}")
                ),
                0.0
            );
            assert_eq!(
                value(
                    &t,
                    &format!("appid_connections_active{{direction=\"{d}\"}}")
                ),
                0.0
            );
            assert_eq!(
                value(&t, &format!("appid_bytes_total{{direction=\"{d}\"}}")),
                0.0
            );
            assert_eq!(
                value(
                    &t,
                    &format!("appid_http_request_duration_seconds_count{{direction=\"{d}\"}}")
                ),
                0.0
            );
        }
        assert!(t.ends_with("# EOF\n"));
        assert!(
            line(&t, "# TYPE appid_connections_opened counter").is_some(),
            "{t}"
        );
        assert!(
            line(&t, "# TYPE appid_http_request_duration_seconds histogram").is_some(),
            "{t}"
        );
        // Absent until the identity is loaded: 0 would read as "expired".
        assert!(!t.contains("certificate_expiry"), "{t}");
    }

    #[test]
    fn increments_show_up_with_names_and_labels() {
        let m = Metrics::new();
        m.connection_opened(Direction::Inbound);
        m.connection_opened(Direction::Inbound);
        m.connection_closed(Direction::Inbound);
        m.connection_opened(Direction::Outbound);
        m.bytes(Direction::Outbound, 1500);
        m.connection_refused(Direction::Inbound, "max_connections");
        m.handshake_failure(Direction::Inbound, "bad_certificate");
        m.authz_decision(Direction::Inbound, "allow", "web-to-api");
        m.authz_decision(Direction::Inbound, "allow", "web-to-api");
        m.authz_decision(Direction::Outbound, "deny", "default");
        // One rule, other directions and decisions: counters of their own.
        m.authz_decision(Direction::Inbound, "deny", "web-to-api");
        m.authz_decision(Direction::Outbound, "allow", "web-to-api");
        m.authz_decision(Direction::Outbound, "allow", "web-to-api");
        m.authz_decision(Direction::Outbound, "allow", "web-to-api");
        m.http_request(Direction::Inbound, 200, Duration::from_millis(3));
        m.http_request(Direction::Inbound, 403, Duration::from_millis(1));
        m.http_request(Direction::Inbound, 204, Duration::from_secs(60));
        let t = m.encode();
        assert_eq!(
            value(&t, "appid_connections_opened_total{direction=\"inbound\"}"),
            2.0
        );
        assert_eq!(
            value(&t, "appid_connections_closed_total{direction=\"inbound\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "appid_connections_active{direction=\"inbound\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "appid_connections_active{direction=\"outbound\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "appid_bytes_total{direction=\"outbound\"}"),
            1500.0
        );
        assert_eq!(
            value(
                &t,
                "appid_connections_refused_total{direction=\"inbound\",reason=\"max_connections\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "appid_handshake_failures_total{direction=\"inbound\",reason=\"bad_certificate\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "appid_authz_decisions_total{direction=\"inbound\",decision=\"allow\",rule=\"web-to-api\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "appid_authz_decisions_total{direction=\"outbound\",decision=\"deny\",rule=\"default\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "appid_authz_decisions_total{direction=\"inbound\",decision=\"deny\",rule=\"web-to-api\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "appid_authz_decisions_total{direction=\"outbound\",decision=\"allow\",rule=\"web-to-api\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &t,
                "appid_http_requests_total{direction=\"inbound\",code=\"2xx\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "appid_http_requests_total{direction=\"inbound\",code=\"4xx\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "appid_http_request_duration_seconds_count{direction=\"inbound\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &t,
                "appid_http_request_duration_seconds_bucket{le=\"0.005\",direction=\"inbound\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "appid_http_request_duration_seconds_bucket{le=\"+Inf\",direction=\"inbound\"}"
            ),
            3.0
        );
        assert_eq!(m.active_connections(Direction::Inbound), 1);
    }

    /// The shipped Grafana dashboard (`examples/grafana`) uses only metrics
    /// the sidecar exports (every family recorded once, so labelled
    /// families have a series).
    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics() {
        let m = Metrics::new();
        for d in Direction::ALL {
            m.connection_opened(d);
            m.connection_refused(d, "max_connections");
            m.handshake_failure(d, "bad_certificate");
            m.handshake_done(d, Duration::from_millis(2));
            m.authz_decision(d, "allow", "r");
            m.decision_took(d, Duration::from_micros(3));
            m.http_request(d, 200, Duration::from_millis(1));
            m.mesh_connection(d, "appid-mux/1");
            m.tunnel_stream(d);
            m.stream_shed(d, "memory");
        }
        m.audit_lines_dropped(1);
        m.set_certificate_expiry(60);
        m.watch_buffer(|| 0);
        let text = m.encode_as(exposition::Format::PrometheusText);
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../../examples/grafana/appid-dashboard.json"
        ))
        .unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() > 10);
        for panel in panels {
            let expr = panel["targets"][0]["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("appid_"));
            for name in names {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    families.contains(&family),
                    "panel {} uses {name}, which /metrics does not export:\n{text}",
                    panel["title"]
                );
            }
        }
    }

    #[test]
    fn certificate_expiry_is_computed_at_scrape() {
        let m = Metrics::new();
        m.set_certificate_expiry(3600);
        let t = m.encode();
        let left = value(&t, "appid_certificate_expiry_seconds");
        assert!((3598.0..=3600.0).contains(&left), "{left}");
        assert!(
            line(&t, "# UNIT appid_certificate_expiry_seconds seconds").is_some(),
            "{t}"
        );
        assert!(
            line(&t, "# TYPE appid_certificate_expiry_seconds gauge").is_some(),
            "{t}"
        );

        m.set_certificate_not_after(SystemTime::now() - Duration::from_secs(100));
        let left = value(&m.encode(), "appid_certificate_expiry_seconds");
        assert!((-102.0..=-99.0).contains(&left), "{left}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.authz_decision(Direction::Inbound, "deny", "we\"ird\\rule\nname");
        let t = m.encode();
        assert!(t.contains(r#"rule="we\"ird\\rule\nname""#), "{t}");
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("appid_authz_decisions_total"))
                .count(),
            1
        );
    }

    #[test]
    fn policy_direction_converts() {
        assert_eq!(
            Direction::from(appid_policy::policy::Direction::Inbound),
            Direction::Inbound
        );
        assert_eq!(
            Direction::from(appid_policy::policy::Direction::Outbound).as_str(),
            "outbound"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(42), "other");
        assert_eq!(status_class(600), "other");
        assert_eq!(status_class(100), "1xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(status_class(99), "other");
    }

    #[test]
    fn concurrent_updates_are_counted() {
        let m = Arc::new(Metrics::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        m.connection_opened(Direction::Outbound);
                        m.authz_decision(Direction::Outbound, "allow", "r");
                        m.connection_closed(Direction::Outbound);
                    }
                });
            }
        });
        let t = m.encode();
        assert_eq!(
            value(&t, "appid_connections_opened_total{direction=\"outbound\"}"),
            8000.0
        );
        assert_eq!(
            value(&t, "appid_connections_active{direction=\"outbound\"}"),
            0.0
        );
        assert_eq!(
            value(
                &t,
                "appid_authz_decisions_total{direction=\"outbound\",decision=\"allow\",rule=\"r\"}"
            ),
            8000.0
        );
    }
}
