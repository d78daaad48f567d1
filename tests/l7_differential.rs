//! A differential test of what L7 policy sees (`docs/what-policy-sees.md`):
//! ONE table of hostile HTTP requests, each with the verdict the contract
//! says it gets, run over every way a request can reach a decision:
//!
//! ```text
//! protocol  HTTP/1.1 (raw bytes on a TcpStream) | HTTP/2 prior knowledge (h2 crate)
//! tunnel    pooled | strict                       (both sidecars)
//! path      (a) client ─▶ client sidecar ═▶ server sidecar ─▶ app, same policy on both
//!               (the outbound side decides)
//!           (b) the same, but the client sidecar only allows web→api at L4
//!               (the server's inbound decides)
//!           (c) a plaintext caller outside the mesh straight to the server's
//!               inbound port, admitted by `from.unauthenticated` rules that
//!               mirror the meshed ones (named `plain-<rule>`)
//! ```
//!
//! The verdict must be the same everywhere, and so must the audited
//! reason for a refusal (for a policy denial, wherever the caller is
//! meshed: a plaintext caller's reason names other conditions), and the
//! app must never see a
//! denied or refused request (its request counter does not move), nor a
//! request trailer (the `/echo-trailers` handler records every one), nor an
//! `x-appid-*` header other than the sidecar's own identity headers.
//!
//! Every combination runs the whole table and reports every row that
//! disagrees (not just the first), so one run shows the complete picture.
//!
//! Separate tests cover what a table row cannot: a first request sent after
//! `detect_timeout`, a non-HTTP connection on a port an `http` rule applies
//! to (refused, audited; accepted with `protocol: tcp`), and response heads
//! and trailers forged by the app.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::apps::{EchoServer, HttpApp};
use support::mesh::{Mesh, MeshOptions, WEB_TO_API};
use support::sidecar::Sidecar;

// ---------------------------------------------------------------------------
// The policy

/// The rules every table row is judged against. Meshed callers (`web`) get
/// the rules as named; callers outside the mesh (plaintext from
/// 127.0.0.0/8) get the same rules named `plain-<name>`.
const RULES: &[(&str, &str, &str)] = &[
    // (name, action, http)
    (
        "public",
        "allow",
        "{ methods: [GET, HEAD, POST, PUT, PROPFIND, PURGE, OPTIONS], paths: [\"/public/**\"] }",
    ),
    // Would allow DELETE on /public/** if `no-delete` did not win.
    (
        "public-delete",
        "allow",
        "{ methods: [DELETE], paths: [\"/public/**\"] }",
    ),
    (
        "tenant-acme",
        "allow",
        "{ paths: [\"/tenant/**\"], headers: { x-tenant: acme } }",
    ),
    ("no-secret", "deny", "{ paths: [\"/public/secret/**\"] }"),
    ("no-debug", "deny", "{ headers: { x-debug: \"1\" } }"),
    ("no-delete", "deny", "{ methods: [DELETE] }"),
    (
        "no-internal",
        "deny",
        "{ headers: { host: internal.test } }",
    ),
    ("no-naive", "deny", "{ paths: [\"/public/naïve/**\"] }"),
];

const MESHED_FROM: &str = "{ labels.app: web }";
const PLAIN_FROM: &str = "{ unauthenticated: { cidrs: [\"127.0.0.0/8\"] } }";

/// Default deny, [`RULES`] for meshed callers and again for plain ones.
fn table_policy() -> String {
    let mut yaml = String::from("version: 1\ndefault: deny\nrules:\n");
    for (prefix, from) in [("", MESHED_FROM), ("plain-", PLAIN_FROM)] {
        for (name, action, http) in RULES {
            yaml.push_str(&format!(
                "  - name: {prefix}{name}\n    action: {action}\n    from: {from}\n    \
                 to: {{ labels.app: api }}\n    http: {http}\n"
            ));
        }
    }
    yaml
}

// ---------------------------------------------------------------------------
// The table

/// What the contract says a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// 200 from the app, which saw the request once and no forged
    /// `x-appid-*` header.
    Allowed,
    /// 403 with `x-appid-denied-by: <rule>` (gRPC: `grpc-status: 7`); the
    /// app saw nothing. For plaintext callers the rule is `plain-<rule>`
    /// (`default` stays `default`).
    Denied(&'static str),
    /// This status from a sidecar (400, 405, 431); the app saw nothing.
    Refused(u16),
    /// The connection is closed (HTTP/1) or the stream reset (HTTP/2)
    /// without an answer, and the app never received the request whole
    /// (used for request trailers: the app may have seen the head while
    /// the body streamed, but never the trailer fields).
    Closed,
}
use Verdict::{Allowed, Closed, Denied, Refused};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// One hostile request.
#[derive(Debug, Clone)]
struct Row {
    name: &'static str,
    method: &'static str,
    /// The request target, byte for byte (HTTP/1 request line, HTTP/2
    /// `:path`).
    target: &'static [u8],
    /// Raw `(name, value)` pairs, in order, repeated names kept.
    headers: Vec<(&'static [u8], &'static [u8])>,
    body: Option<&'static [u8]>,
    /// Request trailers (HTTP/1: a chunked body ending with them).
    trailers: Vec<(&'static str, &'static str)>,
    /// The whole HTTP/1 request as bytes, for shapes only HTTP/1 can
    /// express (leading CRLF, smuggling); `method`/`target` then only
    /// describe it.
    raw_h1: Option<&'static [u8]>,
    /// `None`: both protocols.
    only: Option<Proto>,
    /// Over HTTP/2, sent by the hand-written client ([`h2raw`]) instead of
    /// the h2 crate's.
    h2_raw: bool,
    /// The HTTP/2 `:authority` (`api.test` unless set).
    authority: &'static str,
    expect: Verdict,
}

fn req(name: &'static str, method: &'static str, target: &'static [u8], expect: Verdict) -> Row {
    Row {
        name,
        method,
        target,
        headers: Vec::new(),
        body: None,
        trailers: Vec::new(),
        raw_h1: None,
        only: None,
        h2_raw: false,
        authority: "api.test",
        expect,
    }
}

fn get(name: &'static str, target: &'static [u8], expect: Verdict) -> Row {
    req(name, "GET", target, expect)
}

/// A row only HTTP/1 can carry: the whole request as bytes.
fn raw(name: &'static str, bytes: &'static [u8], expect: Verdict) -> Row {
    Row {
        raw_h1: Some(bytes),
        only: Some(Proto::H1),
        ..req(name, "RAW", b"", expect)
    }
}

impl Row {
    fn header(mut self, name: &'static [u8], value: &'static [u8]) -> Row {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: &'static [u8]) -> Row {
        self.body = Some(body);
        self
    }

    fn trailer(mut self, name: &'static str, value: &'static str) -> Row {
        self.trailers.push((name, value));
        self
    }

    /// The row cannot be expressed in HTTP/2 (`why` says so in the table).
    fn h1_only(mut self, _why: &str) -> Row {
        self.only = Some(Proto::H1);
        self
    }

    fn h2_only(mut self) -> Row {
        self.only = Some(Proto::H2);
        self
    }

    /// Over HTTP/2 only, with this `:authority`.
    fn authority(mut self, authority: &'static str) -> Row {
        self.authority = authority;
        self.h2_only()
    }

    /// Over HTTP/2, send the row with the hand-written client ([`h2raw`]):
    /// its `:path`, fields and body go on the wire exactly as written, for
    /// requests the h2 crate's client cannot send.
    fn h2_raw(mut self) -> Row {
        self.h2_raw = true;
        self
    }

    /// The rule of the audit line (`decision: deny`) a sidecar must write
    /// for this row, if any: every denial, and every refusal (rule
    /// `invalid-request`: for its path, method, framing, syntax or size).
    fn audited_rule(&self, target: &Target<'_>) -> Option<String> {
        match self.expect {
            Allowed => None,
            Denied(rule) => Some(rule_name(target, rule)),
            Refused(_) | Closed => Some("invalid-request".into()),
        }
    }

    /// A gRPC call (`content-type: application/grpc`): a denial is a
    /// trailers-only answer with `grpc-status: 7`.
    fn grpc(self) -> Row {
        self.header(b"content-type", b"application/grpc")
            .header(b"te", b"trailers")
            .body(b"\0\0\0\0\x01x")
            .h2_only()
    }

    fn applies_to(&self, proto: Proto) -> bool {
        self.only.is_none_or(|only| only == proto)
    }

    fn is_grpc(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case(b"content-type") && v.starts_with(b"application/grpc")
        })
    }
}

