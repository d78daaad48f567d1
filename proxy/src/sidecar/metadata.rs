//! The cloud's signed statement about this instance, fetched from the
//! metadata service, as a proof for the authority.
//!
//! Design bias: *the sidecar is the only process that reads the metadata
//! service*. The app's own requests to 169.254.169.254 are refused by the
//! sidecar's outbound policy (the Capital One lesson); the sidecar runs as
//! the excluded uid, so its requests go straight out. What it fetches is
//! public to anyone on the instance and proves nothing by itself: the
//! authority verifies the cloud's signature and remembers the instance
//! (trust on first use), and later renewals go over mTLS with the
//! certificate kept in `state_dir`.
//!
//! - **AWS** (IMDSv2 only: IMDSv1 is what SSRF reaches): `PUT
//!   /latest/api/token` with a TTL, then the instance identity document and
//!   its RSA-SHA256 `signature` with that token.
//! - **GCP**: the instance identity token for the authority's audience,
//!   `format=full`, with `Metadata-Flavor: Google`.
//!
//! Plain HTTP to a link-local address, one request per connection, small
//! bounded answers, a timeout on each.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::authority::service::Proof;

/// The metadata service of AWS and GCP.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Largest answer read (documents and tokens are a few KiB).
const MAX_ANSWER: usize = 64 * 1024;
/// Each request's time limit.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The lifetime asked for an IMDSv2 session token.
const IMDS_TOKEN_TTL: &str = "300";

/// Why no proof could be fetched.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("the metadata service at {endpoint} is unreachable: {why}")]
    Unreachable { endpoint: String, why: String },
    #[error("the metadata service answered {status} for {path}{hint}")]
    Status {
        path: String,
        status: u16,
        hint: &'static str,
    },
    #[error("the metadata service's answer for {path} is not usable: {why}")]
    BadAnswer { path: String, why: String },
}

impl MetadataError {
    /// Worth retrying (the service may come up, or answer next time).
    pub fn is_transient(&self) -> bool {
        match self {
            MetadataError::Unreachable { .. } => true,
            MetadataError::Status { status, .. } => *status >= 500 || *status == 429,
            MetadataError::BadAnswer { .. } => false,
        }
    }
}

/// `http://host[:port]` of a metadata service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// From `http://host[:port]` (no path); `None` if it is not one.
    pub fn parse(url: &str) -> Option<Endpoint> {
        let rest = url.strip_prefix("http://")?.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        let uri: http::uri::Authority = rest.parse().ok()?;
        Some(Endpoint {
            host: uri.host().trim_matches(['[', ']']).to_string(),
            port: uri.port_u16().unwrap_or(80),
        })
    }

    fn display(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// One request; the answer's body if it is a 200.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Bytes, MetadataError> {
        let unreachable = |why: String| MetadataError::Unreachable {
            endpoint: self.display(),
            why,
        };
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true); // small request and response: no Nagle delay
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.host.as_str());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request
                .body(Empty::<Bytes>::new())
                .map_err(|e| unreachable(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| MetadataError::BadAnswer {
                    path: path.to_string(),
                    why: e.to_string(),
                })?
                .to_bytes();
            if status != StatusCode::OK {
                let hint = match status.as_u16() {
                    401 | 403 => " (IMDSv2 token refused, or metadata access disabled)",
                    404 => " (not on this cloud, or the instance has no such data)",
                    _ => "",
                };
                return Err(MetadataError::Status {
                    path: path.to_string(),
                    status: status.as_u16(),
                    hint,
                });
            }
            Ok(body)
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| unreachable("timed out".into()))?
    }
}

fn text(path: &str, body: Bytes) -> Result<String, MetadataError> {
    let text = String::from_utf8(body.to_vec()).map_err(|_| MetadataError::BadAnswer {
        path: path.to_string(),
        why: "not UTF-8".into(),
    })?;
    Ok(text.trim().to_string())
}

/// AWS: the instance identity document and its RSA-SHA256 signature,
/// through an IMDSv2 session.
pub async fn aws_iid(endpoint: &Endpoint) -> Result<Proof, MetadataError> {
    const TOKEN: &str = "/latest/api/token";
    const DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
    const SIGNATURE: &str = "/latest/dynamic/instance-identity/signature";
    let token = endpoint
        .request(
            Method::PUT,
            TOKEN,
            &[("x-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL)],
        )
        .await?;
    let token = text(TOKEN, token)?;
    let session = [("x-aws-ec2-metadata-token", token.as_str())];
    let document = endpoint.request(Method::GET, DOCUMENT, &session).await?;
    let document = String::from_utf8(document.to_vec()).map_err(|_| MetadataError::BadAnswer {
        path: DOCUMENT.into(),
        why: "not UTF-8".into(),
    })?;
    let signature = text(
        SIGNATURE,
        endpoint.request(Method::GET, SIGNATURE, &session).await?,
    )?;
    // The authority picks the certificate by region and checks the
    // document names the same one; it is read here only to say which.
    let region = serde_json::from_str::<serde_json::Value>(&document)
        .ok()
        .and_then(|d| d["region"].as_str().map(str::to_string))
        .ok_or_else(|| MetadataError::BadAnswer {
            path: DOCUMENT.into(),
            why: "no region in the document".into(),
        })?;
    Ok(Proof::AwsIid {
        document,
        kind: "signature".into(),
        signature,
        region,
    })
}

/// GCP: an instance identity token for `audience`, in the full format.
pub async fn gcp_iit(endpoint: &Endpoint, audience: &str) -> Result<Proof, MetadataError> {
    const IDENTITY: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
    let audience: String = audience
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("{IDENTITY}?audience={audience}&format=full");
    let token = endpoint
        .request(Method::GET, &path, &[("metadata-flavor", "Google")])
        .await?;
    Ok(Proof::GcpIit {
        token: text(IDENTITY, token)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_host_and_port() {
        let e = Endpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("169.254.169.254", 80));
        let e = Endpoint::parse("http://127.0.0.1:8181/").unwrap();
        assert_eq!(e.port, 8181);
        let e = Endpoint::parse("http://[fd00:ec2::254]").unwrap();
        assert_eq!(e.host, "fd00:ec2::254");
        assert!(Endpoint::parse("https://169.254.169.254").is_none());
        assert!(Endpoint::parse("http://169.254.169.254/latest").is_none());
        assert!(Endpoint::parse("169.254.169.254").is_none());
    }
}
