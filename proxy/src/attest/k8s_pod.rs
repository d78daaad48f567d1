//! The pod behind a projected service-account token, as the API server
//! describes it: what the authority checks and vouches for when it is run
//! with `--k8s-api` (SPIRE's `k8s_psat` attestor does the same lookup).
//!
//! The token says "pod P (uid U) of service account S in namespace N"; the
//! authority then reads `GET /api/v1/namespaces/N/pods/P` and checks, in
//! order: the answer is at most [`MAX_POD_BYTES`] and a Pod; its name and
//! namespace are P and N; `metadata.uid` is U (a pod deleted and re-created
//! under the same name is another pod); `spec.serviceAccountName` is S;
//! `spec.nodeName` is the token's node, when the token names one; and
//! `status.phase` is `Pending` or `Running` (a finished pod needs no
//! certificate). Then it vouches for:
//!
//! - `k8s.node`: `spec.nodeName`;
//! - `k8s.labels.<key>`: the pod's labels whose keys the authority was told
//!   to trust (`--k8s-trust-labels`; whoever may create pods in the
//!   namespace chooses every label, so trust is opt-in, key by key);
//! - `k8s.images.<container>`: the image digest of each container that runs
//!   beside the app (module `containers` decides which, and what each
//!   runs): the app's containers, appid's own `appid-proxy`, init
//!   containers until they have ended well, ephemeral (`kubectl debug`)
//!   containers for the pod's life. The digest is the kubelet's
//!   (`status.*ContainerStatuses[].imageID`, `<repo>@sha256:<hex>`, what it
//!   pulled) for a container that runs or ran, else the one the spec pins
//!   (`<repo>@sha256:<hex>`: the kubelet will run exactly that); when both
//!   are known and differ (an image changed in place), none. The sidecar
//!   is a native sidecar and attests before the app containers start, so at
//!   first attestation only a digest-pinned spec gives a digest; renewals
//!   see the running ones. A bare `sha256:<hex>` imageID (a local image
//!   without a registry digest) and a tag-only spec give none.
//!
//! `image.digest` and `vulns` describe the app, so they are vouched for only
//! when every app container runs one known image ([`AppImage`]). Which
//! containers are appid's own is the one judgment here that a pod's author
//! could steer: the names `appid-proxy`/`appid-init` are anyone's to use.
//! Trusted by name alone ([`AppidContainers::ByName`]), a pod could run any
//! image under appid's name beside a clean decoy, and the decoy's scan would
//! vouch for the pod. With `serve --k8s-appid-digests`
//! ([`AppidContainers::ByDigest`]) a container is appid's only when it also
//! runs one of appid's digests, as `appid inject` writes it (no `command`,
//! environment, volume, exec probe or hook that could make appid's image,
//! which has a shell, run other code); any other is an app container like
//! the rest.
//!
//! Pure: bytes and expectations in, facts or a typed reason naming the pod
//! out; the HTTP request is the authority's business.

use std::collections::BTreeMap;

use serde::Deserialize;

use appid_policy::claims::K8s;

mod containers;
use containers::{ContainerStatus, SpecContainer};

/// The largest pod object accepted from the API server. Real pods are a
/// few KiB (most of it `managedFields`); this leaves room for large ones
/// while bounding what a misbehaving server can make the authority hold.
pub const MAX_POD_BYTES: usize = 512 * 1024;

/// appid's own containers: never an app container.
const APPID_CONTAINERS: [&str; 2] = [
    crate::inject::PROXY_CONTAINER,
    crate::inject::INIT_CONTAINER,
];

/// How appid's own containers are told from the app's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AppidContainers {
    /// By name alone (`appid-proxy`, `appid-init`): whatever such a
    /// container runs is listed but never taken for the app.
    #[default]
    ByName,
    /// By name, digest and shape (`serve --k8s-appid-digests`): a
    /// container with appid's name that runs none of these digests (or one
    /// not known yet), or whose spec could make it run other code than
    /// appid (a `command`, foreign environment, mounts, exec probes or
    /// hooks), is an app container.
    ByDigest(std::collections::BTreeSet<String>),
}