/// Every hostile request and its verdict. Paths under `/public/**` are
/// allowed (GET, HEAD, POST, PUT, PROPFIND, PURGE, OPTIONS), except
/// `/public/secret/**` (`no-secret`), anything with `x-debug: 1`
/// (`no-debug`), `DELETE` (`no-delete`), host `internal.test`
/// (`no-internal`) and `/public/naïve/**` (`no-naive`); `/tenant/**` needs
/// `x-tenant: acme` and nothing else; everything else is `default`.
fn table() -> Vec<Row> {
    const BIG: &[u8] = &[b'a'; 70_000]; // > max_header_bytes (64 KiB)
    vec![
        // --- Baselines: the policy works at all.
        get("plain allowed path", b"/public/x", Allowed),
        get("plain default-denied path", b"/admin/x", Denied("default")),
        get("plain deny-rule path", b"/public/secret/x", Denied("no-secret")),
        // --- Paths that cannot be put in canonical form: 400.
        get("dot-dot segment", b"/public/../admin", Refused(400)),
        get("dot segment", b"/public/./x", Refused(400)),
        get("dot segment before denied path", b"/public/./secret/x", Refused(400)),
        get("trailing dot-dot", b"/public/x/..", Refused(400)),
        get("encoded dot-dot", b"/public/%2e%2e/admin", Refused(400)),
        get("encoded dot-dot upper", b"/public/%2E%2E/admin", Refused(400)),
        get("encoded dot", b"/public/%2E/x", Refused(400)),
        get("half-encoded dot-dot", b"/public/.%2e/admin", Refused(400)),
        get("dot-dot encoded slash", b"/public/..%2fadmin", Refused(400)),
        get("encoded slash upper", b"/public/a%2Fb", Refused(400)),
        get("encoded backslash", b"/public/..%5Cadmin", Refused(400)),
        get("encoded backslash lower", b"/public/a%5cb", Refused(400)),
        // `\` is a byte http::PathAndQuery accepts, so HTTP/2 sends it too.
        get("raw backslash", b"/public/..\\admin", Refused(400)),
        get("dot-dot with parameter", b"/public/..;/admin", Refused(400)),
        get("dot with parameter", b"/public/.;x/y", Refused(400)),
        get("encoded percent", b"/public/%25", Refused(400)),
        get("double-encoded dot-dot", b"/public/%252e%252e/admin", Refused(400)),
        get("encoded NUL", b"/public/%00", Refused(400)),
        get("encoded LF", b"/public/a%0Ab", Refused(400)),
        get("encoded DEL", b"/public/a%7Fb", Refused(400)),
        get("bad percent-encoding", b"/public/%zz", Refused(400)),
        get("truncated percent-encoding", b"/public/x%2", Refused(400)),
        get("raw control character", b"/public/a\x01b", Refused(400))
            .h1_only("http::Uri refuses control characters"),
        get("raw DEL", b"/public/a\x7fb", Refused(400)).h1_only("http::Uri refuses DEL"),
        get("target without leading slash", b"public/x", Refused(400))
            .h1_only("http::Uri refuses a path without a leading slash"),
        get("asterisk with GET", b"*", Refused(400)),
        // --- Paths that canonicalize onto a denied one.
        get("double slash", b"/public//secret/x", Denied("no-secret")),
        get("triple slashes", b"/public///secret///x", Denied("no-secret")),
        // A URL parser (Node's `new URL(req.url, base)`) reads `//x/…` as
        // host `x`: refused, whatever the path below it.
        get("leading double slash", b"//public/secret/x", Refused(400)),
        get("leading double slash, allowed below", b"//public/x", Refused(400)),
        get("jsessionid parameter", b"/public/secret;jsessionid=1/x", Denied("no-secret")),
        get("segment parameter", b"/public/secret;x/y", Denied("no-secret")),
        get("parameter on first segment", b"/public;x/secret/x", Denied("no-secret")),
        get("encoded unreserved letter", b"/public/%73ecret/x", Denied("no-secret")),
        get("fully encoded segment", b"/public/%73%65%63%72%65%74/x", Denied("no-secret")),
        get("encoded letter outside allow", b"/%61dmin/x", Denied("default")),
        get("case is kept", b"/Public/x", Denied("default")),
        // --- Paths that are fine and must stay fine.
        get("encoded unreserved allowed", b"/public/%61bc", Allowed),
        get("encoded first segment allowed", b"/%70ublic/x", Allowed),
        get("query is not the path", b"/public/x?y=/../admin", Allowed),
        // A request target has no fragment; Go's servers read `#` as part
        // of the path (`/public#/../admin` is `/admin` to them). Over
        // HTTP/2 it is sent in `:path` by the raw client (http::Uri drops a
        // fragment, so the h2 crate's client cannot send one).
        get("fragment", b"/public#/../admin", Refused(400)).h2_raw(),
        get("fragment after a query", b"/public/x?y#/../admin", Refused(400)).h2_raw(),
        // CR LF after the `#`: an app that writes `:path` into an HTTP/1
        // request line would get an extra header line.
        get("fragment with CR LF", b"/public/x#\r\nx-injected: 1", Refused(400))
            .h2_only()
            .h2_raw(),
        get("encoded query is not the path", b"/public/x?%2e%2e%2fadmin", Allowed),
        get("three dots is a name", b"/public/.../x", Allowed),
        get("dot-leading name", b"/public/.well-known/x", Allowed),
        get("encoded semicolon", b"/public/secret%3bx/y", Refused(400)),
        get("encoded UTF-8", b"/public/caf%c3%a9", Allowed),
        get("trailing slash", b"/public/x/", Allowed),
        // --- Absolute form: HTTP/2 has no such thing (`:authority` + `:path`).
        get("absolute form", b"http://api.test/public/x", Allowed).h1_only("absolute form"),
        get("absolute form denied", b"http://api.test/public/secret/x", Denied("no-secret"))
            .h1_only("absolute form"),
        get("absolute form dot-dot", b"http://api.test/public/../admin", Refused(400))
            .h1_only("absolute form"),
        // Its path is `/` by RFC 3986; Fastify's router routes what
        // follows the first `/`.
        get("absolute form, query after the authority", b"http://api.test?/public/secret/x", Refused(400))
            .h1_only("absolute form"),
        // --- Non-ASCII: raw or encoded, one spelling (`no-naive` is written
        // raw in the policy).
        get("non-ASCII encoded", b"/public/na%C3%AFve/x", Denied("no-naive")),
        get("non-ASCII encoded, lower-case hex", b"/public/na%c3%afve/x", Denied("no-naive")),
        get("non-ASCII raw", "/public/naïve/x".as_bytes(), Denied("no-naive")).h1_only("raw UTF-8"),
        get("non-ASCII raw over HTTP/2", "/public/naïve/x".as_bytes(), Denied("no-naive"))
            .h2_only()
            .h2_raw(),
        // --- One host per request: the authority the app routes on. A
        // `Host` that differs from it is refused; policy's `host` is it.
        raw(
            "Host naming a denied host",
            b"GET /public/x HTTP/1.1\r\nHost: internal.test\r\n\r\n",
            Denied("no-internal"),
        ),
        raw(
            "Host naming a denied host with two final dots",
            b"GET /public/x HTTP/1.1\r\nHost: internal.test..\r\n\r\n",
            Refused(400),
        ),
        raw(
            "absolute form naming another host than Host",
            b"GET http://internal.test/public/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
            Refused(400),
        ),
        raw(
            "absolute form and Host naming a denied host",
            b"GET http://INTERNAL.test/public/x HTTP/1.1\r\nHost: internal.test\r\n\r\n",
            Denied("no-internal"),
        ),
        raw(
            "absolute form naming a denied host, no Host (HTTP/1.0)",
            b"GET http://internal.test/public/x HTTP/1.0\r\n\r\n",
            Denied("no-internal"),
        ),
        raw(
            "absolute form with userinfo",
            b"GET http://user@api.test/public/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
            Refused(400),
        ),
        get("authority naming a denied host", b"/public/x", Denied("no-internal"))
            .authority("internal.test"),
        get("authority and host naming a denied host", b"/public/x", Denied("no-internal"))
            .header(b"host", b"internal.test")
            .authority("internal.test"),
        get("host naming another host than the authority", b"/public/x", Refused(400))
            .header(b"host", b"internal.test")
            .h2_only(),
        get("host saying what the authority says", b"/public/x", Allowed)
            .header(b"host", b"api.test")
            .h2_only(),
        // Policy takes one final dot off a host; a second one would leave
        // `internal.test.` to policy and another name to the app.
        get("authority naming a denied host with two final dots", b"/public/x", Refused(400))
            .authority("internal.test.."),
        get("authority with userinfo", b"/public/x", Refused(400))
            .authority("user@api.test")
            .h2_raw(),
        // `://` inside the query is no absolute form: no leading `/`.
        get("scheme inside the target", b"secret?x=http://api.test/public/x", Refused(400))
            .h1_only("absolute form"),
        req("asterisk with OPTIONS", "OPTIONS", b"*", Denied("default")),
        // --- Methods: case-sensitive tokens; lower case refused.
        req("lower-case delete", "delete", b"/public/x", Refused(400)),
        req("mixed-case Delete", "Delete", b"/public/x", Refused(400)),
        req("DELETE", "DELETE", b"/public/x", Denied("no-delete")),
        req("lower-case get", "get", b"/public/x", Refused(400)),
        req("PROPFIND allowed", "PROPFIND", b"/public/x", Allowed),
        req("PURGE allowed", "PURGE", b"/public/x", Allowed),
        req("PROPFIND outside allow", "PROPFIND", b"/admin/x", Denied("default")),
        req("PURGE outside allow", "PURGE", b"/admin/x", Denied("default")),
        req("unknown method", "FOO", b"/public/x", Denied("default")),
        req("CONNECT", "CONNECT", b"api.test:443", Refused(405)),
        req("HEAD", "HEAD", b"/public/x", Allowed),
        req("OPTIONS", "OPTIONS", b"/public/x", Allowed),
        // To a handler that reads the body: an app that answers without reading
        // it races its own RST_STREAM over HTTP/2 (an occasional 502), which
        // is not what this table is about.
        req("PUT with body", "PUT", b"/public/echo-trailers", Allowed).body(b"hello"),
        // --- Headers: names fold case and `_`/`-`; every value counts.
        get("x-debug", b"/public/x", Denied("no-debug")).header(b"x-debug", b"1"),
        get("X-Debug", b"/public/x", Denied("no-debug")).header(b"X-Debug", b"1"),
        get("x_debug", b"/public/x", Denied("no-debug")).header(b"x_debug", b"1"),
        get("X_DEBUG", b"/public/x", Denied("no-debug")).header(b"X_DEBUG", b"1"),
        get("x-debug 0 then 1", b"/public/x", Denied("no-debug"))
            .header(b"x-debug", b"0")
            .header(b"x-debug", b"1"),
        get("x-debug 1 then 0", b"/public/x", Denied("no-debug"))
            .header(b"x-debug", b"1")
            .header(b"x-debug", b"0"),
        get("x-debug 0 then x_debug 1", b"/public/x", Denied("no-debug"))
            .header(b"x-debug", b"0")
            .header(b"x_debug", b"1"),
        get("x-debug list 0, 1", b"/public/x", Denied("no-debug")).header(b"x-debug", b"0, 1"),
        get("x-debug list 1,1", b"/public/x", Denied("no-debug")).header(b"x-debug", b"1,1"),
        get("x-debug 0 allowed", b"/public/x", Allowed).header(b"x-debug", b"0"),
        get("tenant acme", b"/tenant/a", Allowed).header(b"x-tenant", b"acme"),
        get("tenant acme underscore", b"/tenant/a", Allowed).header(b"X_Tenant", b"acme"),
        get("tenant missing", b"/tenant/a", Denied("default")),
        get("tenant evil", b"/tenant/a", Denied("default")).header(b"x-tenant", b"evil"),
        get("tenant acme then evil", b"/tenant/a", Denied("default"))
            .header(b"x-tenant", b"acme")
            .header(b"x-tenant", b"evil"),
        get("tenant acme then x_tenant evil", b"/tenant/a", Denied("default"))
            .header(b"x-tenant", b"acme")
            .header(b"x_tenant", b"evil"),
        // Whitespace around a value: HTTP/1 syntax trims it (policy sees
        // `1`); in HTTP/2 it is part of the value and malformed (RFC 9113
        // §8.2.1), so the stream is reset rather than forwarded to an app
        // that might trim it.
        get("x-debug padded", b"/public/x", Denied("no-debug"))
            .header(b"x-debug", b" 1\t")
            .h1_only("HTTP/1 trims whitespace around a value"),
        get("padded value", b"/tenant/a", Closed)
            .header(b"x-tenant", b"acme ")
            .h2_only(),
        // An upper-case field name is not HTTP/2 (§8.2.1): the decoder
        // ends the whole connection (GOAWAY), and that closure is audited.
        get("upper-case field name", b"/public/x", Closed)
            .header(b"X-Debug", b"1")
            .h2_only()
            .h2_raw(),
        get("tenant list acme, evil", b"/tenant/a", Denied("default"))
            .header(b"x-tenant", b"acme, evil"),
        // --- Spoofed identity headers: stripped, request allowed.
        get("spoofed x-appid-peer-id", b"/public/x", Allowed)
            .header(b"x-appid-peer-id", b"spiffe://test.example/spoofed"),
        get("spoofed X-AppId-Peer-Id", b"/public/x", Allowed)
            .header(b"X-AppId-Peer-Id", b"spiffe://test.example/spoofed"),
        get("spoofed x_appid_peer_id", b"/public/x", Allowed)
            .header(b"x_appid_peer_id", b"spiffe://test.example/spoofed"),
        get("spoofed x-appid-peer", b"/public/x", Allowed)
            .header(b"x-appid-peer", b"eyJpZCI6ImZha2UifQ"),
        get("spoofed X_APPID_PEER", b"/public/x", Allowed)
            .header(b"X_APPID_PEER", b"eyJpZCI6ImZha2UifQ"),
        get("spoofed x-appid-denied-by", b"/public/x", Allowed)
            .header(b"x-appid-denied-by", b"forged"),
        get("spoofed tenant-acme with peer id", b"/tenant/a", Allowed)
            .header(b"x-tenant", b"acme")
            .header(b"x-appid-peer-id", b"spiffe://test.example/spoofed"),
        // --- gRPC: the same canonical path and headers, denial as status 7.
        req("gRPC denied path", "POST", b"/public/secret/x", Denied("no-secret")).grpc(),
        req("gRPC encoded denied path", "POST", b"/public/%73ecret/x", Denied("no-secret")).grpc(),
        req("gRPC x_debug", "POST", b"/public/x", Denied("no-debug"))
            .header(b"x_debug", b"1")
            .grpc(),
        // --- Detection: anything that could be HTTP/1 is parsed as HTTP/1.
        raw(
            "leading CRLF then denied",
            b"\r\nGET /admin/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
            Denied("default"),
        ),
        raw(
            "two leading CRLFs then denied",
            b"\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
            Denied("default"),
        ),
        raw(
            "leading CRLF then allowed",
            b"\r\nGET /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
            Allowed,
        ),
        raw(
            "leading CRLF then spoofed header",
            b"\r\nGET /public/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: spiffe://test.example/spoofed\r\n\r\n",
            Allowed,
        ),
        // --- HTTP/1 smuggling shapes: refused before anything is forwarded.
        raw(
            "CL and TE",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        raw(
            "TE and CL",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        raw(
            "two different CLs",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            Refused(400),
        ),
        raw(
            "CL list of different values",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1, 2\r\n\r\nab",
            Refused(400),
        ),
        // Equal values are accepted (RFC 9112 §6.3) and reach the app as
        // one plain value (`check_echo`).
        raw(
            "CL list of equal values",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2, 2\r\n\r\nab",
            Allowed,
        ),
        raw(
            "two equal CLs",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            Allowed,
        ),
        raw(
            "TE gzip",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            Refused(400),
        ),
        raw(
            "TE chunked then gzip",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Refused(400),
        ),
        raw(
            "TE on HTTP/1.0",
            b"POST /public/x HTTP/1.0\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        raw(
            "space before colon in TE",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        raw(
            "space before colon in x-debug",
            b"GET /public/x HTTP/1.1\r\nHost: api.test\r\nx-debug : 1\r\n\r\n",
            Refused(400),
        ),
        raw(
            "obs-fold header",
            b"GET /public/x HTTP/1.1\r\nHost: api.test\r\nx-debug: 0\r\n 1\r\n\r\n",
            Refused(400),
        ),
        raw(
            "header line without colon",
            b"GET /public/x HTTP/1.1\r\nHost: api.test\r\nx-debug\r\n\r\n",
            Refused(400),
        ),
        raw(
            "NUL in header value",
            b"GET /public/x HTTP/1.1\r\nHost: api.test\r\nx-debug: 0\x001\r\n\r\n",
            Refused(400),
        ),
        // A request line inside a chunk is body, not a request: one request.
        raw(
            "request line hidden in a chunk",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              27\r\nGET /admin/x HTTP/1.1\r\nHost: a.test\r\n\r\n\r\n0\r\n\r\n",
            Allowed,
        ),
        // A body that begins with a request line is refused: an app that
        // leaves it unread would run it (CL.0; tests/body_smuggling.rs).
        raw(
            "request line hidden in a CL body",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 39\r\n\r\n\
              GET /admin/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Refused(400),
        ),
        raw(
            "request line later in a CL body",
            b"POST /public/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 43\r\n\r\n\
              a=1\nGET /admin/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Allowed,
        ),
        // --- Trailers: never reach the app or policy.
        req("body without trailers", "POST", b"/public/echo-trailers", Allowed).body(b"abc"),
        req("trailer x-debug", "POST", b"/public/echo-trailers", Closed)
            .body(b"abc")
            .trailer("x-debug", "1"),
        req("trailer x-appid-peer-id", "POST", b"/public/echo-trailers", Closed)
            .body(b"abc")
            .trailer("x-appid-peer-id", "spiffe://test.example/evil"),
        raw(
            "chunked body without trailers",
            b"POST /public/echo-trailers HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n",
            Allowed,
        ),
        raw(
            "empty chunked body with trailer",
            b"POST /public/echo-trailers HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\nx-debug: 1\r\n\r\n",
            Closed,
        ),
        // --- HTTP/2 bodies that are not their `content-length`: malformed
        // (RFC 9113 §8.1.1), the stream is reset and the offending DATA
        // never passed on. (In HTTP/1 extra bytes are the next request.)
        // To a handler that reads the body, like "PUT with body".
        req("h2 body of its content-length", "POST", b"/public/echo-trailers", Allowed)
            .header(b"content-length", b"3")
            .body(b"abc")
            .h2_only()
            .h2_raw(),
        req("h2 body longer than content-length", "POST", b"/public/echo-trailers", Closed)
            .header(b"content-length", b"3")
            .body(b"abcdef")
            .h2_only()
            .h2_raw(),
        req("h2 body shorter than content-length", "POST", b"/public/echo-trailers", Closed)
            .header(b"content-length", b"10")
            .body(b"abc")
            .h2_only()
            .h2_raw(),
        req("h2 conflicting content-lengths", "POST", b"/public/echo-trailers", Closed)
            .header(b"content-length", b"3, 4")
            .body(b"abc")
            .h2_only()
            .h2_raw(),
        req("h2 content-length list of equal values", "POST", b"/public/echo-trailers", Allowed)
            .header(b"content-length", b"3, 3")
            .body(b"abc")
            .h2_only()
            .h2_raw(),
        // --- Limits.
        get("oversized head", b"/public/x", Refused(431))
            .header(b"x-big", BIG)
            .h1_only("HTTP/2: a stream reset, and h2's client may refuse to send it"),
    ]
}

// ---------------------------------------------------------------------------
// What came back

/// A response as the caller saw it. Header names are lower-cased.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum Outcome {
    Answer(Answer),
    /// Closed or reset without an answer (what happened).
    Closed(String),
    /// The sidecar broke HTTP/2 itself (what [`h2raw`] found): never a
    /// verdict.
    Broken(String),
    /// Nothing within [`ROW_LIMIT`].
    Timeout,
}

/// How long one row may take.
const ROW_LIMIT: Duration = Duration::from_secs(5);

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answer(a) => {
            let mut text = format!("{}", a.status);
            for name in ["x-appid-denied-by", "grpc-status"] {
                if let Some(v) = a.header(name) {
                    text.push_str(&format!(" {name}: {v}"));
                }
            }
            text
        }
        Outcome::Closed(how) => format!("closed ({how})"),
        Outcome::Broken(what) => format!("broken HTTP/2 ({what})"),
        Outcome::Timeout => format!("no answer within {ROW_LIMIT:?}"),
    }
}

