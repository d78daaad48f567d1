//! Logging and trace export: the process-wide `tracing` subscriber.
//!
//! Design bias: **export is off unless asked for, and never in the way of the
//! data plane.** Without an `otlp_endpoint` the subscriber is human-readable
//! lines on stderr filtered by an [`EnvFilter`] from `RUST_LOG` (default
//! `info`), which leaves the sidecar's own spans ([`SPAN_TARGET`]) out unless
//! it names them, and no OpenTelemetry code runs. With one, a
//! `tracing-opentelemetry` layer with a filter of its own (only
//! `appid_proxy` targets, INFO and above: library spans are never exported)
//! turns spans into OpenTelemetry spans, sampled parent-based with a ratio
//! for new traces, and the SDK's batch span processor ships them as
//! OTLP/HTTP protobuf to `<endpoint>/v1/traces`:
//!
//! - Spans are queued in a bounded queue (2048 by default) and exported from
//!   the processor's own thread every 5 s; when the collector is slow or down
//!   spans are dropped and the failure is logged, and requests being proxied
//!   never wait on it.
//! - The HTTP client runs on a one-thread Tokio runtime of its own
//!   (`appid-otlp`), so export needs neither an ambient runtime at
//!   [`init`] (the sidecar builds its runtime afterwards) nor a free worker on
//!   the data plane's runtime at shutdown.
//! - Plain `http` only, no TLS and no credentials in the URL: export goes to
//!   a collector on this host or in this pod. Headers such as authorization
//!   can still come from `OTEL_EXPORTER_OTLP_HEADERS`.
//! - A malformed endpoint fails [`init`] (so startup) with a message naming
//!   `otlp_endpoint`; it is never silently turned into "export off".
//! - [`TelemetryGuard`] flushes and shuts the exporter down when dropped, so
//!   the spans of the last seconds are not lost when the process exits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

/// What to write in the configuration, used in every endpoint error.
const EXAMPLE: &str = "write e.g. `otlp_endpoint: \"http://127.0.0.1:4318\"` (an OTLP/HTTP collector), or remove the line to turn export off";

/// The path OTLP/HTTP collectors accept traces on.
const TRACES_PATH: &str = "/v1/traces";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the subscriber could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `otlp_endpoint` is not a usable `http://host[:port][/prefix]` URL.
    #[error("otlp_endpoint `{endpoint}` {problem}: {EXAMPLE}")]
    BadEndpoint {
        /// The endpoint as written, with any credentials removed.
        endpoint: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The OTLP exporter refused its configuration (e.g. an `OTEL_EXPORTER_OTLP_*`
    /// environment variable asks for something not built in).
    #[error("setting up OTLP trace export: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The export runtime's thread could not be started.
    #[error("starting the OTLP export thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// A global `tracing` subscriber (or `log` logger) is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] TryInitError),
}

/// Keeps trace export alive; dropping it flushes pending spans and shuts the
/// exporter down (waiting at most a few seconds). Without an endpoint it
/// holds nothing. Bind it for the life of `main`: `let _telemetry = ...`.
#[must_use = "dropping the guard shuts trace export down at once"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing OTLP trace export at shutdown");
        }
    }
}

/// The target of the sidecar's own connection and request spans
/// (`crate::sidecar::trace`). Logs leave it out unless `RUST_LOG` names it:
/// without export, those spans then cost no more than a disabled callsite.
pub const SPAN_TARGET: &str = "appid_proxy::spans";

/// How log events are written to stderr (`log_format:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`,
    /// the current spans), for files and log collectors.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// What trace export needs besides the subscriber.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    /// `otlp_endpoint`: `http://host[:port][/prefix]`.
    pub endpoint: &'a str,
    /// The `service.name` resource attribute.
    pub service_name: &'a str,
    /// The ratio of new traces sampled (`otlp_sampling_ratio`, 0 to 1);
    /// a span with a parent follows its parent's decision.
    pub sampling_ratio: f64,
}

