//! `appid inject`: Kubernetes YAML in, the same YAML with the sidecar out.
//!
//! Design bias: *edit the text, never re-serialize it*. A manifest is
//! something people diff, review and keep comments in, and every Rust YAML
//! library that round-trips through a data model (serde-saphyr, saphyr's
//! emitter) drops comments and rewrites quoting and layout. So the input is
//! parsed only to learn *where* things are (byte spans from granit-parser,
//! the parser under serde-saphyr), and the output is the input with a few
//! ranges replaced: our items are put first in `initContainers` and
//! `volumes` (or those keys are added right before `containers`). Every
//! other byte (comments, key order, quoting, anchors, blank lines, `---`
//! separators, empty documents, documents of other kinds) is copied as is.
//!
//! What is added to each workload's pod spec:
//! - `appid-init`: runs `appid redirect install` as root with only
//!   NET_ADMIN and NET_RAW, then exits;
//! - `appid-proxy`: the sidecar as a *native sidecar* (an init container
//!   with `restartPolicy: Always`) right after it and before the pod's own
//!   init containers, so they and the app start after the proxy is ready
//!   (its startup probe passed); it runs as the excluded uid 1337, and its
//!   probes are `httpGet` on its health listener (port 15191, the pod IP);
//! - the volumes `appid-config` (ConfigMap `appid-sidecar`, holding
//!   `proxy.yaml` and the policy), `appid-identity` (a projected
//!   service-account token for the authority, audience `appid-authority`:
//!   each pod proves itself, no token is shared) and `appid-run` (emptyDir,
//!   where the sidecar keeps its identity across container restarts).
//!
//! - on the pod template's metadata, the annotations `appid.dev/status`
//!   (what was injected, by which appid version) and Prometheus's
//!   `prometheus.io/scrape|port|path` for the health listener's `/metrics`
//!   (unless the pod has `prometheus.io/*` annotations of its own: those are
//!   left alone, with a warning).
//!
//! The app containers' `httpGet` and `tcpSocket` probes are pointed at the
//! health listener, their targets handed to the sidecar in its environment
//! (see `probes.rs`; `appid.dev/rewrite-probes: "false"` turns that off).
//!
//! Idempotent by construction: existing `appid-init`/`appid-proxy`
//! containers and `appid-*` volumes are recognized by name and replaced by
//! freshly generated ones (so re-running after changing the annotations
//! updates them), always at the same place, with the list's own
//! indentation: `inject(inject(x)) == inject(x)` byte for byte.
//!
//! Workloads: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob, also as the `items` of a `kind: List`. A workload is left as it
//! is, and counted as skipped, when `appid.dev/inject: "false"` is on its
//! metadata or its pod template's, when it uses `hostNetwork: true` (read as
//! Kubernetes reads YAML 1.1, so `yes` and `on` count: see `yaml11.rs`), or
//! when its layout cannot be edited or checked safely (an alias, tag or
//! merge key in the pod spec, say); the latter two with a warning.
//!
//! Capture lets the sidecar's uid through, so a container of the pod that
//! runs as it is refused, and one that could become it or get under the
//! rules (root, NET_RAW, NET_ADMIN, ...) is warned about: see `bypass.rs`.

mod annotate;
mod bypass;
mod edit;
mod emit;
mod probes;
mod spec;
mod tree;
mod yaml11;

use std::fmt;

use edit::{Edit, Slot};
use emit::Layout;
use tree::{Kind, Node};
use yaml11::Value;

