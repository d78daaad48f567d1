//! The bodies of appid's fuzz targets, one `pub fn <target>(data: &[u8])`
//! per file in `fuzz_targets/`.
//!
//! Each body feeds `data` to one parser of untrusted input through the
//! crates' public API and asserts that it does not panic and, where cheap,
//! a property of its answer. The same file is compiled into the root
//! workspace's `cargo test` (`tests/fuzz_corpus.rs`, via `#[path]`), which
//! replays every file of `fuzz/corpus/<target>/` through [`TARGETS`]; so it
//! may only use crates that `appid-proxy` depends on, under the same names.
//! See `fuzz/README.md`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appid_policy::AppIdClaims;
use appid_policy::claims::{Cloud, Vulns};
use appid_policy::policy::{Direction, HttpRequest, Policy, Query, Reason};
use appid_proxy::attest::{
    AwsSignature, GcpKeys, JwtKeys, K8sExpectations, verify_iid, verify_iit, verify_psat,
};
use appid_proxy::detect::{self, Classification, MAX_DETECT_BYTES};
use appid_proxy::head_host::{HeadHost, head_host};
use appid_proxy::sidecar::http::h1::{self, Chunked};
use appid_proxy::sidecar::http::path::{canonical_path, path_of};
use appid_proxy::sidecar::http::relay;
use appid_proxy::sidecar::http::{
    AppSide, HttpLimits, PeerHeaders, RequestAuthorizer, RequestFacts, RequestVerdict, Shutdown,
    check_request,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of one fuzz target.
pub type Target = fn(&[u8]);

/// Every target: its name (the folder under `fuzz/corpus/` and the file
/// under `fuzz_targets/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("detect", detect),
    ("http_path", http_path),
    ("h1_chunked", h1_chunked),
    ("h1_proxy", h1_proxy),
    ("h2_relay", h2_relay),
    ("policy_load", policy_load),
    ("extension", extension),
    ("spiffe_id", spiffe_id),
    ("scan_report", scan_report),
    ("aws_iid", aws_iid),
    ("aws_pkcs7", aws_pkcs7),
    ("gcp_keys", gcp_keys),
    ("gcp_iit", gcp_iit),
    ("k8s_psat", k8s_psat),
    ("k8s_pod", k8s_pod),
    ("config", config),
    ("tunnel_authority", tunnel_authority),
];

// ---------------------------------------------------------------------------
// Protocol detection.