/// `x-appid-*` in either spelling and any case.
fn is_appid_header(name: &str) -> bool {
    name.to_ascii_lowercase()
        .replace('_', "-")
        .starts_with("x-appid-")
}

// ---------------------------------------------------------------------------
// HTTP/1.1 over a raw TcpStream

mod h1 {
    use super::*;

    /// The bytes of a row: its raw override, or a request line, `Host`,
    /// its headers and its body (chunked when it has trailers).
    pub fn bytes(row: &Row) -> Vec<u8> {
        if let Some(raw) = row.raw_h1 {
            return raw.to_vec();
        }
        let mut out = Vec::new();
        out.extend_from_slice(row.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(row.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: api.test\r\n");
        for (name, value) in &row.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let body = row.body.unwrap_or_default();
        if !row.trailers.is_empty() {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (name, value) in &row.trailers {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        } else if row.body.is_some() {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Sends `request` on a new connection and reads one response (the
    /// connection stays open for writing meanwhile: no half close).
    pub async fn send(address: SocketAddr, request: Vec<u8>, head: bool) -> Outcome {
        let stream = match TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(e) => return Outcome::Closed(format!("connect: {e}")),
        };
        let (mut read, mut write) = stream.into_split();
        // Written from a task: a sidecar that stops reading a large head
        // must not block us from reading its answer.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&request).await;
            write
        });
        let outcome = tokio::time::timeout(ROW_LIMIT, read_response(&mut read, head))
            .await
            .unwrap_or(Outcome::Timeout);
        writer.abort();
        outcome
    }

    /// A connection being read, with what was read but not used yet.
    pub struct Reader<'a, R> {
        pub read: &'a mut R,
        pub buf: Vec<u8>,
    }

    impl<R: AsyncReadExt + Unpin> Reader<'_, R> {
        /// Reads more; `Err` on EOF or error.
        async fn fill(&mut self) -> Result<(), String> {
            let mut chunk = [0u8; 16384];
            match self.read.read(&mut chunk).await {
                Ok(0) => Err("eof".into()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Ok(())
                }
                Err(e) => Err(format!("{:?}", e.kind())),
            }
        }

        /// Up to and including the next `end`.
        async fn until(&mut self, end: &[u8]) -> Result<Vec<u8>, String> {
            loop {
                if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                    return Ok(self.buf.drain(..at + end.len()).collect());
                }
                self.fill().await?;
            }
        }

        async fn exactly(&mut self, n: usize) -> Result<Vec<u8>, String> {
            while self.buf.len() < n {
                self.fill().await?;
            }
            Ok(self.buf.drain(..n).collect())
        }
    }

    fn fields(block: &[u8]) -> Vec<(String, String)> {
        String::from_utf8_lossy(block)
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }

    pub async fn read_response<R: AsyncReadExt + Unpin>(
        read: &mut R,
        head_request: bool,
    ) -> Outcome {
        let mut reader = Reader {
            read,
            buf: Vec::new(),
        };
        // Skip interim (1xx) responses.
        let (status, headers) = loop {
            let head = match reader.until(b"\r\n\r\n").await {
                Ok(head) => head,
                Err(e) if reader.buf.is_empty() => return Outcome::Closed(e),
                Err(e) => return Outcome::Closed(format!("{e} inside a response head")),
            };
            let (line, rest) = head.split_at(head.iter().position(|&b| b == b'\n').unwrap_or(0));
            let status: u16 = String::from_utf8_lossy(line)
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if !(100..200).contains(&status) {
                break (status, fields(rest));
            }
        };
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if head_request || status == 204 || status == 304 {
            return Outcome::Answer(answer);
        }
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let length = answer.header("content-length").and_then(|v| v.parse().ok());
        let body = async {
            if chunked {
                loop {
                    let line = reader.until(b"\r\n").await?;
                    let size = String::from_utf8_lossy(&line);
                    let size = size.trim().split(';').next().unwrap_or_default();
                    let size = usize::from_str_radix(size, 16).map_err(|e| format!("{e}"))?;
                    if size == 0 {
                        // Trailers end with an empty line.
                        let mut block = Vec::new();
                        loop {
                            let line = reader.until(b"\r\n").await?;
                            if line == b"\r\n" {
                                break;
                            }
                            block.extend_from_slice(&line);
                        }
                        answer.trailers = fields(&block);
                        return Ok::<_, String>(());
                    }
                    answer
                        .body
                        .extend(reader.exactly(size + 2).await?.drain(..size));
                }
            } else if let Some(n) = length {
                answer.body = reader.exactly(n).await?;
                Ok(())
            } else {
                // Until close.
                while reader.fill().await.is_ok() {}
                answer.body = std::mem::take(&mut reader.buf);
                Ok(())
            }
        };
        match body.await {
            Ok(()) => Outcome::Answer(answer),
            Err(e) => Outcome::Closed(format!("{e} inside a {status} response body")),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 with prior knowledge (the h2 crate)

mod h2c {
    use super::*;
    use http::uri::{Authority, PathAndQuery, Scheme};
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

    /// The row as an `http::Request` (`Err`: it cannot be expressed).
    pub fn request(row: &Row) -> Result<Request<()>, String> {
        let method = Method::from_bytes(row.method.as_bytes()).map_err(|e| format!("{e}"))?;
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            parts.authority = Some(
                Authority::from_maybe_shared(Bytes::from_static(row.target))
                    .map_err(|e| format!("{e}"))?,
            );
        } else {
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(Authority::from_static(row.authority));
            parts.path_and_query = Some(
                PathAndQuery::from_maybe_shared(Bytes::from_static(row.target))
                    .map_err(|e| format!("{e}"))?,
            );
        }
        let uri = Uri::from_parts(parts).map_err(|e| format!("{e}"))?;
        let mut request = Request::builder().method(method).uri(uri).body(()).unwrap();
        for (name, value) in &row.headers {
            let name = HeaderName::from_bytes(name).map_err(|e| format!("{e}"))?;
            let value = HeaderValue::from_bytes(value).map_err(|e| format!("{e}"))?;
            request.headers_mut().append(name, value);
        }
        Ok(request)
    }

    fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }

    /// Sends the row on a new HTTP/2 connection; reads the whole response.
    pub async fn send(address: SocketAddr, row: &Row) -> Outcome {
        let request = match request(row) {
            Ok(request) => request,
            Err(e) => panic!(
                "row {:?} cannot be sent over HTTP/2 ({e}); mark it h1_only",
                row.name
            ),
        };
        tokio::time::timeout(ROW_LIMIT, exchange(address, request, row))
            .await
            .unwrap_or(Outcome::Timeout)
    }

    async fn exchange(address: SocketAddr, request: Request<()>, row: &Row) -> Outcome {
        let closed = |what: &str, e: h2::Error| Outcome::Closed(format!("{what}: {e}"));
        let tcp = match TcpStream::connect(address).await {
            Ok(tcp) => tcp,
            Err(e) => return Outcome::Closed(format!("connect: {e}")),
        };
        let (client, connection) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(e) => return closed("handshake", e),
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let outcome = async {
            let mut client = client.ready().await.map_err(|e| closed("ready", e))?;
            let end = row.body.is_none() && row.trailers.is_empty();
            let (response, mut stream) = client
                .send_request(request, end)
                .map_err(|e| closed("send", e))?;
            // A sidecar may answer (a denial) before the body is sent, and
            // end the stream (RFC 9113 §8.1): the body then cannot be sent,
            // and the answer is what counts.
            let mut unsent = None;
            if !end {
                let body = Bytes::from_static(row.body.unwrap_or_default());
                let sent = stream
                    .send_data(body, row.trailers.is_empty())
                    .map_err(|e| closed("send body", e));
                unsent = sent.err();
                if unsent.is_none() && !row.trailers.is_empty() {
                    let mut trailers = HeaderMap::new();
                    for (name, value) in &row.trailers {
                        trailers.append(
                            HeaderName::from_static(name),
                            HeaderValue::from_static(value),
                        );
                    }
                    unsent = stream
                        .send_trailers(trailers)
                        .map_err(|e| closed("send trailers", e))
                        .err();
                }
            }
            let response = match response.await {
                Ok(response) => response,
                Err(e) => return Err(unsent.unwrap_or_else(|| closed("response", e))),
            };
            let status = response.status().as_u16();
            let headers = pairs(response.headers());
            if row.method == "HEAD" {
                // No body; h2 would call the unmet `content-length` an error.
                return Ok(Outcome::Answer(Answer {
                    status,
                    headers,
                    body: Vec::new(),
                    trailers: Vec::new(),
                }));
            }
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| closed("response body", e))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            let trailers = body
                .trailers()
                .await
                .map_err(|e| closed("response trailers", e))?;
            Ok::<_, Outcome>(Outcome::Answer(Answer {
                status,
                headers,
                body: bytes,
                trailers: trailers.as_ref().map(pairs).unwrap_or_default(),
            }))
        }
        .await
        .unwrap_or_else(|outcome| outcome);
        driver.abort();
        outcome
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 by hand (requests the h2 crate's client will not send)

/// A small HTTP/2 client written frame by frame, for rows marked
/// [`Row::h2_raw`]. It exists because the h2 crate's client cannot send
/// some hostile requests: it builds `:path` from an `http::Uri`, which
/// drops a fragment, so `#` (and whatever follows it) never goes out. It
/// is also used for bodies that are not their `content-length`, so that
/// the frames are exactly what the row says (one HEADERS, one DATA),
/// whatever the h2 crate would check or split.
///
/// It speaks prior-knowledge cleartext HTTP/2: the preface, an empty
/// SETTINGS, one request on stream 1 (a HEADERS frame with a plain HPACK
/// block, then the body as one DATA frame), then reads frames until the
/// answer ends or the stream or connection dies. Only the answer's header
/// blocks are decoded by the h2 crate ([`Blocks`]). It sends no trailers
/// and no CONNECT ([`check`]).
mod h2raw {
    use super::*;
    use futures_util::StreamExt as _;
    use h2::Reason;
    use h2::frame::Pseudo;
    use http::HeaderMap;
    use tokio::io::DuplexStream;

    /// The client connection preface (RFC 9113 §3.4).
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Every frame starts with 9 bytes: payload length (24 bits), type,
    /// flags, stream ID (31 bits).
    const FRAME_HEADER_LEN: usize = 9;
    /// SETTINGS_MAX_FRAME_SIZE's default, which this client never raises.
    const MAX_FRAME_LEN: usize = 16_384;
    /// The largest answer header block (all its frames) this client takes.
    const MAX_BLOCK: usize = 256 * 1024;
    /// The largest answer body this client takes.
    const MAX_BODY: usize = 1024 * 1024;

    // Frame types (RFC 9113 §6).
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PUSH_PROMISE: u8 = 0x5;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const WINDOW_UPDATE: u8 = 0x8;
    const CONTINUATION: u8 = 0x9;

    // Flags.
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;

    /// The one stream this client opens.
    const STREAM: u32 = 1;

    /// `Err` when the row needs something this client does not send.
    pub fn check(row: &Row) -> Result<(), String> {
        if !row.trailers.is_empty() {
            return Err("h2raw sends no trailers".into());
        }
        if row.method == "CONNECT" {
            return Err("h2raw sends no CONNECT (it always sends :scheme and :path)".into());
        }
        let body = row.body.unwrap_or_default();
        if request_block(row).len() > MAX_FRAME_LEN || body.len() > MAX_FRAME_LEN {
            return Err(format!(
                "h2raw sends one HEADERS and one DATA frame, each at most {MAX_FRAME_LEN} bytes"
            ));
        }
        Ok(())
    }

    /// Sends the row on a new connection; reads the whole answer.
    pub async fn send(address: SocketAddr, row: &Row) -> Outcome {
        if let Err(e) = check(row) {
            panic!("row {:?} cannot be sent by h2raw: {e}", row.name);
        }
        tokio::time::timeout(ROW_LIMIT, exchange(address, row))
            .await
            .unwrap_or(Outcome::Timeout)
    }

    async fn exchange(address: SocketAddr, row: &Row) -> Outcome {
        let tcp = match TcpStream::connect(address).await {
            Ok(tcp) => tcp,
            Err(e) => return Outcome::Closed(format!("connect: {e}")),
        };
        let mut connection = Connection {
            tcp,
            input: Vec::new(),
        };
        let answer = async {
            connection.write(&request(row)).await?;
            read_answer(&mut connection).await
        };
        match answer.await {
            Ok(answer) => Outcome::Answer(answer),
            Err(outcome) => outcome,
        }
    }

    // --- Writing

    // One frame: the 9-byte header, then the payload.
    use crate::support::rogue::h2_frame as encode_frame;

    /// An HPACK integer (RFC 7541 §5.1): `value` in the low `prefix_bits`
    /// bits of a first byte whose high bits are `first`. A value that does
    /// not fit fills the prefix with ones and the rest follows in 7-bit
    /// groups, least significant first, each but the last with its high
    /// bit set.
    pub fn put_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, value: usize) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 0x80 {
            out.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        out.push(rest as u8);
    }

    /// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2): the H
    /// bit clear, the length as a 7-bit-prefix integer, then the bytes.
    fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
        put_integer(out, 0x00, 7, bytes.len());
        out.extend_from_slice(bytes);
    }

    /// One field as a "literal header field without indexing — new name"
    /// (RFC 7541 §6.2.2, first byte 0x00): name and value exactly as
    /// written, and nothing added to the sidecar's dynamic table.
    fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        put_string(out, name);
        put_string(out, value);
    }

    /// The request's header block: the pseudo-header fields, then the
    /// row's fields in order.
    pub fn request_block(row: &Row) -> Vec<u8> {
        let mut block = Vec::new();
        put_field(&mut block, b":method", row.method.as_bytes());
        put_field(&mut block, b":scheme", b"http");
        put_field(&mut block, b":authority", row.authority.as_bytes());
        put_field(&mut block, b":path", row.target);
        for (name, value) in &row.headers {
            put_field(&mut block, name, value);
        }
        block
    }