/// The sidecar's uid and gid: its own traffic is never redirected.
pub const PROXY_UID: u32 = 1337;
/// The sidecar's transparent inbound port.
pub const INBOUND_PORT: u16 = 15106;
/// The sidecar's transparent outbound port.
pub const OUTBOUND_PORT: u16 = 15101;
/// The sidecar's admin API (loopback only).
pub const ADMIN_PORT: u16 = 15190;
/// The sidecar's health listener on the pod IP: `/live`, `/ready`,
/// `/metrics` and the app's rewritten probes, `/app-health/...`.
pub const HEALTH_PORT: u16 = 15191;
/// The authority's API port (the redirect leaves it alone inbound).
pub const AUTHORITY_PORT: u16 = 15170;
/// The init container that installs the redirect.
pub const INIT_CONTAINER: &str = "appid-init";
/// The sidecar (a native sidecar init container).
pub const PROXY_CONTAINER: &str = "appid-proxy";
/// The volume with the sidecar configuration and policy.
pub const VOLUME_CONFIG: &str = "appid-config";
/// The volume with the identity bootstrap.
pub const VOLUME_IDENTITY: &str = "appid-identity";
/// The sidecar's runtime state.
pub const VOLUME_RUN: &str = "appid-run";
/// The ConfigMap mounted at `/etc/appid`.
pub const CONFIG_MAP: &str = "appid-sidecar";
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/appid";
/// Where the sidecar reads its configuration (ConfigMap key `proxy.yaml`).
pub const CONFIG_PATH: &str = "/etc/appid/proxy.yaml";
/// The policy (ConfigMap key `policy.yaml`).
pub const POLICY_PATH: &str = "/etc/appid/policy.yaml";
/// The trust bundle (ConfigMap key `ca.pem`).
pub const BUNDLE_PATH: &str = "/etc/appid/ca.pem";
/// Where the projected service-account token volume is mounted.
pub const IDENTITY_DIR: &str = "/var/run/appid/identity";
/// The projected token itself.
pub const TOKEN_PATH: &str = "/var/run/appid/identity/token";
/// The `emptyDir` for the sidecar's runtime state.
pub const RUN_DIR: &str = "/var/run/appid/run";
/// Where the sidecar keeps its identity across container restarts.
pub const STATE_DIR: &str = "/var/run/appid/run/state";
/// The audience of the projected token: what the authority's
/// `--k8s-audience` must be.
pub const TOKEN_AUDIENCE: &str = "appid-authority";
/// The sidecar's environment variable with the app's original probes.
pub const APP_PROBES_ENV: &str = "APPID_APP_PROBES";

/// `"false"` turns injection off for a workload.
pub const ANNOTATION_INJECT: &str = "appid.dev/inject";
/// Inbound ports left alone by the redirect, comma-separated.
pub const ANNOTATION_EXCLUDE_INBOUND: &str = "appid.dev/exclude-inbound-ports";
/// Outbound destination ports left alone by the redirect, comma-separated.
pub const ANNOTATION_EXCLUDE_OUTBOUND: &str = "appid.dev/exclude-outbound-ports";
/// `"false"` leaves the app's probes as they are.
pub const ANNOTATION_REWRITE_PROBES: &str = "appid.dev/rewrite-probes";
/// What appid injected (JSON), on the pod template.
pub const ANNOTATION_STATUS: &str = "appid.dev/status";
/// The Prometheus scrape annotations put on the pod template, pointing at
/// the health listener's `/metrics` (unless the pod already has its own).
pub const PROMETHEUS_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15191"),
    ("prometheus.io/path", "/metrics"),
];

