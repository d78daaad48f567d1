//! gRPC over HTTP/2, framed by hand (there is no gRPC crate in the
//! dependencies, and the wire format is small): each message is a 1-byte
//! compressed flag, a 4-byte big-endian length and the payload; requests
//! are `POST /<service>/<method>` with `content-type: application/grpc` and
//! `te: trailers`; the status is `grpc-status` in the trailers, or in the
//! headers of a "trailers-only" response.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One length-prefixed message.
pub fn encode_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(payload.len()).expect("small message"));
    out.put_slice(payload);
    out.freeze()
}

/// Every message in `body`; `None` if the framing is broken or a message
/// claims compression.
pub fn decode_messages(mut body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None;
        }
        let length = u32::from_be_bytes(body[1..5].try_into().ok()?) as usize;
        let payload = body.get(5..5 + length)?;
        messages.push(payload.to_vec());
        body = &body[5 + length..];
    }
    Some(messages)
}

/// `grpc-status: <status>` as a trailers map.
pub fn status_trailers(status: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers
}

/// A gRPC client on one h2c (prior knowledge) connection.
pub struct GrpcClient {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    task: JoinHandle<()>,
}

/// What one call returned.
#[derive(Debug)]
pub struct GrpcReply {
    pub http_status: u16,
    pub headers: HeaderMap,
    pub messages: Vec<Vec<u8>>,
    /// Trailers, or the headers again for a trailers-only response.
    pub trailers: HeaderMap,
}

impl GrpcReply {
    /// `grpc-status`, from the trailers or (trailers-only) the headers.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .get("grpc-status")
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl GrpcClient {
    pub async fn connect(address: SocketAddr) -> GrpcClient {
        let tcp = TcpStream::connect(address).await.expect("connect for gRPC");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        GrpcClient {
            sender,
            authority: address.to_string(),
            task,
        }
    }

    fn request(&self, method: &str, message: &[u8]) -> Request<Full<Bytes>> {
        Request::post(format!("http://{}{method}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // A caller trying to pass itself off as someone else.
            .header("x-appid-peer-id", "spiffe://test.example/spoofed")
            .body(Full::new(encode_message(message)))
            .unwrap()
    }

    /// A call, reading the whole reply. `on_message` runs as each message
    /// arrives (before the next is read).
    pub async fn call(
        &mut self,
        method: &str,
        message: &[u8],
        mut on_message: impl FnMut(&[u8]),
    ) -> GrpcReply {
        self.sender.ready().await.expect("h2 connection ready");
        let response = self
            .sender
            .send_request(self.request(method, message))
            .await
            .expect("gRPC request");
        let (parts, mut body) = response.into_parts();
        let mut buffer = BytesMut::new();
        let mut messages = Vec::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("gRPC response body");
            if let Some(data) = frame.data_ref() {
                buffer.extend_from_slice(data);
                // Split off every complete message in the buffer.
                while buffer.len() >= 5 {
                    let length = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
                    if buffer.len() < 5 + length {
                        break;
                    }
                    let message = buffer.split_to(5 + length);
                    on_message(&message[5..]);
                    messages.push(message[5..].to_vec());
                }
            } else if let Ok(t) = frame.into_trailers() {
                trailers = t;
            }
        }
        assert!(buffer.is_empty(), "gRPC body ended inside a message");
        GrpcReply {
            http_status: parts.status.as_u16(),
            headers: parts.headers,
            messages,
            trailers,
        }
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
