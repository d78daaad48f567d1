//! Clients: real `curl` and `openssl s_client`, and a keep-alive HTTP/1.1
//! session on one connection (hyper).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::task::JoinHandle;

/// A response as curl printed it (`curl -i`).
#[derive(Debug)]
pub struct CurlResponse {
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: String,
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (the app's echo).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }
}

/// Runs `curl -sS -i <args>`; panics if curl itself fails (no response).
pub async fn curl(args: &[&str]) -> CurlResponse {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl must be installed (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {} failed ({}): {}{stdout}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_curl(&stdout)
}

fn parse_curl(text: &str) -> CurlResponse {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body split in curl output: {text}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default().to_string();
    let status = words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {status_line}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlResponse {
        version,
        status,
        headers,
        body: body.to_string(),
    }
}

/// What `openssl s_client` printed (stdout and stderr together).
#[derive(Debug)]
pub struct SClient {
    pub success: bool,
    pub output: String,
}

/// `openssl s_client -connect <address> -alpn appid/1` (so the sidecar
/// takes it for a mesh peer), with `cert` as client certificate if given,
/// sending `input` and then reading until the server closes.
pub async fn s_client(
    address: SocketAddr,
    cert: Option<(&Path, &Path)>,
    extra: &[&str],
    input: &[u8],
) -> SClient {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &address.to_string(),
            "-alpn",
            "appid/1",
        ])
        .args(["-servername", "appid.invalid", "-tls1_3", "-ign_eof"])
        .args(extra);
    if let Some((cert, key)) = cert {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl must be installed (apt-get install openssl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.expect("write to s_client");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("openssl s_client did not finish within 20s")
        .expect("openssl s_client output");
    SClient {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The first PEM certificate in `text`.
pub fn first_pem_cert(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &text[start..end]))
}

/// An HTTP/1.1 keep-alive session: every request on the same connection.
pub struct H1Session {
    sender: SendRequest<Empty<Bytes>>,
    authority: String,
    conn: JoinHandle<()>,
}

impl H1Session {
    pub async fn connect(address: SocketAddr) -> H1Session {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("http/1.1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1Session {
            sender,
            authority: address.to_string(),
            conn,
        }
    }

    /// Whether the connection is gone (closed by the other side).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `GET path` on this connection; `Err` if the connection is gone.
    pub async fn get(&mut self, path: &str) -> Result<(u16, serde_json::Value), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not usable: {e}"))?;
        let request = Request::get(path)
            .header("host", &self.authority)
            .body(Empty::new())
            .unwrap();
        let response =
            tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(request))
                .await
                .map_err(|_| "no response within 10s".to_string())?
                .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&body).into_owned(),
        ));
        Ok((status, json))
    }
}

impl Drop for H1Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// How long until the first byte arrives on a new connection to `address`.
pub async fn first_byte(address: SocketAddr) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
        .await
        .expect("a banner within 30 s")
        .unwrap();
    buf.truncate(n);
    (started.elapsed(), buf)
}
