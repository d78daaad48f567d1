//! `appid authority manifests`: the authority in the cluster.
//!
//! A Namespace (Pod Security `restricted`), a ServiceAccount that mounts no
//! API token (by default the authority never calls the Kubernetes API, so
//! no RBAC; with `--k8s-pod-lookup` it reads the pods that attest: then the
//! token is mounted, and a ClusterRole with `get` on pods and its binding
//! follow the StatefulSet), a
//! Service on 15170 (`https://appid-authority.<namespace>:15170`, the URL
//! `appid inject config` defaults to), and a one-replica StatefulSet: the
//! authority is a single writer of one SQLite file, kept on a
//! PersistentVolumeClaim, and a StatefulSet never runs two pods of the same
//! identity at once (a Deployment's rolling update would). Two things are
//! the user's to create, because they come from outside the cluster's YAML:
//! the Secret `appid-ca` (the CA from `appid authority init`) and the
//! ConfigMap `appid-k8s-jwks` (the cluster's service-account issuer keys
//! from `kubectl get --raw /openid/v1/jwks`); the header comment says how.
//!
//! The authority wants `ca.pem`, `ca.key` and `authority.db` in one
//! `--dir`: the state volume is that directory, and the Secret's two files
//! are mounted into it one by one (`subPath`), read-only, group-readable by
//! the pod's `fsGroup` only.
//!
//! With `--database-secret NAME` the state is in PostgreSQL instead, and
//! the authority is stateless: a Deployment of `--replicas` pods (spread
//! over zones) takes the database URL from that Secret's key `url`
//! (`APPID_AUTHORITY_DATABASE`), mounts the CA Secret as its whole `--dir`
//! (so an updated Secret reaches every replica: a CA rotation step is an
//! update of the Secret), writes its audit lines to stdout, and has no
//! volume.

use super::yaml::quote;
use crate::identity::spiffe;
use crate::inject::{AUTHORITY_PORT, PROXY_UID, TOKEN_AUDIENCE, default_image};

/// The Service, StatefulSet and ServiceAccount name.
pub const NAME: &str = "appid-authority";
/// Where the authority runs unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "appid-system";
/// The Secret with `ca.pem` and `ca.key`.
pub const CA_SECRET: &str = "appid-ca";
/// The ConfigMap with the cluster's JWKS, key `jwks.json`.
pub const JWKS_CONFIG_MAP: &str = "appid-k8s-jwks";
/// The service-account issuer of most clusters (`issuer` in
/// `kubectl get --raw /.well-known/openid-configuration`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The authority's `--dir` (the state volume).
pub const STATE_DIR: &str = "/var/lib/appid";
/// Where the JWKS ConfigMap is mounted.
const JWKS_DIR: &str = "/etc/appid-k8s";

/// What varies.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub k8s_issuer: &'a str,
    /// The state volume's size, a Kubernetes quantity (`1Gi`).
    pub storage: &'a str,
    /// The state volume's StorageClass; the cluster's default when absent.
    pub storage_class: Option<&'a str>,
    /// Look up attesting pods at the API server (`serve --k8s-api`).
    pub pod_lookup: bool,
    /// Pod label keys vouched for (`serve --k8s-trust-labels`); needs
    /// `pod_lookup`.
    pub trust_labels: &'a [String],
    /// PostgreSQL: the Secret with the database URL (key `url`); SQLite on
    /// a volume when absent.
    pub database_secret: Option<&'a str>,
    /// Pods, with `database_secret` (one otherwise).
    pub replicas: u32,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            trust_domain: "",
            namespace: DEFAULT_NAMESPACE,
            image: "",
            k8s_issuer: DEFAULT_ISSUER,
            storage: "1Gi",
            storage_class: None,
            pod_lookup: false,
            trust_labels: &[],
            database_secret: None,
            replicas: 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} `{value}`: {reason}")]
pub struct ManifestsError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> ManifestsError {
    ManifestsError {
        flag,
        value: value.escape_debug().to_string(),
        reason: reason.into(),
    }
}

