//! `appid authority …`: the CA directory and the authority service.
//!
//! `init` creates the CA; `serve` runs the HTTPS API; `register`,
//! `import-scan` and `revoke` change the authority's database directly (run
//! them on the authority host, like `spire-server entry create`). The
//! database is SQLite in `--dir` unless `--database postgres://…` (or
//! `APPID_AUTHORITY_DATABASE`) names a PostgreSQL database that several
//! `serve` replicas share; the CA stays in `--dir` either way.

use crate::telemetry::LogFormat;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use super::args::{self, KeyValue};
use crate::attest::k8s_pod::AppidContainers;
use crate::authority::event_log::EventLog;
use crate::authority::federation::{self, FederationConfig};
use crate::authority::server;
use crate::authority::service::{Authority, K8S_PROVIDER, hash_token, new_token};
use crate::authority::store::{Database, Registration, Store};
use crate::identity::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, KeyAlg};
use crate::identity::spiffe::SpiffeId;
use crate::scan;

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum AuthorityCommand {
    /// Create a new CA in DIR (refuses to overwrite an existing one)
    Init {
        /// The trust domain, e.g. prod.example
        #[arg(long, value_name = "TD")]
        trust_domain: String,
        /// Directory for ca.pem and ca.key (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Key algorithm of the CA
        #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
        key_alg: KeyAlg,
    },
    /// Serve the authority's HTTPS API
    Serve {
        /// Directory with ca.pem and ca.key (and authority.db, for SQLite)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// Address to listen on
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15170")]
        listen: SocketAddr,
        /// Lifetime of issued certificates, e.g. 30s, 15m, 1h
        #[arg(long, value_name = "TTL", value_parser = args::duration, default_value = "1h")]
        cert_ttl: time::Duration,
        /// Audit log (JSON lines); default DIR/audit.jsonl
        #[arg(long, value_name = "PATH")]
        audit_log: Option<PathBuf>,
        /// AWS instance identity certificates: DIR/{rsa,rsa2048,dsa}/<region>.pem
        #[arg(long, value_name = "DIR")]
        aws_certs: Option<PathBuf>,
        /// Google's signing keys (JWKS JSON) for GCP instance identity tokens
        #[arg(long, value_name = "FILE", requires = "gcp_audience")]
        gcp_jwks: Option<PathBuf>,
        /// The audience GCP tokens must be issued for
        #[arg(long, value_name = "AUD", requires = "gcp_jwks")]
        gcp_audience: Option<String>,
        /// The cluster's service-account issuer keys (JWKS JSON, from
        /// `kubectl get --raw /openid/v1/jwks`), for Kubernetes projected
        /// service-account tokens
        #[arg(long, value_name = "FILE")]
        k8s_jwks: Option<PathBuf>,
        /// The cluster's service-account issuer (`issuer` in
        /// `kubectl get --raw /.well-known/openid-configuration`)
        #[arg(long, value_name = "URL")]
        k8s_issuer: Option<String>,
        /// The audience pods request their projected token for
        #[arg(long, value_name = "AUD")]
        k8s_audience: Option<String>,
        /// The longest validity (exp - iat) accepted for a service-account token
        #[arg(long, value_name = "TTL", value_parser = args::duration, default_value = "1h")]
        k8s_max_token_ttl: time::Duration,
        /// Also look up each attesting pod at the Kubernetes API server
        /// (https only; in a pod: https://kubernetes.default.svc) and vouch
        /// for its node, trusted labels and image digests as `k8s.*`; any
        /// failure of the lookup refuses the attestation
        #[arg(long, value_name = "URL", requires = "k8s_jwks")]
        k8s_api: Option<String>,
        /// The bearer token for --k8s-api, read for every request [default:
        /// /var/run/secrets/kubernetes.io/serviceaccount/token]
        #[arg(long, value_name = "FILE", requires = "k8s_api")]
        k8s_api_token_file: Option<PathBuf>,
        /// The CA that signed the API server's certificate [default:
        /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt]
        #[arg(long, value_name = "FILE", requires = "k8s_api")]
        k8s_api_ca: Option<PathBuf>,
        /// Pod label keys to vouch for as `k8s.labels.<key>`, comma-separated
        /// (e.g. app,version); other labels are not vouched for
        #[arg(long, value_name = "KEYS", value_delimiter = ',', requires = "k8s_api")]
        k8s_trust_labels: Vec<String>,
        /// The digests of appid's own image (sha256:<hex>, comma-separated):
        /// a container named appid-proxy or appid-init is taken for appid's
        /// only when it runs one of them; any other is an app container like
        /// the rest [default: taken for appid's by name alone]
        #[arg(
            long,
            value_name = "DIGESTS",
            value_delimiter = ',',
            requires = "k8s_api"
        )]
        k8s_appid_digests: Vec<String>,
        /// Federation with other trust domains (YAML): the SPIFFE bundle
        /// endpoint we serve and the trust domains whose bundles we fetch
        /// and hand to our sidecars (see the README, "Federation")
        #[arg(long, value_name = "FILE")]
        federation: Option<PathBuf>,
        /// How logs on stderr are written: text, or json (one object per line)
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = super::args::log_format)]
        log_format: LogFormat,
        /// Fix the authority's clock (RFC 3339), to test expired documents
        #[arg(long, value_name = "TIME", hide = true)]
        clock: Option<String>,
    },
    /// Record what the authority vouches for about a workload; prints a
    /// one-time join token (none for a Kubernetes service account)
    Register {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// The workload's SPIFFE ID, in the CA's trust domain
        #[arg(
            long,
            value_name = "SPIFFE_ID",
            required_unless_present = "k8s_namespace",
            conflicts_with = "k8s_namespace"
        )]
        id: Option<String>,
        /// Register the pods of a Kubernetes service account instead: the ID
        /// is spiffe://<td>/ns/<NS>/sa/<SA>, attested with projected
        /// service-account tokens (no join token)
        #[arg(
            long,
            value_name = "NS",
            requires = "k8s_service_account",
            conflicts_with = "cloud_match"
        )]
        k8s_namespace: Option<String>,
        /// The service account, with --k8s-namespace
        #[arg(long, value_name = "SA", requires = "k8s_namespace")]
        k8s_service_account: Option<String>,
        /// A label, key=value (repeatable)
        #[arg(long = "label", value_name = "K=V", value_parser = args::key_value)]
        labels: Vec<KeyValue>,
        /// The image digest the workload runs, sha256:<64 hex>
        #[arg(long, value_name = "D", value_parser = args::image_digest)]
        image_digest: Option<String>,
        /// How long the join token stays valid
        #[arg(long, value_name = "TTL", value_parser = args::duration, default_value = "15m")]
        ttl: time::Duration,
        /// A cloud fact an attestation document must match instead of a
        /// token, key=value (repeatable; keys: provider, account, project,
        /// region, zone, instance, image, instance_type)
        #[arg(long = "cloud-match", value_name = "K=V", value_parser = args::key_value)]
        cloud_match: Vec<KeyValue>,
    },
    /// Store a Trivy or Grype report's counts by image digest
    ImportScan {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        /// The report (format detected from the content)
        report: PathBuf,
        /// The digest to file it under (default: the digests in the report)
        #[arg(long, value_name = "D", value_parser = args::image_digest)]
        image_digest: Option<String>,
    },
    /// Print the Kubernetes manifests that run the authority in a cluster
    /// (Namespace, ServiceAccount, Service, StatefulSet with its volume)
    Manifests(super::k8s::ManifestsArgs),
    /// Rotate the CA without an outage (prepare, activate, retire), or show
    /// where a rotation stands
    #[command(subcommand)]
    Ca(CaCommand),
    /// Revoke a workload: no more certificates, and peers refuse it
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArg,
        #[arg(long, value_name = "SPIFFE_ID")]
        id: String,
        /// Where the revocation is audited: the authority's audit log, as
        /// given to `serve --audit-log`; default DIR/audit.jsonl
        #[arg(long, value_name = "PATH")]
        audit_log: Option<PathBuf>,
    },
}