impl AppidContainers {
    /// Whether `container`, running `digest`, is appid's own.
    fn is_appid(&self, container: &SpecContainer, digest: Option<&str>) -> bool {
        APPID_CONTAINERS.contains(&container.name.as_str())
            && match self {
                AppidContainers::ByName => true,
                AppidContainers::ByDigest(digests) => {
                    digest.is_some_and(|d| digests.contains(d)) && container.runs_only_appid()
                }
            }
    }
}

/// What a checked pod's app containers run: the image `image.digest` and
/// the scan behind `vulns` may vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppImage {
    /// Every app container runs this digest (usually there is one).
    One(String),
    /// No app container, several images, or one whose digest is not known
    /// yet: no one image (and no one scan) describes what the pod runs.
    NotOne,
}

/// What the token says the pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: &'a str,
    pub pod_uid: &'a str,
    /// The token's node (Kubernetes 1.30+), or the one vouched for before.
    pub node: Option<&'a str>,
}

impl PodRef<'_> {
    /// `namespace/name`, as errors name the pod.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// The facts of a checked pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub node: Option<String>,
    /// Only the trusted keys.
    pub labels: BTreeMap<String, String>,
    /// App container name to `sha256:<64 hex>`.
    pub images: BTreeMap<String, String>,
    /// App containers for which no digest is known yet.
    pub without_digest: Vec<String>,
    /// appid's own containers that run beside the app (its proxy, a native
    /// sidecar), to their digests (or [`UNKNOWN_DIGEST`]): listed in
    /// `k8s.images` too, never the app's image ([`AppidContainers`] says
    /// which containers these are).
    pub appid_images: BTreeMap<String, String>,
}

/// Why the pod does not back the token (each names the pod).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PodError {
    #[error(
        "pod {pod}: the API server's answer is larger than {max} bytes; the authority refuses it (is --k8s-api the cluster's API server?)"
    )]
    TooLarge { pod: String, max: usize },
    #[error(
        "pod {pod}: the API server's answer is not a usable Pod: {field} ({detail}); is --k8s-api the cluster's API server?"
    )]
    Malformed {
        pod: String,
        field: &'static str,
        detail: String,
    },
    #[error(
        "pod {pod}: its metadata.uid is {api}, but the token was issued to pod uid {token}: the pod was deleted and re-created under the same name; the new pod's sidecar must attest with its own token"
    )]
    UidMismatch {
        pod: String,
        api: String,
        token: String,
    },
    #[error(
        "pod {pod}: its spec.serviceAccountName is {api:?}, but the token is for service account {token}"
    )]
    ServiceAccountMismatch {
        pod: String,
        api: String,
        token: String,
    },
    #[error("pod {pod}: its spec.nodeName is {api:?}, but the token was issued on node {token}")]
    NodeMismatch {
        pod: String,
        api: String,
        token: String,
    },
    #[error(
        "pod {pod}: its status.phase is {phase:?}; only Pending or Running pods get certificates"
    )]
    Phase { pod: String, phase: String },
    #[error(
        "pod {pod}: the registration pins image {pinned}, but the pod runs {running}; deploy the registered image, or re-register with --image-digest of the image it should run"
    )]
    DigestMismatch {
        pod: String,
        pinned: String,
        running: String,
    },
    #[error(
        "pod {pod}: the registration pins image {pinned}, but no image digest is known for container(s) {containers}: they have not started and their spec names the image by tag; reference the image by digest (image: <repo>@{pinned})"
    )]
    NoDigest {
        pod: String,
        pinned: String,
        containers: String,
    },
}

impl PodError {
    /// A short stable code for audit lines.
    pub fn code(&self) -> &'static str {
        match self {
            PodError::TooLarge { .. } => "pod_too_large",
            PodError::Malformed { .. } => "pod_malformed",
            PodError::UidMismatch { .. } => "pod_uid_mismatch",
            PodError::ServiceAccountMismatch { .. } => "pod_service_account_mismatch",
            PodError::NodeMismatch { .. } => "pod_node_mismatch",
            PodError::Phase { .. } => "pod_phase",
            PodError::DigestMismatch { .. } => "pod_image_mismatch",
            PodError::NoDigest { .. } => "pod_no_image_digest",
        }
    }
}

