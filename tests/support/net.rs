//! Ports and raw sockets.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Ports handed to sidecars are taken from below Linux's ephemeral range
/// (32768–60999 by default), so no outgoing connection's local port can
/// take one between our check and the sidecar's bind. Each test process
/// starts at its own offset so two test runs on one machine rarely meet.
const LOW: u32 = 20_000;
const SPAN: u32 = 12_000;
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port nobody listens on right now, for a sidecar to bind.
pub fn free_port() -> u16 {
    let offset = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET path` over a fresh connection; the status code, or `None` if the
/// server did not answer (not listening yet, closed, garbage).
pub async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

/// `GET path` over a fresh connection; the body of a 200, else `None`.
pub async fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

/// What a read on a connection that should be closed by the far side saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly close (FIN) before any byte.
    Eof,
    /// Reset or other error before any byte.
    Error(std::io::ErrorKind),
}

/// Reads until the peer closes; panics if any byte arrives or nothing
/// happens within `limit`.
pub async fn expect_closed(stream: &mut TcpStream, limit: Duration) -> Closed {
    let mut buffer = [0u8; 256];
    match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
        Err(_) => panic!("connection still open after {limit:?}"),
        Ok(Ok(0)) => Closed::Eof,
        Ok(Ok(n)) => panic!(
            "expected the connection to be closed, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buffer[..n])
        ),
        Ok(Err(e)) => Closed::Error(e.kind()),
    }
}

/// Writes `message` and reads back exactly as many bytes (an echo), within
/// `limit`. `Err` says what went wrong instead.
pub async fn echo_once(
    stream: &mut TcpStream,
    message: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let exchange = async {
        stream
            .write_all(message)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; message.len()];
        stream
            .read_exact(&mut back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if back == message {
            Ok(())
        } else {
            Err(format!(
                "echo differs: {:?}",
                String::from_utf8_lossy(&back)
            ))
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no echo within {limit:?}")))
}

/// Connects and checks one echo round trip.
pub async fn connect_and_echo(address: SocketAddr, message: &[u8]) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    echo_once(&mut stream, message, Duration::from_secs(10)).await?;
    Ok(stream)
}

/// A connection to `address` from the loopback address `127.0.0.<source>`
/// (Linux routes all of 127/8 to `lo`): one more source address.
pub async fn connect_from(source: u8, address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, source], 0)))?;
    socket.connect(address).await
}

/// [`connect_and_echo`] from the loopback address `127.0.0.<source>`.
pub async fn connect_from_and_echo(
    source: u8,
    address: SocketAddr,
    message: &[u8],
) -> Result<TcpStream, String> {
    let mut stream = connect_from(source, address)
        .await
        .map_err(|e| format!("connect {address} from 127.0.0.{source}: {e}"))?;
    echo_once(&mut stream, message, Duration::from_secs(10)).await?;
    Ok(stream)
}