/// The manifests, one YAML stream.
pub fn manifests(options: &Options<'_>) -> Result<String, ManifestsError> {
    let Options {
        trust_domain: td,
        namespace: ns,
        image,
        k8s_issuer: issuer,
        storage,
        storage_class,
        pod_lookup,
        trust_labels,
        database_secret,
        replicas,
    } = *options;
    spiffe::validate_trust_domain(td).map_err(|e| {
        bad(
            "--trust-domain",
            td,
            format!("{e}; write e.g. prod.example"),
        )
    })?;
    super::check_namespace(ns).map_err(|e| bad("--namespace", ns, e))?;
    let image = if image.is_empty() {
        default_image()
    } else {
        image.to_owned()
    };
    super::check_image(&image).map_err(|e| bad("--image", &image, e))?;
    if !issuer.starts_with("https://")
        || issuer.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "--k8s-issuer",
            issuer,
            "not an https:// URL; copy `issuer` from `kubectl get --raw /.well-known/openid-configuration`",
        ));
    }
    if !is_quantity(storage) {
        return Err(bad(
            "--storage",
            storage,
            "not a Kubernetes quantity; write e.g. 1Gi",
        ));
    }
    let storage_class = match storage_class {
        Some(class) if !is_dns_subdomain(class) => {
            return Err(bad(
                "--storage-class",
                class,
                "not a StorageClass name (lowercase letters, digits, '-' and '.')",
            ));
        }
        Some(class) => format!("\n      storageClassName: {class}"),
        None => String::new(),
    };
    if !trust_labels.is_empty() && !pod_lookup {
        return Err(bad(
            "--k8s-trust-labels",
            &trust_labels.join(","),
            "labels are read from the API server: add --k8s-pod-lookup",
        ));
    }
    for key in trust_labels {
        crate::attest::k8s_pod::check_label_key(key)
            .map_err(|e| bad("--k8s-trust-labels", key, e))?;
    }
    let (automount, api_note, lookup_args, rbac) = if pod_lookup {
        let mut args = format!(
            "\n        - --k8s-api\n        - {}",
            crate::authority::k8s_api::IN_CLUSTER_URL
        );
        if !trust_labels.is_empty() {
            args.push_str(&format!(
                "\n        - --k8s-trust-labels\n        - {}",
                quote(&trust_labels.join(","))
            ));
        }
        // The sidecars run appid's image too: pinned by digest here, that
        // digest tells appid's own containers from the app's (by name
        // alone, any image could pose as them; the authority warns).
        if let Some(digest) = crate::attest::k8s_pod::registry_digest(&image) {
            args.push_str(&format!(
                "\n        - --k8s-appid-digests\n        - {digest}"
            ));
        }
        (
            "true",
            "# The authority reads each attesting pod from the API server (--k8s-api):\n\
             # its service account token is mounted, and may only `get` pods.",
            args,
            pod_reader_rbac(ns),
        )
    } else {
        (
            "false",
            "# The authority never calls the Kubernetes API: no RBAC, no API token.",
            String::new(),
            String::new(),
        )
    };
    let store = match database_secret {
        None if replicas != 1 => {
            return Err(bad(
                "--replicas",
                &replicas.to_string(),
                "one SQLite file has one writer: add --database-secret for PostgreSQL replicas",
            ));
        }
        None => Store::Sqlite {
            storage,
            storage_class,
        },
        Some(secret) if !is_dns_subdomain(secret) => {
            return Err(bad(
                "--database-secret",
                secret,
                "not a Secret name (lowercase letters, digits, '-' and '.')",
            ));
        }
        Some(_) if replicas == 0 || replicas > 100 => {
            return Err(bad(
                "--replicas",
                &replicas.to_string(),
                "write 1 to 100 (2 or 3, one per zone, is the usual)",
            ));
        }
        Some(secret) => Store::Postgres { secret, replicas },
    };
    let version = env!("CARGO_PKG_VERSION");
    let uid = PROXY_UID;
    let port = AUTHORITY_PORT;
    let labels = "app.kubernetes.io/name: appid-authority\n    app.kubernetes.io/part-of: appid";
    let w = workload_parts(&store, ns);
    Ok(format!(
        r#"# The appid authority for trust domain {td}, in namespace {ns}.
# Generated by `appid authority manifests` (appid {version}). Then:
#
#   appid authority init --trust-domain {td} --dir ca     # once; keep ca/ca.key safe
#   kubectl apply -f THIS_FILE                             # the pods wait for the secrets below
#   kubectl -n {ns} create secret generic {CA_SECRET} \
#       --from-file=ca.pem=ca/ca.pem --from-file=ca.key=ca/ca.key
#   kubectl get --raw /openid/v1/jwks > cluster-jwks.json
#   kubectl -n {ns} create configmap {JWKS_CONFIG_MAP} --from-file=jwks.json=cluster-jwks.json
{header_store}#
# When the cluster rotates its service-account keys, re-create the ConfigMap
# and `kubectl -n {ns} rollout restart {kind_lower}/{NAME}`. Registrations:
#   kubectl -n {ns} exec {exec_target} -- appid authority register --dir {dir} \
#       --k8s-namespace NS --k8s-service-account SA --label app=...
{api_note}
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels:
    app.kubernetes.io/part-of: appid
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {NAME}
  namespace: {ns}
  labels:
    {labels}
automountServiceAccountToken: {automount}
---
apiVersion: v1
kind: Service
metadata:
  name: {NAME}
  namespace: {ns}
  labels:
    {labels}
spec:
  selector:
    app.kubernetes.io/name: appid-authority
  ports:
  - name: https
    port: {port}
    targetPort: authority
    protocol: TCP
    appProtocol: https
---
apiVersion: apps/v1
kind: {kind}
metadata:
  name: {NAME}
  namespace: {ns}
  labels:
    {labels}
spec:
{spec_head}  selector:
    matchLabels:
      app.kubernetes.io/name: appid-authority
  template:
    metadata:
      labels:
        {labels_pod}
      annotations:
        appid.dev/inject: "false"
        appid.dev/trust-domain: {td_quoted}
    spec:
      serviceAccountName: {NAME}
      automountServiceAccountToken: {automount}{spread}
      securityContext:
        runAsNonRoot: true
        runAsUser: {uid}
        runAsGroup: {uid}
        fsGroup: {uid}
        seccompProfile:
          type: RuntimeDefault
      containers:
      - name: authority
        image: {image_quoted}
        args:
        - authority
        - serve
        - --dir
        - {dir}
        - --listen
        - "0.0.0.0:{port}"
        - --k8s-jwks
        - {JWKS_DIR}/jwks.json
        - --k8s-issuer
        - {issuer_quoted}
        - --k8s-audience
        - {TOKEN_AUDIENCE}{lookup_args}{store_args}
        ports:
        - name: authority
          containerPort: {port}
          protocol: TCP
        readinessProbe:
          httpGet:
            path: /healthz
            port: authority
            scheme: HTTPS
          periodSeconds: 5
        livenessProbe:
          httpGet:
            path: /healthz
            port: authority
            scheme: HTTPS
          periodSeconds: 10
          failureThreshold: 6
        resources:
          requests:
            cpu: 50m
            memory: 64Mi
          limits:
            memory: 256Mi
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities:
            drop: [ALL]
        env:
        # SQLite's temporary files.
        - name: TMPDIR
          value: /tmp{store_env}
        volumeMounts:
{ca_mounts}        - name: jwks
          mountPath: {JWKS_DIR}
          readOnly: true
        - name: tmp
          mountPath: /tmp
      volumes:
      - name: ca
        secret:
          secretName: {CA_SECRET}
          # 0440: the key is readable by the pod's group (fsGroup) only.
          defaultMode: 288
      - name: jwks
        configMap:
          name: {JWKS_CONFIG_MAP}
      - name: tmp
        emptyDir: {{}}
{claims}{rbac}"#,
        header_store = w.header,
        kind = w.kind,
        kind_lower = w.kind.to_lowercase(),
        exec_target = w.exec_target,
        dir = w.dir,
        spec_head = w.spec_head,
        spread = w.spread,
        store_args = w.args,
        store_env = w.env,
        ca_mounts = w.ca_mounts,
        claims = w.claims,
        labels_pod = labels.replace("\n    ", "\n        "),
        td_quoted = quote(td),
        image_quoted = quote(&image),
        issuer_quoted = quote(issuer),
    ))
}