/// `detect::{classify, classify_final, first_line}` and `head_host::head_host`.
///
/// Properties: `classify_final` never says `NeedMore` and agrees with a
/// decided `classify`; `NeedMore` only below `MAX_DETECT_BYTES`; a verdict
/// other than `Opaque` (which the module documents as provisional: `PROPF`
/// is opaque, `PROPFIND / HTTP/1.1` is HTTP/1) never changes when more
/// bytes are appended, and no decided prefix goes back to `NeedMore`
/// except from `Opaque`; `head_host` names a host only for HTTP/1, with no
/// whitespace or control byte in it, and a verdict of a complete head
/// never changes when more bytes are appended.
pub fn detect(data: &[u8]) {
    let data = &data[..data.len().min(MAX_DETECT_BYTES + 64)];
    let verdict = detect::classify(data);
    let last = detect::classify_final(data);
    assert_ne!(
        last,
        Classification::NeedMore,
        "classify_final said NeedMore"
    );
    if verdict != Classification::NeedMore {
        assert_eq!(last, verdict, "classify_final disagrees with classify");
    }
    if data.len() >= MAX_DETECT_BYTES {
        assert_ne!(
            verdict,
            Classification::NeedMore,
            "NeedMore at the byte cap"
        );
    }
    let _ = detect::first_line(data);
    let head = head_host(data);
    if let HeadHost::Named(host) = head {
        assert_eq!(
            verdict,
            Classification::Http1,
            "a host from a non-HTTP/1 prefix"
        );
        assert!(
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()),
            "host {host:?}"
        );
    }
    if !matches!(head, HeadHost::Incomplete | HeadHost::NotHttp1) {
        let more = [data, b"Host: 169.254.169.254\r\n\r\n"].concat();
        assert_eq!(
            head_host(&more),
            head,
            "a head's verdict changed with more bytes"
        );
    }
    // Prefixes: every one for short inputs, 32 spread out for long ones.
    let cuts: Vec<usize> = if data.len() <= 512 {
        (1..data.len()).collect()
    } else {
        (1..32).map(|i| i * data.len() / 32).collect()
    };
    for cut in cuts {
        let early = detect::classify(&data[..cut]);
        match early {
            Classification::NeedMore | Classification::Opaque => {}
            decided => assert_eq!(
                verdict, decided,
                "the verdict for the first {cut} bytes changed when more arrived"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP: request target, framing, chunked bodies, the whole HTTP/1 codec.

/// `sidecar::http::path::{canonical_path, path_of}` and
/// `sidecar::http::check_request`, on `METHOD SP target` (or a bare target,
/// checked as `GET`).
///
/// Properties: a canonical path is `*` or starts with `/`, has no `//`, no
/// `\`, no control byte, no dot segment, and is its own canonical path;
/// `check_request` gives the same path when it accepts.
pub fn http_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, target) = text.split_once(' ').unwrap_or(("GET", text));
    let _ = path_of(target);
    let canonical = canonical_path(target);
    if let Ok(path) = &canonical {
        assert!(path == "*" || path.starts_with('/'), "{path:?}");
        if path != "*" {
            assert!(!path.contains("//"), "{path:?} has an empty segment");
            assert!(
                !path.bytes().any(|b| b == b'\\' || b.is_ascii_control()),
                "{path:?}"
            );
            assert!(
                !path.split('/').any(|s| s == "." || s == ".."),
                "{path:?} has a dot segment"
            );
        }
        let again = canonical_path(path);
        assert_eq!(
            again.as_deref(),
            Ok(&**path),
            "canonical_path is not a fixed point for {target:?}"
        );
    }
    if let Ok(path) = check_request(method, target) {
        assert_eq!(
            Ok(&*path),
            canonical.as_deref(),
            "check_request path differs"
        );
    }
}

/// `sidecar::http::h1::Chunked` (the three kinds), fed the body at once and
/// in pieces. `data[0]`: the kind; `data[1]`: the piece size; the rest: the
/// body.
///
/// Property: splitting the bytes never changes the answer (consumed count,
/// error, end state); bytes are left over only once done.
pub fn h1_chunked(data: &[u8]) {
    let [kind, piece, body @ ..] = data else {
        return;
    };
    let new = || match kind % 3 {
        0 => Chunked::new(),
        1 => Chunked::for_request(),
        _ => Chunked::for_app_response(),
    };
    let mut whole = new();
    let at_once = whole.advance(body);
    if let Ok(n) = at_once {
        assert!(n <= body.len());
        if n < body.len() {
            assert!(whole.is_done(), "bytes left over before the end");
        }
    }

    let mut split = new();
    let mut consumed = 0;
    let mut error = None;
    for part in body.chunks(usize::from(piece % 16) + 1) {
        match split.advance(part) {
            Ok(n) => {
                assert!(n <= part.len());
                consumed += n;
                if n < part.len() {
                    assert!(split.is_done(), "bytes left over before the end");
                    break;
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    match at_once {
        Ok(n) => {
            assert_eq!(error, None, "an error only when split");
            assert_eq!(n, consumed, "split consumed a different count");
            assert_eq!(whole, split, "split ended in another state");
        }
        Err(e) => assert_eq!(error, Some(e), "split gave another answer"),
    }
}

/// Counts what the authorizer saw; denies `/admin…`.
#[derive(Default)]
struct CountingAuthorizer {
    authorized: AtomicUsize,
}

impl RequestAuthorizer for CountingAuthorizer {
    fn authorize(&self, request: &RequestFacts<'_>) -> RequestVerdict {
        self.authorized.fetch_add(1, Ordering::SeqCst);
        assert!(
            request
                .method
                .bytes()
                .all(|b| detect::is_tchar(b) && !b.is_ascii_lowercase()),
            "method {:?} reached policy",
            request.method
        );
        assert_eq!(
            canonical_path(request.path).as_deref(),
            Ok(request.path),
            "policy saw a path that is not canonical"
        );
        if request.path.starts_with("/admin") {
            RequestVerdict::Deny {
                rule: "no-admin".into(),
                reason: "path /admin".into(),
            }
        } else {
            RequestVerdict::Allow
        }
    }
}

/// A current-thread runtime with the clock paused: timers fire as soon as
/// every task waits, so a stall costs no real time.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
}

/// How the app reads the body of the request it just parsed.
enum AppBody {
    None,
    Length(u64),
    Chunked(Chunked),
}

/// The body framing the app reads from a request's headers (the last
/// `Transfer-Encoding` coding `chunked`, else the first `Content-Length`);
/// `None` for a `Content-Length` it cannot read.
fn app_body(headers: &[httparse::Header<'_>]) -> Option<AppBody> {
    let mut body = AppBody::None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.split(|&b| b == b',').next_back();
            if last.is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked")) {
                body = AppBody::Chunked(Chunked::new());
            }
        } else if h.name.eq_ignore_ascii_case("content-length") && matches!(body, AppBody::None) {
            let n = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            body = AppBody::Length(n);
        }
    }
    Some(body)
}

/// The app behind the proxy: reads requests as a lenient HTTP/1.1 server
/// would (httparse heads; `Content-Length` or chunked bodies) and answers
/// each with a small `200`, until EOF or bytes it cannot parse. Returns how
/// many request heads it read.
async fn answer_heads(mut app: tokio::io::DuplexStream) -> usize {
    let mut heads = 0;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut body = AppBody::None;
    loop {
        // Consume every complete element in `buf`.
        loop {
            match &mut body {
                AppBody::Length(left) => {
                    let take = (*left).min(buf.len() as u64);
                    buf.drain(..take as usize);
                    *left -= take;
                    if *left > 0 {
                        break;
                    }
                    body = AppBody::None;
                }
                AppBody::Chunked(chunks) => match chunks.advance(&buf) {
                    Ok(n) => {
                        buf.drain(..n);
                        if !chunks.is_done() {
                            break;
                        }
                        body = AppBody::None;
                    }
                    Err(_) => return heads,
                },
                AppBody::None => {
                    let mut slots = [httparse::EMPTY_HEADER; 128];
                    let mut request = httparse::Request::new(&mut slots);
                    let (len, next) = match request.parse(&buf) {
                        Ok(httparse::Status::Complete(len)) => match app_body(request.headers) {
                            Some(next) => (len, next),
                            None => return heads,
                        },
                        Ok(httparse::Status::Partial) => break,
                        Err(_) => return heads,
                    };
                    heads += 1;
                    buf.drain(..len);
                    body = next;
                    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if app.write_all(response).await.is_err() {
                        return heads;
                    }
                }
            }
        }
        match app.read(&mut chunk).await {
            Ok(0) | Err(_) => return heads,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `sidecar::http::h1::proxy` (head parsing with httparse, request checks,
/// body framing, response relay) between a client that sends `data` and
/// an app that parses requests as a lenient server would and answers
/// each.
///
/// Properties: the proxy finishes (no hang: the clock is paused, so only a
/// wait with no timeout could stall) and every head the app received was
/// shown to the authorizer first; the authorizer only ever sees upper-case
/// token methods and canonical paths.
pub fn h1_proxy(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = paused_runtime();
    }
    let input = data.to_vec();
    let (app_heads, authorized) = RUNTIME.with(|rt| {
        rt.block_on(async move {
            let (mut client, proxy_down) = tokio::io::duplex(1 << 20);
            let (proxy_up, app) = tokio::io::duplex(1 << 20);
            let authorizer = Arc::new(CountingAuthorizer::default());
            let peer = Some(PeerHeaders {
                id: http::HeaderValue::from_static("spiffe://fuzz.example/web"),
                claims: http::HeaderValue::from_static("e30"),
            });
            let limits = HttpLimits {
                max_header_bytes: 8 * 1024,
                header_timeout: Duration::from_secs(5),
                drain_timeout: Duration::from_secs(5),
                app: AppSide::Upstream,
            };
            let proxy = tokio::spawn(h1::proxy(
                proxy_down,
                proxy_up,
                authorizer.clone(),
                peer,
                limits,
                Shutdown::never(),
            ));
            let app = tokio::spawn(answer_heads(app));
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(120), client.read_to_end(&mut answer))
                    .await;
            assert!(read.is_ok(), "the proxy did not finish within 120 s");
            let _ = proxy.await;
            let heads = app.await.expect("the app task");
            (heads, authorizer.authorized.load(Ordering::SeqCst))
        })
    });
    assert!(
        app_heads <= authorized,
        "{app_heads} heads reached the app, {authorized} were authorized"
    );
}

/// `sidecar::http::relay::proxy` (HTTP/2 frames, HPACK, stream states,
/// SETTINGS and window bookkeeping) with `data` as the client's frames
/// after a valid preface, an h2-crate app behind it that answers every
/// request, and a paused tokio clock.
///
/// Properties: it finishes; every request the app got was authorized
/// first, and none the authorizer denied (`/admin…`) reached it.
pub fn h2_relay(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = paused_runtime();
    }
    let input = data.to_vec();
    let (app_requests, authorized) = RUNTIME.with(|rt| {
        rt.block_on(async move {
            let (mut client, proxy_down) = tokio::io::duplex(1 << 20);
            let (proxy_up, app) = tokio::io::duplex(1 << 20);
            let authorizer = Arc::new(CountingAuthorizer::default());
            let limits = HttpLimits {
                max_header_bytes: 8 * 1024,
                header_timeout: Duration::from_secs(5),
                drain_timeout: Duration::from_secs(5),
                app: AppSide::Upstream,
            };
            let proxy = tokio::spawn(relay::proxy(
                proxy_down,
                proxy_up,
                authorizer.clone(),
                None,
                limits,
                Shutdown::never(),
            ));
            let app = tokio::spawn(answer_h2(app));
            let _ = client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let _ = client.write_all(&input).await;
            let mut answer = Vec::new();
            // The client keeps its side open, so the relay works through
            // every frame (and its timers) before it ends.
            let read =
                tokio::time::timeout(Duration::from_secs(120), client.read_to_end(&mut answer))
                    .await;
            assert!(read.is_ok(), "the relay did not finish within 120 s");
            let _ = proxy.await;
            let requests = app.await.expect("the app task");
            (requests, authorized_count(&authorizer))
        })
    });
    assert!(
        app_requests <= authorized,
        "{app_requests} requests reached the app, {authorized} were authorized"
    );
}

fn authorized_count(authorizer: &CountingAuthorizer) -> usize {
    authorizer.authorized.load(Ordering::SeqCst)
}

/// An HTTP/2 app that answers every request `200` at once; the number of
/// requests it got. A denied path reaching it fails the target.
async fn answer_h2(app: tokio::io::DuplexStream) -> usize {
    let Ok(mut connection) = h2::server::handshake(app).await else {
        return 0;
    };
    let mut requests = 0;
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        requests += 1;
        assert!(
            !request.uri().path().starts_with("/admin"),
            "a denied request reached the app: {}",
            request.uri()
        );
        let _ = respond.send_response(http::Response::new(()), true);
    }
    requests
}

// ---------------------------------------------------------------------------
// Policy and claims.

fn claims(id: &str) -> AppIdClaims {
    AppIdClaims::new(id, "join_token")
}

/// A few workloads to ask a fuzzed policy about.
fn workloads() -> &'static [AppIdClaims] {
    static WORKLOADS: OnceLock<Vec<AppIdClaims>> = OnceLock::new();
    WORKLOADS.get_or_init(|| {
        let mut web = claims("spiffe://prod.example/ns/shop/sa/web");
        web.labels.insert("app".into(), "web".into());
        web.labels.insert("env".into(), "prod".into());
        web.vulns = Some(Vulns {
            critical: 0,
            high: 2,
            medium: 5,
            low: 9,
            unknown: 0,
            scanner: "trivy".into(),
            report: "sha256:00".into(),
            scanned_at: None,
        });
        let mut api = claims("spiffe://prod.example/ns/shop/sa/api");
        api.labels.insert("app".into(), "api".into());
        api.cloud = Some(Cloud {
            provider: Some("aws".into()),
            region: Some("eu-west-1".into()),
            ..Cloud::default()
        });
        let mut reported = serde_json::Map::new();
        reported.insert("process".into(), serde_json::json!({ "uid": 1000 }));
        api.reported = Some(reported);
        let bare = claims("spiffe://other.example/job");
        vec![web, api, bare]
    })
}

/// `appid_policy::Policy::load`, then every workload pair, outside caller
/// and outside destination asked as a connection, a non-HTTP connection
/// and two requests.
///
/// Properties: either a policy or at least one error; the indexed decision
/// has the outcome, rule and audit flag of the one from checking every rule
/// (`decide_by_scan`), and both or neither blame the metadata API; explaining
/// and printing decisions does not panic.
pub fn policy_load(data: &[u8]) {
    let yaml = String::from_utf8_lossy(data);
    let policy = match Policy::load("fuzz.yaml", &yaml) {
        Ok(policy) => policy,
        Err(errors) => {
            assert!(!errors.is_empty(), "an error without errors");
            let _ = errors.to_string();
            return;
        }
    };
    assert_eq!(policy.rule_names().count(), policy.len());
    let _ = policy.summary().to_string();
    let _ = policy.index_stats();

    let all = workloads();
    let mut queries = Vec::new();
    for caller in all {
        for callee in all {
            queries.push(Query::meshed(Direction::Inbound, caller, callee, 8080));
            queries.push(Query::meshed(Direction::Outbound, caller, callee, 443));
        }
        let source = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        queries.push(Query::unauthenticated(source, caller, 8080));
        let metadata = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
        queries.push(Query::external(
            caller,
            metadata,
            Some("metadata.google.internal"),
            80,
        ));
        let public = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));
        queries.push(Query::external(
            caller,
            public,
            Some("api.example.com"),
            443,
        ));
    }
    let headers: &[(&str, &str)] = &[("x-tenant", "acme"), ("X_Debug", "1")];
    let requests = [
        HttpRequest {
            method: "GET",
            path: "/v1/items",
            headers: &headers,
        },
        HttpRequest {
            method: "DELETE",
            path: "/admin/users",
            headers: &headers,
        },
    ];
    for q in queries {
        let mut asked = vec![q, q.not_http()];
        asked.extend(requests.iter().map(|r| {
            q.with_request(HttpRequest {
                method: r.method,
                path: r.path,
                headers: r.headers,
            })
        }));
        for q in asked {
            let fast = policy.decide(&q);
            let slow = policy.decide_by_scan(&q);
            // What the policy crate's own tests hold the index to: the
            // same outcome, rule and audit flag (`closest`, a hint in
            // default denials, is taken from the rules each looked at).
            assert_eq!(
                (fast.outcome, fast.rule, fast.audit_only),
                (slow.outcome, slow.rule, slow.audit_only),
                "the index and a scan of every rule decide differently"
            );
            assert_eq!(
                fast.reason == Reason::MetadataApi,
                slow.reason == Reason::MetadataApi
            );
            let _ = fast.to_string();
            let _ = fast.why().to_string();
        }
        let _ = policy.explain(&q).to_string();
    }
}

