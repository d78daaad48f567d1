//! The AppID claims document: what the authority vouches for about a workload.
//!
//! This is the JSON carried in the AppID certificate extension (see
//! [`crate::extension`]). Everything outside `reported` is vouched for by the
//! authority; `reported` is what the workload said about itself and could not
//! be checked, so policy must name it explicitly (`reported.*`).
//!
//! Design bias: *forward compatible, strict about what we know*. Unknown
//! top-level keys are ignored so an older sidecar can read a newer
//! authority's certificates, but the version `v` must be one we understand,
//! and typed fields must have their types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only claims document version this code understands.
pub const CLAIMS_VERSION: u32 = 1;

/// How the authority established the workload's identity.
///
/// Kept as an open string on the wire (`attestation`) so a newer authority's
/// methods still parse; these are the values this code base produces.
pub mod attestation {
    /// A one-time join token registered with `appid authority register`.
    pub const JOIN_TOKEN: &str = "join_token";
    /// A signed AWS EC2 instance identity document.
    pub const AWS_IID: &str = "aws_iid";
    /// A signed GCP instance identity token.
    pub const GCP_IIT: &str = "gcp_iit";
    /// A Kubernetes projected service-account token (as SPIRE's `k8s_psat`).
    pub const K8S_PSAT: &str = "k8s_psat";
    /// Issued offline by `appid issue` (development and tests).
    pub const MANUAL: &str = "manual";
}

/// The AppID claims of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppIdClaims {
    /// Document version; always [`CLAIMS_VERSION`] when produced here.
    pub v: u32,
    /// The workload's SPIFFE ID; equal to the certificate's URI SAN.
    pub id: String,
    /// Labels the authority registered for the workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The container image the workload runs, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Vulnerability counts from the newest scanner report for the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulns: Option<Vulns>,
    /// Cloud facts from a verified instance identity document, or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Cloud>,
    /// Kubernetes facts: from the pod's projected service-account token,
    /// and (when the authority looks the pod up) from the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8s>,
    /// How the identity was attested (see [`attestation`]).
    pub attestation: String,
    /// Unverified, self-reported facts. Policy must name them `reported.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The container image of a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<64 hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Human-readable reference, e.g. `registry.example/web:1.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Vulnerability counts by severity, from one scanner report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vulns {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub unknown: u64,
    /// `trivy` or `grype`.
    pub scanner: String,
    /// `sha256:<hex>` of the report file the counts came from.
    pub report: String,
    /// RFC 3339 time of the scan, when the report says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned_at: Option<String>,
}

/// Cloud facts. Every field is optional: a manual issuance may carry only tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cloud {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// AWS account ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// GCP project ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Machine image (AWS AMI) when attested from a cloud document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Machine type (AWS `instanceType`, e.g. `m5.large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Kubernetes facts of an attested pod (`k8s.*` in policy).
///
/// `namespace`, `service_account`, `pod`, `pod_uid` and (Kubernetes 1.30+)
/// `node` come from the projected service-account token the cluster signed.
/// `labels` (only the keys the authority is told to trust) and `images`
/// come from the pod object the authority read from the API server; `node`
/// too when the token has none. Compact on purpose: the whole claims
/// document fits in 2048 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8s {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's `metadata.uid`: which pod of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's labels whose keys the authority trusts (`--k8s-trust-labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Container name to image digest (`sha256:<64 hex>`, or `unknown`
    /// while the API server does not report it), for every container that
    /// runs beside the app: its containers, its native sidecars, appid's
    /// own proxy among them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
}

impl AppIdClaims {
    /// A minimal claims document: version, ID and attestation method.
    pub fn new(id: impl Into<String>, attestation: impl Into<String>) -> Self {
        AppIdClaims {
            v: CLAIMS_VERSION,
            id: id.into(),
            labels: BTreeMap::new(),
            image: None,
            vulns: None,
            cloud: None,
            k8s: None,
            attestation: attestation.into(),
            reported: None,
        }
    }

    /// The claims as compact JSON (what the extension carries).
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail: no maps with non-string
        // keys, no custom Serialize impls.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("claims always serialize"))
    }

    /// The claims as a JSON value, flattened paths resolve against this.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses_and_keeps_all_fields() {
        let json = r#"{"v":1,
 "id":"spiffe://prod.example/ns/shop/sa/web",
 "labels":{"app":"web","team":"shop"},
 "image":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","name":"registry.example/web:1.4"},
 "vulns":{"critical":0,"high":2,"medium":7,"low":13,"unknown":0,
          "scanner":"trivy","report":"sha256:00","scanned_at":"2026-11-20T10:00:00Z"},
 "cloud":{"provider":"aws","account":"123456789012","region":"eu-west-1",
          "zone":"eu-west-1a","instance":"i-0abc","tags":{"env":"prod"}},
 "attestation":"join_token",
 "reported":{"process":{"sha256":"ab","uid":1000}}}"#;
        let claims: AppIdClaims = serde_json::from_str(json).unwrap();
        assert_eq!(claims.labels["team"], "shop");
        assert_eq!(claims.k8s, None);
        assert_eq!(claims.vulns.as_ref().unwrap().high, 2);
        assert_eq!(claims.cloud.as_ref().unwrap().tags["env"], "prod");
        assert_eq!(claims.reported.as_ref().unwrap()["process"]["uid"], 1000);
        let again: AppIdClaims = serde_json::from_str(&claims.to_json()).unwrap();
        assert_eq!(again, claims);
    }

    #[test]
    fn k8s_facts_round_trip_compactly() {
        let json = r#"{"v":1,"id":"spiffe://td/ns/shop/sa/web","k8s":{"namespace":"shop","service_account":"web","pod":"web-1","pod_uid":"u-1","node":"n1","labels":{"app":"web"},"images":{"web":"sha256:aa"}},"attestation":"k8s_psat"}"#;
        let claims: AppIdClaims = serde_json::from_str(json).unwrap();
        let k8s = claims.k8s.as_ref().unwrap();
        assert_eq!(k8s.labels["app"], "web");
        assert_eq!(k8s.images["web"], "sha256:aa");
        assert_eq!(claims.to_json(), json);
    }

    #[test]
    fn minimal_document_serializes_compactly() {
        let claims = AppIdClaims::new("spiffe://td/a", attestation::MANUAL);
        assert_eq!(
            claims.to_json(),
            r#"{"v":1,"id":"spiffe://td/a","attestation":"manual"}"#
        );
    }
}
