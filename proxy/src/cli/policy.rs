//! `appid policy check`, `appid policy explain` and `appid policy replay`.
//!
//! Design bias: *the same engine the sidecar runs, with the evidence shown*.
//! `check` loads the policy exactly as the sidecar would and prints either a
//! one-line summary or every error (`FILE:LINE:COL: message; hint`).
//! `explain` reads the claims out of real certificates (without verifying
//! them: it is about what the policy does with what a certificate says),
//! asks the engine, and prints the decision, the deciding rule, and the
//! rules that almost matched with the one clause that failed.
//!
//! `replay` re-decides the decisions recorded in audit logs under a new
//! policy and reports what would change (see [`crate::replay`]).
//!
//! Exit status: 0 valid / allowed; 1 denied (or, without `--method` and
//! `--path`, a connection whose rules inspect HTTP, so it is not allowed
//! as such); 2 bad input: an unreadable file, a policy with errors.
//! `replay`, like `diff`: 0 nothing would change, 1 some decision would
//! (newly denied or newly allowed; with `--fail-undecidable`, also a line
//! that cannot be re-decided), 2 bad input (an unreadable file, a line that
//! is not an audit line: the report is still printed, naming `file:line`).
//! `explain` and `replay` print text, or `-o json` / `-o yaml`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use appid_policy::AppIdClaims;
use appid_policy::policy::{
    Callee, Caller, Direction, Http, HttpRequest, Outcome, Policy, Query, RuleStatus,
};

use serde::Serialize;

use super::args::{self, KeyValue, Output};
use crate::config::ProxyConfig;
use crate::identity::claims_from_pem_file;
use crate::sidecar::authz::{ExternalVerdict, external_verdict};

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
    /// Re-decide the decisions in audit logs under a new policy and report
    /// what would change (exit 0 nothing, 1 something, 2 bad input)
    Replay(ReplayArgs),
}

/// The sidecar's own trust domains, which `explain` and `replay` both take:
/// `--config` (the sidecar's config file, whose `trust_domains` are read)
/// and `--trust-domain`, either or both.
#[derive(Debug, clap::Args)]
pub struct HomeDomains {
    /// One of the sidecar's `trust_domains` (repeatable): a peer of these
    /// is its own authority's, not foreign, so rules need not name its
    /// trust domain to admit it; default: only the local workload's domain
    #[arg(long = "trust-domain", value_name = "DOMAIN", value_parser = args::trust_domain)]
    trust_domains: Vec<String>,
    /// The sidecar's config file: its `trust_domains` are taken as if each
    /// were given with --trust-domain (nothing else in it is used)
    #[arg(long, value_name = "PROXY.yaml")]
    config: Option<PathBuf>,
}

impl HomeDomains {
    /// The config's `trust_domains`, then each `--trust-domain` not among
    /// them; `None` when the config does not load (its errors printed, for
    /// exit status 2 as a policy with errors gets).
    fn resolve(&self) -> Option<Vec<String>> {
        let mut domains = match &self.config {
            None => Vec::new(),
            Some(path) => match ProxyConfig::load(path) {
                Ok(config) => config.trust_domains,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!(
                        "appid: {}: the sidecar config does not load, so its trust_domains are \
                         unknown; fix it, or give them with --trust-domain instead",
                        path.display()
                    );
                    return None;
                }
            },
        };
        for domain in &self.trust_domains {
            if !domains.contains(domain) {
                domains.push(domain.clone());
            }
        }
        Some(domains)
    }
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The new policy file (YAML, `version: 1`)
    #[arg(value_name = "NEW_POLICY.yaml")]
    policy: PathBuf,
    /// Audit logs (JSON lines); rotated files (audit.jsonl.1 …) are more
    /// arguments, in any order
    #[arg(value_name = "AUDIT.jsonl", required = true)]
    audit: Vec<PathBuf>,
    /// Exit 1 also when some line cannot be re-decided
    #[arg(long)]
    fail_undecidable: bool,
    #[command(flatten)]
    home: HomeDomains,
    #[command(flatten)]
    output: Output,
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
    #[command(flatten)]
    home: HomeDomains,
    #[command(flatten)]
    output: Output,
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
        PolicyCommand::Replay(args) => replay(&args),
    }
}

fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let Some(home) = args.home.resolve() else {
        return Ok(ExitCode::from(2));
    };
    let Some(policy) = load(&args.policy, &home)? else {
        return Ok(ExitCode::from(2));
    };
    let report = crate::replay::replay(&policy, &args.audit)?;
    if !args.output.print(&report)? {
        print!("{report}");
    }
    for bad in &report.bad_lines {
        eprintln!(
            "appid: {}: {}; fix or remove the line, or leave the file out",
            bad.at, bad.error
        );
    }
    Ok(if !report.bad_lines.is_empty() {
        ExitCode::from(2)
    } else if report.changes() > 0 || (args.fail_undecidable && report.undecidable_count() > 0) {
        super::denied()
    } else {
        ExitCode::SUCCESS
    })
}

/// `policy explain -o json|yaml`.
#[derive(Serialize)]
struct ExplainReport<'a> {
    policy: String,
    query: QueryReport<'a>,
    decision: DecisionReport<'a>,
    rules: Vec<RuleReport<'a>>,
    /// For a decision deferred to HTTP: what to give to decide a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize)]
struct QueryReport<'a> {
    direction: &'static str,
    from: String,
    to: String,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical_path: Option<&'a str>,
    not_http: bool,
}

#[derive(Serialize)]
struct DecisionReport<'a> {
    /// `allow`, `deny`, `defer to L7`, `refused` (before policy), or `mesh`
    /// (an address no rule takes outside the mesh: decided on its certificate).
    outcome: &'a str,
    rule: &'a str,
    audit_only: bool,
    /// The decision in words, as `explain` prints it.
    summary: String,
    reason: String,
}

#[derive(Serialize)]
struct RuleReport<'a> {
    name: &'a str,
    action: String,
    line: usize,
    status: &'static str,
    failed: &'a [&'a str],
}