    /// All this client sends: the preface, SETTINGS, HEADERS (ending the
    /// stream if there is no body) and the body in one DATA frame (ending
    /// it).
    fn request(row: &Row) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(encode_frame(SETTINGS, 0, 0, &[]));
        let end = if row.body.is_none() { END_STREAM } else { 0 };
        let block = request_block(row);
        out.extend(encode_frame(HEADERS, END_HEADERS | end, STREAM, &block));
        if let Some(body) = row.body {
            out.extend(encode_frame(DATA, END_STREAM, STREAM, body));
        }
        out
    }

    // --- Reading

    /// A frame as read: its header's fields and all its bytes.
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        bytes: Vec<u8>,
    }

    impl Frame {
        fn payload(&self) -> &[u8] {
            &self.bytes[FRAME_HEADER_LEN..]
        }

        fn has(&self, flag: u8) -> bool {
            self.flags & flag != 0
        }

        /// The error code at `at` in the payload (RST_STREAM: 0, GOAWAY: 4).
        fn reason(&self, at: usize) -> Result<Reason, Outcome> {
            let bytes = self.payload().get(at..at + 4).ok_or_else(|| {
                Outcome::Broken(format!(
                    "a {}-byte frame of type {}",
                    self.payload().len(),
                    self.kind
                ))
            })?;
            Ok(Reason::from(u32::from_be_bytes(bytes.try_into().unwrap())))
        }

        /// A DATA frame's content: the payload without its padding (PADDED:
        /// a pad-length byte first, that many bytes of padding last).
        fn unpadded(&self) -> Result<&[u8], Outcome> {
            let payload = self.payload();
            if !self.has(PADDED) {
                return Ok(payload);
            }
            let bad = || Outcome::Broken("padding longer than its DATA frame".into());
            let (&pad, rest) = payload.split_first().ok_or_else(bad)?;
            let end = rest.len().checked_sub(pad as usize).ok_or_else(bad)?;
            Ok(&rest[..end])
        }
    }

    /// The connection: frames out, frames in.
    struct Connection {
        tcp: TcpStream,
        /// Bytes read that are not a whole frame yet.
        input: Vec<u8>,
    }

    impl Connection {
        async fn write(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
            self.tcp
                .write_all(bytes)
                .await
                .map_err(|e| Outcome::Closed(format!("write: {:?}", e.kind())))
        }

        /// The next whole frame; `Err` (the outcome) when the connection
        /// ends first.
        async fn frame(&mut self) -> Result<Frame, Outcome> {
            loop {
                if self.input.len() >= FRAME_HEADER_LEN {
                    let length =
                        u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]);
                    let length = length as usize;
                    if length > MAX_FRAME_LEN {
                        return Err(Outcome::Broken(format!("a {length}-byte frame")));
                    }
                    if self.input.len() >= FRAME_HEADER_LEN + length {
                        let bytes: Vec<u8> =
                            self.input.drain(..FRAME_HEADER_LEN + length).collect();
                        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
                        return Ok(Frame {
                            kind: bytes[3],
                            flags: bytes[4],
                            stream: stream & 0x7fff_ffff,
                            bytes,
                        });
                    }
                }
                let mut chunk = [0u8; 16_384];
                match self.tcp.read(&mut chunk).await {
                    Ok(0) if self.input.is_empty() => return Err(Outcome::Closed("eof".into())),
                    Ok(0) => return Err(Outcome::Closed("eof inside a frame".into())),
                    Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                    Err(e) => return Err(Outcome::Closed(format!("{:?}", e.kind()))),
                }
            }
        }
    }

    /// Reads frames until the answer on stream 1 ends (`Ok`), or the
    /// stream or the connection does first (`Err`, the outcome).
    async fn read_answer(connection: &mut Connection) -> Result<Answer, Outcome> {
        let broken = |what: &str| Outcome::Broken(what.to_string());
        let mut blocks = Blocks::new();
        let mut answer: Option<Answer> = None;
        loop {
            let frame = connection.frame().await?;
            match frame.kind {
                SETTINGS if !frame.has(ACK) => {
                    connection
                        .write(&encode_frame(SETTINGS, ACK, 0, &[]))
                        .await?;
                }
                PING if !frame.has(ACK) => {
                    let pong = encode_frame(PING, ACK, 0, frame.payload());
                    connection.write(&pong).await?;
                }
                RST_STREAM if frame.stream == STREAM => {
                    let reason = frame.reason(0)?;
                    return Err(Outcome::Closed(format!("RST_STREAM {reason:?}")));
                }
                GOAWAY => {
                    let last = frame
                        .payload()
                        .get(..4)
                        .ok_or_else(|| broken("a short GOAWAY"))?;
                    let last = u32::from_be_bytes(last.try_into().unwrap()) & 0x7fff_ffff;
                    let reason = frame.reason(4)?;
                    // Only a graceful GOAWAY that covers stream 1 lets its
                    // answer still come.
                    if reason != Reason::NO_ERROR || last < STREAM {
                        return Err(Outcome::Closed(format!(
                            "GOAWAY {reason:?}, last stream {last}"
                        )));
                    }
                }
                HEADERS if frame.stream == STREAM => {
                    // END_STREAM is on the HEADERS frame, END_HEADERS on
                    // the block's last frame (it or a CONTINUATION).
                    let end = frame.has(END_STREAM);
                    let mut frames = frame.bytes.clone();
                    let mut last = frame;
                    while !last.has(END_HEADERS) {
                        last = connection.frame().await?;
                        if last.kind != CONTINUATION || last.stream != STREAM {
                            return Err(broken("a header block cut by another frame"));
                        }
                        frames.extend_from_slice(&last.bytes);
                        if frames.len() > MAX_BLOCK {
                            return Err(broken("a header block over MAX_BLOCK"));
                        }
                    }
                    let (status, fields) = blocks.decode(&frames).await?;
                    match (answer.as_mut(), status) {
                        // An interim (1xx) answer: the final one follows.
                        (None, Some(status)) if status < 200 => {}
                        (None, Some(status)) => {
                            answer = Some(Answer {
                                status,
                                headers: fields,
                                body: Vec::new(),
                                trailers: Vec::new(),
                            });
                        }
                        // A second block: the trailers.
                        (Some(answer), None) => answer.trailers = fields,
                        (None, None) => return Err(broken("a response head without :status")),
                        (Some(_), Some(_)) => return Err(broken("a second response head")),
                    }
                    if end {
                        return answer.ok_or_else(|| broken("an interim answer ended the stream"));
                    }
                }
                DATA if frame.stream == STREAM => {
                    let Some(so_far) = answer.as_mut() else {
                        return Err(broken("DATA before the response head"));
                    };
                    so_far.body.extend_from_slice(frame.unpadded()?);
                    if so_far.body.len() > MAX_BODY {
                        return Err(broken("a response body over MAX_BODY"));
                    }
                    if frame.has(END_STREAM) {
                        return Ok(answer.take().unwrap());
                    }
                    // Give the flow-control window back, to the connection
                    // and to the stream.
                    let taken = (frame.payload().len() as u32).to_be_bytes();
                    if !frame.payload().is_empty() {
                        let mut updates = encode_frame(WINDOW_UPDATE, 0, 0, &taken);
                        updates.extend(encode_frame(WINDOW_UPDATE, 0, STREAM, &taken));
                        connection.write(&updates).await?;
                    }
                }
                // A pushed stream's block would have to be decoded to keep
                // HPACK in step; the sidecar has no reason to push.
                PUSH_PROMISE => return Err(broken("a PUSH_PROMISE")),
                HEADERS | CONTINUATION | DATA => {
                    return Err(Outcome::Broken(format!(
                        "frame type {} on stream {}",
                        frame.kind, frame.stream
                    )));
                }
                // WINDOW_UPDATE (this client's one DATA frame fits the
                // initial window), PRIORITY, acknowledgements, resets of
                // other streams, unknown types (RFC 9113 §5.5).
                _ => {}
            }
        }
    }

    /// The answer's header blocks, decoded by the h2 crate's HPACK decoder.
    /// That decoder is not public on its own (`h2::hpack` is a private
    /// module), but the frame codec around it is (h2's `unstable` feature;
    /// the sidecar's relay uses it the same way in
    /// `proxy/src/sidecar/http/relay/hpack.rs`): the header frames, as read,
    /// go into one end of an in-memory pipe, and the codec reads them from
    /// the other end, strips their padding and priority, joins the
    /// CONTINUATIONs and decodes the block. One per connection, like
    /// HPACK's dynamic table.
    pub struct Blocks {
        /// This client writes header frames here.
        feed: DuplexStream,
        /// The codec reads them from the other end (and never writes).
        codec: h2::Codec<DuplexStream, Bytes>,
    }

    impl Blocks {
        pub fn new() -> Blocks {
            let (feed, other_end) = tokio::io::duplex(MAX_BLOCK);
            Blocks {
                feed,
                codec: h2::Codec::new(other_end),
            }
        }

        /// One whole header block (a HEADERS frame and its CONTINUATIONs,
        /// as read) as its pseudo-header fields and its other fields.
        pub async fn decode_parts(&mut self, frames: &[u8]) -> Result<(Pseudo, HeaderMap), String> {
            self.feed
                .write_all(frames)
                .await
                .map_err(|e| format!("{e}"))?;
            match self.codec.next().await {
                Some(Ok(h2::frame::Frame::Headers(headers))) => Ok(headers.into_parts()),
                other => Err(format!("{other:?}")),
            }
        }

        /// One whole header block as its `:status` (if any) and its fields.
        async fn decode(
            &mut self,
            frames: &[u8],
        ) -> Result<(Option<u16>, Vec<(String, String)>), Outcome> {
            let (pseudo, fields) = self
                .decode_parts(frames)
                .await
                .map_err(|e| Outcome::Broken(format!("an undecodable header block: {e}")))?;
            let fields = fields
                .iter()
                .map(|(n, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_string(), value)
                })
                .collect();
            Ok((pseudo.status.map(|s| s.as_u16()), fields))
        }
    }

    /// The request's HEADERS frame alone, for [`Blocks`] tests.
    pub fn request_headers_frame(row: &Row) -> Vec<u8> {
        encode_frame(HEADERS, END_HEADERS, STREAM, &request_block(row))
    }
}

// ---------------------------------------------------------------------------
// Judging a row

/// Where a combination sends its requests, and what the app behind it
/// should see.
struct Target<'a> {
    /// `h1 pooled (a) outbound decides`, for messages.
    label: String,
    address: SocketAddr,
    app: &'a HttpApp,
    /// The SPIFFE ID the app must see (`None`: a caller outside the mesh,
    /// who gets no identity headers at all).
    caller: Option<String>,
    /// `plain-` for callers outside the mesh (their rules' names).
    rule_prefix: &'static str,
    /// The two sidecars of the mesh (either may decide, or refuse).
    sidecars: [&'a Sidecar; 2],
}

/// The rule name a denial must carry on this target.
fn rule_name(target: &Target<'_>, rule: &str) -> String {
    if rule == "default" {
        rule.to_string()
    } else {
        format!("{}{rule}", target.rule_prefix)
    }
}

/// Checks one outcome against the row's verdict; `Err` says why not.
fn judge(
    row: &Row,
    target: &Target<'_>,
    outcome: &Outcome,
    app_requests: u64,
    new_trailers: &[(String, String)],
) -> Result<(), String> {
    if !new_trailers.is_empty() {
        return Err(format!(
            "the app received request trailers {new_trailers:?}"
        ));
    }
    match (row.expect, outcome) {
        (Allowed, Outcome::Answer(answer)) => {
            if answer.status != 200 {
                return Err(format!("status {}", answer.status));
            }
            if app_requests != 1 {
                return Err(format!("the app counted {app_requests} requests, not 1"));
            }
            if let Some((name, _)) = answer.headers.iter().find(|(n, _)| is_appid_header(n)) {
                return Err(format!("the caller saw {name}"));
            }
            if row.method == "HEAD" {
                return Ok(()); // no echo to read
            }
            let echo: Value = serde_json::from_slice(&answer.body).map_err(|e| {
                format!(
                    "not the app's echo ({e}): {}",
                    String::from_utf8_lossy(&answer.body)
                )
            })?;
            check_echo(row, target, &echo)
        }
        (Denied(rule), Outcome::Answer(answer)) => {
            let rule = rule_name(target, rule);
            if row.is_grpc() {
                if answer.header("grpc-status") != Some("7") {
                    return Err("no grpc-status: 7".into());
                }
            } else if answer.status != 403 {
                return Err(format!("status {}", answer.status));
            }
            if answer.header("x-appid-denied-by") != Some(rule.as_str()) {
                return Err(format!("x-appid-denied-by is not {rule}"));
            }
            no_app_request(app_requests)
        }
        (Refused(status), Outcome::Answer(answer)) => {
            if answer.status != status {
                return Err(format!("status {}", answer.status));
            }
            no_app_request(app_requests)
        }
        // The app may have seen the head of a streamed request; what
        // matters is that it never got the trailers (checked above) and
        // the caller got no answer.
        (Closed, Outcome::Closed(_)) => Ok(()),
        (_, Outcome::Timeout) => Err("timed out".into()),
        (_, _) => Err("wrong kind of outcome".into()),
    }
}

fn no_app_request(app_requests: u64) -> Result<(), String> {
    if app_requests == 0 {
        Ok(())
    } else {
        Err(format!("the app received it ({app_requests} requests)"))
    }
}

