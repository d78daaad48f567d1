//! From an app connection's first bytes to the right proxy: HTTP requests
//! authorized one by one, anything else decided once as TCP.
//!
//! Design bias: *no fall-back is a way around L7*. Inbound and outbound,
//! strict and pooled, every app connection comes through [`dispatch`] once
//! its first bytes are classified ([`crate::detect`]): HTTP goes to the L7
//! proxy, anything else gets one TCP decision (which policy denies on a
//! connection an `http` rule governs, unless a rule says `protocol: tcp`).
//!
//! The delicate case is a client that sends nothing within the detection
//! timeout ([`FirstBytes::Silent`]). It may speak a server-first protocol
//! (SMTP, MySQL), or it may be an HTTP client that opened its connection
//! early and sends its request later — and a late request must not become
//! opaque bytes that reach the app unparsed, spoofed `x-appid-*` headers
//! and all. So:
//! - if the connection would be allowed as TCP, the server side is
//!   connected and whoever speaks first decides: the server makes it TCP
//!   (the client then answers a banner, not an HTTP server); the client's
//!   first bytes are classified as usual, so HTTP is still parsed;
//! - otherwise (an HTTP-only or denied connection) nothing is connected and
//!   the client is waited for, up to the idle timeout, then classified.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::authz::{ConnAuthz, ConnVerdict};
use super::http::{self as l7, AppSide, HttpVersion, PeerHeaders};
use super::prefixed::{self, Prefixed};
use crate::detect::Classification;
use crate::metrics::Direction as MetricsDirection;

/// What the first bytes of an app connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    Http(HttpVersion),
    /// Bytes that are not HTTP.
    Opaque,
    /// Nothing within the detection timeout.
    Silent,
}

impl FirstBytes {
    /// From a classification of bytes the client sent.
    pub fn of(class: &Classification) -> FirstBytes {
        match class {
            Classification::Http1 => FirstBytes::Http(HttpVersion::Http1),
            Classification::Http2Preface => FirstBytes::Http(HttpVersion::Http2),
            _ => FirstBytes::Opaque,
        }
    }
}

/// One app connection, after detection: `downstream` is the calling side
/// (with `prefix`, the bytes detection read from it), `connect` opens the
/// called side (the local app inbound; the peer's stream outbound, already
/// open). `app` says which side the local app is on.
#[allow(clippy::too_many_arguments)]
pub async fn dispatch<D, U, F, Fut>(
    shared: &Arc<Shared>,
    downstream: D,
    prefix: Bytes,
    first: FirstBytes,
    authz: ConnAuthz,
    peer_headers: Option<PeerHeaders>,
    app: AppSide,
    connect: F,
) where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<U>>,
{
    let conn = AppConnection {
        shared,
        authz,
        peer_headers,
        app,
    };
    let downstream = Prefixed::new(prefix, downstream);
    match first {
        FirstBytes::Http(version) => {
            if let Some(upstream) = connect().await {
                conn.http(downstream, upstream, version).await;
            }
        }
        FirstBytes::Opaque => conn.tcp(downstream, connect, Bytes::new()).await,
        FirstBytes::Silent => conn.silent(downstream, connect).await,
    }
}

/// What every path below needs.
struct AppConnection<'s> {
    shared: &'s Arc<Shared>,
    authz: ConnAuthz,
    peer_headers: Option<PeerHeaders>,
    app: AppSide,
}

