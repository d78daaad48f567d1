//! What gets injected: the `appid-init` redirect container, the
//! `appid-proxy` native sidecar, their volumes and the status annotation,
//! as values.

use super::emit::{Value, s};
use super::{
    APP_PROBES_ENV, CONFIG_DIR, CONFIG_MAP, CONFIG_PATH, HEALTH_PORT, IDENTITY_DIR, INBOUND_PORT,
    INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID, RUN_DIR, TOKEN_AUDIENCE,
    VOLUME_CONFIG, VOLUME_IDENTITY, VOLUME_RUN,
};
/// The projected token's lifetime (at most the authority's
/// `--k8s-max-token-ttl`, 1 h by default).
const TOKEN_SECONDS: u16 = 3600;

/// What varies between workloads.
pub(crate) struct Params<'a> {
    pub image: &'a str,
    pub exclude_inbound: &'a [u16],
    pub exclude_outbound: &'a [u16],
    /// `APPID_APP_PROBES`: the app's probe targets the health listener
    /// runs (JSON), when any probe was rewritten.
    pub app_probes: Option<&'a str>,
}

fn int(n: impl Into<i64>) -> Value {
    Value::Int(n.into())
}

fn strs(items: &[&str]) -> Value {
    Value::Seq(items.iter().map(|x| s(*x)).collect())
}

fn ports(list: &[u16]) -> String {
    list.iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    let mut entries = vec![("name", s(name)), ("mountPath", s(path))];
    if read_only {
        entries.push(("readOnly", Value::Bool(true)));
    }
    Value::Map(entries)
}

/// kubelet's `httpGet` on the health listener (the pod IP, port 15191),
/// which serves `/live` and `/ready` but nothing else of the admin API (that
/// stays on loopback).
fn probe(path: &str, period: i64, failures: i64) -> Value {
    Value::Map(vec![
        (
            "httpGet",
            Value::Map(vec![("path", s(path)), ("port", int(HEALTH_PORT))]),
        ),
        ("periodSeconds", int(period)),
        ("timeoutSeconds", int(3)),
        ("failureThreshold", int(failures)),
    ])
}