/// False only once [`init`] has installed a subscriber under which the
/// sidecar's spans ([`SPAN_TARGET`]) are surely off: no export, and
/// `RUST_LOG` neither names them nor has span directives (`[...]`).
/// (Asking `tracing::enabled!` instead would be wrong here: with per-layer
/// filters an interest check that no event follows leaves a layer's
/// "disabled" mark for the next event, tokio-rs/tracing#2519, and a log
/// line goes missing.)
static SPANS_MAY_BE_ON: AtomicBool = AtomicBool::new(true);

/// Whether the sidecar's spans may be on: see [`SPANS_MAY_BE_ON`]. True
/// until [`init`] (tests that install a subscriber of their own).
pub fn spans_may_be_on() -> bool {
    SPANS_MAY_BE_ON.load(Ordering::Relaxed)
}

/// Whether spans may be on under `export` and `RUST_LOG` ([`log_filter`]
/// leaves them out of logs unless `RUST_LOG` names them; a span directive
/// may match them by name).
fn spans_possible(exporting: bool, rust_log: Option<&str>) -> bool {
    exporting || rust_log.is_some_and(|d| d.contains(SPAN_TARGET) || d.contains('['))
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filtering (default
/// `info`), logs to stderr, and OTLP/HTTP trace export to
/// `<endpoint>/v1/traces` when `export` is `Some`.
///
/// Export has a filter of its own: only `appid_proxy` spans and events at
/// INFO and above, whatever `RUST_LOG` says (library internals such as h2,
/// hyper and rustls are never exported). Calling it again (or after
/// anything else installed a global subscriber) returns
/// [`TelemetryError::AlreadyInstalled`] and changes nothing.
pub fn init(
    export: Option<Export<'_>>,
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let possible = spans_possible(export.is_some(), rust_log.as_deref());
    let filter = log_filter(rust_log.as_deref());
    let (subscriber, guard) = subscriber(export, format, filter, std::io::stderr)?;
    // On failure `guard` is dropped here, shutting down the unused exporter.
    subscriber.try_init()?;
    SPANS_MAY_BE_ON.store(possible, Ordering::Relaxed);
    Ok(guard)
}

/// The log filter: `RUST_LOG` (default `info`), with the sidecar's spans
/// ([`SPAN_TARGET`]) left out unless it names them.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if !rust_log.is_some_and(|d| d.contains(SPAN_TARGET)) {
        filter = filter.add_directive(
            format!("{SPAN_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    }
    filter
}

/// What export admits: our own targets at INFO and above, nothing else.
fn export_filter() -> Targets {
    Targets::new().with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO)
}

/// Builds the subscriber [`init`] installs, without installing it (tests use
/// it with `tracing::subscriber::with_default`).
fn subscriber<W>(
    export: Option<Export<'_>>,
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Result<(impl Subscriber + Send + Sync + 'static, TelemetryGuard), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = export.map(tracer_provider).transpose()?;
    // Only the layers in use, in a `Vec`: an absent layer written as
    // `Option::None` declares an interest in *every* callsite
    // (tracing-subscriber 0.3), so each of our spans would be made — and
    // each request's trace context read and written — with no exporter to
    // send them to, at the default `RUST_LOG=info`. In a `Vec`, a callsite
    // no layer wants stays disabled (`Span::is_disabled`).
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::with_capacity(2);
    // Logs, by `format`.
    layers.push(match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            // Colour codes only for a person at a terminal, never into a
            // file or a collector.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    });
    if let Some(p) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(env!("CARGO_PKG_NAME")))
                .with_filter(export_filter())
                .boxed(),
        );
    }
    let subscriber = tracing_subscriber::registry().with(layers);
    Ok((subscriber, TelemetryGuard { provider }))
}

/// The SDK tracer provider: parent-based ratio sampling, batch span
/// processor -> OTLP/HTTP protobuf.
fn tracer_provider(export: Export<'_>) -> Result<SdkTracerProvider, TelemetryError> {
    let Export {
        endpoint,
        service_name,
        sampling_ratio,
    } = export;
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(ExportClient::new()?)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sampling_ratio.clamp(0.0, 1.0),
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build())
}

