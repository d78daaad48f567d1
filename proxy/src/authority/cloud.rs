//! The authority's cloud attestation: AWS instance identity documents, GCP
//! instance identity tokens and Kubernetes projected service-account tokens,
//! verified with [`crate::attest`].
//!
//! Design bias: *the document proves the instance, the region picks the key,
//! and an instance attests once*. AWS publishes one certificate per region
//! and signature kind; the authority loads `<dir>/<kind>/<region>.pem`
//! (`rsa` for `/signature`, `rsa2048` for `/rsa2048`, `dsa` for `/pkcs7`) and
//! requires the document to name that same region, since 17 regions share
//! one 1024-bit key. Because an identity document is served unchanged for an
//! instance's whole life, anyone who reads it could replay it: the store
//! remembers each attested instance and refuses a second first-attestation
//! (the sidecar renews over mTLS instead), as SPIRE's AWS attestor does.
//!
//! Kubernetes is the exception to "attests once": pods come and go under one
//! service account, each with short-lived tokens the kubelet refreshes, so
//! the authority remembers redeemed *tokens* instead, and refuses tokens
//! valid for longer than `--k8s-max-token-ttl` (see `service.rs`).

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use appid_policy::claims::Cloud;

use super::service::{CloudVerifier, Proof};
use crate::attest::{self, AwsSignature, GcpKeys, JwtKeys, K8sExpectations, K8sIdentity};

/// What the authority was configured with.
pub struct CloudAttestor {
    /// Directory with `rsa/`, `rsa2048/`, `dsa/` subdirectories of
    /// `<region>.pem` AWS certificates.
    pub aws_certs: Option<PathBuf>,
    /// GCP signing keys and the audience tokens must name.
    pub gcp: Option<(GcpKeys, String)>,
    /// The cluster's service-account issuer keys and what tokens must say.
    pub k8s: Option<(JwtKeys, K8sExpectations)>,
}

impl CloudVerifier for CloudAttestor {
    fn verify(&self, proof: &Proof, now: i64) -> Result<Cloud, String> {
        let now = UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
        match proof {
            Proof::AwsIid {
                document,
                kind,
                signature,
                region,
            } => {
                let dir = self.aws_certs.as_ref().ok_or(
                    "AWS attestation is not configured on this authority (serve --aws-certs DIR)",
                )?;
                if region.is_empty()
                    || !region
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(format!("`{region}` is not an AWS region name"));
                }
                let signature =
                    AwsSignature::from_kind(kind, signature).map_err(|e| e.to_string())?;
                let subdir = match signature {
                    AwsSignature::Rsa(_) => "rsa",
                    AwsSignature::Pkcs7Rsa2048(_) => "rsa2048",
                    AwsSignature::Pkcs7Dsa(_) => "dsa",
                };
                let cert_path = dir.join(subdir).join(format!("{region}.pem"));
                let cert = std::fs::read(&cert_path).map_err(|e| {
                    format!(
                        "no AWS {subdir} certificate for region {region} ({}: {e})",
                        cert_path.display()
                    )
                })?;
                let identity = attest::verify_iid(
                    document.as_bytes(),
                    signature,
                    &cert,
                    Some(region),
                    None,
                    now,
                )
                .map_err(|e| e.to_string())?;
                Ok(identity.to_cloud_claims())
            }
            Proof::GcpIit { token } => {
                let (keys, audience) = self.gcp.as_ref().ok_or(
                    "GCP attestation is not configured on this authority (serve --gcp-jwks FILE --gcp-audience AUD)",
                )?;
                let identity =
                    attest::verify_iit(token, keys, audience, now).map_err(|e| e.to_string())?;
                Ok(identity.to_cloud_claims())
            }
            Proof::JoinToken { .. } => Err("a join token is not a cloud document".into()),
            Proof::K8sPsat { .. } => Err("a service-account token is not a cloud document".into()),
        }
    }

    fn verify_k8s(&self, token: &str, now: i64) -> Result<K8sIdentity, String> {
        let (keys, expect) = self
            .k8s
            .as_ref()
            .ok_or(super::service::K8S_NOT_CONFIGURED)?;
        let now = UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
        attest::verify_psat(token, keys, expect, now).map_err(|e| e.to_string())
    }
}