/// Where the authority keeps its state.
enum Store<'a> {
    /// One SQLite file on a volume: a one-pod StatefulSet.
    Sqlite {
        storage: &'a str,
        storage_class: String,
    },
    /// PostgreSQL, URL in a Secret: a Deployment of stateless replicas.
    Postgres { secret: &'a str, replicas: u32 },
}

/// Where the CA Secret is mounted when it is the whole `--dir`.
const CA_DIR: &str = "/etc/appid-ca";

/// The parts of the manifests that depend on the store.
struct WorkloadParts {
    header: String,
    kind: &'static str,
    exec_target: String,
    dir: &'static str,
    spec_head: String,
    spread: String,
    args: String,
    env: String,
    ca_mounts: String,
    claims: String,
}

fn workload_parts(store: &Store<'_>, ns: &str) -> WorkloadParts {
    match store {
        Store::Sqlite {
            storage,
            storage_class,
        } => WorkloadParts {
            header: String::new(),
            kind: "StatefulSet",
            exec_target: format!("{NAME}-0"),
            dir: STATE_DIR,
            spec_head: format!(
                "  serviceName: {NAME}\n  # One SQLite file, one writer: never more than one replica.\n  replicas: 1\n"
            ),
            spread: String::new(),
            args: String::new(),
            env: String::new(),
            ca_mounts: format!(
                r#"        - name: state
          mountPath: {STATE_DIR}
        # The CA's two files, into the same directory as the database.
        - name: ca
          mountPath: {STATE_DIR}/ca.pem
          subPath: ca.pem
          readOnly: true
        - name: ca
          mountPath: {STATE_DIR}/ca.key
          subPath: ca.key
          readOnly: true
"#
            ),
            claims: format!(
                r#"  volumeClaimTemplates:
  - metadata:
      name: state
      labels:
        app.kubernetes.io/name: appid-authority
    spec:
      accessModes: [ReadWriteOnce]{storage_class}
      resources:
        requests:
          storage: {storage}
"#
            ),
        },
        Store::Postgres { secret, replicas } => WorkloadParts {
            header: format!(
                r#"#   kubectl -n {ns} create secret generic {secret} \
#       --from-literal=url='postgres://appid:PASSWORD@HOST:5432/appid?sslmode=verify-full&sslrootcert=...'
#
# The replicas share the database and the CA. A CA rotation step is run on
# your copy (`appid authority ca rotate --dir ca`), then the Secret is
# updated with every file of the directory; every replica follows it:
#   kubectl -n {ns} create secret generic {CA_SECRET} --from-file=ca \
#       --dry-run=client -o yaml | kubectl apply -f -
"#
            ),
            kind: "Deployment",
            exec_target: format!("deploy/{NAME}"),
            dir: CA_DIR,
            spec_head: format!(
                "  # Stateless: every replica shares the PostgreSQL database and the CA.\n  replicas: {replicas}\n"
            ),
            spread: r#"
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: ScheduleAnyway
        labelSelector:
          matchLabels:
            app.kubernetes.io/name: appid-authority"#
                .to_owned(),
            args: "\n        # Audit lines go with the logs.\n        - --audit-log\n        - /dev/stdout"
                .to_owned(),
            env: format!(
                r#"
        - name: APPID_AUTHORITY_DATABASE
          valueFrom:
            secretKeyRef:
              name: {secret}
              key: url"#
            ),
            ca_mounts: format!(
                r#"        # The whole CA Secret is --dir: an updated Secret reaches every replica.
        - name: ca
          mountPath: {CA_DIR}
          readOnly: true
"#
            ),
            claims: String::new(),
        },
    }
}

/// What `--k8s-pod-lookup` needs: `get` on pods, cluster-wide (pods of
/// every namespace attest), for the authority's service account only.
fn pod_reader_rbac(ns: &str) -> String {
    format!(
        r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {NAME}-{ns}
  labels:
    app.kubernetes.io/name: appid-authority
    app.kubernetes.io/part-of: appid
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {NAME}-{ns}
  labels:
    app.kubernetes.io/name: appid-authority
    app.kubernetes.io/part-of: appid
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {NAME}-{ns}
subjects:
- kind: ServiceAccount
  name: {NAME}
  namespace: {ns}
"#
    )
}

/// A Kubernetes quantity as people write storage sizes: digits, an optional
/// fraction, an optional binary or decimal suffix.
fn is_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    let number = digits.split_once('.').map_or(
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        |(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        },
    );
    number
        && matches!(
            suffix,
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
        )
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests;
