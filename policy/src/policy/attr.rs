//! Claim paths (`labels.app`, `vulns.critical`, `reported.process.uid`)
//! compiled to direct accessors on [`AppIdClaims`].
//!
//! Design bias: *resolve names once*. A path is parsed and checked at load
//! (an unknown path is a load error with the list of valid ones), and at
//! decision time reading an attribute is a field access or a map lookup by a
//! borrowed key: no JSON is built, nothing is flattened, nothing allocated.
//!
//! `labels.<key>`, `cloud.tags.<key>`, `k8s.labels.<key>` and
//! `k8s.images.<container>` take the whole rest of the path as the key, so Kubernetes-style keys with dots work
//! (`labels.app.kubernetes.io/name`). `reported.<a>.<b>` walks the
//! self-reported JSON object by dots.

use std::fmt;

use crate::claims::AppIdClaims;

/// A vulnerability severity count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Unknown,
}

/// A string field of `cloud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloudField {
    Provider,
    Account,
    Project,
    Region,
    Zone,
    Instance,
    Image,
    InstanceType,
}

/// A string field of `k8s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum K8sField {
    Namespace,
    ServiceAccount,
    Pod,
    PodUid,
    Node,
}

/// A compiled claim path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    V,
    Id,
    /// The trust domain of `id` (`spiffe://<trust domain>/...`): which
    /// authority vouches for the peer, e.g. a federated cloud's.
    TrustDomain,
    Attestation,
    Labels,
    Label(Box<str>),
    Image,
    ImageDigest,
    ImageName,
    Vulns,
    Vuln(Severity),
    VulnsScanner,
    VulnsReport,
    VulnsScannedAt,
    Cloud,
    CloudField(CloudField),
    CloudTags,
    CloudTag(Box<str>),
    K8s,
    K8sField(K8sField),
    K8sLabels,
    K8sLabel(Box<str>),
    K8sImages,
    K8sImage(Box<str>),
    /// `reported` (empty) or a path inside it.
    Reported(Box<[Box<str>]>),
}

/// An attribute's value as the operators see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AttrValue<'a> {
    Missing,
    Str(&'a str),
    Num(f64),
    Bool(bool),
    /// A map or list: only `exists` says anything about it.
    Compound,
}

const TOP: &[&str] = &[
    "id",
    "trust_domain",
    "v",
    "attestation",
    "labels.<key>",
    "image.digest",
    "image.name",
    "vulns.critical",
    "vulns.high",
    "vulns.medium",
    "vulns.low",
    "vulns.unknown",
    "vulns.scanner",
    "vulns.report",
    "vulns.scanned_at",
    "cloud.provider",
    "cloud.account",
    "cloud.project",
    "cloud.region",
    "cloud.zone",
    "cloud.instance",
    "cloud.image",
    "cloud.instance_type",
    "cloud.tags.<key>",
    "k8s.namespace",
    "k8s.service_account",
    "k8s.pod",
    "k8s.pod_uid",
    "k8s.node",
    "k8s.labels.<key>",
    "k8s.images.<container>",
    "reported.<path>",
];

