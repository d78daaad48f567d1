//! The original destination of a connection redirected by iptables.
//!
//! A `REDIRECT` rule in the nat table rewrites the destination to the
//! sidecar's port; the kernel remembers the address the app dialled, and
//! `SO_ORIGINAL_DST` (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6) returns it.
//! socket2 wraps both, so no `unsafe` is needed here.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Where the app meant to connect, or an error when the connection was not
/// redirected (the lookup fails with `ENOENT` then).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let local = stream.local_addr()?;
    let address = if local.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    address
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
}

/// True when `destination` is the listener itself: the connection was not
/// redirected (someone dialled the capture port directly), and forwarding it
/// there would loop forever. A wildcard listener (`0.0.0.0:15106`) is "itself"
/// on any local address; loopback always is.
pub fn is_self(destination: SocketAddr, local: SocketAddr) -> bool {
    destination.port() == local.port()
        && (local.ip().is_unspecified()
            || destination.ip() == local.ip()
            || destination.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_itself_on_every_address() {
        let wildcard: SocketAddr = "0.0.0.0:15106".parse().unwrap();
        assert!(is_self("127.0.0.1:15106".parse().unwrap(), wildcard));
        assert!(is_self("10.0.0.2:15106".parse().unwrap(), wildcard));
        assert!(!is_self("10.0.0.2:8080".parse().unwrap(), wildcard));
        let specific: SocketAddr = "10.0.0.2:15106".parse().unwrap();
        assert!(!is_self("10.0.0.3:15106".parse().unwrap(), specific));
        assert!(is_self("127.0.0.1:15106".parse().unwrap(), specific));
    }

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination_or_is_itself() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Without a REDIRECT rule the kernel either has no entry (ENOENT) or,
        // with conntrack loaded, reports the address actually dialled.
        match original_destination(&server) {
            Ok(destination) => assert!(is_self(destination, server.local_addr().unwrap())),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