/// Checks `otlp_endpoint` and returns the traces URL: `<endpoint>/v1/traces`,
/// or the endpoint as is when it already ends in `/v1/traces`.
fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let bad = |problem| TelemetryError::BadEndpoint {
        endpoint: redact(endpoint),
        problem,
    };
    let trimmed = endpoint.trim();
    let uri: http::Uri = trimmed.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "uses https, which trace export does not support (no TLS client is built in); export to a collector on this host or in this pod",
            ));
        }
        Some(_) => return Err(bad("is not an http URL")),
        None => return Err(bad("has no `http://` in front")),
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "has credentials in it, which would not be sent; set them with OTEL_EXPORTER_OTLP_HEADERS",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if uri.query().is_some() || trimmed.contains('#') {
        return Err(bad("has a query or fragment"));
    }
    let path = uri.path().trim_end_matches('/');
    if path.ends_with(TRACES_PATH) {
        Ok(format!("http://{authority}{path}"))
    } else {
        Ok(format!("http://{authority}{path}{TRACES_PATH}"))
    }
}

/// `endpoint` with any `user:password@` replaced, for error messages.
fn redact(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("REDACTED@{}", &rest[at + 1..]),
        Some(at) => format!("{scheme}://REDACTED@{}", &rest[at + 1..]),
        None => endpoint.to_owned(),
    }
}

/// The exporter's HTTP client: hyper's, driven by a runtime of its own.
///
/// The batch span processor calls the client from its own plain thread (and
/// `futures_executor::block_on`), where there is no Tokio runtime for hyper;
/// so each request is spawned onto this runtime and its `JoinHandle` awaited,
/// which works from any thread, inside a runtime or not.
#[derive(Debug)]
struct ExportClient {
    inner: opentelemetry_http::hyper::HyperClient,
    runtime: OwnedRuntime,
}

impl ExportClient {
    fn new() -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1) // DNS lookups
            .thread_name("appid-otlp")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        // The client's connection pool spawns onto the current runtime.
        let inner = {
            let _entered = runtime.enter();
            opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None)
        };
        Ok(Self {
            inner,
            runtime: OwnedRuntime(Some(runtime)),
        })
    }
}

// `HttpClient` is an `async_trait`; this is its desugared signature.
impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let inner = self.inner.clone();
        let task = self
            .runtime
            .0
            .as_ref()
            .map(|rt| rt.spawn(async move { inner.send_bytes(request).await }));
        Box::pin(async move {
            match task {
                Some(task) => task.await.map_err(|e| Box::new(e) as HttpError)?,
                None => Err("the OTLP export runtime is shut down".into()),
            }
        })
    }
}