impl Attr {
    /// Parses a flattened claim path. The error is the hint to show.
    pub fn parse(path: &str) -> Result<Attr, String> {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let attr = match (head, rest) {
            ("v", None) => Attr::V,
            ("id", None) => Attr::Id,
            ("trust_domain", None) => Attr::TrustDomain,
            ("attestation", None) => Attr::Attestation,
            ("labels", None) => Attr::Labels,
            ("labels", Some(key)) if !key.is_empty() => Attr::Label(key.into()),
            ("image", None) => Attr::Image,
            ("image", Some("digest")) => Attr::ImageDigest,
            ("image", Some("name")) => Attr::ImageName,
            ("vulns", None) => Attr::Vulns,
            ("vulns", Some(f)) => match f {
                "critical" => Attr::Vuln(Severity::Critical),
                "high" => Attr::Vuln(Severity::High),
                "medium" => Attr::Vuln(Severity::Medium),
                "low" => Attr::Vuln(Severity::Low),
                "unknown" => Attr::Vuln(Severity::Unknown),
                "scanner" => Attr::VulnsScanner,
                "report" => Attr::VulnsReport,
                "scanned_at" => Attr::VulnsScannedAt,
                _ => return Err(field_hint("vulns", f, TOP)),
            },
            ("cloud", None) => Attr::Cloud,
            ("cloud", Some("tags")) => Attr::CloudTags,
            ("cloud", Some(f)) => match f.split_once('.') {
                Some(("tags", key)) if !key.is_empty() => Attr::CloudTag(key.into()),
                _ => Attr::CloudField(match f {
                    "provider" => CloudField::Provider,
                    "account" => CloudField::Account,
                    "project" => CloudField::Project,
                    "region" => CloudField::Region,
                    "zone" => CloudField::Zone,
                    "instance" => CloudField::Instance,
                    "image" => CloudField::Image,
                    "instance_type" => CloudField::InstanceType,
                    _ => return Err(field_hint("cloud", f, TOP)),
                }),
            },
            ("k8s", None) => Attr::K8s,
            ("k8s", Some("labels")) => Attr::K8sLabels,
            ("k8s", Some("images")) => Attr::K8sImages,
            ("k8s", Some(f)) => match f.split_once('.') {
                Some(("labels", key)) if !key.is_empty() => Attr::K8sLabel(key.into()),
                Some(("images", key)) if !key.is_empty() => Attr::K8sImage(key.into()),
                _ => Attr::K8sField(match f {
                    "namespace" => K8sField::Namespace,
                    "service_account" => K8sField::ServiceAccount,
                    "pod" => K8sField::Pod,
                    "pod_uid" => K8sField::PodUid,
                    "node" => K8sField::Node,
                    _ => return Err(field_hint("k8s", f, TOP)),
                }),
            },
            ("reported", None) => Attr::Reported(Box::new([])),
            ("reported", Some(p)) if p.split('.').all(|s| !s.is_empty()) => {
                Attr::Reported(p.split('.').map(Into::into).collect())
            }
            _ => {
                let heads: Vec<&str> = TOP
                    .iter()
                    .map(|k| k.split('.').next().unwrap_or(k))
                    .collect();
                let list = TOP
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(match super::error::suggest(head, &heads) {
                    Some(s) => format!("did you mean `{s}`? claim paths are {list}"),
                    None => format!("claim paths are {list}"),
                });
            }
        };
        Ok(attr)
    }

    /// A map-valued path (`labels`, `vulns`, ...) that only `exists` can test.
    pub fn is_section(&self) -> bool {
        matches!(
            self,
            Attr::Labels
                | Attr::Image
                | Attr::Vulns
                | Attr::Cloud
                | Attr::CloudTags
                | Attr::K8s
                | Attr::K8sLabels
                | Attr::K8sImages
        ) || matches!(self, Attr::Reported(p) if p.is_empty())
    }

    /// Always a string when present: equality is exact text, so it can be
    /// indexed by value.
    pub fn is_text(&self) -> bool {
        matches!(
            self,
            Attr::Id
                | Attr::TrustDomain
                | Attr::Attestation
                | Attr::Label(_)
                | Attr::ImageDigest
                | Attr::ImageName
                | Attr::VulnsScanner
                | Attr::VulnsReport
                | Attr::VulnsScannedAt
                | Attr::CloudField(_)
                | Attr::CloudTag(_)
                | Attr::K8sField(_)
                | Attr::K8sLabel(_)
                | Attr::K8sImage(_)
        )
    }