/// The image both containers run, by default: `appid/appid:<version>`.
pub fn default_image() -> String {
    format!("appid/appid:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// The image of `appid-init` and `appid-proxy`.
    pub image: String,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: default_image(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOutput {
    /// The edited YAML.
    pub yaml: String,
    /// One line each: a workload skipped for a reason worth telling.
    pub warnings: Vec<String>,
    /// Workloads that now carry the sidecar (re-injected ones included).
    pub injected: usize,
    /// Workloads left as they were.
    pub skipped: usize,
}

/// Which document, and which object in it (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based index of the document in the stream.
    pub document: usize,
    /// `Deployment "web"` (with `items[N]` inside a List).
    pub object: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} ({})", self.document, self.object)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("line {line}, column {column}: not valid YAML: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{location}, line {line}: annotation {annotation}: {reason}")]
    Annotation {
        location: Location,
        line: usize,
        annotation: String,
        reason: String,
    },
    #[error("{location}, line {line}: {message}")]
    Structure {
        location: Location,
        line: usize,
        message: String,
    },
    #[error("--image `{image}`: {reason}")]
    Image { image: String, reason: String },
}

/// Injects the sidecar into every workload of a multi-document YAML
/// stream. Pure: no I/O.
pub fn inject(input: &str, options: &InjectOptions) -> Result<InjectOutput, InjectError> {
    check_image(&options.image)?;
    let documents = tree::parse(input).map_err(|e| InjectError::Syntax {
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let nl = match input.find('\n') {
        Some(i) if i > 0 && input.as_bytes().get(i - 1) == Some(&b'\r') => "\r\n",
        _ => "\n",
    };
    let mut run = Run {
        input,
        nl,
        image: &options.image,
        edits: Vec::new(),
        warnings: Vec::new(),
        injected: 0,
        skipped: 0,
    };
    for (index, document) in documents.iter().enumerate() {
        run.object(index + 1, &document.root, None)?;
    }
    let Run {
        edits,
        warnings,
        injected,
        skipped,
        ..
    } = run;
    // Each workload's edits were checked on their own and workloads do not
    // overlap, so this cannot fail; if it ever did, refuse rather than
    // write something half-edited.
    let yaml = edit::apply(input, edits).ok_or_else(|| InjectError::Structure {
        location: Location {
            document: 0,
            object: "stream".into(),
        },
        line: 0,
        message: "internal error: overlapping edits; nothing was written".into(),
    })?;
    Ok(InjectOutput {
        yaml,
        warnings,
        injected,
        skipped,
    })
}

fn check_image(image: &str) -> Result<(), InjectError> {
    let reason = if image.is_empty() {
        Some("is empty")
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains white space or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InjectError::Image {
            image: image.escape_debug().to_string(),
            reason: format!("{reason}; give an image reference like registry.example/appid:1.0"),
        }),
        None => Ok(()),
    }
}

struct Run<'a> {
    input: &'a str,
    nl: &'static str,
    image: &'a str,
    edits: Vec<Edit>,
    warnings: Vec<String>,
    injected: usize,
    skipped: usize,
}

/// Where each workload kind keeps its pod template, and the API groups it
/// lives in.
fn template_path(kind: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    const APPS: &[&str] = &["apps", "extensions"];
    match kind {
        "Pod" => Some((&[], &[""])),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            Some((&["spec", "template"], APPS))
        }
        "Job" => Some((&["spec", "template"], &["batch"])),
        "CronJob" => Some((&["spec", "jobTemplate", "spec", "template"], &["batch"])),
        _ => None,
    }
}

/// Why a pod with `hostNetwork` is not injected: `appid-init` would
/// rewrite the *node's* nat table. Read as Kubernetes reads it (YAML 1.1:
/// `yes`, `on`, `Y` are true too); an alias or tag there skips the
/// workload as well, a quoted or other non-boolean value is refused.
fn host_network(pod: &Node, location: &Location) -> Result<Option<String>, InjectError> {
    let Some(node) = get(pod, "hostNetwork", location)? else {
        return Ok(None);
    };
    let text = node.scalar().unwrap_or_default();
    match yaml11::bool(node) {
        Value::Null | Value::Is(false) => Ok(None),
        Value::Is(true) => {
            let spelled = if text == "true" {
                String::new()
            } else {
                format!(", written `{text}`,")
            };
            Ok(Some(format!(
                "hostNetwork: true{spelled} (the redirect would capture the node's traffic)"
            )))
        }
        Value::Unresolved(kind) => Ok(Some(format!(
            "line {}: hostNetwork is {kind}, which the injector does not resolve (the pod may \
             use the node's network); write true or false",
            node.line
        ))),
        Value::Wrong => Err(InjectError::Structure {
            location: location.clone(),
            line: node.line,
            message: format!(
                "hostNetwork: `{}` is not true or false as Kubernetes reads YAML (a quoted \
                 value is a string), so the API server would refuse the pod; write true or false",
                text.escape_debug()
            ),
        }),
    }
}