/// Installs the redirect as root with NET_ADMIN and NET_RAW, nothing more,
/// then exits.
pub(crate) fn init_container(params: &Params<'_>) -> Value {
    let mut args: Vec<String> = vec![
        "redirect".into(),
        "install".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
    ];
    if !params.exclude_inbound.is_empty() {
        args.push("--exclude-inbound-ports".into());
        args.push(ports(params.exclude_inbound));
    }
    if !params.exclude_outbound.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(ports(params.exclude_outbound));
    }
    Value::Map(vec![
        ("name", s(INIT_CONTAINER)),
        ("image", s(params.image)),
        (
            "args",
            Value::Seq(args.into_iter().map(Value::Str).collect()),
        ),
        (
            // iptables-legacy takes a lock file, by default in /run, which
            // is read-only here.
            "env",
            Value::Seq(vec![Value::Map(vec![
                ("name", s("XTABLES_LOCKFILE")),
                ("value", s(format!("{RUN_DIR}/xtables.lock"))),
            ])]),
        ),
        (
            "resources",
            Value::Map(vec![
                (
                    "requests",
                    Value::Map(vec![("cpu", s("10m")), ("memory", s("16Mi"))]),
                ),
                ("limits", Value::Map(vec![("memory", s("64Mi"))])),
            ]),
        ),
        (
            "securityContext",
            Value::Map(vec![
                ("runAsUser", int(0)),
                ("runAsNonRoot", Value::Bool(false)),
                ("privileged", Value::Bool(false)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                (
                    "capabilities",
                    Value::Map(vec![
                        ("add", strs(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", strs(&["ALL"])),
                    ]),
                ),
            ]),
        ),
        (
            "volumeMounts",
            Value::Seq(vec![mount(VOLUME_RUN, RUN_DIR, false)]),
        ),
    ])
}

/// The proxy as a native sidecar (`restartPolicy: Always`): it starts
/// before the containers after it, and they only start once its startup
/// probe (`/ready`) has passed.
///
/// Its one declared port is the health listener (kubelet's probes, the
/// app's rewritten probes, Prometheus). The inbound port is reached through
/// the redirect on the app's own ports, never dialled as such, and the
/// admin API listens on loopback: declaring either would only mislead.
pub(crate) fn proxy_container(params: &Params<'_>) -> Value {
    let mut entries = vec![
        ("name", s(PROXY_CONTAINER)),
        ("image", s(params.image)),
        ("args", strs(&["proxy", "--config", CONFIG_PATH])),
        ("restartPolicy", s("Always")),
        (
            "ports",
            Value::Seq(vec![Value::Map(vec![
                ("name", s("appid-health")),
                ("containerPort", int(HEALTH_PORT)),
                ("protocol", s("TCP")),
            ])]),
        ),
    ];
    if let Some(probes) = params.app_probes {
        entries.push((
            "env",
            Value::Seq(vec![Value::Map(vec![
                ("name", s(APP_PROBES_ENV)),
                ("value", Value::Quoted(probes.to_owned())),
            ])]),
        ));
    }
    entries.extend([
        ("startupProbe", probe("/ready", 1, 120)),
        ("readinessProbe", probe("/ready", 5, 3)),
        ("livenessProbe", probe("/live", 10, 3)),
        (
            "resources",
            Value::Map(vec![
                (
                    "requests",
                    Value::Map(vec![("cpu", s("10m")), ("memory", s("32Mi"))]),
                ),
                ("limits", Value::Map(vec![("memory", s("128Mi"))])),
            ]),
        ),
        (
            "securityContext",
            Value::Map(vec![
                ("runAsUser", int(PROXY_UID)),
                ("runAsGroup", int(PROXY_UID)),
                ("runAsNonRoot", Value::Bool(true)),
                ("privileged", Value::Bool(false)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("capabilities", Value::Map(vec![("drop", strs(&["ALL"]))])),
                (
                    "seccompProfile",
                    Value::Map(vec![("type", s("RuntimeDefault"))]),
                ),
            ]),
        ),
        (
            "volumeMounts",
            Value::Seq(vec![
                mount(VOLUME_CONFIG, CONFIG_DIR, true),
                mount(VOLUME_IDENTITY, IDENTITY_DIR, true),
                mount(VOLUME_RUN, RUN_DIR, false),
            ]),
        ),
    ]);
    Value::Map(entries)
}

/// The names of what injection adds, as `appid.dev/status` records them.
pub(crate) const INIT_CONTAINERS: [&str; 2] = [INIT_CONTAINER, PROXY_CONTAINER];
pub(crate) const VOLUMES: [&str; 3] = [VOLUME_CONFIG, VOLUME_IDENTITY, VOLUME_RUN];

/// The `appid.dev/status` annotation: which appid injected the pod and what
/// it added (as Istio's `sidecar.istio.io/status`), compact JSON in a fixed
/// key order.
pub(crate) fn status() -> String {
    let list = |names: &[&str]| serde_json::Value::from(names.to_vec()).to_string();
    format!(
        r#"{{"version":{},"initContainers":{},"volumes":{}}}"#,
        serde_json::Value::from(env!("CARGO_PKG_VERSION")),
        list(&INIT_CONTAINERS),
        list(&VOLUMES)
    )
}

pub(crate) fn volumes() -> Vec<Value> {
    vec![
        Value::Map(vec![
            ("name", s(VOLUME_CONFIG)),
            ("configMap", Value::Map(vec![("name", s(CONFIG_MAP))])),
        ]),
        // The pod's own proof of identity: a projected service-account
        // token for the authority (Kubernetes rotates it; the sidecar reads
        // it at bootstrap), never a token shared by every pod.
        Value::Map(vec![
            ("name", s(VOLUME_IDENTITY)),
            (
                "projected",
                Value::Map(vec![(
                    "sources",
                    Value::Seq(vec![Value::Map(vec![(
                        "serviceAccountToken",
                        Value::Map(vec![
                            ("audience", s(TOKEN_AUDIENCE)),
                            ("expirationSeconds", int(TOKEN_SECONDS)),
                            ("path", s("token")),
                        ]),
                    )])]),
                )]),
            ),
        ]),
        Value::Map(vec![
            ("name", s(VOLUME_RUN)),
            ("emptyDir", Value::Map(vec![])),
        ]),
    ]
}
