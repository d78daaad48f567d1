//! Client → app: the client's frames, and every request head authorized
//! on its way (the one check HTTP/1 shares,
//! [`crate::sidecar::http::authorize_request`]).
//! A denied request is answered here (a malformed one reset) and never
//! reaches the app; an allowed one is re-encoded to it.

use h2::Reason;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::frame::{self, Head};
use super::header_list::{HeaderList, visible_ascii};
use super::hpack::{Block, BlockError, Decoded};
use super::rapid_reset::Verdict;
use super::{
    App, MAX_UNACKED_SETTINGS, Origin, Relay, Stream, declared_length, padded_value,
    settings_acked, settle_content_length, within_declared,
};
use crate::sidecar::http::{
    DENIED_BY_HEADER, HttpProxyError, Malformed, PEER_CLAIMS_HEADER, PEER_ID_HEADER, Refusal,
    RequestDecision, authorize_request, is_appid_header,
};
use crate::sidecar::trace::{self, TRACEPARENT, TRACESTATE};

impl<D, U> Relay<D, U>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// One frame from the client. `Err`: a connection error.
    pub(super) fn client_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Reason> {
        if let Some(stream) = self.client_block
            && (head.kind != frame::CONTINUATION || head.stream != stream)
        {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if !self.client_settled && head.kind != frame::SETTINGS {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let payload = &frame[frame::HEADER_LEN..];
        match head.kind {
            frame::DATA => self.client_data(head, payload),
            frame::HEADERS | frame::CONTINUATION => {
                if head.stream == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if head.kind == frame::CONTINUATION && self.client_block != Some(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                match self.client_blocks.decode(frame) {
                    Ok(Decoded::Continues) => {
                        self.client_block = Some(head.stream);
                        Ok(())
                    }
                    Ok(Decoded::Block(block)) => {
                        self.client_block = None;
                        self.client_headers(block)
                    }
                    // A stream the client may not use: a connection error.
                    Err(BlockError::Stream(stream, _)) if stream.is_multiple_of(2) => {
                        Err(Reason::PROTOCOL_ERROR)
                    }
                    Err(BlockError::Stream(stream, reason)) => {
                        self.client_block = None;
                        // Audited as what it was meant to be: a request
                        // head, or trailers of an open request (a block on
                        // a stream already answered is not news).
                        if self.is_idle(stream) {
                            self.authorizer.malformed(Malformed::InvalidHead);
                        } else if self.streams.get(&stream).is_some_and(|s| s.request_open) {
                            self.authorizer.malformed(Malformed::Trailers);
                        }
                        self.malformed_request(stream, reason);
                        Ok(())
                    }
                    Err(BlockError::Connection(reason)) => Err(reason),
                }
            }
            frame::PRIORITY => {
                if head.stream == 0 || head.len != 5 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                let reason = Reason::from(frame::parse_u32(payload)?);
                if head.stream == 0 || self.is_idle(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    tracing::debug!(parent: &stream.span, ?reason, "client reset its stream");
                    frame::put_reset(&mut self.to_app, head.stream, reason);
                    self.note_closed();
                    let lived = self
                        .client_clock
                        .mono()
                        .saturating_duration_since(stream.started);
                    if self.rapid_reset.reset(lived) == Verdict::RapidReset {
                        let (forwarded, cancelled) = self.rapid_reset.counts();
                        tracing::info!(
                            forwarded,
                            cancelled,
                            "HTTP/2 rapid reset: most requests cancelled as soon as sent; connection closed"
                        );
                        self.end_connection(Reason::ENHANCE_YOUR_CALM, HttpProxyError::RapidReset);
                    }
                }
                Ok(())
            }
            frame::SETTINGS => self.client_settings(head, payload),
            // Each hop answers PINGs itself.
            frame::PING => frame::answer_ping(&head, payload, &mut self.to_client),
            frame::GOAWAY => {
                // The client opens nothing more; streams in flight finish.
                if head.stream != 0 || payload.len() < 8 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let increment = frame::parse_u32(payload)? & frame::MAX_WINDOW;
                if head.stream == 0 {
                    if increment == 0 {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    match self.app {
                        App::Open(_) => frame::put_window_update(&mut self.to_app, 0, increment),
                        App::Gone => {}
                        App::NotDialled(_) => {
                            self.pre_dial_window += u64::from(increment);
                            // The window may not pass 2^31 - 1 (§6.9.1).
                            if self.pre_dial_window > u64::from(frame::MAX_WINDOW - 65_535) {
                                return Err(Reason::FLOW_CONTROL_ERROR);
                            }
                        }
                    }
                } else if self.is_idle(head.stream) {
                    return Err(Reason::PROTOCOL_ERROR);
                } else if increment == 0 {
                    // A stream error (§6.9): that stream ends, on both sides.
                    self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
                } else if self.streams.contains_key(&head.stream) {
                    frame::put_window_update(&mut self.to_app, head.stream, increment);
                }
                Ok(())
            }
            // Push goes from servers to clients only.
            frame::PUSH_PROMISE => Err(Reason::PROTOCOL_ERROR),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    /// A stream ID the client has not opened yet.
    /// (Even IDs are the server's: the client never opens them, so they
    /// stay idle for it, RFC 9113 §5.1.1.)
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream || stream.is_multiple_of(2)
    }

    fn client_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream == 0 || self.is_idle(head.stream) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let flow = payload.len() as u32;
        let content = frame::unpad(&head, payload)?;
        let end = head.has(frame::END_STREAM);
        let forward = self
            .streams
            .get(&head.stream)
            .is_some_and(|s| s.request_open);
        if !forward {
            // A denied or finished stream: the app never sees this, so the
            // client's connection window comes back from us.
            frame::put_refund(&mut self.to_client, head.stream, flow, false);
            return Ok(());
        }
        let within = self
            .streams
            .get_mut(&head.stream)
            .is_some_and(|s| within_declared(&mut s.request_left, content.len(), end));
        if !within {
            tracing::debug!(stream = head.stream, "request body not its content-length");
            self.authorizer.malformed(Malformed::BodyNotItsLength);
            frame::put_refund(&mut self.to_client, head.stream, flow, false);
            self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        frame::put_data(&mut self.to_app, head.stream, content, end);
        frame::put_refund(
            &mut self.to_client,
            head.stream,
            flow - content.len() as u32,
            !end,
        );
        if end && let Some(stream) = self.streams.get_mut(&head.stream) {
            stream.request_open = false;
            self.forget_if_done(head.stream);
        }
        Ok(())
    }

    fn client_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if head.has(frame::ACK) {
            if !payload.is_empty() {
                return Err(Reason::FRAME_SIZE_ERROR);
            }
            return settings_acked(&mut self.client_acks, &mut self.to_app);
        }
        let settings = frame::parse_settings(payload)?;
        self.client_settled = true;
        // Settings apply in order: of several values, the last one counts.
        let mut window = None;
        for (id, value) in settings {
            match id {
                frame::HEADER_TABLE_SIZE => self.client_writer.table_size_changed(),
                frame::INITIAL_WINDOW_SIZE => window = Some(value),
                _ => {}
            }
        }
        match self.app {
            App::Open(_) => {
                if self.app_acks.len() >= MAX_UNACKED_SETTINGS {
                    // More SETTINGS than the app has acknowledged yet.
                    return Err(Reason::ENHANCE_YOUR_CALM);
                }
                let kept: Vec<_> = window
                    .map(|w| (frame::INITIAL_WINDOW_SIZE, w))
                    .into_iter()
                    .collect();
                frame::put_settings(&mut self.to_app, &kept);
                self.app_acks.push_back(Origin::Forwarded);
            }
            App::NotDialled(_) => {
                self.dial_window = window.or(self.dial_window);
                frame::put_settings_ack(&mut self.to_client);
            }
            App::Gone => frame::put_settings_ack(&mut self.to_client),
        }
        Ok(())
    }

    /// A whole request head (or trailers) from the client.
    fn client_headers(&mut self, block: Block) -> Result<(), Reason> {
        let Block {
            stream: id,
            end_stream: end,
            mut fields,
            over_size,
        } = block;
        if let Some(request_open) = self.streams.get(&id).map(|s| s.request_open) {
            // A second header block: request trailers, or a block on a
            // stream whose request is over. Either way, both sides reset.
            let reason = if request_open {
                tracing::debug!(stream = id, "request trailers refused: both streams reset");
                self.authorizer.malformed(Malformed::Trailers);
                Reason::PROTOCOL_ERROR
            } else {
                Reason::STREAM_CLOSED
            };
            self.reset_both(id, reason);
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if !self.is_idle(id) {
            // A stream we answered or reset: its frames are ignored (its
            // block was decoded, so HPACK stays in step).
            return Ok(());
        }
        self.last_stream = id;
        if self.going_away.is_some() || self.streams.len() >= self.max_streams as usize {
            // Not processed: the client may retry it (§8.7).
            frame::put_reset(&mut self.to_client, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        if over_size {
            self.authorizer.malformed(Malformed::HeadTooLarge);
            self.answer(id, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &[], !end);
            return Ok(());
        }
        if let Some(name) = padded_value(&fields) {
            tracing::debug!(stream = id, %name, "a field value with leading or trailing whitespace");
            self.refuse_malformed(id, &fields, Malformed::PaddedValue);
            return Ok(());
        }
        if let Err(why) = check_request_pseudo(&fields) {
            tracing::debug!(stream = id, why, "malformed request head");
            self.audit_malformed(&fields, Malformed::InvalidHead);
            frame::put_reset(&mut self.to_client, id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        let mut declared = match declared_length(&fields) {
            Ok(declared) => {
                settle_content_length(&mut fields, &declared);
                declared.length()
            }
            Err(why) => {
                tracing::debug!(stream = id, %why, "malformed request head");
                self.refuse_malformed(id, &fields, why.into());
                return Ok(());
            }
        };
        if !within_declared(&mut declared, 0, end) {
            // A head that ends the stream but promises a body.
            self.refuse_malformed(id, &fields, Malformed::BodyNotItsLength);
            return Ok(());
        }
        self.request(id, fields, end);
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.request_left = declared;
        }
        Ok(())
    }

    /// A request head that came through HPACK: authorize, then forward or
    /// answer.
    fn request(&mut self, id: u32, mut fields: HeaderList, end: bool) {
        let arrived = self.client_clock.stamp();
        let started = arrived.mono;
        let method = fields.method().cloned().unwrap_or(Method::GET);
        let span = trace::request_span(self.limits.app, method.as_str(), |name| {
            fields.get(name).and_then(visible_ascii)
        });
        let grpc = is_grpc(&fields);
        // `:path` as sent; a CONNECT has none (and is refused).
        let target = fields.path().unwrap_or("");
        let decision = span.in_scope(|| {
            authorize_request(
                &*self.authorizer,
                method.as_str(),
                target,
                fields.authority(),
                &fields,
                grpc,
                arrived,
            )
        });
        let status = match decision {
            RequestDecision::Forward => None,
            RequestDecision::Deny { rule, reason } => {
                let status = if grpc {
                    let message = header_value(&reason, "permission denied");
                    let denied = [
                        (CONTENT_TYPE, HeaderValue::from_static("application/grpc")),
                        (grpc_status(), HeaderValue::from_static("7")),
                        (grpc_message(), message),
                        (denied_by(), header_value(&rule, "invalid")),
                    ];
                    self.answer(id, StatusCode::OK, &denied, !end);
                    StatusCode::OK
                } else {
                    let denied = [(denied_by(), header_value(&rule, "invalid"))];
                    self.answer(id, StatusCode::FORBIDDEN, &denied, !end);
                    StatusCode::FORBIDDEN
                };
                Some(status)
            }
            RequestDecision::Refuse(refusal) => {
                let status =
                    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
                self.answer(id, status, &[], !end);
                Some(status)
            }
        };
        if let Some(status) = status {
            span.in_scope(|| self.authorizer.observe(status.as_u16(), started.elapsed()));
            return;
        }
        // x-appid-* is the sidecars' to set (`is_appid_header`, as HTTP/1
        // drops them).
        fields.retain(|name| !is_appid_header(name));
        // Ours replaces theirs: the next hop's parent is this request's span.
        if let Some(context) = trace::outgoing(&span) {
            fields.remove(TRACEPARENT);
            fields.remove(TRACESTATE);
            for (name, value) in context.headers() {
                // As `HeaderValue::from_str` took them: visible ASCII.
                if visible_ascii(value.as_bytes()).is_some() {
                    fields.insert(name, value.as_bytes(), false);
                }
            }
        }
        if let Some(peer) = &self.peer_headers {
            // Appended, not inserted: the `retain` above left no x-appid-*
            // field to replace (one pass over the fields, not three).
            let id = &peer.id;
            fields.append(PEER_ID_HEADER, id.as_bytes(), id.is_sensitive());
            let claims = &peer.claims;
            fields.append(PEER_CLAIMS_HEADER, claims.as_bytes(), claims.is_sensitive());
        }
        // The app is dialled for the first allowed request, not before.
        if !self.dial_app() {
            self.answer(id, StatusCode::BAD_GATEWAY, &[], !end);
            span.in_scope(|| self.authorizer.observe(502, started.elapsed()));
            return;
        }
        self.app_writer.write(&mut self.to_app, id, &fields, end);
        self.rapid_reset.forwarded();
        self.streams.insert(
            id,
            Stream {
                request_open: !end,
                response_open: true,
                responded: false,
                head: method == Method::HEAD,
                request_left: None,
                response_left: None,
                started,
                span,
            },
        );
        self.idle_since = None;
    }

    /// Makes sure the app's connection is open (or being dialled); `false`
    /// when it is gone.
    fn dial_app(&mut self) -> bool {
        let app = match std::mem::replace(&mut self.app, App::Gone) {
            App::NotDialled(app) => app,
            open @ App::Open(_) => {
                self.app = open;
                return true;
            }
            App::Gone => return false,
        };
        // Our client preface: push off, the client's windows.
        self.to_app.extend_from_slice(frame::PREFACE);
        let mut settings = vec![
            (frame::ENABLE_PUSH, 0),
            (
                frame::MAX_HEADER_LIST_SIZE,
                self.limits.max_header_bytes as u32,
            ),
        ];
        if let Some(window) = self.dial_window.take() {
            settings.push((frame::INITIAL_WINDOW_SIZE, window));
        }
        frame::put_settings(&mut self.to_app, &settings);
        self.app_acks.push_back(Origin::Relay);
        let mut window = std::mem::take(&mut self.pre_dial_window);
        while window > 0 {
            let increment = window.min(u64::from(frame::MAX_WINDOW));
            frame::put_window_update(&mut self.to_app, 0, increment as u32);
            window -= increment;
        }
        self.app = App::Open(app);
        true
    }

    /// A request head refused for its form: audited as a refusal (as
    /// HTTP/1 audits its own), then reset ([`Self::malformed_request`]).
    fn refuse_malformed(&mut self, id: u32, fields: &HeaderList, why: Malformed) {
        self.audit_malformed(fields, why);
        self.malformed_request(id, Reason::PROTOCOL_ERROR);
    }

    /// The audit line of a request head refused for its form, naming the
    /// method and `:path` it has (empty when it has none).
    fn audit_malformed(&self, fields: &HeaderList, why: Malformed) {
        let method = fields.method().map_or("", Method::as_str);
        let target = fields.path().unwrap_or("");
        self.authorizer
            .refused(method, target, Refusal::Malformed(why), is_grpc(fields));
    }

    /// A malformed request (§8.1.1): its stream is reset for the client
    /// (`reason`) and, if the app already has it, for the app (`CANCEL`).
    fn malformed_request(&mut self, id: u32, reason: Reason) {
        tracing::debug!(stream = id, ?reason, "malformed header block");
        if self.is_idle(id) {
            self.last_stream = id;
        }
        if self.streams.remove(&id).is_some() {
            frame::put_reset(&mut self.to_app, id, Reason::CANCEL);
            self.note_closed();
        }
        frame::put_reset(&mut self.to_client, id, reason);
    }

    /// Our answer on a stream the app never sees: a head with END_STREAM,
    /// then RST_STREAM(NO_ERROR) if the client is still sending (§8.1).
    pub(super) fn answer(
        &mut self,
        id: u32,
        status: StatusCode,
        fields: &[(HeaderName, HeaderValue)],
        request_open: bool,
    ) {
        let mut answer = HeaderList::response(status);
        for (name, value) in fields {
            answer.append(name.as_str(), value.as_bytes(), value.is_sensitive());
        }
        answer.append("content-length", b"0", false);
        self.client_writer
            .write(&mut self.to_client, id, &answer, true);
        if request_open {
            frame::put_reset(&mut self.to_client, id, Reason::NO_ERROR);
        }
        // A connection busy with answers is not idle.
        if self.streams.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }
}

/// The request pseudo-fields as hyper's HTTP/2 server checks them (RFC
/// 9113 §8.3.1): a malformed head resets its stream.
fn check_request_pseudo(pseudo: &HeaderList) -> Result<(), &'static str> {
    let Some(method) = pseudo.method() else {
        return Err("missing :method");
    };
    let connect = method == Method::CONNECT;
    if pseudo.protocol().is_some() {
        // Extended CONNECT is not offered.
        return Err(":protocol");
    }
    if pseudo.status().is_some() {
        return Err(":status in a request");
    }
    if let Some(authority) = pseudo.authority()
        && !plain_authority(authority)
        && http::uri::Authority::try_from(authority).is_err()
    {
        return Err("malformed :authority");
    }
    match pseudo.scheme() {
        Some(_) if connect => return Err(":scheme in CONNECT"),
        Some(scheme) if scheme.parse::<http::uri::Scheme>().is_err() => {
            return Err("malformed :scheme");
        }
        None if !connect => return Err("missing :scheme"),
        _ => {}
    }
    match pseudo.path() {
        Some(_) if connect => Err(":path in CONNECT"),
        Some("") => Err("empty :path"),
        Some(path) if !plain_path(path) && http::uri::PathAndQuery::try_from(path).is_err() => {
            Err("malformed :path")
        }
        None if !connect => Err("missing :path"),
        _ => Ok(()),
    }
}

/// An `:authority` so plain (`host` or `host:port` of letters, digits,
/// dots and dashes; either part may be empty, as the `http` crate allows)
/// that the `http` crate's parser, which the others go through, surely
/// takes it: that parser copies what it reads into an allocation of its
/// own, which the relay would drop at once.
///
/// One pass over the bytes: the host's letters, digits, dots and dashes,
/// then at most one `:` and only digits after it.
fn plain_authority(authority: &str) -> bool {
    let mut in_port = false;
    (1..=255).contains(&authority.len())
        && authority.bytes().all(|b| match b {
            b'0'..=b'9' => true,
            b':' if !in_port => {
                in_port = true;
                true
            }
            _ => !in_port && (b.is_ascii_alphabetic() || matches!(b, b'.' | b'-')),
        })
}

/// A `:path` so plain (`/` then letters, digits and `/._~-?=&+`) that the
/// `http` crate's parser surely takes it (as [`plain_authority`]).
fn plain_path(path: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._~-?=&+".contains(&b);
    path.starts_with('/') && path.len() <= 4096 && path.bytes().all(plain)
}

/// Policy text (a rule name, a reason) as a header value of our own:
/// trimmed, since HTTP/2 calls a padded value malformed.
fn header_value(text: &str, fallback: &'static str) -> HeaderValue {
    match text.trim() {
        "" => HeaderValue::from_static(fallback),
        text => HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(fallback)),
    }
}

fn denied_by() -> HeaderName {
    HeaderName::from_static(DENIED_BY_HEADER)
}

fn grpc_status() -> HeaderName {
    HeaderName::from_static("grpc-status")
}

fn grpc_message() -> HeaderName {
    HeaderName::from_static("grpc-message")
}

/// A gRPC request (`content-type: application/grpc…`): denials are answered
/// the gRPC way, and audit lines say `grpc`.
fn is_grpc(fields: &HeaderList) -> bool {
    fields
        .get(CONTENT_TYPE.as_str())
        .and_then(visible_ascii)
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{plain_authority, plain_path};

    #[test]
    fn usual_authorities_and_paths_are_plain() {
        for authority in ["api.test", "api.test:8443", "10.0.0.1:80", "localhost"] {
            assert!(plain_authority(authority), "{authority}");
        }
        for authority in ["", "a:1:2", "[::1]:80", "user@host", "a_b", "h:x"] {
            assert!(!plain_authority(authority), "{authority}");
        }
        for path in ["/", "/bench.Echo/Call", "/a/b?x=1&y=2+3", "/~u/v-w_x"] {
            assert!(plain_path(path), "{path}");
        }
        for path in ["", "*", "a", "/a#f", "/a b", "/%41", "/é"] {
            assert!(!plain_path(path), "{path}");
        }
    }

    proptest! {
        /// The shortcut only ever takes what the `http` crate's parsers
        /// take (what is not plain still goes through them).
        #[test]
        fn what_is_plain_the_http_crate_takes(
            text in prop_oneof![
                "[a-zA-Z0-9./:@%?#&=+~_\\-\\[\\] é]{0,40}",
                // Mostly plain: the shortcut's own alphabets.
                "[a-zA-Z0-9.:\\-]{0,30}",
                "/[a-zA-Z0-9/._~?=&+\\-]{0,40}",
            ],
        ) {
            if plain_authority(&text) {
                prop_assert!(http::uri::Authority::try_from(text.as_str()).is_ok(), "{}", text);
            }
            // The one pass reads as its definition: a host of letters,
            // digits, dots and dashes, then `:` and digits, or nothing.
            let (host, port) = text.split_once(':').unwrap_or((&text, ""));
            let by_parts = (1..=255).contains(&text.len())
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                && port.bytes().all(|b| b.is_ascii_digit());
            prop_assert_eq!(plain_authority(&text), by_parts, "{}", text);
            if plain_path(&text) {
                let parsed = http::uri::PathAndQuery::try_from(text.as_str());
                prop_assert_eq!(parsed.map(|p| p.as_str().to_owned()).ok(), Some(text.clone()));
            }
        }
    }
}