/// Claims without `reported` (whose floats need not survive a JSON round
/// trip bit for bit).
fn comparable(mut c: AppIdClaims) -> AppIdClaims {
    c.reported = None;
    c
}

fn claims_round_trip(c: AppIdClaims) {
    use appid_policy::extension::{self, ExtensionError};
    match extension::encode(&c) {
        Ok(der) => {
            let back = extension::decode(&der).expect("an encoded extension decodes");
            assert_eq!(comparable(back), comparable(c), "extension round trip");
        }
        Err(ExtensionError::TooLarge(_)) => {}
        Err(e) => panic!("decoded claims do not encode: {e}"),
    }
}

/// `appid_policy::extension::{decode, decode_json}` (the AppID X.509
/// extension value and the claims JSON in it).
///
/// Property: whatever decodes encodes again, to the same claims.
pub fn extension(data: &[u8]) {
    if let Ok(c) = appid_policy::extension::decode(data) {
        claims_round_trip(c);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = appid_policy::extension::decode_json(text)
    {
        claims_round_trip(c);
    }
}

/// `identity::spiffe::SpiffeId::parse` and `validate_trust_domain` (the
/// URI SAN of a peer certificate).
///
/// Property: a parsed ID prints as a string that parses to the same ID.
pub fn spiffe_id(data: &[u8]) {
    use appid_proxy::identity::spiffe::{SpiffeId, validate_trust_domain};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = validate_trust_domain(text);
    if let Ok(id) = SpiffeId::parse(text) {
        assert!(validate_trust_domain(id.trust_domain()).is_ok());
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID parses again");
        assert_eq!(again, id);
        let _ = id.path();
    }
}

// ---------------------------------------------------------------------------
// Scanner reports.

/// `scan::parse_report` (Trivy and Grype JSON).
///
/// Properties: listings are at least the deduplicated count; every digest
/// is a well-formed `sha256:`, the preferred one first.
pub fn scan_report(data: &[u8]) {
    use appid_proxy::scan::{is_sha256_digest, parse_report};
    let Ok(report) = parse_report(data) else {
        return;
    };
    assert!(
        report.listed >= report.counts.total(),
        "fewer listings than counted"
    );
    for digest in &report.image_digests {
        assert!(is_sha256_digest(digest), "{digest:?}");
    }
    if let Some(digest) = &report.image_digest {
        assert_eq!(report.image_digests.first(), Some(digest));
    }
    let vulns = report.to_vulns();
    assert_eq!(vulns.critical, report.counts.critical);
    let mut c = claims("spiffe://prod.example/web");
    report.fill_claims(&mut c);
    assert!(c.vulns.is_some());
}

// ---------------------------------------------------------------------------
// Cloud attestation.

/// An RSA-2048 key made here, with a self-signed certificate and the
/// public key as PEM: a stand-in for AWS's region certificate and Google's
/// keys, so fuzzed documents can be signed and reach the parsing behind the
/// signature check.
struct Signer {
    key: RsaKeyPair,
    cert_pem: String,
    public_pem: String,
}

fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("an RSA key");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).expect("PKCS#8");
        let rc_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .expect("rcgen accepts the key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params.serial_number = Some(rcgen::SerialNumber::from(0x0102_0304_u64));
        let cert = params
            .self_signed(&rc_key)
            .expect("a self-signed certificate");
        let spki = key
            .public_key()
            .as_der()
            .expect("SPKI DER of the public key");
        let public_pem = pem("PUBLIC KEY", spki.as_ref());
        Signer {
            key,
            cert_pem: cert.pem(),
            public_pem,
        }
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn rsa_sign(message: &[u8]) -> Vec<u8> {
    let key = &signer().key;
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
        .expect("RSA signing");
    sig
}

/// DER of one element.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content = parts.concat();
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend(content);
    out
}

