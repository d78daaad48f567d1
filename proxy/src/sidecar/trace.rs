//! The sidecar's own spans, and W3C trace context across it.
//!
//! Design bias: *free when nobody listens*. Every span here is an INFO span
//! under [`SPAN_TARGET`], which logs leave out unless `RUST_LOG` names it
//! (`crate::telemetry`); without an `otlp_endpoint` the callsites are
//! disabled, [`Span::is_disabled`] is true, and nothing below reads or
//! writes a header or allocates. With export on:
//!
//! - `appid.connection`: one per app connection through the mesh (a
//!   strict TLS connection or a pooled tunnel stream; inbound and
//!   outbound; also TCP and callers outside the mesh). Attributes:
//!   `appid.direction`, `appid.peer.id` (the verified SPIFFE ID),
//!   `appid.mesh.alpn` (`appid/1` or `appid-mux/1`), `appid.tunnel`
//!   (`strict`/`pooled`), `network.peer.address`/`network.peer.port`,
//!   `server.port` (the app port policy sees), `network.protocol.name`
//!   (`http1`, `http2`, `tcp`), and for a connection decided once (TCP)
//!   `appid.decision`/`appid.rule`.
//! - `appid.request`: one per HTTP request or HTTP/2 stream, kind `client`
//!   outbound and `server` inbound: `http.request.method`, `url.path` (the
//!   canonical path policy saw), `http.response.status_code`,
//!   `appid.decision` (`allow`/`deny`) and `appid.rule` (the rule that
//!   decided, as in the audit line). Its parent is the request's
//!   `traceparent` when it has a valid one (the connection span is then a
//!   link), else the connection span.
//!
//! Propagation: an allowed request leaves with `traceparent` (and
//! `tracestate`) naming its `appid.request` span, replacing what it came
//! with, so the peer sidecar's span is its child and the app's span the
//! inbound one's. Unsampled traces are still propagated (flag `00`), and a
//! request that arrives without context gets one.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::http::AppSide;
pub use crate::telemetry::SPAN_TARGET;

/// The W3C trace context headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// What the connection span says about its transport to the peer sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `appid/1`: one mTLS connection per app connection.
    Strict,
    /// `appid-mux/1`: a stream in a pooled tunnel.
    Pooled,
}

impl Transport {
    fn alpn(self) -> &'static str {
        match self {
            Transport::Strict => "appid/1",
            Transport::Pooled => "appid-mux/1",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Transport::Strict => "strict",
            Transport::Pooled => "pooled",
        }
    }
}

/// The `appid.connection` span (module docs). `peer_id`: the verified
/// SPIFFE ID, if the peer is a sidecar.
pub fn connection_span(
    direction: &'static str,
    peer_id: Option<&str>,
    peer_addr: std::net::SocketAddr,
    port: u16,
    transport: Option<Transport>,
) -> Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "appid.connection",
        appid.direction = direction,
        appid.peer.id = Empty,
        appid.mesh.alpn = Empty,
        appid.tunnel = Empty,
        network.peer.address = Empty,
        network.peer.port = peer_addr.port(),
        server.port = port,
        network.protocol.name = Empty,
        appid.decision = Empty,
        appid.rule = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record(
        "network.peer.address",
        tracing::field::display(peer_addr.ip()),
    );
    if let Some(id) = peer_id {
        span.record("appid.peer.id", id);
    }
    if let Some(t) = transport {
        span.record("appid.mesh.alpn", t.alpn());
        span.record("appid.tunnel", t.mode());
    }
    span
}

/// The `appid.request` span for one request (module docs), its parent the
/// request's `traceparent` if valid, else the current (connection) span.
/// `header` looks a header up (only called when spans are on).
pub fn request_span<'h>(
    app: AppSide,
    method: &str,
    header: impl Fn(&'static str) -> Option<&'h str>,
) -> Span {
    let kind = match app {
        // Outbound: the app asks, we call the peer.
        AppSide::Downstream => "client",
        AppSide::Upstream => "server",
    };
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "appid.request",
        otel.kind = kind,
        http.request.method = method,
        url.path = Empty,
        http.response.status_code = Empty,
        appid.decision = Empty,
        appid.rule = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(traceparent) = header(TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&Incoming {
            traceparent,
            tracestate: header(TRACESTATE),
        });
        if cx.span().span_context().is_valid() {
            let connection = Span::current().context();
            let _ = span.set_parent(cx);
            span.add_link(connection.span().span_context().clone());
        }
    }
    span
}

/// Whether this sidecar's spans may be on ([`crate::telemetry::spans_may_be_on`]):
/// a load of a flag, where `Span::current()` looks the subscriber up — a
/// check to make before asking for the current span on every request.
pub fn spans_on() -> bool {
    crate::telemetry::spans_may_be_on()
}

/// Records the response status on a request span (an error status for 5xx).
pub fn record_status(span: &Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// Records the decision on the current span: a request span when the
/// codec entered it, else the connection span (a TCP decision).
pub fn record_decision(decision: &str, rule: &str) {
    if !spans_on() {
        return;
    }
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("appid.decision", decision);
    span.record("appid.rule", rule);
}

/// The trace context headers a request forwarded under `span` carries:
/// `None` when there is nothing to send (spans are off), in which case the
/// request's own headers pass untouched.
pub fn outgoing(span: &Span) -> Option<Outgoing> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Outgoing::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.traceparent.is_some().then_some(out)
}

/// `traceparent` and `tracestate` for a forwarded request.
#[derive(Debug, Default, Clone)]
pub struct Outgoing {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Outgoing {
    /// The headers to add, after removing any the request came with.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TRACEPARENT, self.traceparent.as_deref()),
            (
                TRACESTATE,
                self.tracestate.as_deref().filter(|s| !s.is_empty()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// Whether `name` is a trace context header (replaced on forwarded
/// requests when spans are on).
pub fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

struct Incoming<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_subscriber_nothing_is_made_or_sent() {
        let span = request_span(AppSide::Downstream, "GET", |_| {
            panic!("headers are not read when spans are off")
        });
        assert!(span.is_disabled());
        assert!(outgoing(&span).is_none());
        record_status(&span, 200);
        record_decision("allow", "r");
    }

    #[test]
    fn trace_headers_are_recognised_in_any_case() {
        assert!(is_trace_header("Traceparent"));
        assert!(is_trace_header("TRACESTATE"));
        assert!(!is_trace_header("trace"));
        let out = Outgoing {
            traceparent: Some("tp".into()),
            tracestate: Some(String::new()),
        };
        assert_eq!(out.headers().collect::<Vec<_>>(), [(TRACEPARENT, "tp")]);
    }
}