/// Loads a policy file with the sidecar's `trust_domains` as its home ones
/// (none given: the local workload's alone); on policy errors prints them
/// all and returns `None`.
fn load(path: &Path, trust_domains: &[String]) -> anyhow::Result<Option<Policy>> {
    let name = path.display().to_string();
    let text = crate::sidecar::read_policy_file(path)
        .with_context(|| format!("{name}: cannot read the policy file; check the path"))?;
    match Policy::load(&name, &text) {
        Ok(policy) => Ok(Some(
            policy.with_home_trust_domains(trust_domains.iter().map(String::as_str)),
        )),
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
    Ok(match load(path, &[])? {
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
    let Some(home) = args.home.resolve() else {
        return Ok(ExitCode::from(2));
    };
    let Some(policy) = load(&args.policy, &home)? else {
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
                let reason = refusal.to_string();
                let report = ExplainReport {
                    policy: policy.summary().to_string(),
                    query: QueryReport {
                        direction: direction.as_str(),
                        from: from.describe(),
                        to: to.describe(),
                        port: args.port,
                        method: Some(method.as_str()),
                        path: Some(path.as_str()),
                        canonical_path: None,
                        not_http: false,
                    },
                    decision: DecisionReport {
                        outcome: "refused",
                        rule: crate::sidecar::http::INVALID_REQUEST_RULE,
                        audit_only: false,
                        summary: format!("refused before policy ({}): {reason}", refusal.status()),
                        reason,
                    },
                    rules: Vec::new(),
                    note: None,
                };
                if !args.output.print(&report)? {
                    println!("policy: {}", policy.summary());
                    println!(
                        "decision: refused before policy ({} {}): {refusal}",
                        refusal.status(),
                        crate::sidecar::http::INVALID_REQUEST_RULE
                    );
                }
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

    // What the sidecar makes of a connection outside the mesh as the app
    // makes it (its name and all), read with the sidecar's own
    // `external_verdict`: an address no rule takes outside the mesh is not
    // decided by the policy's default, the sidecar makes an mTLS
    // connection there and decides on the certificate it gets.
    let into_mesh = match query.callee {
        Callee::External { ip, .. } => {
            let verdict = external_verdict(
                &policy.decide(&query),
                || policy.metadata_by_name_only(&query),
                || policy.decide_as_external(&query),
            );
            (verdict == ExternalVerdict::NotExternal).then(|| {
                format!(
                    "into the mesh: no rule takes {ip} outside the mesh, so the sidecar does not \
                     decide it by the policy's default: it makes an mTLS connection to {ip} and \
                     decides on the certificate presented there (a server without one is not reached)"
                )
            })
        }
        _ => None,
    };

    // A name alone makes no metadata API of an address no rule takes
    // outside the mesh: the sidecar decides such a connection as it would
    // without the name (and sends it into the mesh), so explain that.
    let name_only = match query.callee {
        Callee::External {
            ip,
            host: Some(host),
        } if policy.metadata_by_name_only(&query) => Some((ip, host)),
        _ => None,
    };
    let query = match name_only {
        Some((ip, _)) => Query {
            callee: Callee::External { ip, host: None },
            ..query
        },
        None => query,
    };

    let explanation = policy.explain(&query);
    let decision = &explanation.decision;
    let note = match name_only {
        Some((ip, host)) => Some(format!(
            "--host {host} names the cloud metadata API, but no rule takes {ip} outside the mesh: \
             the sidecar does not treat {ip} as the metadata API and decides it without the name \
             (a workload in the mesh: explain that call with --to <its certificate>)"
        )),
        None if into_mesh.is_some() => Some(format!(
            "explain that call with --to <the certificate of the workload at {}>; a rule with \
             `to.external` lets the app reach it outside the mesh",
            args.to
        )),
        None => (decision.outcome == Outcome::DeferToL7).then(|| {
            format!(
                "rule {} inspects HTTP requests; give --method and --path to decide a request, or --not-http",
                decision.rule
            )
        }),
    };
    let code = match decision.outcome {
        _ if into_mesh.is_some() => super::denied(),
        Outcome::Allow => ExitCode::SUCCESS,
        Outcome::Deny | Outcome::DeferToL7 => super::denied(),
    };
    if !args.output.is_text() {
        let report = ExplainReport {
            policy: policy.summary().to_string(),
            query: QueryReport {
                direction: direction.as_str(),
                from: from.describe(),
                to: to.describe(),
                port: args.port,
                method: args.method.as_deref(),
                path: args.path.as_deref(),
                canonical_path: canonical.as_deref(),
                not_http: args.not_http,
            },
            decision: DecisionReport {
                outcome: if into_mesh.is_some() {
                    "mesh"
                } else if decision.audit_only {
                    "allow"
                } else {
                    decision.outcome.as_str()
                },
                rule: decision.rule,
                audit_only: decision.audit_only,
                summary: into_mesh.clone().unwrap_or_else(|| decision.to_string()),
                reason: decision.why().to_string(),
            },
            rules: explanation
                .rules
                .iter()
                .map(|r| RuleReport {
                    name: r.name,
                    action: r.action.to_string(),
                    line: r.line,
                    status: match r.status {
                        RuleStatus::Matched => "matched",
                        RuleStatus::NeedsHttp => "needs_http",
                        RuleStatus::NotHttp => "not_http",
                        RuleStatus::Failed => "failed",
                    },
                    failed: &r.failed,
                })
                .collect(),
            note,
        };
        args.output.print(&report)?;
        return Ok(code);
    }
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
    match &into_mesh {
        // The rules as they read the address (a near miss may say why no
        // rule takes it outside), under what the sidecar does with it.
        Some(mesh) => {
            let text = explanation.to_string();
            let rest = text.split_once('\n').map_or("", |(_, rest)| rest);
            print!("decision: {mesh}\n{rest}");
        }
        None => print!("{explanation}"),
    }
    if let Some(note) = note {
        println!("note: {note}");
    }
    Ok(code)
}