/// A certificate (signature not valid, which nothing here checks) for a
/// DSA key with well-formed but made-up domain parameters: `q` is
/// 2^159 + 1 and `p` is `q`·2^864 + 1, so `q` divides `p - 1` and the
/// sizes are right (neither is prime; verification only computes). It lets
/// fuzzed `/pkcs7` signatures reach the DSA arithmetic.
fn dsa_cert_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let mut q = vec![0u8; 20];
        q[0] = 0x80;
        q[19] = 0x01;
        let mut p = q.clone();
        p.extend(std::iter::repeat_n(0u8, 107));
        p.push(0x01);
        let int = |magnitude: &[u8]| {
            if magnitude[0] & 0x80 != 0 {
                der(0x02, &[&[0], magnitude])
            } else {
                der(0x02, &[magnitude])
            }
        };
        let oid_dsa = der(0x06, &[&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01]]);
        let oid_dsa_sha1 = der(0x06, &[&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03]]);
        let sig_alg = der(0x30, &[&oid_dsa_sha1]);
        let name = der(
            0x30,
            &[&der(
                0x31,
                &[&der(
                    0x30,
                    &[
                        &der(0x06, &[&[0x55, 0x04, 0x03]]),
                        &der(0x0c, &[b"fuzz dsa"]),
                    ],
                )],
            )],
        );
        let validity = der(
            0x30,
            &[
                &der(0x17, &[b"250101000000Z"]),
                &der(0x17, &[b"350101000000Z"]),
            ],
        );
        let params = der(0x30, &[&int(&p), &int(&q), &int(&[2])]);
        let y = int(&[3]);
        let spki = der(
            0x30,
            &[&der(0x30, &[&oid_dsa, &params]), &der(0x03, &[&[0], &y])],
        );
        let tbs = der(
            0x30,
            &[
                &der(0xa0, &[&int(&[2])]),
                &int(&[0x01, 0x02, 0x03, 0x04]),
                &sig_alg,
                &name,
                &validity,
                &name,
                &spki,
            ],
        );
        let signature = der(0x30, &[&int(&[1]), &int(&[1])]);
        let cert = der(0x30, &[&tbs, &sig_alg, &der(0x03, &[&[0], &signature])]);
        pem("CERTIFICATE", &cert)
    })
}