impl AppConnection<'_> {
    fn direction(&self) -> MetricsDirection {
        match self.app {
            AppSide::Upstream => MetricsDirection::Inbound,
            AppSide::Downstream => MetricsDirection::Outbound,
        }
    }

    /// HTTP: every request authorized.
    async fn http<D, U>(mut self, downstream: D, upstream: U, version: HttpVersion)
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.authz.set_protocol(match version {
            HttpVersion::Http1 => "http1",
            HttpVersion::Http2 => "http2",
        });
        let direction = self.direction();
        let result = l7::proxy(
            downstream,
            upstream,
            version,
            Arc::new(self.authz),
            self.peer_headers,
            self.shared.http_limits(self.app),
            self.shared.shutdown_signal(),
        )
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, direction = direction.as_str(), "http connection ended with an error");
        }
    }

    /// Not HTTP: one decision (audited), then bytes both ways until either
    /// side ends or a policy change withdraws the connection.
    /// `server_first`: bytes the server already sent, for the client.
    async fn tcp<D, U, F, Fut>(mut self, downstream: D, connect: F, server_first: Bytes)
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<U>>,
    {
        self.authz.set_protocol("tcp");
        if self.authz.decide_connection(Some(false)) != ConnVerdict::Allow {
            return; // audited; dropping the streams closes them
        }
        let Some(upstream) = connect().await else {
            return;
        };
        let mut downstream = downstream;
        if !server_first.is_empty() && write_flush(&mut downstream, &server_first).await.is_err() {
            return;
        }
        let direction = self.direction();
        let revoked = self.shared.revoked(&self.authz);
        let (end, copied) = super::splice::splice(
            downstream,
            upstream,
            &[],
            self.shared.limits.idle_timeout,
            revoked,
        )
        .await;
        self.shared.count_bytes(direction, copied);
        tracing::debug!(
            ?end,
            ?copied,
            direction = direction.as_str(),
            "tcp connection ended"
        );
    }

    /// The client said nothing within the detection timeout (module docs).
    async fn silent<D, U, F, Fut>(self, mut downstream: Prefixed<D>, connect: F)
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<U>>,
    {
        let idle = self.shared.limits.idle_timeout;
        if !self.authz.would_allow_tcp() {
            // HTTP-only (or denied): wait for the client; connect nothing.
            match prefixed::read_and_classify(&mut downstream, idle).await {
                Ok((_, prefix)) if prefix.is_empty() => self.gave_up("silent client"),
                Ok((class, prefix)) => {
                    let downstream = Prefixed::new(prefix, downstream);
                    match FirstBytes::of(&class) {
                        FirstBytes::Http(version) => {
                            if let Some(upstream) = connect().await {
                                self.http(downstream, upstream, version).await;
                            }
                        }
                        _ => self.tcp(downstream, connect, Bytes::new()).await,
                    }
                }
                Err(_) => self.gave_up("stalled during protocol detection"),
            }
            return;
        }
        let Some(mut upstream) = connect().await else {
            return;
        };
        match first_speaker(&mut downstream, &mut upstream, idle).await {
            FirstSpeaker::Client(class, prefix) => {
                let downstream = Prefixed::new(prefix, downstream);
                match FirstBytes::of(&class) {
                    FirstBytes::Http(version) => self.http(downstream, upstream, version).await,
                    _ => {
                        self.tcp(downstream, || async { Some(upstream) }, Bytes::new())
                            .await
                    }
                }
            }
            FirstSpeaker::Server(banner) => {
                self.tcp(downstream, || async { Some(upstream) }, banner)
                    .await
            }
            FirstSpeaker::Nobody(why) => self.gave_up(why),
        }
    }

    fn gave_up(&self, why: &'static str) {
        tracing::debug!(
            reason = why,
            direction = self.direction().as_str(),
            "connection closed before a decision"
        );
        self.shared
            .metrics
            .connection_refused(self.direction(), "detect_timeout");
    }
}

/// Who sent bytes first on a connection where the client was silent.
#[derive(Debug)]
enum FirstSpeaker {
    /// The client, and what its first bytes are.
    Client(Classification, Bytes),
    /// The server (a banner), with what it sent.
    Server(Bytes),
    /// Neither within the idle timeout, or one side closed or failed.
    Nobody(&'static str),
}

/// Waits (up to `timeout`) for either side's first bytes. Reads are
/// cancel-safe: the side that loses the race has lost no bytes.
async fn first_speaker<C, S>(client: &mut C, server: &mut S, timeout: Duration) -> FirstSpeaker
where
    C: AsyncRead + Unpin,
    S: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut from_client = BytesMut::with_capacity(1024);
    let mut from_server = BytesMut::with_capacity(1024);
    tokio::select! {
        read = client.read_buf(&mut from_client) => match read {
            Ok(n) if n > 0 => {
                match prefixed::classify_more(client, from_client, deadline).await {
                    Ok((class, prefix)) => FirstSpeaker::Client(class, prefix),
                    Err(_) => FirstSpeaker::Nobody("stalled during protocol detection"),
                }
            }
            _ => FirstSpeaker::Nobody("client closed"),
        },
        read = server.read_buf(&mut from_server) => match read {
            Ok(n) if n > 0 => FirstSpeaker::Server(from_server.freeze()),
            _ => FirstSpeaker::Nobody("server closed"),
        },
        () = tokio::time::sleep_until(deadline) => FirstSpeaker::Nobody("silent until the idle timeout"),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_client_request_is_classified() {
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (_server, mut server_side) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /admin HTTP/1.1\r\nx-appid-peer-id: evil\r\n\r\n")
            .await
            .unwrap();
        match first_speaker(&mut client_side, &mut server_side, Duration::from_secs(1)).await {
            FirstSpeaker::Client(Classification::Http1, prefix) => {
                assert!(prefix.starts_with(b"GET /admin"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_server_banner_comes_first() {
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (mut server, mut server_side) = tokio::io::duplex(1024);
        server
            .write_all(b"220 smtp.example ESMTP\r\n")
            .await
            .unwrap();
        match first_speaker(&mut client_side, &mut server_side, Duration::from_secs(1)).await {
            FirstSpeaker::Server(banner) => assert_eq!(&banner[..], b"220 smtp.example ESMTP\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn silence_on_both_sides_ends_at_the_timeout() {
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (_server, mut server_side) = tokio::io::duplex(1024);
        let got = first_speaker(
            &mut client_side,
            &mut server_side,
            Duration::from_millis(50),
        )
        .await;
        assert!(matches!(got, FirstSpeaker::Nobody(_)), "{got:?}");
    }
}