/// The app got the request as sent, plus the sidecar's identity headers
/// for a meshed caller (exactly one each, the real identity) and no other
/// `x-appid-*` header in any spelling.
fn check_echo(row: &Row, target: &Target<'_>, echo: &Value) -> Result<(), String> {
    if row.raw_h1.is_none() {
        if echo["method"] != row.method {
            return Err(format!("the app saw method {}", echo["method"]));
        }
        if row.target.starts_with(b"/") {
            let path = row.target.split(|&b| b == b'?').next().unwrap_or_default();
            if echo["path"] != *String::from_utf8_lossy(path) {
                return Err(format!(
                    "the app saw path {} (not byte-identical)",
                    echo["path"]
                ));
            }
        }
    }
    let headers = echo["headers"].as_object().cloned().unwrap_or_default();
    for (name, values) in &headers {
        if !is_appid_header(name) {
            continue;
        }
        let values: Vec<&str> = values
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let real = match (name.as_str(), &target.caller, values.as_slice()) {
            ("x-appid-peer-id", Some(id), [value]) => value == id,
            ("x-appid-peer", Some(id), [value]) => peer_claims_id(value).as_deref() == Some(id),
            _ => false,
        };
        if !real {
            return Err(format!("the app saw {name}: {values:?}"));
        }
    }
    if target.caller.is_some() && !headers.contains_key("x-appid-peer-id") {
        return Err("the app did not get x-appid-peer-id".into());
    }
    // A length the sidecar accepted reaches the app as one plain value
    // (`5, 5` would be read differently by different parsers).
    if let Some(values) = headers.get("content-length") {
        let values: Vec<&str> = values
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let plain = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        if !matches!(values.as_slice(), [one] if plain(one)) {
            return Err(format!("the app saw content-length {values:?}"));
        }
    }
    Ok(())
}

/// The `id` in an `x-appid-peer` value (base64url of the AppID JSON).
fn peer_claims_id(value: &str) -> Option<String> {
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    let claims: Value = serde_json::from_slice(&json).ok()?;
    claims["id"].as_str().map(str::to_string)
}

/// The rows audited as denials on one target, each with the reason its
/// line gave (`None`: a `"repeated"` count line, which names no request).
type Reasons = Vec<(Row, Option<String>)>;

/// Runs every row that applies to `proto` against `target`; returns one
/// line per row that did not get its verdict, and the reasons of the rows
/// audited as denials.
async fn run_table(proto: Proto, target: &Target<'_>) -> (Vec<String>, Reasons) {
    let state = &target.app.state;
    let mut failures = Vec::new();
    let mut reasons = Vec::new();
    let rows: Vec<Row> = table()
        .into_iter()
        .filter(|r| r.applies_to(proto))
        .collect();
    for row in &rows {
        let audited_before = target.sidecars.map(|s| s.audit_lines().len());
        let requests_before = state.requests.load(Ordering::SeqCst);
        let trailers_before = state.trailers_seen.lock().unwrap().len();
        let outcome = match proto {
            Proto::H1 => h1::send(target.address, h1::bytes(row), row.method == "HEAD").await,
            Proto::H2 if row.h2_raw => h2raw::send(target.address, row).await,
            Proto::H2 => h2c::send(target.address, row).await,
        };
        if matches!(row.expect, Closed) {
            // The head went on before the connection was cut: let the app
            // finish counting it, so it is not counted for the next row.
            settle(state).await;
        }
        let app_requests = state.requests.load(Ordering::SeqCst) - requests_before;
        let new_trailers = state.trailers_seen.lock().unwrap()[trailers_before..].to_vec();
        let judged = match judge(row, target, &outcome, app_requests, &new_trailers) {
            Ok(()) => audited(row, target, audited_before).await,
            Err(why) => Err(why),
        };
        if let Ok(Some(reason)) = &judged {
            reasons.push((row.clone(), reason.clone()));
        }
        if let Err(why) = judged {
            let expected = match row.expect {
                Denied(rule) => format!("Denied({})", rule_name(target, rule)),
                other => format!("{other:?}"),
            };
            failures.push(format!(
                "[{}] {:?}: expected {expected}, got {}: {why}",
                target.label,
                row.name,
                describe(&outcome)
            ));
        }
    }
    eprintln!(
        "{}: {} rows, {} failed",
        target.label,
        rows.len(),
        failures.len()
    );
    for failure in &failures {
        eprintln!("  FAIL {failure}");
    }
    (failures, reasons)
}