/// 2026-11-20T10:10:00Z: the clock the attestation targets use.
fn fuzz_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_169_400)
}

/// `attest::verify_iid` with a `/signature` made here over `data[1..]` (the
/// document JSON), so the fields, times and region checks behind the
/// signature are reached. `data[0]` bit 0: expect region `us-east-1`;
/// bit 1: a maximum age of one day.
///
/// Property: an accepted document is the bytes given, with a region and an
/// instance ID.
pub fn aws_iid(data: &[u8]) {
    let [flags, document @ ..] = data else {
        return;
    };
    let s = signer();
    let sig = STANDARD.encode(rsa_sign(document));
    let region = (flags & 1 == 1).then_some("us-east-1");
    let max_age = (flags & 2 == 2).then_some(Duration::from_secs(86_400));
    let result = verify_iid(
        document,
        AwsSignature::Rsa(&sig),
        s.cert_pem.as_bytes(),
        region,
        max_age,
        fuzz_now(),
    );
    if let Ok(identity) = result {
        assert_eq!(identity.document, document);
        assert!(!identity.region.is_empty() && !identity.instance_id.is_empty());
        if let Some(region) = region {
            assert_eq!(identity.region, region);
        }
        let _ = identity.to_cloud_claims();
    } else if let Err(e) = result {
        let _ = (e.code(), e.to_string());
    }
}