/// `--database URL`, on every command that reads or writes the store.
#[derive(Debug, clap::Args)]
pub struct DatabaseArg {
    /// The authority's database when not SQLite in DIR: a PostgreSQL URL,
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, shared by every
    /// replica (the password is better given in the environment variable
    /// than on the command line)
    #[arg(
        long,
        value_name = "URL",
        env = "APPID_AUTHORITY_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
}

/// `appid authority ca ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Take the next step: prepare a new CA (published in the trust
    /// bundle, not signing), then activate it (signing; the old one still
    /// trusted), then retire the old one. Run it three times, waiting as
    /// it says in between
    Rotate {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// How long sidecars need to fetch a new bundle before the new CA
        /// may sign (they poll every 5 s)
        #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "30s")]
        propagation: time::Duration,
        /// The longest certificate life any replica issues (`serve
        /// --cert-ttl`): the old CA is retired only after it has passed
        #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "1h")]
        max_cert_ttl: time::Duration,
        /// Take the step now, without waiting
        #[arg(long)]
        force: bool,
        /// Key algorithm of the new CA
        #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
        key_alg: KeyAlg,
    },
    /// Print the trust bundle (every CA of a rotation under way): as a
    /// SPIFFE bundle (JWKS, what the bundle endpoint serves; for another
    /// trust domain's `bundle:` or `identity.federated`) or PEM
    Bundle {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// spiffe (JWKS) or pem
        #[arg(long, value_name = "FORMAT", default_value = "spiffe", value_parser = ["spiffe", "pem"])]
        format: String,
    },
    /// Where a rotation stands, and the CAs in the trust bundle
    Status {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        output: args::Output,
    },
}