#[derive(Deserialize)]
struct Kind {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Option<Metadata>,
    spec: Option<Spec>,
    status: Option<Status>,
}

#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    service_account_name: Option<String>,
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<SpecContainer>,
    #[serde(default)]
    init_containers: Vec<SpecContainer>,
    /// Added to a running pod (`kubectl debug`): they share its network,
    /// and stay in the spec after they exit.
    #[serde(default)]
    ephemeral_containers: Vec<SpecContainer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    #[serde(default)]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

/// What `k8s.images` says of a container that runs but whose digest the
/// API server does not report yet.
pub const UNKNOWN_DIGEST: &str = "unknown";

/// Whether `digest` is `sha256:<64 lowercase hex>`.
pub fn registry_digest_form(digest: &str) -> bool {
    registry_digest(&format!("@{digest}")).is_some()
}

/// `sha256:<64 lowercase hex>` from an image reference or imageID that
/// names a registry digest (`…@sha256:<hex>`).
pub fn registry_digest(reference: &str) -> Option<String> {
    let (_, hex) = reference.rsplit_once("@sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| format!("sha256:{hex}"))
}

/// Checks the API server's answer for the pod `expect` names; the facts to
/// vouch for, with only the labels in `trust_labels`.
pub fn check_pod(
    body: &[u8],
    expect: &PodRef<'_>,
    trust_labels: &[String],
    appid: &AppidContainers,
) -> Result<PodFacts, PodError> {
    let pod = || expect.display();
    if body.len() > MAX_POD_BYTES {
        return Err(PodError::TooLarge {
            pod: pod(),
            max: MAX_POD_BYTES,
        });
    }
    let malformed = |field: &'static str, detail: String| PodError::Malformed {
        pod: pod(),
        field,
        detail,
    };
    // The kind first: a `Status` (an error answer) is not a Pod-shaped object.
    let kind: Kind = serde_json::from_slice(body).map_err(|e| malformed("JSON", e.to_string()))?;
    if kind.kind.as_deref() != Some("Pod") {
        return Err(malformed(
            "kind",
            format!("{:?}, expected \"Pod\"", kind.kind.as_deref().unwrap_or("")),
        ));
    }
    let object: Pod = serde_json::from_slice(body).map_err(|e| malformed("JSON", e.to_string()))?;
    let metadata = object
        .metadata
        .ok_or_else(|| malformed("metadata", "missing".into()))?;
    if metadata.name.as_deref() != Some(expect.pod)
        || metadata.namespace.as_deref() != Some(expect.namespace)
    {
        return Err(malformed(
            "metadata.name/namespace",
            format!(
                "{}/{}, not the pod asked for",
                metadata.namespace.as_deref().unwrap_or("?"),
                metadata.name.as_deref().unwrap_or("?")
            ),
        ));
    }
    let uid = metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| malformed("metadata.uid", "missing".into()))?;
    if uid != expect.pod_uid {
        return Err(PodError::UidMismatch {
            pod: pod(),
            api: uid,
            token: expect.pod_uid.to_owned(),
        });
    }
    let spec = object
        .spec
        .ok_or_else(|| malformed("spec", "missing".into()))?;
    let account = spec.service_account_name.unwrap_or_default();
    if account != expect.service_account {
        return Err(PodError::ServiceAccountMismatch {
            pod: pod(),
            api: account,
            token: expect.service_account.to_owned(),
        });
    }
    let node = spec.node_name.filter(|n| !n.is_empty());
    if let (Some(token), Some(api)) = (expect.node, node.as_deref())
        && token != api
    {
        return Err(PodError::NodeMismatch {
            pod: pod(),
            api: api.to_owned(),
            token: token.to_owned(),
        });
    }
    let status = object
        .status
        .ok_or_else(|| malformed("status", "missing".into()))?;
    match status.phase.as_deref() {
        Some("Pending" | "Running") => {}
        other => {
            return Err(PodError::Phase {
                pod: pod(),
                phase: other.unwrap_or("(none)").to_owned(),
            });
        }
    }

    let statuses: BTreeMap<&str, &ContainerStatus> = status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .chain(&status.ephemeral_container_statuses)
        .flatten()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let status_of = |c: &SpecContainer| statuses.get(c.name.as_str()).copied();
    let mut facts = PodFacts {
        node: node.or_else(|| expect.node.map(str::to_owned)),
        ..PodFacts::default()
    };
    // Every container that runs beside the app: its containers, whatever
    // their names; its init containers but those that have ended well
    // (appid's own proxy is a native sidecar, its redirect has ended; the
    // pod's own init containers start after appid's proxy, with its
    // identity); and every ephemeral container, running or exited (what
    // one ran beside the app may have changed it: it is never appid's, and
    // stays an app container for the pod's life). Nothing that runs in the
    // pod goes unlisted.
    let init = spec
        .init_containers
        .iter()
        .filter(|c| c.init_runs_beside_app(status_of(c)));
    let may_be_appid = spec.containers.iter().chain(init).map(|c| (c, true));
    let ephemeral = spec.ephemeral_containers.iter().map(|c| (c, false));
    for (container, may_be_appid) in may_be_appid.chain(ephemeral) {
        let digest = container.digest(status_of(container));
        let name = container.name.clone();
        match digest {
            _ if may_be_appid && appid.is_appid(container, digest.as_deref()) => {
                let digest = digest.unwrap_or_else(|| UNKNOWN_DIGEST.to_owned());
                facts.appid_images.insert(name, digest);
            }
            Some(digest) => {
                facts.images.insert(name, digest);
            }
            None => facts.without_digest.push(name),
        }
    }
    let labels = metadata.labels.unwrap_or_default();
    for key in trust_labels {
        if let Some(value) = labels.get(key) {
            facts.labels.insert(key.clone(), value.clone());
        }
    }
    Ok(facts)
}