/// A small signed-looking document for the PKCS#7 target.
const SAMPLE_DOCUMENT: &[u8] = br#"{"accountId":"123456789012","region":"us-east-1","availabilityZone":"us-east-1b","instanceId":"i-0abc","imageId":"ami-0123","instanceType":"m5.large","pendingTime":"2026-11-20T10:00:00Z"}"#;

/// `attest::verify_iid` with the PKCS#7 kinds: the BER/CMS parser, the
/// signed-attribute and digest checks, and (with the DSA certificate) the
/// DSA verification. `data[0]`: bit 0 `/pkcs7` (DSA) else `/rsa2048`;
/// bit 1 the DSA certificate else the RSA one; bit 2 `data[1..]` is the
/// signature text as sent (base64 or PEM) else DER that is base64-encoded
/// here; bit 3 a detached document is given.
pub fn aws_pkcs7(data: &[u8]) {
    let [flags, rest @ ..] = data else {
        return;
    };
    let text = if flags & 4 == 4 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        STANDARD.encode(rest)
    };
    let signature = if flags & 1 == 1 {
        AwsSignature::Pkcs7Dsa(&text)
    } else {
        AwsSignature::Pkcs7Rsa2048(&text)
    };
    let cert = if flags & 2 == 2 {
        dsa_cert_pem()
    } else {
        &signer().cert_pem
    };
    let document: &[u8] = if flags & 8 == 8 { SAMPLE_DOCUMENT } else { b"" };
    if let Err(e) = verify_iid(document, signature, cert.as_bytes(), None, None, fuzz_now()) {
        let _ = (e.code(), e.to_string());
    }
}