/// A runtime that may be dropped anywhere, even inside another runtime
/// (where dropping a `Runtime` normally panics).
#[derive(Debug)]
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt as _, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;

    fn export(endpoint: &str) -> Export<'_> {
        Export {
            endpoint,
            service_name: "appid-test",
            sampling_ratio: 1.0,
        }
    }

    /// One request as the fake collector saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: http::Method,
        path: String,
        content_type: Option<String>,
        body: Bytes,
    }

    /// A real HTTP server on 127.0.0.1:0 that records every request and
    /// answers 200 with an empty (valid) protobuf response.
    fn fake_collector(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fake collector");
        let addr = listener.local_addr().expect("its address");
        let record = Arc::clone(&seen);
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            record.lock().expect("lock").push(Seen {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                content_type: parts
                                    .headers
                                    .get(http::header::CONTENT_TYPE)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                                body,
                            });
                            let response = Response::builder()
                                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .expect("response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[test]
    fn spans_are_surely_off_only_without_export_or_a_directive_for_them() {
        for (exporting, rust_log, possible) in [
            (false, None, false),
            (false, Some("info"), false),
            (false, Some("appid_proxy=trace,h2=debug"), false),
            (true, None, true),
            (true, Some("warn"), true),
            (false, Some("info,appid_proxy::spans=info"), true),
            (false, Some("[appid.request]"), true),
            (false, Some("info,[{appid.rule=x}]=debug"), true),
        ] {
            assert_eq!(
                spans_possible(exporting, rust_log),
                possible,
                "export {exporting}, RUST_LOG {rust_log:?}"
            );
        }
    }

    #[test]
    fn spans_reach_the_collector_by_the_time_the_guard_is_dropped() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (addr, seen) = fake_collector(&rt);

        let endpoint = format!("http://{addr}");
        let (subscriber, guard) = subscriber(
            Some(export(&endpoint)),
            LogFormat::Text,
            EnvFilter::new("info"),
            tracing_subscriber::fmt::TestWriter::new(),
        )
        .expect("telemetry");
        assert!(guard.exporting());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("appid.test").in_scope(|| tracing::info!("hello"));
        });
        // Well inside the 5 s batch delay: only the flush on drop sends it.
        drop(guard);

        let seen = seen.lock().expect("lock").clone();
        let traces: Vec<_> = seen.iter().filter(|s| s.path == TRACES_PATH).collect();
        assert_eq!(traces.len(), 1, "one export request, got {seen:?}");
        let req = traces[0];
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.content_type.as_deref(), Some("application/x-protobuf"));
        assert!(!req.body.is_empty());
        let has = |needle: &[u8]| req.body.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"appid.test"), "span name in {:?}", req.body);
        assert!(has(b"appid-test"), "service.name in {:?}", req.body);
    }

    #[test]
    fn library_spans_are_never_exported_and_logs_leave_ours_out() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (addr, seen) = fake_collector(&rt);
        let endpoint = format!("http://{addr}");
        let (subscriber, guard) = subscriber(
            Some(export(&endpoint)),
            LogFormat::Text,
            log_filter(Some("trace")),
            tracing_subscriber::fmt::TestWriter::new(),
        )
        .expect("telemetry");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!(target: "h2::codec", "h2.internal").in_scope(|| {});
            tracing::info_span!(target: "hyper::proto", "hyper.internal").in_scope(|| {});
            tracing::info_span!(target: SPAN_TARGET, "appid.ours").in_scope(|| {});
        });
        drop(guard);
        let seen = seen.lock().expect("lock").clone();
        let body: Vec<u8> = seen.iter().flat_map(|s| s.body.to_vec()).collect();
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"appid.ours"));
        assert!(!has(b"h2.internal") && !has(b"hyper.internal"));

        // Logs: RUST_LOG, minus our spans unless it names them.
        let off = format!("{SPAN_TARGET}=off");
        assert!(log_filter(Some("trace")).to_string().contains(&off));
        assert!(log_filter(None).to_string().contains(&off));
        let named = format!("info,{SPAN_TARGET}=info");
        assert!(!log_filter(Some(&named)).to_string().contains(&off));
    }

    #[test]
    fn a_collector_that_is_down_costs_no_more_than_the_flush() {
        // A port nothing listens on: every export is refused at once.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let (subscriber, guard) = subscriber(
            Some(export(&format!("http://{addr}"))),
            LogFormat::Text,
            EnvFilter::new("info"),
            tracing_subscriber::fmt::TestWriter::new(),
        )
        .expect("telemetry");
        let started = std::time::Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::info_span!("appid.test", i).in_scope(|| tracing::info!("hello"));
            }
        });
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn json_logs_are_one_object_per_line_and_text_logs_are_not() {
        for (format, json) in [(LogFormat::Json, true), (LogFormat::Text, false)] {
            let out = Captured::default();
            let (subscriber, _guard) =
                subscriber(None, format, EnvFilter::new("info"), out.clone()).expect("telemetry");
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(peer = "spiffe://t/x", "first");
                tracing::warn!("second");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            let parsed: Vec<Option<serde_json::Value>> =
                lines.iter().map(|l| serde_json::from_str(l).ok()).collect();
            if json {
                let first = parsed[0].as_ref().expect("a JSON line");
                assert_eq!(first["level"], "INFO");
                assert_eq!(first["fields"]["message"], "first");
                assert_eq!(first["fields"]["peer"], "spiffe://t/x");
                assert_eq!(parsed[1].as_ref().expect("a JSON line")["level"], "WARN");
            } else {
                assert!(parsed.iter().all(Option::is_none), "{text}");
                assert!(!text.contains('\u{1b}'), "no colour into a writer: {text}");
            }
        }
    }

    /// At the default log level and without export, our spans are not made
    /// at all (what `sidecar::trace` and the client sidecar's choice to
    /// decide an HTTP connection once rely on); with export they are.
    /// Asked of the subscriber itself (`register_callsite`): `tracing`
    /// caches a callsite's interest across every subscriber alive in the
    /// test process, so a span's `is_disabled` would depend on other tests.
    #[test]
    fn our_spans_are_made_only_when_exported_or_named_by_rust_log() {
        // Made under a subscriber that wants everything, for their metadata.
        let (ours, other) =
            tracing::subscriber::with_default(tracing_subscriber::registry(), || {
                (
                    tracing::info_span!(target: SPAN_TARGET, "appid.ours"),
                    tracing::info_span!("appid.other"),
                )
            });
        let wanted = |export: bool, rust_log: Option<&str>, span: &tracing::Span| {
            let (subscriber, _guard) = subscriber(
                export.then(|| super::tests::export("http://127.0.0.1:9")),
                LogFormat::Text,
                log_filter(rust_log),
                tracing_subscriber::fmt::TestWriter::new(),
            )
            .expect("telemetry");
            !subscriber
                .register_callsite(span.metadata().expect("a span's metadata"))
                .is_never()
        };
        assert!(!wanted(false, None, &ours), "RUST_LOG unset (info)");
        assert!(!wanted(false, Some("debug"), &ours));
        assert!(wanted(false, None, &other), "logs see other INFO spans");
        let named = format!("info,{SPAN_TARGET}=info");
        assert!(wanted(false, Some(&named), &ours));
        assert!(wanted(true, None, &ours), "exported");
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        let (subscriber, guard) = subscriber(
            None,
            LogFormat::Text,
            EnvFilter::new("info"),
            tracing_subscriber::fmt::TestWriter::new(),
        )
        .expect("telemetry");
        assert!(!guard.exporting());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("appid.test").in_scope(|| tracing::info!("hello"));
        });
    }

    #[test]
    fn traces_url_appends_the_signal_path() {
        for (given, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (" http://otel:4318 ", "http://otel:4318/v1/traces"),
            ("http://otel/prefix/", "http://otel/prefix/v1/traces"),
            ("http://[::1]:4318/v1/traces", "http://[::1]:4318/v1/traces"),
        ] {
            assert_eq!(traces_url(given).expect(given), want);
        }
    }

    #[test]
    fn a_bad_endpoint_names_the_setting_and_the_fix() {
        for (given, problem) in [
            ("collector:4318", "http"),
            ("127.0.0.1:4318", "http"),
            ("ftp://collector", "not an http URL"),
            ("", "not a URL"),
            ("http://", "not a URL"),
            ("https://otel:4318", "https"),
            ("http://otel:4318/?x=1", "query"),
        ] {
            let Err(e) = subscriber(
                Some(export(given)),
                LogFormat::Text,
                EnvFilter::new("off"),
                std::io::sink,
            ) else {
                panic!("{given:?} was accepted");
            };
            assert!(matches!(e, TelemetryError::BadEndpoint { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("otlp_endpoint `"), "{msg}");
            assert!(msg.contains(problem), "{given:?}: {msg}");
            assert!(msg.contains("http://127.0.0.1:4318"), "{msg}");
        }
    }

    #[test]
    fn credentials_are_refused_and_never_echoed() {
        let e = traces_url("http://user:s3cret@otel:4318").expect_err("credentials");
        let msg = e.to_string();
        assert!(msg.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{msg}");
        assert!(msg.contains("http://REDACTED@otel:4318"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn a_second_install_is_an_error_not_a_panic() {
        // The only test that touches the process-wide subscriber; "off" keeps
        // other tests in this binary quiet.
        let install = || {
            tracing_subscriber::registry()
                .with(EnvFilter::new("off"))
                .try_init()
                .map_err(TelemetryError::from)
        };
        let _ = install();
        let e = install().expect_err("second install");
        assert!(e.to_string().contains("already installed"), "{e}");
    }
}