    /// Reads the attribute. No allocation.
    pub fn get<'a>(&self, c: &'a AppIdClaims) -> AttrValue<'a> {
        use AttrValue::{Compound, Missing, Num, Str};
        let opt = |s: Option<&'a String>| s.map_or(Missing, |s| Str(s.as_str()));
        match self {
            Attr::V => Num(f64::from(c.v)),
            Attr::Id => Str(&c.id),
            Attr::TrustDomain => trust_domain_of(&c.id).map_or(Missing, Str),
            Attr::Attestation => Str(&c.attestation),
            Attr::Labels => present(!c.labels.is_empty()),
            Attr::Label(k) => opt(c.labels.get(&**k)),
            Attr::Image => present(c.image.is_some()),
            Attr::ImageDigest => opt(c.image.as_ref().and_then(|i| i.digest.as_ref())),
            Attr::ImageName => opt(c.image.as_ref().and_then(|i| i.name.as_ref())),
            Attr::Vulns => present(c.vulns.is_some()),
            Attr::Vuln(s) => c.vulns.as_ref().map_or(Missing, |v| {
                // Counts are far below 2^53, so the conversion is exact.
                #[allow(clippy::cast_precision_loss)]
                Num(match s {
                    Severity::Critical => v.critical,
                    Severity::High => v.high,
                    Severity::Medium => v.medium,
                    Severity::Low => v.low,
                    Severity::Unknown => v.unknown,
                } as f64)
            }),
            Attr::VulnsScanner => c.vulns.as_ref().map_or(Missing, |v| Str(&v.scanner)),
            Attr::VulnsReport => c.vulns.as_ref().map_or(Missing, |v| Str(&v.report)),
            Attr::VulnsScannedAt => opt(c.vulns.as_ref().and_then(|v| v.scanned_at.as_ref())),
            Attr::Cloud => present(c.cloud.is_some()),
            Attr::CloudField(f) => opt(c.cloud.as_ref().and_then(|cl| match f {
                CloudField::Provider => cl.provider.as_ref(),
                CloudField::Account => cl.account.as_ref(),
                CloudField::Project => cl.project.as_ref(),
                CloudField::Region => cl.region.as_ref(),
                CloudField::Zone => cl.zone.as_ref(),
                CloudField::Instance => cl.instance.as_ref(),
                CloudField::Image => cl.image.as_ref(),
                CloudField::InstanceType => cl.instance_type.as_ref(),
            })),
            Attr::CloudTags => present(c.cloud.as_ref().is_some_and(|cl| !cl.tags.is_empty())),
            Attr::CloudTag(k) => opt(c.cloud.as_ref().and_then(|cl| cl.tags.get(&**k))),
            Attr::K8s => present(c.k8s.is_some()),
            Attr::K8sField(f) => opt(c.k8s.as_ref().and_then(|k| match f {
                K8sField::Namespace => k.namespace.as_ref(),
                K8sField::ServiceAccount => k.service_account.as_ref(),
                K8sField::Pod => k.pod.as_ref(),
                K8sField::PodUid => k.pod_uid.as_ref(),
                K8sField::Node => k.node.as_ref(),
            })),
            Attr::K8sLabels => present(c.k8s.as_ref().is_some_and(|k| !k.labels.is_empty())),
            Attr::K8sLabel(key) => opt(c.k8s.as_ref().and_then(|k| k.labels.get(&**key))),
            Attr::K8sImages => present(c.k8s.as_ref().is_some_and(|k| !k.images.is_empty())),
            Attr::K8sImage(key) => opt(c.k8s.as_ref().and_then(|k| k.images.get(&**key))),
            Attr::Reported(path) => {
                let Some(map) = c.reported.as_ref() else {
                    return Missing;
                };
                let Some((first, rest)) = path.split_first() else {
                    return Compound;
                };
                let mut v = match map.get(&**first) {
                    Some(v) => v,
                    None => return Missing,
                };
                for key in rest {
                    v = match v.get(&**key) {
                        Some(v) => v,
                        None => return Missing,
                    };
                }
                json_value(v)
            }
        }
    }
}

fn present<'a>(yes: bool) -> AttrValue<'a> {
    if yes {
        AttrValue::Compound
    } else {
        AttrValue::Missing
    }
}

fn json_value(v: &serde_json::Value) -> AttrValue<'_> {
    use serde_json::Value as J;
    match v {
        J::Null => AttrValue::Missing,
        J::Bool(b) => AttrValue::Bool(*b),
        J::Number(n) => n.as_f64().map_or(AttrValue::Missing, AttrValue::Num),
        J::String(s) => AttrValue::Str(s),
        J::Array(_) | J::Object(_) => AttrValue::Compound,
    }
}