/// `attest::GcpKeys::{from_jwks_json, from_pem}` (Google's key set and a
/// configured PEM key).
///
/// Property: a key set that loads is not empty and names each key.
pub fn gcp_keys(data: &[u8]) {
    if let Ok(keys) = GcpKeys::from_jwks_json(data) {
        assert!(!keys.is_empty());
        assert_eq!(keys.kids().len(), keys.len());
    }
    for kid in [None, Some("k1")] {
        if let Ok(keys) = GcpKeys::from_pem(data, kid) {
            assert_eq!(keys.len(), 1);
        }
    }
}

const GCP_AUDIENCE: &str = "https://authority.example:15170";

/// `attest::verify_iit` (GCP identity tokens). `data[0] % 3`: 0, `data[1..]`
/// is the whole token; 1, it is the payload JSON of a token signed here;
/// 2, it is the header JSON of a token signed here (with a valid payload).
///
/// Property: an accepted token has a project, zone and instance.
pub fn gcp_iit(data: &[u8]) {
    static KEYS: OnceLock<GcpKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        GcpKeys::from_pem(signer().public_pem.as_bytes(), Some("fuzz")).expect("our key loads")
    });
    let [mode, rest @ ..] = data else {
        return;
    };
    let header = br#"{"alg":"RS256","kid":"fuzz","typ":"JWT"}"#;
    let payload = br#"{"iss":"https://accounts.google.com","aud":"https://authority.example:15170","iat":1795169000,"exp":1795172000,"google":{"compute_engine":{"project_id":"p","project_number":1,"zone":"us-central1-a","instance_id":"2","instance_name":"vm"}}}"#;
    let token = jwt_input(*mode, rest, header, payload);
    match verify_iit(&token, keys, GCP_AUDIENCE, fuzz_now()) {
        Ok(identity) => {
            assert!(!identity.project_id.is_empty() && !identity.zone.is_empty());
            assert!(!identity.instance_id.is_empty());
            let _ = (identity.region(), identity.to_cloud_claims());
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
}

/// The token a JWT target checks: `mode % 3` 0, `rest` is the whole token;
/// 1, it is the payload JSON, signed here with `header`; 2, it is the header
/// JSON, signed here with `payload`.
fn jwt_input(mode: u8, rest: &[u8], header: &[u8], payload: &[u8]) -> String {
    let signed = |header: &[u8], payload: &[u8]| {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let sig = rsa_sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        token
    };
    match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => signed(header, rest),
        _ => signed(rest, payload),
    }
}