/// The single value of `key` in a mapping (two is an error).
fn get<'n>(map: &'n Node, key: &str, location: &Location) -> Result<Option<&'n Node>, InjectError> {
    let mut found = map.get_all(key);
    let first = found.next();
    if let Some((dup, _)) = found.next() {
        return Err(InjectError::Structure {
            location: location.clone(),
            line: dup.line,
            message: format!("duplicate key `{key}`; remove one of them"),
        });
    }
    Ok(first.map(|(_, v)| v))
}

fn object_label(obj: &Node, kind: &str) -> String {
    let metadata = obj.get_all("metadata").next().map(|(_, v)| v);
    let field = |name: &str| {
        metadata
            .and_then(|m| m.get_all(name).next())
            .and_then(|(_, v)| v.scalar())
            .map(str::to_owned)
    };
    let kind = if kind.is_empty() { "object" } else { kind };
    match (field("name"), field("generateName")) {
        (Some(name), _) => format!("{kind} \"{name}\""),
        (None, Some(prefix)) => format!("{kind} \"{prefix}*\""),
        (None, None) => format!("{kind} (no name)"),
    }
}

enum Verdict {
    Inject,
    Skip(Option<String>),
}

impl Run<'_> {
    fn object(
        &mut self,
        document: usize,
        obj: &Node,
        item: Option<usize>,
    ) -> Result<(), InjectError> {
        if !matches!(obj.kind, Kind::Map { .. }) {
            return Ok(());
        }
        let kind = obj
            .get_all("kind")
            .next()
            .and_then(|(_, v)| v.scalar())
            .unwrap_or("")
            .to_owned();
        let mut location = Location {
            document,
            object: object_label(obj, &kind),
        };
        if let Some(i) = item {
            location.object = format!("items[{i}]: {}", location.object);
        }
        get(obj, "kind", &location)?;

        if item.is_none() && kind.ends_with("List") {
            if let Some(items) = get(obj, "items", &location)?.and_then(Node::items) {
                for (i, member) in items.iter().enumerate() {
                    self.object(document, member, Some(i))?;
                }
            }
            return Ok(());
        }
        let Some((path, groups)) = template_path(&kind) else {
            return Ok(());
        };
        if let Some(api) = get(obj, "apiVersion", &location)?.and_then(Node::scalar) {
            let group = api.rsplit_once('/').map_or("", |(g, _)| g);
            if !groups.contains(&group) {
                self.warnings.push(format!(
                    "{location}: apiVersion {api} is not the Kubernetes {kind}; passed through unchanged"
                ));
                return Ok(());
            }
        }
        match self.workload(obj, path, &location)? {
            Verdict::Inject => self.injected += 1,
            Verdict::Skip(reason) => {
                self.skipped += 1;
                if let Some(reason) = reason {
                    self.warnings
                        .push(format!("{location}: not injected: {reason}"));
                }
            }
        }
        Ok(())
    }

    fn workload(
        &mut self,
        obj: &Node,
        path: &[&str],
        location: &Location,
    ) -> Result<Verdict, InjectError> {
        // Down to the pod template.
        let mut template = obj;
        let mut walked = String::new();
        for step in path {
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(step);
            match get(template, step, location)? {
                Some(next) if matches!(next.kind, Kind::Map { .. }) => template = next,
                Some(next) if matches!(next.kind, Kind::Alias) => {
                    return Ok(Verdict::Skip(Some(format!("{walked} is a YAML alias"))));
                }
                _ => {
                    return Ok(Verdict::Skip(Some(format!(
                        "{walked} is missing or not a mapping"
                    ))));
                }
            }
        }
        let pod_meta = get(template, "metadata", location)?;
        let pod = match get(template, "spec", location)? {
            Some(pod) if matches!(pod.kind, Kind::Map { .. }) => pod,
            Some(pod) if matches!(pod.kind, Kind::Alias) => {
                return Ok(Verdict::Skip(Some("the pod spec is a YAML alias".into())));
            }
            _ => return Ok(Verdict::Skip(Some("no pod spec".into()))),
        };

        // Annotations: the pod template's win over the workload's.
        let mut sources = Vec::new();
        if let Some(meta) = pod_meta {
            sources.push(meta);
        }
        if let Some(meta) = get(obj, "metadata", location)?
            && !std::ptr::eq(meta, pod_meta.unwrap_or(obj))
        {
            sources.push(meta);
        }
        let mut annotations: Vec<&Node> = Vec::new();
        for meta in sources {
            match get(meta, "annotations", location)? {
                Some(a) if matches!(a.kind, Kind::Map { .. }) => annotations.push(a),
                Some(a) if !a.is_null() => {
                    return Err(InjectError::Structure {
                        location: location.clone(),
                        line: a.line,
                        message: "metadata.annotations is not a mapping".into(),
                    });
                }
                _ => {}
            }
        }
        // `"true"` or `"false"`: every source must be valid; each returned
        // in order (the pod template's first).
        let switch = |name: &str| -> Result<Vec<bool>, InjectError> {
            let mut found = Vec::new();
            for a in &annotations {
                if let Some((text, line)) = annotation(a, name, location)? {
                    found.push(
                        parse_switch(&text).map_err(|reason| InjectError::Annotation {
                            location: location.clone(),
                            line,
                            annotation: name.into(),
                            reason,
                        })?,
                    );
                }
            }
            Ok(found)
        };
        if switch(ANNOTATION_INJECT)?.contains(&false) {
            return Ok(Verdict::Skip(None));
        }
        let rewrite_probes = switch(ANNOTATION_REWRITE_PROBES)?
            .first()
            .copied()
            .unwrap_or(true);
        let exclude = |name: &str| -> Result<Vec<u16>, InjectError> {
            // The first source that has it (the pod template's) wins, but
            // every source must be valid.
            let mut chosen = None;
            for a in &annotations {
                if let Some((text, line)) = annotation(a, name, location)? {
                    let ports = parse_ports(&text).map_err(|reason| InjectError::Annotation {
                        location: location.clone(),
                        line,
                        annotation: name.into(),
                        reason,
                    })?;
                    chosen.get_or_insert(ports);
                }
            }
            Ok(chosen.unwrap_or_default())
        };
        let exclude_inbound = exclude(ANNOTATION_EXCLUDE_INBOUND)?;
        let exclude_outbound = exclude(ANNOTATION_EXCLUDE_OUTBOUND)?;

        if let Some(reason) = host_network(pod, location)? {
            return Ok(Verdict::Skip(Some(reason)));
        }
        let entries = pod.entries().unwrap_or_default();
        if entries.iter().any(|(k, _)| k.scalar() == Some("<<")) {
            return Ok(Verdict::Skip(Some(
                "the pod spec uses a YAML merge key (<<)".into(),
            )));
        }
        let bypass_warnings = match bypass::check(pod, location)? {
            bypass::Verdict::Warnings(warnings) => warnings,
            bypass::Verdict::Skip(reason) => return Ok(Verdict::Skip(Some(reason))),
        };
        let containers = get(pod, "containers", location)?;
        let Some(anchor) = entries
            .iter()
            .position(|(k, _)| k.scalar() == Some("containers"))
        else {
            return Ok(Verdict::Skip(Some("the pod spec has no containers".into())));
        };

        // Copy the manifest's own list indentation (`containers:` then
        // `- name` at the same column, or two further right).
        let seq_offset = containers
            .zip(entries.get(anchor))
            .and_then(|(c, (key, _))| edit::list_offset(self.input, key, c))
            .unwrap_or(2)
            .min(8);
        let layout = Layout {
            nl: self.nl,
            seq_offset,
        };
        let probes = probes::rewrite(self.input, layout, pod, rewrite_probes);
        let app_probes = probes.env_value();
        let params = spec::Params {
            image: self.image,
            exclude_inbound: &exclude_inbound,
            exclude_outbound: &exclude_outbound,
            app_probes: app_probes.as_deref(),
        };
        let containers = [
            spec::init_container(&params),
            spec::proxy_container(&params),
        ];
        let volumes = spec::volumes();
        let ours_container =
            |n: &Node| named(n).is_some_and(|name| spec::INIT_CONTAINERS.contains(&name));
        let ours_volume = |n: &Node| named(n).is_some_and(|name| spec::VOLUMES.contains(&name));
        let slots = [
            Slot {
                key: "volumes",
                items: &volumes,
                is_ours: &ours_volume,
            },
            Slot {
                key: "initContainers",
                items: &containers,
                is_ours: &ours_container,
            },
        ];
        let mut edits = probes.edits;
        let mut warnings: Vec<String> = probes
            .warnings
            .into_iter()
            .map(|w| format!("{location}: {w}"))
            .collect();
        warnings.extend(bypass_warnings);
        for slot in &slots {
            match edit::slot_edits(self.input, layout, pod, anchor, slot) {
                Ok(more) => edits.extend(more),
                Err(reason) => return Ok(Verdict::Skip(Some(reason))),
            }
        }
        let (values, warning) = pod_annotations(template);
        warnings.extend(warning.map(|w| format!("{location}: {w}")));
        match annotate::set(self.input, layout, template, &values) {
            Ok(more) => edits.extend(more),
            Err(reason) => return Ok(Verdict::Skip(Some(reason))),
        }
        if !edit::disjoint(&edits) {
            return Ok(Verdict::Skip(Some(
                "the pod spec layout is too unusual to edit".into(),
            )));
        }
        self.edits.extend(edits);
        self.warnings.extend(warnings);
        Ok(Verdict::Inject)
    }
}

