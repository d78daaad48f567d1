//! Refusing connections while the sidecar has no valid identity.
//!
//! Listeners are bound before the identity is obtained (a port in use must
//! be a startup error, not a surprise later), so the kernel completes TCP
//! handshakes from the moment the sidecar starts. Without this module a
//! connection arriving while the authority is still unreachable would sit
//! in the accept queue, "connected" from the app's point of view, for as
//! long as the bootstrap takes — a curl hung for ten minutes that way.
//!
//! The rule is simple: *no valid identity, no connection*. Before the first
//! certificate, and whenever the current one has expired (renewal failing),
//! each connection is accepted and reset at once (`SO_LINGER` 0, so the
//! client sees `ECONNRESET` rather than an orderly close it might mistake
//! for an empty answer), and counted in
//! `appid_connections_refused_total{reason="not_ready"}`. Nothing is read,
//! so the same rule serves the app's plaintext and a peer's TLS alike.

use std::convert::Infallible;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Direction, Metrics};

/// The `reason` label of a connection refused for want of an identity.
pub const NOT_READY: &str = "not_ready";

/// Resets `stream` at once and counts it.
pub(super) fn refuse(stream: TcpStream, peer: SocketAddr, direction: Direction, metrics: &Metrics) {
    // Counted first, so whoever sees the reset also sees it counted.
    metrics.connection_refused(direction, NOT_READY);
    // A zero linger turns the close into a RST; if setting it fails the
    // close is an ordinary FIN, which still refuses promptly.
    let _ = stream.set_zero_linger();
    drop(stream);
    tracing::debug!(%peer, direction = direction.as_str(), "refused: no valid identity yet");
}

/// Accepts on every listener and refuses each connection, forever (it never
/// returns, hence `Infallible`): run it beside the identity bootstrap and
/// drop it once the identity is there. The listeners are only borrowed, so
/// they serve normally afterwards.
pub(super) async fn refuse_all(
    listeners: &[(&TcpListener, Direction)],
    metrics: &Metrics,
) -> Infallible {
    let loops = listeners.iter().map(|&(listener, direction)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => refuse(stream, peer, direction, metrics),
                Err(e) => {
                    // E.g. out of file descriptors: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed while not ready");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    futures_util::future::join_all(loops).await;
    // With no listener at all there is nothing to refuse: wait forever.
    std::future::pending().await
}

/// Whether an identity that expires at `not_after` (Unix seconds) is still
/// valid now.
pub(super) fn still_valid(not_after: i64) -> bool {
    not_after > time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_are_reset_and_counted_until_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let listeners = [(&listener, Direction::Outbound)];
        let refusing = refuse_all(&listeners, &metrics);
        let client = async {
            let mut stream = match TcpStream::connect(address).await {
                Ok(stream) => stream,
                // The reset may beat the connect's completion on our side.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("connect: {e}"),
            };
            let mut buf = [0u8; 16];
            // A reset, or at least a close: never held open.
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("refused promptly");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        };
        tokio::select! {
            never = refusing => match never {},
            () = client => {}
        }
        let text = metrics.encode();
        assert!(
            text.lines()
                .any(|l| l.starts_with("appid_connections_refused_total")
                    && l.contains("reason=\"not_ready\"")
                    && l.ends_with(" 1")),
            "{text}"
        );
    }

    #[test]
    fn validity_is_strictly_before_not_after() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(still_valid(now + 60));
        assert!(!still_valid(now - 1));
    }
}