fn ca_command(command: CaCommand) -> anyhow::Result<ExitCode> {
    use crate::identity::ca_rotation::{self, Phase, Step};
    let positive =
        |d: time::Duration| std::time::Duration::from_secs(d.whole_seconds().max(0) as u64);
    match command {
        CaCommand::Rotate {
            dir,
            propagation,
            max_cert_ttl,
            force,
            key_alg,
        } => {
            let step = ca_rotation::rotate(
                &dir,
                key_alg,
                positive(propagation),
                positive(max_cert_ttl),
                force,
            )
            .with_context(|| format!("rotating the CA in {}", dir.display()))?;
            let next = match step {
                Step::Prepared => format!(
                    "prepared a new CA ({}); it is in the trust bundle but does not sign yet. \
                     Every replica hands it out within a second and sidecars fetch it within 5 s: \
                     run `appid authority ca rotate --dir {}` again in {} to make it sign",
                    ca_rotation::NEXT_CERT_FILE,
                    dir.display(),
                    humantime::format_duration(positive(propagation))
                ),
                Step::Activated => format!(
                    "the new CA signs from now on; the previous one ({}) stays trusted while its \
                     certificates live: run `appid authority ca rotate --dir {}` again in {} to retire it",
                    ca_rotation::PREVIOUS_CERT_FILE,
                    dir.display(),
                    humantime::format_duration(positive(max_cert_ttl))
                ),
                Step::Retired => {
                    "retired the previous CA; the trust bundle holds the new one only".to_owned()
                }
            };
            println!("{next}");
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Bundle { dir, format } => {
            let roots = ca_rotation::bundle(&dir).with_context(|| dir.display().to_string())?;
            if format == "pem" {
                for der in &roots {
                    print!("{}", crate::identity::issue::pem_encode(der));
                }
            } else {
                let json = crate::identity::spiffe_bundle::encode(&roots, None, None)
                    .with_context(|| dir.display().to_string())?;
                println!("{json}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Status { dir, output } => {
            let phase = ca_rotation::phase(&dir).with_context(|| dir.display().to_string())?;
            let roots = ca_rotation::bundle(&dir).with_context(|| dir.display().to_string())?;
            let seconds_since = |since: std::time::SystemTime| {
                std::time::SystemTime::now()
                    .duration_since(since)
                    .unwrap_or_default()
                    .as_secs()
            };
            let ago = |since: std::time::SystemTime| {
                humantime::format_duration(std::time::Duration::from_secs(seconds_since(since)))
                    .to_string()
            };
            let sha256 = |der: &[u8]| -> String {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
                digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
            };
            let role = |i: usize| match (i, &phase) {
                (0, _) => "signing",
                (_, Phase::Prepared { .. }) => "prepared",
                _ => "previous",
            };
            if !output.is_text() {
                let (name, since) = match phase {
                    Phase::Steady => ("steady", None),
                    Phase::Prepared { since } => ("prepared", Some(seconds_since(since))),
                    Phase::Activated { since } => ("activated", Some(seconds_since(since))),
                };
                let cas: Vec<_> = roots
                    .iter()
                    .enumerate()
                    .map(|(i, der)| serde_json::json!({"role": role(i), "sha256": sha256(der.as_ref())}))
                    .collect();
                output.print(&serde_json::json!({
                    "phase": name,
                    "seconds_in_phase": since,
                    "cas": cas,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            match phase {
                Phase::Steady => println!("steady: one CA signs and is the whole trust bundle"),
                Phase::Prepared { since } => println!(
                    "prepared {} ago: a new CA is in the trust bundle, not signing yet (next: activate)",
                    ago(since)
                ),
                Phase::Activated { since } => println!(
                    "activated {} ago: the new CA signs, the previous one is still trusted (next: retire)",
                    ago(since)
                ),
            }
            for (i, der) in roots.iter().enumerate() {
                println!("  {:9} sha256:{}", role(i), sha256(der.as_ref()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(command: AuthorityCommand) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match command {
        AuthorityCommand::Init {
            trust_domain,
            dir,
            key_alg,
        } => {
            let ca = Ca::init(&dir, &trust_domain, key_alg)
                .with_context(|| format!("authority init --dir {}", dir.display()))?;
            println!(
                "created CA for trust domain {} in {}: {} (trust bundle), {} (key, mode 0600)",
                ca.trust_domain(),
                dir.display(),
                dir.join(CA_CERT_FILE).display(),
                dir.join(CA_KEY_FILE).display(),
            );
            Ok(ExitCode::SUCCESS)
        }
        AuthorityCommand::Serve {
            dir,
            database,
            listen,
            cert_ttl,
            audit_log,
            aws_certs,
            gcp_jwks,
            gcp_audience,
            k8s_jwks,
            k8s_issuer,
            k8s_audience,
            k8s_max_token_ttl,
            k8s_api,
            k8s_api_token_file,
            k8s_api_ca,
            k8s_trust_labels,
            k8s_appid_digests,
            federation,
            log_format,
            clock,
        } => {
            let ca =
                Ca::load(&dir).context("loading the CA (run `appid authority init` first?)")?;
            let federation = federation
                .map(|path| FederationConfig::load(&path, ca.trust_domain()))
                .transpose()?;
            let store = open_store(&dir, database.database.as_deref())?;
            let database = store.database().to_string();
            let audit_log = audit_log.unwrap_or_else(|| dir.join("audit.jsonl"));
            let gcp = match (gcp_jwks, gcp_audience) {
                (Some(path), Some(audience)) => {
                    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
                    let keys = crate::attest::GcpKeys::from_jwks_json(&bytes)
                        .with_context(|| path.display().to_string())?;
                    Some((keys, audience))
                }
                _ => None,
            };
            let k8s = k8s_settings(k8s_jwks, k8s_issuer, k8s_audience, k8s_max_token_ttl)?;
            if let Some(dir) = &aws_certs
                && !dir.is_dir()
            {
                return Err(anyhow!("--aws-certs {}: not a directory", dir.display()));
            }
            let cloud: Option<Box<dyn crate::authority::service::CloudVerifier>> =
                if aws_certs.is_some() || gcp.is_some() || k8s.is_some() {
                    Some(Box::new(crate::authority::cloud::CloudAttestor {
                        aws_certs,
                        gcp,
                        k8s,
                    }))
                } else {
                    None
                };
            let clock = clock
                .map(|t| {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map(|t| t.unix_timestamp())
                        .map_err(|e| anyhow!("--clock {t}: {e}; write e.g. 2019-04-26T00:00:00Z"))
                })
                .transpose()?;
            let pods = pod_lookup(
                k8s_api,
                k8s_api_token_file,
                k8s_api_ca,
                k8s_trust_labels,
                k8s_appid_digests,
            )?;
            let appid_by_name = pods
                .as_ref()
                .is_some_and(|p| p.appid == AppidContainers::ByName);
            let authority = Authority::new(ca, store, cert_ttl, Some(&audit_log), cloud)
                .with_context(|| format!("audit log {}", audit_log.display()))?
                .with_clock(clock)
                .with_pod_lookup(pods);
            let _telemetry = crate::telemetry::init(None, log_format)?;
            if appid_by_name {
                tracing::warn!(
                    "containers named appid-proxy/appid-init are taken for appid's own by \
                     name alone: a pod could run any image under those names beside the app, \
                     unscanned; give --k8s-appid-digests with appid's image digest"
                );
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tracing::info!(%listen, %database, "appid authority serving");
                let authority = std::sync::Arc::new(authority);
                let mut federation_tasks = Vec::new();
                if let Some(federation) = federation {
                    for foreign in federation.foreign {
                        if let Some(api) = foreign.revocations.clone() {
                            federation_tasks.push(tokio::spawn(federation::follow_revocations(
                                foreign.clone(),
                                api,
                                authority.federated().clone(),
                            )));
                        }
                        federation_tasks.push(tokio::spawn(federation::follow(
                            foreign,
                            authority.federated().clone(),
                        )));
                    }
                    if let Some(endpoint) = federation.endpoint {
                        let endpoint =
                            federation::BundleEndpoint::bind(endpoint, authority.clone()).await?;
                        federation_tasks.push(tokio::spawn(endpoint.serve(std::future::pending())));
                    }
                }
                let served = server::serve(
                    authority,
                    listener,
                    Some(dir.clone()),
                    crate::sidecar::wait_for_signal(),
                )
                .await
                .context("authority");
                for task in federation_tasks {
                    task.abort();
                }
                served
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AuthorityCommand::Register {
            dir,
            database,
            id,
            k8s_namespace,
            k8s_service_account,
            labels,
            image_digest,
            ttl,
            cloud_match,
        } => {
            let ca =
                Ca::load(&dir).context("loading the CA (run `appid authority init` first?)")?;
            let k8s = k8s_namespace.zip(k8s_service_account);
            let id = match (&id, &k8s) {
                (_, Some((namespace, service_account))) => {
                    crate::attest::k8s::check_names(namespace, service_account)
                        .map_err(|e| anyhow!("--k8s-namespace/--k8s-service-account: {e}"))?;
                    checked_id(
                        &ca,
                        &format!(
                            "spiffe://{}/ns/{namespace}/sa/{service_account}",
                            ca.trust_domain()
                        ),
                    )?
                }
                (Some(id), None) => workload_id(&ca, checked_id(&ca, id)?)?,
                (None, None) => {
                    return Err(anyhow!(
                        "give --id SPIFFE_ID, or --k8s-namespace NS --k8s-service-account SA"
                    ));
                }
            };
            let mut registration = Registration {
                id: id.to_string(),
                labels: BTreeMap::new(),
                image_digest,
                cloud_match: BTreeMap::new(),
            };
            if k8s.is_some() {
                registration
                    .cloud_match
                    .insert("provider".into(), K8S_PROVIDER.into());
            }
            for KeyValue { key, value } in labels {
                registration.labels.insert(key, value);
            }
            for KeyValue { key, value } in cloud_match {
                const KEYS: [&str; 8] = [
                    "provider",
                    "account",
                    "project",
                    "region",
                    "zone",
                    "instance",
                    "image",
                    "instance_type",
                ];
                if !KEYS.contains(&key.as_str()) {
                    return Err(anyhow!(
                        "--cloud-match {key}={value}: unknown fact `{key}`; use one of {}",
                        KEYS.join(", ")
                    ));
                }
                registration.cloud_match.insert(key, value);
            }
            if let Some(problem) = registration.cloud_match_problem() {
                return Err(anyhow!("--cloud-match: {problem}"));
            }
            if ttl <= time::Duration::ZERO {
                return Err(anyhow!("--ttl must be positive"));
            }
            let mut store = open_store(&dir, database.database.as_deref())?;
            // A Kubernetes service account attests with its pods' tokens, a
            // cloud instance with its signed document: no token for either
            // (one would be a second way in).
            let token = match registration.cloud_match.is_empty() {
                false => None,
                true => {
                    Some(new_token().ok_or_else(|| anyhow!("no system randomness for a token"))?)
                }
            };
            // One transaction: a revocation committed meanwhile (by another
            // replica's operator) is either seen here or comes after.
            store.transaction(|tx| {
                if tx.is_revoked(id.as_str())? {
                    return Err(anyhow!(
                        "{id} is revoked, and a revoked identity stays revoked; register the workload under a new SPIFFE ID"
                    ));
                }
                tx.register(&registration, now)?;
                if let Some(token) = &token {
                    tx.add_token(&hash_token(token), id.as_str(), now + ttl.whole_seconds())?;
                }
                Ok(())
            })?;
            if let Some((namespace, service_account)) = k8s {
                println!(
                    "registered {id} for Kubernetes attestation: pods of service account \
                     {namespace}/{service_account} attest with a projected service-account token"
                );
                return Ok(ExitCode::SUCCESS);
            }
            if token.is_none() {
                println!(
                    "registered {id} for cloud attestation: instances whose signed identity \
                     document matches {:?} attest with it (no join token)",
                    registration.cloud_match
                );
                return Ok(ExitCode::SUCCESS);
            }
            let Some(token) = token else {
                return Err(anyhow!("no token made"));
            };
            eprintln!(
                "registered {id}; one-time join token (valid {}):",
                humantime::format_duration(std::time::Duration::from_secs(
                    ttl.whole_seconds() as u64
                ))
            );
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        AuthorityCommand::ImportScan {
            dir,
            database,
            report,
            image_digest,
        } => {
            let bytes = std::fs::read(&report).with_context(|| report.display().to_string())?;
            let parsed =
                scan::parse_report(&bytes).with_context(|| report.display().to_string())?;
            let digests = match image_digest {
                Some(digest) => vec![digest],
                None if !parsed.image_digests.is_empty() => parsed.image_digests.clone(),
                None => {
                    return Err(anyhow!(
                        "{}: the report names no image digest; pass --image-digest sha256:<64 hex>",
                        report.display()
                    ));
                }
            };
            let mut store = open_store(&dir, database.database.as_deref())?;
            let vulns = parsed.to_vulns();
            store.transaction(|tx| {
                digests
                    .iter()
                    .try_for_each(|digest| tx.import_scan(digest, &vulns, now))
            })?;
            println!(
                "imported {} report {} for {}: critical {} high {} medium {} low {} unknown {}",
                parsed.scanner.as_str(),
                parsed.report_sha256,
                digests.join(", "),
                vulns.critical,
                vulns.high,
                vulns.medium,
                vulns.low,
                vulns.unknown
            );
            Ok(ExitCode::SUCCESS)
        }
        AuthorityCommand::Manifests(args) => super::k8s::manifests(args),
        AuthorityCommand::Ca(command) => ca_command(command),
        AuthorityCommand::Revoke {
            dir,
            database,
            id,
            audit_log,
        } => {
            let ca = Ca::load(&dir).context("loading the CA")?;
            let id = checked_id(&ca, &id)?;
            // Opened first: a revocation that could not be audited is not
            // made.
            let audit_log = audit_log.unwrap_or_else(|| dir.join("audit.jsonl"));
            let audit = EventLog::new(Some(open_audit_log(&audit_log)?));
            let mut store = open_store(&dir, database.database.as_deref())?;
            if store.revoke(id.as_str(), now)? {
                audit.revoked(now, id.as_str()).with_context(|| {
                    format!(
                        "{id} is revoked, but its audit line could not be written to {}",
                        audit_log.display()
                    )
                })?;
                println!("revoked {id}; sidecars refuse it from their next revocation poll");
            } else {
                println!("{id} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The Kubernetes attestation settings of `serve`: all three of
/// `--k8s-jwks`, `--k8s-issuer` and `--k8s-audience`, or none.
fn k8s_settings(
    jwks: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    max_token_ttl: time::Duration,
) -> anyhow::Result<Option<(crate::attest::JwtKeys, crate::attest::K8sExpectations)>> {
    const HOW: &str = "Kubernetes attestation needs --k8s-jwks FILE (`kubectl get --raw /openid/v1/jwks > FILE`), \
         --k8s-issuer URL (`issuer` in `kubectl get --raw /.well-known/openid-configuration`) \
         and --k8s-audience AUD (the audience of the pods' projected tokens) together";
    let (jwks, issuer, audience) = match (jwks, issuer, audience) {
        (None, None, None) => return Ok(None),
        (Some(jwks), Some(issuer), Some(audience)) => (jwks, issuer, audience),
        (jwks, issuer, audience) => {
            let missing: Vec<&str> = [
                (jwks.is_none(), "--k8s-jwks"),
                (issuer.is_none(), "--k8s-issuer"),
                (audience.is_none(), "--k8s-audience"),
            ]
            .into_iter()
            .filter_map(|(missing, flag)| missing.then_some(flag))
            .collect();
            return Err(anyhow!("{HOW}; missing: {}", missing.join(", ")));
        }
    };
    if issuer.trim().is_empty() || audience.trim().is_empty() {
        return Err(anyhow!(
            "--k8s-issuer and --k8s-audience must not be empty; {HOW}"
        ));
    }
    if max_token_ttl <= time::Duration::ZERO {
        return Err(anyhow!("--k8s-max-token-ttl must be positive, e.g. 1h"));
    }
    let bytes = std::fs::read(&jwks).with_context(|| {
        format!(
            "--k8s-jwks {}; fetch it with `kubectl get --raw /openid/v1/jwks > {}`",
            jwks.display(),
            jwks.display()
        )
    })?;
    let keys = crate::attest::JwtKeys::from_jwks_json(&bytes).with_context(|| {
        format!(
            "--k8s-jwks {}: expected the cluster's JWKS (`kubectl get --raw /openid/v1/jwks`)",
            jwks.display()
        )
    })?;
    Ok(Some((
        keys,
        crate::attest::K8sExpectations {
            issuer,
            audience,
            max_lifetime: std::time::Duration::from_secs(max_token_ttl.whole_seconds() as u64),
        },
    )))
}

/// The pod lookup of `serve --k8s-api`, with the in-cluster defaults.
fn pod_lookup(
    url: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    trust_labels: Vec<String>,
    appid_digests: Vec<String>,
) -> anyhow::Result<Option<crate::authority::service::PodLookup>> {
    use crate::authority::k8s_api::{IN_CLUSTER_CA, IN_CLUSTER_TOKEN, K8sApi};
    let Some(url) = url else {
        return Ok(None);
    };
    for key in &trust_labels {
        crate::attest::k8s_pod::check_label_key(key)
            .map_err(|e| anyhow!("--k8s-trust-labels: {e}"))?;
    }
    let appid = appid_containers(appid_digests)?;
    let token_file = token_file.unwrap_or_else(|| IN_CLUSTER_TOKEN.into());
    let ca = ca.unwrap_or_else(|| IN_CLUSTER_CA.into());
    let api = K8sApi::new(&url, &ca, &token_file)?;
    Ok(Some(crate::authority::service::PodLookup {
        source: Box::new(api),
        trust_labels,
        appid,
    }))
}

/// `--k8s-appid-digests`, checked: each must be `sha256:<64 lowercase hex>`.
fn appid_containers(digests: Vec<String>) -> anyhow::Result<AppidContainers> {
    if digests.is_empty() {
        return Ok(AppidContainers::ByName);
    }
    for digest in &digests {
        if !crate::attest::k8s_pod::registry_digest_form(digest) {
            return Err(anyhow!(
                "--k8s-appid-digests `{}`: not an image digest (sha256:<64 lowercase hex>); \
                 give the digest of the image `appid inject --image` names (e.g. from \
                 `crane digest IMAGE`)",
                digest.escape_debug()
            ));
        }
    }
    Ok(AppidContainers::ByDigest(digests.into_iter().collect()))
}

/// The store of `--dir DIR [--database URL]`. Its errors name the flag and
/// never show the password.
fn open_store(dir: &std::path::Path, database: Option<&str>) -> anyhow::Result<Store> {
    let database = Database::from_flags(dir, database)?;
    Ok(Store::open_database(&database)?)
}

fn checked_id(ca: &Ca, id: &str) -> anyhow::Result<SpiffeId> {
    let id = SpiffeId::parse(id).map_err(|e| anyhow!("--id: {e}"))?;
    if id.trust_domain() != ca.trust_domain() {
        return Err(anyhow!(
            "--id {id} is not in this authority's trust domain `{}`",
            ca.trust_domain()
        ));
    }
    Ok(id)
}

/// `id`, unless it is the authority's own: sidecars take that ID's word
/// for the trust bundle and revocations, so a workload registered as it
/// could pose as the authority to them.
fn workload_id(ca: &Ca, id: SpiffeId) -> anyhow::Result<SpiffeId> {
    if id.as_str() == crate::authority::server::authority_id(ca.trust_domain()) {
        return Err(anyhow!(
            "--id {id} is the authority's own ID (sidecars trust it for the bundle and \
             revocations); choose another for the workload"
        ));
    }
    Ok(id)
}

/// The authority's audit log, opened for appending (as `serve` writes it).
fn open_audit_log(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open the audit log {} for appending; give the one the authority \
                 serves with (`--audit-log PATH`), in a directory that exists and is writable",
                path.display()
            )
        })
}