/// What goes on the pod template: the status, always (it is ours); the
/// Prometheus annotations unless the pod already has its own (a warning
/// then says that appid's metrics are not scraped through them).
fn pod_annotations(template: &Node) -> (Vec<(&'static str, String)>, Option<String>) {
    let mut values = vec![(ANNOTATION_STATUS, spec::status())];
    let existing = annotate::existing(template);
    let theirs: Vec<&(String, String)> = existing
        .iter()
        .filter(|(k, _)| k.starts_with("prometheus.io/"))
        .collect();
    let ours = theirs.len() == PROMETHEUS_ANNOTATIONS.len()
        && PROMETHEUS_ANNOTATIONS
            .iter()
            .all(|(k, v)| theirs.iter().any(|(tk, tv)| tk == k && tv == v));
    if theirs.is_empty() {
        values.extend(PROMETHEUS_ANNOTATIONS.map(|(k, v)| (k, v.to_owned())));
        return (values, None);
    }
    if ours {
        return (values, None);
    }
    let listed: Vec<String> = theirs.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
    let warning = format!(
        "the pod already has Prometheus annotations ({}); left as they are, so appid's \
         metrics (port {HEALTH_PORT}, /metrics) are not scraped through them",
        listed.join(", ")
    );
    (values, Some(warning))
}

/// `"true"` or `"false"` (any case, spaces around allowed).
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!(
            "`{}` is neither \"true\" nor \"false\"; write one of those",
            text.escape_debug()
        )),
    }
}

/// The `name` of a list item that is a mapping.
fn named(item: &Node) -> Option<&str> {
    item.get_all("name").next().and_then(|(_, v)| v.scalar())
}

/// An annotation's text and line, if present.
fn annotation(
    annotations: &Node,
    name: &str,
    location: &Location,
) -> Result<Option<(String, usize)>, InjectError> {
    match get(annotations, name, location)? {
        None => Ok(None),
        Some(value) => match value.scalar() {
            Some(text) if !value.is_null() => Ok(Some((text.to_owned(), value.line))),
            _ => Err(InjectError::Annotation {
                location: location.clone(),
                line: value.line,
                annotation: name.into(),
                reason: "the value is not a string".into(),
            }),
        },
    }
}

/// `"22, 8081"` → `[22, 8081]` (duplicates dropped, order kept; empty is
/// none).
fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    if text.trim().is_empty() {
        return Ok(ports);
    }
    for part in text.split(',') {
        let part = part.trim();
        let port = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u16>().ok())
            .flatten()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                format!(
                    "`{}`: `{}` is not a port (1-65535); write comma-separated ports like \"22,8081\"",
                    text.escape_debug(),
                    part.escape_debug()
                )
            })?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests;
