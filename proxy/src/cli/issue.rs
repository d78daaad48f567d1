//! `appid issue`: an AppID certificate signed offline by a local CA.
//!
//! For development and tests; in production the authority issues
//! certificates after attesting the workload. The claims are built here from
//! the flags (and a scanner report), then handed to [`Ca::issue`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use appid_policy::AppIdClaims;
use appid_policy::claims::{Cloud, Image, attestation};

use super::args::{self, KeyValue};
use crate::identity::ca::{Ca, KeyAlg};
use crate::identity::files::FileError;
use crate::identity::issue::IssueError;
use crate::identity::spiffe::SpiffeId;
use crate::scan;

/// How the identity was established (recorded in the `attestation` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attestation {
    Manual,
    JoinToken,
    AwsIid,
    GcpIit,
    K8sPsat,
}

impl Attestation {
    fn as_str(self) -> &'static str {
        match self {
            Attestation::Manual => attestation::MANUAL,
            Attestation::JoinToken => attestation::JOIN_TOKEN,
            Attestation::AwsIid => attestation::AWS_IID,
            Attestation::GcpIit => attestation::GCP_IIT,
            Attestation::K8sPsat => attestation::K8S_PSAT,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// CA directory made by `appid authority init`
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The workload's SPIFFE ID, in the CA's trust domain
    #[arg(long, value_name = "SPIFFE_ID", value_parser = parse_spiffe_id)]
    id: SpiffeId,
    /// A label, key=value (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = args::key_value)]
    labels: Vec<KeyValue>,
    /// The image digest, sha256:<64 hex>
    #[arg(long, value_name = "D", value_parser = args::image_digest)]
    image_digest: Option<String>,
    /// The image name, e.g. registry.example/web:1.4
    #[arg(long, value_name = "NAME")]
    image_name: Option<String>,
    /// A Trivy or Grype JSON report; fills `vulns` (and the image digest if the report has one)
    #[arg(long, value_name = "REPORT.json")]
    vulns: Option<PathBuf>,
    /// A cloud tag, key=value (repeatable)
    #[arg(long = "cloud-tag", value_name = "K=V", value_parser = args::key_value)]
    cloud_tags: Vec<KeyValue>,
    /// How the identity was attested: recorded as given, not performed (the authority's
    /// `serve` attests for real)
    #[arg(long, value_enum, default_value_t = Attestation::Manual)]
    attestation: Attestation,
    /// Certificate lifetime, e.g. 30s, 15m, 1h
    #[arg(long, value_name = "TTL", value_parser = args::duration, default_value = "1h")]
    ttl: time::Duration,
    /// Key algorithm of the workload key
    #[arg(long, value_enum, default_value_t = KeyAlg::EcdsaP256)]
    key_alg: KeyAlg,
    /// Where to write the certificate (PEM)
    #[arg(long, value_name = "OUT.pem")]
    cert: PathBuf,
    /// Where to write the private key (PEM, mode 0600)
    #[arg(long, value_name = "OUT.pem")]
    key: PathBuf,
    /// Replace --cert and --key if they exist (otherwise that is an error and nothing is written)
    #[arg(long)]
    force: bool,
}

fn parse_spiffe_id(input: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(input).map_err(|e| e.to_string())
}

pub fn run(args: IssueArgs) -> anyhow::Result<ExitCode> {
    if args.cert == args.key {
        return Err(anyhow!("--cert and --key must be different files"));
    }
    let ca = Ca::load(&args.dir).context("loading the CA (run `appid authority init` first?)")?;
    let claims = build_claims(&args)?;
    let issued = ca
        .issue_to_files(
            &args.id,
            &claims,
            args.key_alg,
            args.ttl,
            &args.cert,
            &args.key,
            args.force,
        )
        .map_err(|e| match e {
            IssueError::File(e @ FileError::AlreadyExists { .. }) => {
                anyhow!("{e} (pass --force to replace it)")
            }
            e => anyhow::Error::new(e).context(format!("issuing a certificate for {}", args.id)),
        })?;
    println!(
        "issued {} (serial {}, expires {}) -> {}, key {}",
        args.id,
        issued.serial,
        issued
            .not_after
            .format(&time::format_description::well_known::Rfc3339)?,
        args.cert.display(),
        args.key.display()
    );
    if args.ttl > time::Duration::days(1) {
        eprintln!("appid: warning: a TTL over a day defeats short-lived credentials");
    }
    if args.attestation != Attestation::Manual {
        // Policy on `from.attestation` trusts the issuer, and an offline
        // issue attests nothing.
        eprintln!(
            "appid: warning: the certificate says `attestation: {}`, but this command attested nothing; \
             rules on `from.attestation` trust whoever holds the CA key (`appid authority serve` attests for real)",
            args.attestation.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn build_claims(args: &IssueArgs) -> anyhow::Result<AppIdClaims> {
    let mut claims = AppIdClaims::new(args.id.as_str(), args.attestation.as_str());
    for KeyValue { key, value } in &args.labels {
        claims.labels.insert(key.clone(), value.clone());
    }
    if args.image_digest.is_some() || args.image_name.is_some() {
        claims.image = Some(Image {
            digest: args.image_digest.clone(),
            name: args.image_name.clone(),
        });
    }
    if let Some(report_path) = &args.vulns {
        read_report(report_path)?.fill_claims(&mut claims);
    }
    if !args.cloud_tags.is_empty() {
        let mut cloud = Cloud::default();
        for KeyValue { key, value } in &args.cloud_tags {
            cloud.tags.insert(key.clone(), value.clone());
        }
        claims.cloud = Some(cloud);
    }
    Ok(claims)
}

fn read_report(path: &Path) -> anyhow::Result<scan::ScanReport> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    scan::parse_report(&bytes).with_context(|| format!("{}", path.display()))
}