fn field_hint(section: &str, field: &str, all: &[&str]) -> String {
    let fields: Vec<&str> = all
        .iter()
        .filter_map(|p| p.strip_prefix(section)?.strip_prefix('.'))
        .collect();
    let prefixed: Vec<String> = fields.iter().map(|f| format!("{section}.{f}")).collect();
    let refs: Vec<&str> = prefixed.iter().map(String::as_str).collect();
    super::error::choices_hint(
        &format!("{section}.{field}"),
        &refs,
        &format!("`{section}` paths"),
    )
}

/// `td` of `spiffe://td/path`; `None` for anything else (claims are only
/// ever verified with a SPIFFE ID, so that is a claim set built by hand).
pub(crate) fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let domain = rest.split('/').next()?;
    (!domain.is_empty()).then_some(domain)
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::V => f.write_str("v"),
            Attr::Id => f.write_str("id"),
            Attr::TrustDomain => f.write_str("trust_domain"),
            Attr::Attestation => f.write_str("attestation"),
            Attr::Labels => f.write_str("labels"),
            Attr::Label(k) => write!(f, "labels.{k}"),
            Attr::Image => f.write_str("image"),
            Attr::ImageDigest => f.write_str("image.digest"),
            Attr::ImageName => f.write_str("image.name"),
            Attr::Vulns => f.write_str("vulns"),
            Attr::Vuln(s) => write!(f, "vulns.{}", format!("{s:?}").to_ascii_lowercase()),
            Attr::VulnsScanner => f.write_str("vulns.scanner"),
            Attr::VulnsReport => f.write_str("vulns.report"),
            Attr::VulnsScannedAt => f.write_str("vulns.scanned_at"),
            Attr::Cloud => f.write_str("cloud"),
            Attr::CloudField(CloudField::InstanceType) => f.write_str("cloud.instance_type"),
            Attr::CloudField(c) => write!(f, "cloud.{}", format!("{c:?}").to_ascii_lowercase()),
            Attr::CloudTags => f.write_str("cloud.tags"),
            Attr::CloudTag(k) => write!(f, "cloud.tags.{k}"),
            Attr::K8s => f.write_str("k8s"),
            Attr::K8sField(k) => f.write_str(match k {
                K8sField::Namespace => "k8s.namespace",
                K8sField::ServiceAccount => "k8s.service_account",
                K8sField::Pod => "k8s.pod",
                K8sField::PodUid => "k8s.pod_uid",
                K8sField::Node => "k8s.node",
            }),
            Attr::K8sLabels => f.write_str("k8s.labels"),
            Attr::K8sLabel(k) => write!(f, "k8s.labels.{k}"),
            Attr::K8sImages => f.write_str("k8s.images"),
            Attr::K8sImage(k) => write!(f, "k8s.images.{k}"),
            Attr::Reported(p) => {
                f.write_str("reported")?;
                for s in p {
                    write!(f, ".{s}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Cloud, K8s, Vulns};

    fn claims() -> AppIdClaims {
        let mut c = AppIdClaims::new("spiffe://td/ns/a/sa/web", "join_token");
        c.labels.insert("app".into(), "web".into());
        c.labels
            .insert("app.kubernetes.io/name".into(), "web-k".into());
        c.vulns = Some(Vulns {
            critical: 2,
            high: 1,
            scanner: "trivy".into(),
            report: "sha256:00".into(),
            ..Vulns::default()
        });
        let mut cloud = Cloud {
            provider: Some("aws".into()),
            ..Cloud::default()
        };
        cloud.tags.insert("env".into(), "prod".into());
        cloud.instance_type = Some("m5.large".into());
        c.cloud = Some(cloud);
        c.k8s = Some(K8s {
            namespace: Some("shop".into()),
            service_account: Some("web".into()),
            pod: Some("web-7d4b9c6f5-aaaaa".into()),
            pod_uid: Some("0f4e1a2b".into()),
            node: Some("node-1".into()),
            labels: [("app.kubernetes.io/version".into(), "1.4".into())].into(),
            images: [("web".into(), "sha256:cc".into())].into(),
        });
        c.reported =
            serde_json::from_str(r#"{"process":{"uid":1000,"root":false,"name":"x"}}"#).ok();
        c
    }

    #[test]
    fn every_path_reads_the_right_field() {
        let c = claims();
        let cases: &[(&str, AttrValue<'_>)] = &[
            ("v", AttrValue::Num(1.0)),
            ("id", AttrValue::Str("spiffe://td/ns/a/sa/web")),
            ("trust_domain", AttrValue::Str("td")),
            ("attestation", AttrValue::Str("join_token")),
            ("labels", AttrValue::Compound),
            ("labels.app", AttrValue::Str("web")),
            ("labels.app.kubernetes.io/name", AttrValue::Str("web-k")),
            ("labels.nope", AttrValue::Missing),
            ("image", AttrValue::Missing),
            ("image.digest", AttrValue::Missing),
            ("vulns.critical", AttrValue::Num(2.0)),
            ("vulns.medium", AttrValue::Num(0.0)),
            ("vulns.scanner", AttrValue::Str("trivy")),
            ("vulns.scanned_at", AttrValue::Missing),
            ("cloud.provider", AttrValue::Str("aws")),
            ("cloud.region", AttrValue::Missing),
            ("cloud.tags", AttrValue::Compound),
            ("cloud.tags.env", AttrValue::Str("prod")),
            ("cloud.instance_type", AttrValue::Str("m5.large")),
            ("k8s", AttrValue::Compound),
            ("k8s.namespace", AttrValue::Str("shop")),
            ("k8s.service_account", AttrValue::Str("web")),
            ("k8s.pod", AttrValue::Str("web-7d4b9c6f5-aaaaa")),
            ("k8s.pod_uid", AttrValue::Str("0f4e1a2b")),
            ("k8s.node", AttrValue::Str("node-1")),
            ("k8s.labels", AttrValue::Compound),
            (
                "k8s.labels.app.kubernetes.io/version",
                AttrValue::Str("1.4"),
            ),
            ("k8s.labels.app", AttrValue::Missing),
            ("k8s.images", AttrValue::Compound),
            ("k8s.images.web", AttrValue::Str("sha256:cc")),
            ("k8s.images.sidecar", AttrValue::Missing),
            ("reported", AttrValue::Compound),
            ("reported.process", AttrValue::Compound),
            ("reported.process.uid", AttrValue::Num(1000.0)),
            ("reported.process.root", AttrValue::Bool(false)),
            ("reported.process.name", AttrValue::Str("x")),
            ("reported.process.gid", AttrValue::Missing),
        ];
        for (path, want) in cases {
            let attr = Attr::parse(path).unwrap();
            assert_eq!(attr.get(&c), *want, "{path}");
            assert_eq!(attr.to_string(), *path);
        }
    }

    #[test]
    fn unknown_paths_name_the_valid_ones() {
        let e = Attr::parse("vulns.crit").unwrap_err();
        assert!(e.contains("did you mean `vulns.critical`?"), "{e}");
        let e = Attr::parse("lables.app").unwrap_err();
        assert!(e.contains("did you mean `labels`?"), "{e}");
        assert!(e.contains("`labels.<key>`"), "{e}");
        assert!(Attr::parse("labels.").is_err());
        assert!(Attr::parse("reported..x").is_err());
        assert!(Attr::parse("cloud.nope").is_err());
        let e = Attr::parse("k8s.namespaces").unwrap_err();
        assert!(e.contains("`k8s.namespace`"), "{e}");
        assert!(Attr::parse("k8s.labels.").is_err());
        assert!(Attr::parse("k8s.images.").is_err());
        // A claims document without `k8s` matches no `k8s.*` path.
        let bare = AppIdClaims::new("spiffe://td/x", "join_token");
        for path in ["k8s", "k8s.namespace", "k8s.labels.app", "k8s.images.web"] {
            assert_eq!(Attr::parse(path).unwrap().get(&bare), AttrValue::Missing);
        }
    }
}
