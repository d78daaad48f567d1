//! The commands that print Kubernetes manifests from scratch:
//! `appid inject config` (the namespace's sidecar ConfigMap) and
//! `appid authority manifests` (the authority's own deployment). See
//! [`crate::k8s`]. The manifest goes to stdout (pipe it into
//! `kubectl apply -f -`), warnings to stderr; bad input exits 2 with the
//! flag or file named.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::identity::files;
use crate::k8s::authority::{self, DEFAULT_ISSUER, DEFAULT_NAMESPACE};
use crate::k8s::sidecar_config::{self, Inputs};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The namespace of the workloads `appid inject` prepares
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// The authority's URL [default: https://appid-authority.appid-system:15170,
    /// where `appid authority manifests` puts it]
    #[arg(long, value_name = "URL")]
    authority_url: Option<String>,
    /// The trust bundle: the CA's ca.pem (one or more PEM certificates)
    #[arg(long, value_name = "CA.pem")]
    bundle: PathBuf,
    /// The policy the sidecars enforce (checked before anything is printed)
    #[arg(long, value_name = "POLICY.yaml")]
    policy: PathBuf,
    /// A trust domain the sidecars accept (repeatable) [default: the ones the
    /// bundle's CAs name]
    #[arg(long = "trust-domain", value_name = "TD")]
    trust_domains: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ManifestsArgs {
    /// The trust domain of the CA the authority serves (`appid authority init
    /// --trust-domain`)
    #[arg(long, value_name = "TD")]
    trust_domain: String,
    /// The authority's namespace (created by the manifests; give it one of its own)
    #[arg(long, value_name = "NS", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// The appid image [default: appid/appid:<version>]
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// The cluster's service-account issuer (`issuer` in
    /// `kubectl get --raw /.well-known/openid-configuration`)
    #[arg(long, value_name = "URL", default_value = DEFAULT_ISSUER)]
    k8s_issuer: String,
    /// The size of the volume with the authority's database
    #[arg(long, value_name = "SIZE", default_value = "1Gi")]
    storage: String,
    /// The StorageClass of that volume [default: the cluster's default]
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// Let the authority look up attesting pods at the API server (`serve
    /// --k8s-api`): mounts its service-account token and adds a ClusterRole
    /// with `get` on pods and its binding
    #[arg(long)]
    k8s_pod_lookup: bool,
    /// Pod label keys the authority vouches for as `k8s.labels.<key>`,
    /// comma-separated (with --k8s-pod-lookup)
    #[arg(
        long,
        value_name = "KEYS",
        value_delimiter = ',',
        requires = "k8s_pod_lookup"
    )]
    k8s_trust_labels: Vec<String>,
    /// Keep the authority's state in PostgreSQL: the Secret (in the
    /// authority's namespace) whose key `url` holds the database URL. The
    /// authority then runs as a Deployment of stateless replicas with no
    /// volume
    #[arg(long, value_name = "SECRET")]
    database_secret: Option<String>,
    /// Replicas, with --database-secret [default: 2]
    #[arg(long, value_name = "N", requires = "database_secret")]
    replicas: Option<u32>,
}

pub fn config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let policy_name = args.policy.display().to_string();
    let policy = crate::sidecar::read_policy_file(&args.policy)
        .with_context(|| format!("--policy {policy_name}: cannot read it; check the path"))?;
    let bundle_name = args.bundle.display().to_string();
    let bundle = files::read_small(&args.bundle)
        .with_context(|| format!("--bundle {bundle_name}: give the CA's ca.pem"))?;
    let url = args
        .authority_url
        .unwrap_or_else(sidecar_config::default_authority_url);
    let out = sidecar_config::config_map(&Inputs {
        namespace: &args.namespace,
        authority_url: &url,
        trust_domains: &args.trust_domains,
        policy: (&policy_name, &policy),
        bundle: (&bundle_name, &bundle),
    })?;
    for warning in &out.warnings {
        eprintln!("appid: warning: {warning}");
    }
    print(&out.yaml)?;
    eprintln!(
        "appid: ConfigMap {} for namespace {} (trust domains: {})",
        crate::inject::CONFIG_MAP,
        args.namespace,
        out.trust_domains.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn manifests(args: ManifestsArgs) -> anyhow::Result<ExitCode> {
    let yaml = authority::manifests(&authority::Options {
        trust_domain: &args.trust_domain,
        namespace: &args.namespace,
        image: args.image.as_deref().unwrap_or(""),
        k8s_issuer: &args.k8s_issuer,
        storage: &args.storage,
        storage_class: args.storage_class.as_deref(),
        pod_lookup: args.k8s_pod_lookup,
        trust_labels: &args.k8s_trust_labels,
        database_secret: args.database_secret.as_deref(),
        replicas: args
            .replicas
            .unwrap_or(if args.database_secret.is_some() { 2 } else { 1 }),
    })?;
    print(&yaml)?;
    Ok(ExitCode::SUCCESS)
}

fn print(yaml: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the manifest to stdout")
}
