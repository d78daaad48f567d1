//! App → client: the app's frames, its answers, and what the relay owes
//! the client when the app refuses, goes away or is gone.

use h2::Reason;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Head};
use super::hpack::{Block, BlockError, Decoded};
use super::{
    App, MAX_STREAMS, MAX_UNACKED_SETTINGS, Origin, Relay, declared_length, padded_value,
    settings_acked, settle_content_length, within_declared,
};
use crate::sidecar::http::{AppSide, HttpProxyError, is_appid_header};

impl<D, U> Relay<D, U>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// One frame from the app. `Err`: the app broke the protocol.
    pub(super) fn app_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Reason> {
        if let Some(stream) = self.app_block
            && (head.kind != frame::CONTINUATION || head.stream != stream)
        {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let payload = &frame[frame::HEADER_LEN..];
        match head.kind {
            frame::DATA => self.app_data(head, payload),
            frame::HEADERS | frame::CONTINUATION => {
                if head.stream == 0
                    || (head.kind == frame::CONTINUATION && self.app_block != Some(head.stream))
                {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                match self.app_blocks.decode(frame) {
                    Ok(Decoded::Continues) => {
                        self.app_block = Some(head.stream);
                        Ok(())
                    }
                    Ok(Decoded::Block(block)) => {
                        self.app_block = None;
                        self.app_headers(block);
                        Ok(())
                    }
                    Err(BlockError::Stream(id, reason)) => {
                        self.app_block = None;
                        self.reset_both(id, reason);
                        Ok(())
                    }
                    Err(BlockError::Connection(reason)) => Err(reason),
                }
            }
            frame::RST_STREAM => {
                let reason = Reason::from(frame::parse_u32(payload)?);
                if head.stream == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if let Some(stream) = self.streams.remove(&head.stream) {
                    if reason == Reason::REFUSED_STREAM && !stream.responded {
                        self.never_processed(head.stream, &stream);
                    } else {
                        tracing::debug!(parent: &stream.span, ?reason, "the app reset the stream");
                        frame::put_reset(&mut self.to_client, head.stream, reason);
                    }
                    self.note_closed();
                }
                Ok(())
            }
            frame::SETTINGS => self.app_settings(head, payload),
            // Each hop answers PINGs itself.
            frame::PING => frame::answer_ping(&head, payload, &mut self.to_app),
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                if payload.len() < 8 {
                    return Err(Reason::FRAME_SIZE_ERROR);
                }
                let last = frame::parse_u32(&payload[..4])? & frame::MAX_WINDOW;
                self.app_going_away(last);
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let increment = frame::parse_u32(payload)? & frame::MAX_WINDOW;
                if head.stream == 0 {
                    if increment == 0 {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    frame::put_window_update(&mut self.to_client, 0, increment);
                } else if increment == 0 {
                    self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
                } else if self.streams.contains_key(&head.stream) {
                    frame::put_window_update(&mut self.to_client, head.stream, increment);
                }
                Ok(())
            }
            // Push is off (our SETTINGS said so).
            frame::PUSH_PROMISE => Err(Reason::PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    fn app_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream == 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let flow = payload.len() as u32;
        let content = frame::unpad(&head, payload)?;
        let end = head.has(frame::END_STREAM);
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            frame::put_refund(&mut self.to_app, head.stream, flow, false);
            return Ok(());
        };
        // DATA before a response head, after its end, or not the length
        // its head declared: malformed, not passed on.
        if !stream.responded
            || !stream.response_open
            || !within_declared(&mut stream.response_left, content.len(), end)
        {
            tracing::debug!(stream = head.stream, "malformed response body");
            frame::put_refund(&mut self.to_app, head.stream, flow, false);
            self.reset_both(head.stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        frame::put_data(&mut self.to_client, head.stream, content, end);
        frame::put_refund(
            &mut self.to_app,
            head.stream,
            flow - content.len() as u32,
            !end,
        );
        if end {
            self.response_ended(head.stream);
        }
        Ok(())
    }

    fn app_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Reason> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if head.has(frame::ACK) {
            return settings_acked(&mut self.app_acks, &mut self.to_client);
        }
        let settings = frame::parse_settings(payload)?;
        if !self.app_settled {
            // Without a limit of its own, the app takes ours.
            self.app_settled = true;
            self.max_streams = MAX_STREAMS;
        }
        let mut kept = Vec::new();
        for (id, value) in settings {
            match id {
                frame::HEADER_TABLE_SIZE => self.app_writer.table_size_changed(),
                frame::INITIAL_WINDOW_SIZE => kept.push((id, value)),
                frame::MAX_CONCURRENT_STREAMS => {
                    self.max_streams = value.min(MAX_STREAMS);
                    kept.push((id, self.max_streams));
                }
                _ => {}
            }
        }
        if self.client_acks.len() >= MAX_UNACKED_SETTINGS {
            // The client does not acknowledge SETTINGS (§6.5.3) — or the
            // app sent a burst of them faster than any client could: not
            // audited as the client's error.
            self.end_connection(
                Reason::SETTINGS_TIMEOUT,
                HttpProxyError::Protocol("http/2: SETTINGS not acknowledged in time"),
            );
            return Ok(());
        }
        frame::put_settings(&mut self.to_client, &kept);
        self.client_acks.push_back(Origin::Forwarded);
        Ok(())
    }

    /// A response head, 1xx head or trailers from the app.
    fn app_headers(&mut self, block: Block) {
        let Block {
            stream: id,
            end_stream: end,
            mut fields,
            over_size,
        } = block;
        let Some(stream) = self.streams.get(&id) else {
            // Not a stream the app was given (or one already over).
            return;
        };
        let (responded, head_request) = (stream.responded, stream.head);
        if !stream.response_open {
            self.reset_both(id, Reason::STREAM_CLOSED);
            return;
        }
        if over_size {
            // Past the header list limit the decoder kept only part of it.
            tracing::debug!(stream = id, "the app's header list is too large");
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        if let Some(name) = padded_value(&fields) {
            tracing::debug!(stream = id, %name, "the app sent a field value with leading or trailing whitespace");
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        if fields.has_request_pseudo() {
            // Request pseudo-fields in a response: malformed (§8.3).
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        // The body a final head promises; trailers end it, so all it
        // promised must have come. A 204 or 304 has none, whatever its
        // `content-length` says (RFC 9110 §15.3.5, §15.4.5); nor has the
        // answer to HEAD (cut off at its head, below). A 1xx head never
        // ends a stream (RFC 9113 §8.1).
        let status = fields.status();
        let informational = status.is_some_and(|s| s.is_informational());
        if informational && end {
            tracing::debug!(stream = id, "the app ended a stream with a 1xx head");
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        let no_content = matches!(
            status,
            Some(StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        );
        // A head's `content-length`, read once (trailers carry none that
        // counts). Read cleanly, a list of one value goes on as one value,
        // whether or not it frames a body; a malformed one is refused
        // where it frames one, and goes on as it came where it frames
        // nothing.
        let content_length = (!responded).then(|| declared_length(&fields));
        if let Some(Ok(read)) = &content_length {
            settle_content_length(&mut fields, read);
        }
        let declared = match content_length {
            None => Ok(stream.response_left),
            Some(_) if no_content => Ok(Some(0)),
            Some(_) if informational || head_request => Ok(None),
            Some(read) => read.map(|read| read.length()),
        };
        let Ok(mut declared) = declared else {
            tracing::debug!(stream = id, "the app's content-length is malformed");
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        };
        if !informational && !within_declared(&mut declared, 0, end) {
            tracing::debug!(
                stream = id,
                "the app's response ends short of its content-length"
            );
            self.reset_both(id, Reason::PROTOCOL_ERROR);
            return;
        }
        let final_head = match status {
            _ if responded => {
                if status.is_some() || !end {
                    // Trailers end the stream and carry no pseudo-fields.
                    self.reset_both(id, Reason::PROTOCOL_ERROR);
                    return;
                }
                false
            }
            None => {
                tracing::debug!(stream = id, "a response head without :status");
                self.reset_both(id, Reason::PROTOCOL_ERROR);
                return;
            }
            Some(status) if status.is_informational() => false,
            Some(status) => {
                let took = self
                    .app_clock
                    .mono()
                    .saturating_duration_since(stream.started);
                stream
                    .span
                    .in_scope(|| self.authorizer.observe(status.as_u16(), took));
                true
            }
        };
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.responded |= final_head;
            if final_head {
                stream.response_left = declared.take();
            }
        }
        if self.limits.app == AppSide::Upstream {
            // The app's response: x-appid-* is not its to set.
            fields.retain(|name| !is_appid_header(name));
        }
        // A response to HEAD ends with its final head (RFC 9110 §9.3.2):
        // content an app sends anyway is not wanted, so its stream is reset.
        let head_only = head_request && final_head && !end;
        self.client_writer
            .write(&mut self.to_client, id, &fields, end || head_only);
        if head_only {
            frame::put_reset(&mut self.to_app, id, Reason::NO_ERROR);
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.response_open = false;
                stream.request_open = false;
            }
            self.forget_if_done(id);
        } else if end {
            self.response_ended(id);
        }
    }

    /// The response passed END_STREAM on: the exchange is over (§8.1). If
    /// the client is still sending, neither side gets more of the request.
    fn response_ended(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.response_open = false;
        if stream.request_open {
            stream.request_open = false;
            frame::put_reset(&mut self.to_app, id, Reason::NO_ERROR);
            frame::put_reset(&mut self.to_client, id, Reason::NO_ERROR);
        }
        self.forget_if_done(id);
    }

    /// The app's GOAWAY: streams above `last` were never processed (`502`);
    /// the client is told to go elsewhere for new ones.
    fn app_going_away(&mut self, last: u32) {
        let unprocessed: Vec<u32> = self
            .streams
            .iter()
            .filter(|(id, s)| **id > last && !s.responded)
            .map(|(id, _)| *id)
            .collect();
        for id in unprocessed {
            if let Some(stream) = self.streams.remove(&id) {
                self.never_processed(id, &stream);
            }
        }
        self.note_closed();
        self.go_away();
    }

    /// The app's connection is over (closed, failed, or broke the
    /// protocol). A request it never got is answered `502`; one it may have
    /// acted on is reset, never a `502` that would invite a retry.
    pub(super) fn app_gone(&mut self) {
        self.app = App::Gone;
        self.to_app.clear();
        // The client's SETTINGS the app will never acknowledge are, in
        // order, so that the client's later ones pair with theirs.
        for origin in std::mem::take(&mut self.app_acks) {
            if origin == Origin::Forwarded {
                frame::put_settings_ack(&mut self.to_client);
            }
        }
        for (id, stream) in std::mem::take(&mut self.streams) {
            if self.app_delivered {
                frame::put_reset(&mut self.to_client, id, Reason::INTERNAL_ERROR);
            } else {
                self.never_processed(id, &stream);
            }
        }
        self.note_closed();
        if self.app_delivered {
            // The client should reconnect for what comes next.
            self.go_away();
        }
    }
}