/// `attest::verify_psat` (Kubernetes projected service-account tokens).
/// `data[0] % 3`: 0, `data[1..]` is the whole token; 1, it is the payload
/// JSON of a token signed here; 2, it is the header JSON of a token signed
/// here (with a valid payload).
///
/// Property: an accepted token names a namespace, service account and pod
/// that form a SPIFFE path of exactly four segments.
pub fn k8s_psat(data: &[u8]) {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        JwtKeys::from_pem(signer().public_pem.as_bytes(), Some("fuzz")).expect("our key loads")
    });
    let expect = K8sExpectations {
        issuer: "https://kubernetes.default.svc.cluster.local".into(),
        audience: "appid-authority".into(),
        max_lifetime: Duration::from_secs(3600),
    };
    let [mode, rest @ ..] = data else {
        return;
    };
    let header = br#"{"alg":"RS256","kid":"fuzz"}"#;
    let payload = br#"{"aud":["appid-authority"],"exp":1795172000,"iat":1795169000,"iss":"https://kubernetes.default.svc.cluster.local","jti":"j","kubernetes.io":{"namespace":"shop","pod":{"name":"web-1","uid":"u1"},"serviceaccount":{"name":"web","uid":"u2"}},"nbf":1795169000,"sub":"system:serviceaccount:shop:web"}"#;
    let token = jwt_input(*mode, rest, header, payload);
    match verify_psat(&token, keys, &expect, fuzz_now()) {
        Ok(identity) => {
            assert!(!identity.pod_name.is_empty() && !identity.pod_uid.is_empty());
            assert_eq!(identity.spiffe_path().split('/').count(), 4);
            let _ = (identity.token_id(), identity.to_k8s_claims());
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
}

/// `attest::k8s_pod::{check_pod, check_pinned}`: the Kubernetes API
/// server's answer for the pod a token names (the authority's pod lookup).
///
/// Property: a pod that passes has the token's node (when the token names
/// one) and only trusted label keys, and every image it vouches for is a
/// `sha256:<64 hex>` digest; told by digest, appid's own containers run
/// appid's digest, and the app's one image is one of its containers'; a
/// refused one has a message naming the pod.
pub fn k8s_pod(data: &[u8]) {
    use appid_proxy::attest::k8s_pod::{
        AppImage, AppidContainers, PodRef, check_pinned, check_pod,
    };
    let expect = PodRef {
        namespace: "shop",
        service_account: "web",
        pod: "web-1",
        pod_uid: "u1",
        node: Some("node-1"),
    };
    let trusted = ["app".to_owned()];
    let appid_digest = format!("sha256:{}", "1".repeat(64));
    let by_digest = AppidContainers::ByDigest([appid_digest.clone()].into());
    for appid in [AppidContainers::ByName, by_digest] {
        match check_pod(data, &expect, &trusted, &appid) {
            Ok(facts) => {
                assert_eq!(facts.node.as_deref(), Some("node-1"));
                assert!(facts.labels.keys().all(|k| k == "app"));
                for digest in facts.images.values() {
                    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
                    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
                }
                if let AppidContainers::ByDigest(_) = appid {
                    assert!(facts.appid_images.values().all(|d| *d == appid_digest));
                }
                if let AppImage::One(digest) = facts.app_image() {
                    assert!(facts.images.values().all(|d| *d == digest));
                    assert!(facts.without_digest.is_empty());
                }
                let pinned = format!("sha256:{}", "a".repeat(64));
                if let Err(e) = check_pinned(&facts, &expect, &pinned) {
                    assert!(e.to_string().contains("shop/web-1"), "{e}");
                }
            }
            Err(e) => assert!(e.to_string().contains("shop/web-1"), "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration and tunnels.

/// `config::ProxyConfig::from_yaml` (the sidecar configuration; reads no
/// file).
///
/// Property: an accepted config renders its effective JSON; a refused one
/// has a message.
pub fn config(data: &[u8]) {
    use appid_proxy::config::ProxyConfig;
    let text = String::from_utf8_lossy(data);
    match ProxyConfig::from_yaml("proxy.yaml", Path::new("/etc/appid"), &text) {
        Ok(config) => {
            let _ = config.effective_json();
        }
        Err(e) => {
            let _ = (e.to_string(), e.diagnostics().len());
        }
    }
}

/// The parsing of a tunnel stream's CONNECT `:authority`, as the inbound
/// sidecar composes it (`http::Uri`, then `SocketAddr`). The sidecar's own
/// function (`sidecar::inbound::stream_target`) is private, so this target
/// mirrors it with the same crates and calls; see fuzz/README.md.
///
/// Property: an address that parses prints as one that parses back equal.
pub fn tunnel_authority(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = text.parse::<http::uri::Authority>();
    let Ok(request) = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(text)
        .body(())
    else {
        return;
    };
    let Some(authority) = request.uri().authority() else {
        return;
    };
    let _ = (authority.host(), authority.port_u16());
    if let Ok(target) = authority.as_str().parse::<SocketAddr>() {
        let again: SocketAddr = target
            .to_string()
            .parse()
            .expect("a printed address parses");
        assert_eq!(again, target);
    }
}
