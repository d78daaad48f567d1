//! `appid policy check` and `appid policy explain`.
//!
//! Design bias: *the same engine the sidecar runs, with the evidence shown*.
//! `check` loads the policy exactly as the sidecar would and prints either a
//! one-line summary or every error (`FILE:LINE:COL: message; hint`).
//! `explain` reads the claims out of real certificates (without verifying
//! them: it is about what the policy does with what a certificate says),
//! asks the engine, and prints the decision, the deciding rule, and the
//! rules that almost matched with the one clause that failed.
//!
//! Exit status: 0 valid / allowed; 1 denied (or, without `--method` and
//! `--path`, a connection whose rules inspect HTTP, so it is not allowed
//! as such); 2 bad input: an unreadable file, a policy with errors.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use appid_policy::AppIdClaims;
use appid_policy::policy::{Callee, Caller, Direction, Http, HttpRequest, Outcome, Policy, Query};

use super::args::{self, KeyValue};
use crate::identity::claims_from_pem_file;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: a one-line summary (exit 0) or every error (exit 2)
    Check {
        /// The policy file (YAML, `version: 1`)
        #[arg(value_name = "POLICY.yaml")]
        policy: PathBuf,
    },
    /// Decide one connection or request and show why (exit 0 allow, 1 deny)
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The policy file (YAML, `version: 1`)
    #[arg(value_name = "POLICY.yaml")]
    policy: PathBuf,
    /// The caller: an AppID certificate (PEM), or an IP address for a caller
    /// outside the mesh
    #[arg(long, value_name = "CERT.pem|IP")]
    from: String,
    /// The callee: an AppID certificate (PEM), or an IP address for a
    /// destination outside the mesh
    #[arg(long, value_name = "CERT.pem|IP")]
    to: String,
    /// The port the caller dialled
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The HTTP method of a request to decide (with --path)
    #[arg(long, value_name = "M", requires = "path")]
    method: Option<String>,
    /// The HTTP path of a request to decide (with --method)
    #[arg(long, value_name = "P", requires = "method")]
    path: Option<String>,
    /// A request header, name=value (repeatable; with --method and --path)
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = args::key_value, requires = "method")]
    headers: Vec<KeyValue>,
    /// Decide a connection known not to be HTTP
    #[arg(long, conflicts_with = "method")]
    not_http: bool,
    /// The SNI or Host the app sent to an external destination (--to IP)
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Which side the local sidecar is on; default inbound, or outbound
    /// when --to is an IP address (an external destination)
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    Inbound,
    Outbound,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { policy } => check(&policy),
        PolicyCommand::Explain(args) => explain(&args),
    }
}