/// Whether the row's audit line ([`Row::audited_rule`]) was written by
/// either sidecar since each had `before` lines, and the reason it gives
/// (`Ok(None)`: the row is not audited as a denial). Waits up to 3 s: past
/// ten denials a second from one source the log counts the rest into a
/// `"repeated"` line written when that second ends, which qualifies (it
/// carries the rule, not the request, so its reason is not the row's:
/// `Ok(Some(None))`). A line for the request itself must give a reason.
async fn audited(
    row: &Row,
    target: &Target<'_>,
    before: [usize; 2],
) -> Result<Option<Option<String>>, String> {
    let Some(rule) = row.audited_rule(target) else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let found = target
            .sidecars
            .iter()
            .zip(before)
            .find_map(|(sidecar, before)| {
                sidecar.audit_lines().into_iter().skip(before).find(|line| {
                    line["decision"] == "deny" && line["rule"].as_str() == Some(rule.as_str())
                })
            });
        if let Some(line) = found {
            if line.get("repeated").is_some() {
                return Ok(Some(None));
            }
            return match line["reason"].as_str() {
                Some(reason) if !reason.is_empty() => Ok(Some(Some(reason.to_owned()))),
                _ => Err(format!("the audit line gives no reason: {line}")),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no audit line with decision deny, rule {rule}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most a second) until the app's request count has not moved
/// for 100 ms.
async fn settle(state: &support::apps::AppState) {
    let mut last = state.requests.load(Ordering::SeqCst);
    let mut quiet = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = state.requests.load(Ordering::SeqCst);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
        if quiet >= 5 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The combinations

fn mesh_options(mode: &'static str, client_policy: String) -> MeshOptions {
    MeshOptions {
        server_policy: table_policy(),
        client_policy,
        server_tunnel: Some(mode),
        client_tunnel: Some(mode),
        ..MeshOptions::default()
    }
}

/// The last `max` bytes of a long context (whole audit logs of every row).
fn tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut …]\n{}", &text[start..])
}

/// The whole table over `proto` with both sidecars in `mode`, on the
/// three paths (a), (b), (c).
async fn differential(proto: Proto, mode: &'static str) {
    // (a) and (c): the same policy on both sidecars.
    let app_a = HttpApp::start().await;
    let mesh_a = Mesh::start(app_a.addr, mesh_options(mode, table_policy())).await;
    // (b): the client sidecar allows web→api at L4; the server decides.
    let app_b = HttpApp::start().await;
    let mesh_b = Mesh::start(app_b.addr, mesh_options(mode, WEB_TO_API.into())).await;
    let proto_name = match proto {
        Proto::H1 => "h1",
        Proto::H2 => "h2",
    };
    let targets = [
        Target {
            label: format!("{proto_name} {mode} (a) outbound decides"),
            address: mesh_a.outbound_addr(),
            app: &app_a,
            caller: Some(mesh_a.web.id.clone()),
            rule_prefix: "",
            sidecars: [&mesh_a.client, &mesh_a.server],
        },
        Target {
            label: format!("{proto_name} {mode} (b) inbound decides"),
            address: mesh_b.outbound_addr(),
            app: &app_b,
            caller: Some(mesh_b.web.id.clone()),
            rule_prefix: "",
            sidecars: [&mesh_b.client, &mesh_b.server],
        },
        Target {
            label: format!("{proto_name} {mode} (c) plaintext to inbound"),
            address: mesh_a.inbound_addr(),
            app: &app_a,
            caller: None,
            rule_prefix: "plain-",
            sidecars: [&mesh_a.client, &mesh_a.server],
        },
    ];
    let mut failures = Vec::new();
    let mut reasons = Vec::new();
    for target in &targets {
        let (failed, given) = run_table(proto, target).await;
        failures.extend(failed);
        reasons.push((target, given));
    }
    failures.extend(differing_reasons(&reasons));
    assert!(
        failures.is_empty(),
        "{} rows did not get their verdict or their reason:\n{}\n\n--- mesh (a)/(c):\n{}\n\n--- mesh (b):\n{}",
        failures.len(),
        failures.join("\n"),
        tail(mesh_a.context(), 30_000),
        tail(mesh_b.context(), 30_000),
    );
}

/// One check, one place, down to its words: a row refused on every target
/// is refused for the same reason on every one, and a row denied by policy
/// for the same reason on both meshed targets (a plaintext caller's reason
/// names its `plain-` rule's conditions, which differ). Rows whose line on
/// a target was a `"repeated"` count are compared on the others; most rows
/// must be compared on two targets at least, so that the check cannot
/// shrink to nothing.
fn differing_reasons(reasons: &[(&Target<'_>, Reasons)]) -> Vec<String> {
    type Given<'t> = Vec<(&'t str, String)>;
    let mut by_row: std::collections::BTreeMap<(&str, &str), Given<'_>> =
        std::collections::BTreeMap::new();
    for (target, given) in reasons {
        for (row, reason) in given {
            let caller = match row.expect {
                Denied(_) => target.rule_prefix,
                _ => "",
            };
            let row = by_row.entry((row.name, caller)).or_default();
            if let Some(reason) = reason {
                row.push((target.label.as_str(), reason.clone()));
            }
        }
    }
    let mut failures = Vec::new();
    let meshed_or_refused = by_row
        .keys()
        .filter(|(_, caller)| caller.is_empty())
        .count();
    let compared = by_row.values().filter(|given| given.len() >= 2).count();
    if compared * 2 < meshed_or_refused {
        failures.push(format!(
            "reasons compared for {compared} of {meshed_or_refused} rows: too few"
        ));
    }
    for ((row, _), given) in by_row {
        if given.iter().any(|(_, reason)| *reason != given[0].1) {
            // (`any` over no reasons is false: `given[0]` is read only when there is one.)
            let each: Vec<String> = given
                .iter()
                .map(|(label, reason)| format!("  [{label}] {reason}"))
                .collect();
            failures.push(format!(
                "{row:?}: refused or denied for different reasons:\n{}",
                each.join("\n")
            ));
        }
    }
    failures
}

#[test]
fn the_table_is_big_enough_and_names_are_unique() {
    let rows = table();
    let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "row names must be unique");
    for proto in [Proto::H1, Proto::H2] {
        let n = rows.iter().filter(|r| r.applies_to(proto)).count();
        assert!(n >= 60, "{proto:?}: only {n} rows");
    }
    // Every row that claims HTTP/2 can be expressed there.
    for row in rows.iter().filter(|r| r.applies_to(Proto::H2)) {
        let sendable = if row.h2_raw {
            h2raw::check(row)
        } else {
            h2c::request(row).map(drop)
        };
        if let Err(e) = sendable {
            panic!("row {:?} cannot be sent over HTTP/2: {e}", row.name);
        }
    }
}

/// The raw HTTP/2 client's HPACK: RFC 7541's integer examples (C.1) and
/// the prefix boundary, then a request block that the h2 crate's decoder
/// reads back byte for byte (a `#` with CR LF in `:path`, a value long
/// enough for a two-byte length).
#[tokio::test]
async fn the_raw_h2_client_writes_hpack_the_h2_crate_reads() {
    for (first, bits, value, expect) in [
        (0x00, 5, 10, &[0x0a][..]),
        (0x00, 5, 1337, &[0x1f, 0x9a, 0x0a][..]),
        (0x00, 8, 42, &[0x2a][..]),
        (0x00, 7, 126, &[0x7e][..]),
        (0x00, 7, 127, &[0x7f, 0x00][..]),
        (0x80, 7, 300, &[0xff, 0xad, 0x01][..]),
    ] {
        let mut out = Vec::new();
        h2raw::put_integer(&mut out, first, bits, value);
        assert_eq!(out, expect, "{value} with a {bits}-bit prefix");
    }
    const LONG: &[u8] = &[b'v'; 300];
    let row = req("round trip", "POST", b"/public/x#\r\nx-injected: 1", Closed)
        .header(b"x-long", LONG)
        .header(b"content-length", b"3, 4");
    let mut blocks = h2raw::Blocks::new();
    let (pseudo, fields) = blocks
        .decode_parts(&h2raw::request_headers_frame(&row))
        .await
        .expect("decodes");
    assert_eq!(pseudo.method.as_ref().map(|m| m.as_str()), Some("POST"));
    assert_eq!(pseudo.scheme.as_deref(), Some("http"));
    assert_eq!(pseudo.authority.as_deref(), Some("api.test"));
    assert_eq!(pseudo.path.as_deref(), Some("/public/x#\r\nx-injected: 1"));
    assert_eq!(fields.get("x-long").map(|v| v.as_bytes()), Some(LONG));
    assert_eq!(
        fields.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3, 4"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_over_http1_pooled() {
    differential(Proto::H1, "pooled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_over_http1_strict() {
    differential(Proto::H1, "strict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_over_http2_pooled() {
    differential(Proto::H2, "pooled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_over_http2_strict() {
    differential(Proto::H2, "strict").await;
}

// ---------------------------------------------------------------------------
// Detection: late requests and non-HTTP on a port an `http` rule applies to

const SPOOFED_ID: &str = "spiffe://test.example/spoofed";

/// An L4 allow (no `http`) plus an `http` deny of `/admin/**` on the same
/// port, for meshed callers and for plain ones from 127.0.0.0/8.
/// `l4_extra` goes into both allow rules' `to` (e.g. `, protocol: tcp`).
fn l4_plus_http_deny(l4_extra: &str) -> String {
    format!(
        "version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: {MESHED_FROM}
    to: {{ labels.app: api{l4_extra} }}
  - name: no-admin
    action: deny
    from: {MESHED_FROM}
    to: {{ labels.app: api }}
    http: {{ paths: [\"/admin/**\"] }}
  - name: plain-l4
    action: allow
    from: {PLAIN_FROM}
    to: {{ labels.app: api{l4_extra} }}
  - name: plain-no-admin
    action: deny
    from: {PLAIN_FROM}
    to: {{ labels.app: api }}
    http: {{ paths: [\"/admin/**\"] }}
"
    )
}

async fn l4_mesh(app: &HttpApp, mode: &'static str, l4_extra: &str) -> Mesh {
    l4_mesh_to(app.addr, mode, l4_extra).await
}

/// [`l4_mesh`] in front of the app at `app`.
async fn l4_mesh_to(app: SocketAddr, mode: &'static str, l4_extra: &str) -> Mesh {
    let policy = l4_plus_http_deny(l4_extra);
    Mesh::start(
        app,
        MeshOptions {
            server_policy: policy.clone(),
            client_policy: policy,
            server_limits: vec![("detect_timeout", "1s")],
            client_limits: vec![("detect_timeout", "1s")],
            server_tunnel: Some(mode),
            client_tunnel: Some(mode),
            ..MeshOptions::default()
        },
    )
    .await
}

/// `(label, address, expected caller ID, rule prefix)` for a meshed caller
/// (through both sidecars) and a plain one (straight to the inbound).
fn entry_points(mesh: &Mesh) -> [(&'static str, SocketAddr, Option<String>, &'static str); 2] {
    [
        (
            "meshed",
            mesh.outbound_addr(),
            Some(mesh.web.id.clone()),
            "",
        ),
        ("plaintext", mesh.inbound_addr(), None, "plain-"),
    ]
}

/// Panics with every failed combination and the sidecars' context, or
/// returns quietly when there is none.
fn report(test: &str, failures: Vec<(String, String)>) {
    for (failure, _) in &failures {
        eprintln!("  FAIL [{test}] {failure}");
    }
    if let Some((_, context)) = failures.last() {
        let list: Vec<&str> = failures.iter().map(|(f, _)| f.as_str()).collect();
        panic!(
            "{} combinations failed:\n{}\n\n--- sidecars of the last failure:\n{}",
            failures.len(),
            list.join("\n"),
            tail(context.clone(), 30_000)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_after_detect_timeout_is_still_authorized() {
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = l4_mesh(&app, mode, "").await;
        for (who, address, caller, prefix) in entry_points(&mesh) {
            let combination = format!("{mode} {who}");
            if let Err(why) = late_requests(&app, address, caller, prefix).await {
                failures.push((format!("[{combination}] {why}"), mesh.context()));
            }
        }
    }
    report("late first request", failures);
}

/// A late `GET /admin/x` meets the `http` deny; a late `GET /public/x`
/// reaches the app with the real identity only (both spoof
/// `x-appid-peer-id`).
async fn late_requests(
    app: &HttpApp,
    address: SocketAddr,
    caller: Option<String>,
    prefix: &str,
) -> Result<(), String> {
    let before = app.state.requests.load(Ordering::SeqCst);
    // Both connections wait past detect_timeout at the same time.
    let (denied, allowed) = tokio::join!(
        late_request(address, "/admin/x"),
        late_request(address, "/public/x"),
    );
    let rule = format!("{prefix}no-admin");
    match &denied {
        Outcome::Answer(a) if a.status == 403 && a.header("x-appid-denied-by") == Some(&rule) => {}
        other => {
            return Err(format!(
                "a late GET /admin/x must get 403 by {rule}, got {}",
                describe(other)
            ));
        }
    }
    let Outcome::Answer(allowed) = allowed else {
        return Err(format!("a late GET /public/x: {allowed:?}"));
    };
    if allowed.status != 200 {
        return Err(format!("a late GET /public/x: {allowed:?}"));
    }
    let echo: Value = serde_json::from_slice(&allowed.body).map_err(|e| format!("echo: {e}"))?;
    let seen: Vec<&str> = echo["headers"]["x-appid-peer-id"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let expected: Vec<&str> = caller.iter().map(String::as_str).collect();
    if seen != expected {
        return Err(format!(
            "the app saw x-appid-peer-id {seen:?}, not {expected:?} (spoofed header kept?)"
        ));
    }
    let reached = app.state.requests.load(Ordering::SeqCst) - before;
    if reached != 1 {
        return Err(format!("{reached} requests reached the app, not 1"));
    }
    Ok(())
}

/// Connects, waits 1.5 s (past `detect_timeout: 1s`), then sends
/// `GET path` with a spoofed `x-appid-peer-id` and reads the answer.
async fn late_request(address: SocketAddr, path: &str) -> Outcome {
    let stream = TcpStream::connect(address).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n");
    let (mut read, mut write) = stream.into_split();
    if let Err(e) = write.write_all(request.as_bytes()).await {
        return Outcome::Closed(format!("write: {e}"));
    }
    let outcome = tokio::time::timeout(ROW_LIMIT, h1::read_response(&mut read, false))
        .await
        .unwrap_or(Outcome::Timeout);
    drop(write);
    outcome
}

/// A deny rule without `from` is about every caller: a plaintext caller
/// admitted by a `from.unauthenticated` allow meets it as a meshed one does
/// (the policy engine's `scope`; before, only meshed callers did, and the
/// plaintext `GET /admin/x` reached the app).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_without_from_holds_for_plaintext_callers_too() {
    let policy = format!(
        "version: 1
default: deny
rules:
  - name: web-to-api
    action: allow
    from: {MESHED_FROM}
    to: {{ labels.app: api }}
  - name: plain-l4
    action: allow
    from: {PLAIN_FROM}
    to: {{ labels.app: api }}
  - name: no-admin-for-anyone
    action: deny
    to: {{ labels.app: api }}
    http: {{ paths: [\"/admin/**\"] }}
"
    );
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = Mesh::start(
            app.addr,
            MeshOptions {
                server_policy: policy.clone(),
                client_policy: policy.clone(),
                server_tunnel: Some(mode),
                client_tunnel: Some(mode),
                ..MeshOptions::default()
            },
        )
        .await;
        for (who, address, _, _) in entry_points(&mesh) {
            let before = app.state.requests.load(Ordering::SeqCst);
            let (denied, allowed) = tokio::join!(
                late_request(address, "/admin/x"),
                late_request(address, "/public/x"),
            );
            let denied_by_rule = matches!(&denied, Outcome::Answer(a)
                if a.status == 403 && a.header("x-appid-denied-by") == Some("no-admin-for-anyone"));
            let allowed_ok = matches!(&allowed, Outcome::Answer(a) if a.status == 200);
            let reached = app.state.requests.load(Ordering::SeqCst) - before;
            if !denied_by_rule || !allowed_ok || reached != 1 {
                failures.push((
                    format!(
                        "[{mode} {who}] /admin/x: {}, /public/x: {}, {reached} reached the app",
                        describe(&denied),
                        describe(&allowed)
                    ),
                    mesh.context(),
                ));
            }
        }
    }
    report("deny without from", failures);
}

/// Any audit line of either sidecar that denies with a reason mentioning
/// "not HTTP".
fn not_http_denial(sidecars: [&Sidecar; 2]) -> Option<Value> {
    sidecars
        .into_iter()
        .flat_map(Sidecar::audit_lines)
        .find(|l| {
            l["decision"] == "deny"
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.to_ascii_lowercase().contains("not http"))
        })
}

/// Sends `hello\n` on a new connection; what came back before the far
/// side closed (`Err`: still open after 10 s).
async fn say_hello(address: SocketAddr) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"hello\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back)).await {
        Ok(_) => Ok(back), // EOF or reset: closed either way
        Err(_) => Err("the connection is still open after 10s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_on_a_port_an_http_rule_applies_to_is_closed_and_audited() {
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = l4_mesh(&app, mode, "").await;
        for (who, address, _, _) in entry_points(&mesh) {
            let combination = format!("{mode} {who}");
            let connections = app.state.connections.load(Ordering::SeqCst);
            let outcome = match say_hello(address).await {
                Ok(back) if back.is_empty() => Ok(()),
                Ok(back) => Err(format!(
                    "got {:?} instead of a close",
                    String::from_utf8_lossy(&back)
                )),
                Err(e) => Err(e),
            };
            let outcome = outcome.and_then(|()| {
                match app.state.connections.load(Ordering::SeqCst) - connections {
                    0 => Ok(()),
                    n => Err(format!("the app got {n} connections")),
                }
            });
            let outcome = match outcome {
                Ok(()) => {
                    // Audit lines of denials are written at once; allow a
                    // little time anyway.
                    let mut line = None;
                    for _ in 0..20 {
                        line = not_http_denial([&mesh.client, &mesh.server]);
                        if line.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    line.map(|_| ())
                        .ok_or_else(|| "no `decision: deny` audit line saying not HTTP".into())
                }
                Err(e) => Err(e),
            };
            if let Err(why) = outcome {
                failures.push((format!("[{combination}] hello\\n: {why}"), mesh.context()));
            }
        }
    }
    report("non-HTTP on an HTTP-only port", failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_tcp_on_the_allow_rule_accepts_non_http() {
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = l4_mesh(&app, mode, ", protocol: tcp").await;
        for (who, address, _, _) in entry_points(&mesh) {
            let combination = format!("{mode} {who}");
            let before = app.state.connections.load(Ordering::SeqCst);
            // The app (hyper) answers the garbage with a 400 and closes.
            let back = say_hello(address).await;
            let after = app.state.connections.load(Ordering::SeqCst);
            if after == before {
                failures.push((
                    format!("[{combination}] hello\\n did not reach the app ({back:?})"),
                    mesh.context(),
                ));
            }
        }
    }
    report("protocol: tcp", failures);
}

/// A request line split so that detection saw only a bare token (`PROPF`)
/// goes to opaque TCP (the port accepts non-HTTP with `protocol: tcp`); the
/// guard on that path must cut it before it completes, so the app never
/// gets the request (or its spoofed identity), and the closure is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_split_past_detection_never_reaches_the_app() {
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = l4_mesh(&app, mode, ", protocol: tcp").await;
        for (who, address, _, _) in entry_points(&mesh) {
            let combination = format!("{mode} {who}");
            let before = app.state.requests.load(Ordering::SeqCst);
            let outcome = split_request(address).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let reached = app.state.requests.load(Ordering::SeqCst) - before;
            let audited = audited_request_line_on_tcp(&mesh);
            let why = match (&outcome, reached, audited) {
                (Outcome::Closed(_), 0, true) => continue,
                // On a loaded machine the sidecar may only look after the
                // whole line arrived: then it is parsed and denied, which
                // is as good (the guard itself has unit tests).
                (Outcome::Answer(a), 0, _)
                    if a.status == 403 && a.header("x-appid-denied-by").is_some() =>
                {
                    continue;
                }
                (_, 0, true) => format!("expected a close, got {}", describe(&outcome)),
                (_, 0, false) => "no audit line for the closure".to_string(),
                (_, n, _) => format!("{n} requests reached the app ({})", describe(&outcome)),
            };
            failures.push((format!("[{combination}] {why}"), mesh.context()));
        }
    }
    report("split request line", failures);
}

/// An app that speaks first and then reads HTTP (a banner, then requests:
/// some admin consoles do): on a port that allows `protocol: tcp`, the
/// server's banner makes the connection TCP, and the client's first line
/// after it must still be watched, or a request with a spoofed identity
/// reaches the app unparsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_server_banner_never_reaches_the_app() {
    let (app, heard) = banner_then_http_app().await;
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let mesh = l4_mesh_to(app, mode, ", protocol: tcp").await;
        for (who, address, _, _) in entry_points(&mesh) {
            let combination = format!("{mode} {who}");
            heard.lock().unwrap().clear();
            let mut stream = TcpStream::connect(address).await.expect("connect");
            let mut banner = [0u8; 64];
            let n = match tokio::time::timeout(ROW_LIMIT, stream.read(&mut banner)).await {
                Ok(Ok(n)) => n,
                other => {
                    failures.push((
                        format!("[{combination}] no banner: {other:?}"),
                        mesh.context(),
                    ));
                    continue;
                }
            };
            assert_eq!(&banner[..n], BANNER, "{}", mesh.context());
            let request = format!(
                "GET /admin/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n"
            );
            let _ = stream.write_all(request.as_bytes()).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(ROW_LIMIT, stream.read_to_end(&mut rest)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let heard = String::from_utf8_lossy(&heard.lock().unwrap()).into_owned();
            let audited = audited_request_line_on_tcp(&mesh);
            let why = match (heard.is_empty(), audited) {
                (true, true) => continue,
                (true, false) => "no audit line for the closure".to_string(),
                (false, _) => format!("the app read {heard:?}"),
            };
            failures.push((format!("[{combination}] {why}"), mesh.context()));
        }
    }
    report("request after a server banner", failures);
}

const BANNER: &[u8] = b"220 console.test ready\r\n";

/// An app that sends [`BANNER`] on every connection, then keeps what the
/// client sends (all connections' bytes, in the shared buffer).
async fn banner_then_http_app() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                if stream.write_all(BANNER).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, heard)
}

/// What lenient HTTP/1 servers read as a request, though it is no valid
/// request line, is HTTP to the sidecar too, never opaque TCP: a lone CR
/// first (llhttp, Tomcat), a leading space (Python's `http.server`), tabs
/// as delimiters (Tomcat), any other byte Python's `http.server` splits the
/// line on (VT, FF, CR, 0x1C–0x1F, NEL, NBSP) as the delimiters or first,
/// more blank lines than detection looks at (httparse, hence hyper,
/// skips any number), and what llhttp (Node) runs: a line with no version
/// (HTTP/0.9) for any method, and RTSP's or Icecast's version, after which
/// a `Connection: keep-alive` has it read HTTP/1.1 requests on the same
/// connection. Each is parsed here and
/// refused (or denied by `no-admin`), so the app, although the port allows
/// opaque TCP, never gets the request or its spoofed identity. The app is
/// an echo server: whatever reached it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_lenient_servers_read_are_never_passed_as_tcp() {
    let head =
        format!("/admin/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n");
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "a lone CR first".into(),
            format!("\rGET {head}").into_bytes(),
        ),
        (
            "a leading space".into(),
            format!(" GET {head}").into_bytes(),
        ),
        (
            "tabs as delimiters".into(),
            format!("GET\t{}", head.replacen(' ', "\t", 1)).into_bytes(),
        ),
        (
            "16 KiB of blank lines first".into(),
            format!("{}GET {head}", "\r\n".repeat(8 * 1024)).into_bytes(),
        ),
        (
            "no version, any method (HTTP/0.9 to llhttp)".into(),
            format!("PURGE /admin/x\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "an RTSP request, then HTTP/1.1 (llhttp)".into(),
            format!(
                "SETUP /public/x RTSP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\
                 x-appid-peer-id: {SPOOFED_ID}\r\n\r\nGET {head}"
            )
            .into_bytes(),
        ),
        (
            "an Icecast version (llhttp)".into(),
            format!("SOURCE {}", head.replace("HTTP/1.1", "ICE/1.0")).into_bytes(),
        ),
    ];
    // Python's http.server splits the request line on every whitespace of
    // ISO-8859-1 (`str.split()`): each as the delimiters, and first.
    for space in [0x0b, 0x0c, 0x1c, 0x1f, 0x85, 0xa0, b'\r'] {
        let (target, rest) = head.split_once(' ').expect("a target, then the version");
        let mut request = b"GET".to_vec();
        request.push(space);
        request.extend(target.as_bytes());
        request.push(space);
        request.extend(rest.as_bytes());
        cases.push((format!("{space:#04x} as the delimiters"), request));
        let mut leading = vec![space];
        leading.extend(format!("GET {head}").as_bytes());
        cases.push((format!("{space:#04x} first"), leading));
    }
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = EchoServer::start().await;
        let mesh = l4_mesh_to(app.addr, mode, ", protocol: tcp").await;
        for (who, address, _, _) in entry_points(&mesh) {
            // The control: what no server reads as HTTP is still carried as
            // TCP (a refusal of everything would pass the cases below).
            match exchange_raw(address, b"PING\r\n").await {
                Ok(back) if back == b"PING\r\n" => {}
                other => failures.push((
                    format!("[{mode} {who}, control] PING was not echoed: {other:?}"),
                    mesh.context(),
                )),
            }
            for (case, request) in &cases {
                let combination = format!("{mode} {who}, {case}");
                let back = match exchange_raw(address, request).await {
                    Ok(back) => back,
                    Err(e) => {
                        failures.push((format!("[{combination}] {e}"), mesh.context()));
                        continue;
                    }
                };
                let back = String::from_utf8_lossy(&back);
                let why = if back.contains(SPOOFED_ID) {
                    "the app got the request (it came back)".to_string()
                } else if !(back.is_empty() || back.starts_with("HTTP/1.1 4")) {
                    format!("not refused: {:?}", tail(back.into_owned(), 200))
                } else {
                    continue;
                };
                failures.push((format!("[{combination}] {why}"), mesh.context()));
            }
        }
    }
    report("requests lenient servers read", failures);
}

/// Sends `bytes` on a new connection; what came back until the far side
/// closed or went quiet for 2 s (a refusal with an empty body keeps the
/// connection open). `Err`: nothing came back and it stayed open.
async fn exchange_raw(address: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A refusal may close before all is written: what came back says.
    let _ = stream.write_all(bytes).await;
    let mut back = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let limit = if back.is_empty() { 10 } else { 2 };
        match tokio::time::timeout(Duration::from_secs(limit), stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return Ok(back), // EOF or reset
            Ok(Ok(n)) => back.extend_from_slice(&chunk[..n]),
            Err(_) if back.is_empty() => {
                return Err("nothing came back in 10 s, and it is still open".into());
            }
            Err(_) => return Ok(back),
        }
    }
}

/// Sends `PROPF`, waits past what detection looks at, then the rest of
/// `PROPFIND /admin/x` with a spoofed identity.
/// Whether either sidecar audited cutting a connection decided as TCP
/// for an HTTP request line on it.
fn audited_request_line_on_tcp(mesh: &Mesh) -> bool {
    [&mesh.client, &mesh.server]
        .into_iter()
        .flat_map(Sidecar::audit_lines)
        .any(|l| {
            l["decision"] == "deny"
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("request line on a connection decided as TCP"))
        })
}

async fn split_request(address: SocketAddr) -> Outcome {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    if let Err(e) = write.write_all(b"PROPF").await {
        return Outcome::Closed(format!("write: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest =
        format!("IND /admin/x HTTP/1.1\r\nHost: api.test\r\nx-appid-peer-id: {SPOOFED_ID}\r\n\r\n");
    let _ = write.write_all(rest.as_bytes()).await;
    let outcome = tokio::time::timeout(ROW_LIMIT, h1::read_response(&mut read, false))
        .await
        .unwrap_or(Outcome::Timeout);
    drop(write);
    outcome
}

// ---------------------------------------------------------------------------
// Responses: only sidecars set x-appid-*

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_appid_headers_in_responses_never_reach_the_caller() {
    // `te: trailers` so that hyper sends the trailers over HTTP/1 too.
    let forge = get("forge", b"/public/forge", Allowed).header(b"te", b"trailers");
    let mut failures = Vec::new();
    for mode in ["pooled", "strict"] {
        let app = HttpApp::start().await;
        let mesh = Mesh::start(app.addr, mesh_options(mode, table_policy())).await;
        for (who, address, _, _) in entry_points(&mesh) {
            for proto in [Proto::H1, Proto::H2] {
                let combination = format!("{proto:?} {mode} {who}");
                let outcome = match proto {
                    Proto::H1 => h1::send(address, h1::bytes(&forge), false).await,
                    Proto::H2 => h2c::send(address, &forge).await,
                };
                if let Err(why) = check_forge(proto, &outcome) {
                    failures.push((format!("[{combination}] {why}"), mesh.context()));
                }
            }
        }
    }
    report("forged response fields", failures);
}

/// The app's `/forge` answer arrived, its other fields kept, without any
/// `x-appid-*` field in its head or trailers.
fn check_forge(proto: Proto, outcome: &Outcome) -> Result<(), String> {
    let Outcome::Answer(answer) = outcome else {
        return Err(format!("/public/forge: {outcome:?}"));
    };
    if (answer.status, answer.header("x-forge-header")) != (200, Some("kept")) {
        return Err(format!("not the app's answer: {answer:?}"));
    }
    let forged: Vec<&(String, String)> = answer
        .headers
        .iter()
        .chain(&answer.trailers)
        .filter(|(n, _)| is_appid_header(n))
        .collect();
    if !forged.is_empty() {
        return Err(format!("the caller saw forged fields {forged:?}"));
    }
    // Response trailers pass, minus x-appid-* (HTTP/2 carries them always).
    let kept = answer
        .trailers
        .iter()
        .any(|(n, v)| n == "x-forge-trailer" && v == "kept");
    if proto == Proto::H2 && !kept {
        return Err(format!("the response trailers were lost: {answer:?}"));
    }
    Ok(())
}