/// Refuses a pod that does not run the digest its registration pins: the
/// pinned digest must be one of its app containers' (a pod with several
/// app containers lists them all under `k8s.images`, for policy to pin).
pub fn check_pinned(facts: &PodFacts, pod: &PodRef<'_>, pinned: &str) -> Result<(), PodError> {
    if facts.images.values().any(|d| d == pinned) {
        return Ok(());
    }
    if !facts.without_digest.is_empty() {
        return Err(PodError::NoDigest {
            pod: pod.display(),
            pinned: pinned.to_owned(),
            containers: facts.without_digest.join(", "),
        });
    }
    let running = if facts.images.is_empty() {
        "no app container".to_owned()
    } else {
        facts
            .images
            .iter()
            .map(|(name, digest)| format!("{name}={digest}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(PodError::DigestMismatch {
        pod: pod.display(),
        pinned: pinned.to_owned(),
        running,
    })
}

impl PodFacts {
    /// Adds the API server's facts to the token's `k8s` claims. A
    /// container whose digest the API server does not report yet is
    /// listed as [`UNKNOWN_DIGEST`]: it runs, and no single digest may be
    /// vouched for the pod while it does.
    pub fn vouch(self, claims: &mut K8s) {
        if self.node.is_some() {
            claims.node = self.node;
        }
        claims.labels = self.labels;
        claims.images = self.images;
        claims.images.extend(self.appid_images);
        for name in self.without_digest {
            claims.images.insert(name, UNKNOWN_DIGEST.to_owned());
        }
    }

    /// What the app containers run: one known image, or not one.
    pub fn app_image(&self) -> AppImage {
        let mut digests = self.images.values();
        match (digests.next(), self.without_digest.is_empty()) {
            (Some(first), true) if digests.all(|d| d == first) => AppImage::One(first.clone()),
            _ => AppImage::NotOne,
        }
    }
}

/// Checks a `--k8s-trust-labels` key as Kubernetes writes label keys
/// (`[prefix/]name`); the reason, if it is not one.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a Kubernetes label key ([prefix/]name: name of letters, digits, '-', '_', '.', at most 63)"
        ))
    }
}

#[cfg(test)]
mod tests;