/// Loads a policy file; on policy errors prints them all and returns `None`.
fn load(path: &Path) -> anyhow::Result<Option<Policy>> {
    let name = path.display().to_string();
    let text = crate::sidecar::read_policy_file(path)
        .with_context(|| format!("{name}: cannot read the policy file; check the path"))?;
    match Policy::load(&name, &text) {
        Ok(policy) => Ok(Some(policy)),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            let n = errors.len();
            eprintln!(
                "appid: {name}: {n} error{}; nothing was loaded",
                if n == 1 { "" } else { "s" }
            );
            Ok(None)
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    Ok(match load(path)? {
        Some(policy) => {
            println!("{}", policy.summary());
            ExitCode::SUCCESS
        }
        None => ExitCode::from(2),
    })
}

/// One side of the question, as given on the command line.
enum Party {
    Cert(PathBuf, Box<AppIdClaims>),
    Ip(IpAddr),
}

impl Party {
    /// A file that exists is a certificate; otherwise an IP address if it
    /// reads as one; otherwise a certificate path that cannot be read.
    fn parse(value: &str, flag: &str) -> anyhow::Result<Party> {
        let path = PathBuf::from(value);
        if !path.exists()
            && let Ok(ip) = value.parse::<IpAddr>()
        {
            return Ok(Party::Ip(ip));
        }
        // The error names the file and the problem; say what to give instead.
        let claims = claims_from_pem_file(&path).map_err(|e| {
            anyhow!("{flag}: {e}; give an AppID certificate (PEM) or an IP address")
        })?;
        Ok(Party::Cert(path, Box::new(claims)))
    }

    fn describe(&self) -> String {
        match self {
            Party::Cert(path, claims) => format!("{} ({})", claims.id, path.display()),
            Party::Ip(ip) => format!("{ip} (outside the mesh)"),
        }
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let Some(policy) = load(&args.policy)? else {
        return Ok(ExitCode::from(2));
    };
    let from = Party::parse(&args.from, "--from")?;
    let to = Party::parse(&args.to, "--to")?;

    let default_direction = match to {
        Party::Ip(_) => Direction::Outbound,
        Party::Cert(..) => Direction::Inbound,
    };
    let direction = match args.direction {
        None => default_direction,
        Some(DirectionArg::Inbound) => Direction::Inbound,
        Some(DirectionArg::Outbound) => Direction::Outbound,
    };
    let caller = match &from {
        Party::Cert(_, claims) => Caller::Meshed(claims),
        Party::Ip(ip) if direction == Direction::Inbound => Caller::Unauthenticated(*ip),
        Party::Ip(_) => {
            return Err(anyhow!(
                "--from {}: a caller outside the mesh only exists inbound; drop --direction outbound",
                args.from
            ));
        }
    };
    let callee = match &to {
        Party::Cert(_, claims) => Callee::Meshed(claims),
        Party::Ip(ip) if direction == Direction::Outbound => Callee::External {
            ip: *ip,
            host: args.host.as_deref(),
        },
        Party::Ip(_) => {
            return Err(anyhow!(
                "--to {}: a destination outside the mesh only exists outbound; drop --direction inbound",
                args.to
            ));
        }
    };
    if matches!((&from, &to), (Party::Ip(_), Party::Ip(_))) {
        return Err(anyhow!(
            "--from and --to are both IP addresses: one side must be a workload certificate"
        ));
    }
    if args.host.is_some() && !matches!(to, Party::Ip(_)) {
        return Err(anyhow!(
            "--host only applies to an external destination: give --to an IP address"
        ));
    }

    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|kv| (kv.key.to_ascii_lowercase(), kv.value.clone()))
        .collect();
    // The request as the sidecar would see it: the same check, the same
    // canonical path (or the same refusal).
    let canonical = match (&args.method, &args.path) {
        (Some(method), Some(path)) => match crate::sidecar::http::check_request(method, path) {
            Ok(canonical) => Some(canonical),
            Err(refusal) => {
                println!("policy: {}", policy.summary());
                println!(
                    "decision: refused before policy ({} {}): {refusal}",
                    refusal.status(),
                    crate::sidecar::http::INVALID_REQUEST_RULE
                );
                return Ok(super::denied());
            }
        },
        _ => None,
    };
    let http = match (&args.method, &canonical) {
        (Some(method), Some(path)) => Http::Request(HttpRequest {
            method,
            path,
            headers: &headers,
        }),
        _ if args.not_http => Http::NotHttp,
        _ => Http::Unknown,
    };
    let query = Query {
        direction,
        caller,
        callee,
        port: args.port,
        http,
    };

    let explanation = policy.explain(&query);
    println!("policy: {}", policy.summary());
    let request = match (&args.method, &args.path, &canonical) {
        (Some(m), Some(p), Some(c)) if p != c => format!(", {m} {p} (canonical path {c})"),
        (Some(m), Some(p), _) => format!(", {m} {p}"),
        _ if args.not_http => ", not HTTP".to_string(),
        _ => String::new(),
    };
    println!(
        "query: {direction}, from {} to {}, port {}{request}",
        from.describe(),
        to.describe(),
        args.port
    );
    print!("{explanation}");
    let decision = &explanation.decision;
    Ok(match decision.outcome {
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny => super::denied(),
        Outcome::DeferToL7 => {
            println!(
                "note: rule {} inspects HTTP requests; give --method and --path to decide a request, or --not-http",
                decision.rule
            );
            super::denied()
        }
    })
}
