//! What gets injected: the `appid-init` redirect container, the
//! `appid-proxy` native sidecar and their volumes, as values.

use super::emit::{Value, s};
use super::{
    ADMIN_PORT, CONFIG_MAP, CONFIG_PATH, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT,
    PROXY_CONTAINER, PROXY_UID, VOLUME_CONFIG, VOLUME_IDENTITY, VOLUME_RUN,
};

const CONFIG_DIR: &str = "/etc/appid";
const IDENTITY_DIR: &str = "/var/run/appid/identity";
const RUN_DIR: &str = "/var/run/appid/run";
/// The audience of the projected token: what the authority's
/// `--k8s-audience` must be.
pub const TOKEN_AUDIENCE: &str = "appid-authority";
/// The projected token's lifetime (at most the authority's
/// `--k8s-max-token-ttl`, 1 h by default).
const TOKEN_SECONDS: u16 = 3600;

/// What varies between workloads.
pub(crate) struct Params<'a> {
    pub image: &'a str,
    pub exclude_inbound: &'a [u16],
    pub exclude_outbound: &'a [u16],
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

/// `appid probe ready|live`: the admin API listens on loopback only, which
/// kubelet's `httpGet` (it dials the pod IP) cannot reach; an exec probe
/// inside the container can.
fn probe(check: &str, period: i64, failures: i64) -> Value {
    Value::Map(vec![
        (
            "exec",
            Value::Map(vec![("command", strs(&["appid", "probe", check]))]),
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
pub(crate) fn proxy_container(params: &Params<'_>) -> Value {
    let port = |name: &str, number: u16| {
        Value::Map(vec![
            ("name", s(name)),
            ("containerPort", int(number)),
            ("protocol", s("TCP")),
        ])
    };
    Value::Map(vec![
        ("name", s(PROXY_CONTAINER)),
        ("image", s(params.image)),
        ("args", strs(&["proxy", "--config", CONFIG_PATH])),
        ("restartPolicy", s("Always")),
        (
            "ports",
            Value::Seq(vec![
                port("appid-inbound", INBOUND_PORT),
                port("appid-admin", ADMIN_PORT),
            ]),
        ),
        ("startupProbe", probe("ready", 1, 120)),
        ("readinessProbe", probe("ready", 5, 3)),
        ("livenessProbe", probe("live", 10, 3)),
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
    ])
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
