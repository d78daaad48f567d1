//! The command-line edge: parse arguments once, call the library, map the
//! outcome to an exit status.
//!
//! Exit status (DESIGN.md "Commands"): 0 success; 1 a denial or failed check
//! the user asked about; 2 bad input. Errors print as one line,
//! `appid: error: <what>: <why>`, naming the file and what to do.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod authority;
mod cert;
mod inject;
mod issue;
mod policy;
mod probe;
mod proxy;
mod redirect;

/// appid: a transparent mTLS sidecar that authorizes workloads by their
/// signed AppID claims (SPIFFE ID, labels, image, vulnerabilities, cloud).
#[derive(Debug, Parser)]
#[command(name = "appid", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The authority: create the CA (more to come: serve, register, revoke)
    Authority {
        #[command(subcommand)]
        command: authority::AuthorityCommand,
    },
    /// Issue an AppID certificate offline, signed by a local CA (dev and tests)
    Issue(issue::IssueArgs),
    /// Certificate tools
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Run the sidecar
    Proxy(proxy::ProxyArgs),
    /// Check the local sidecar's /live or /ready (for exec probes)
    Probe(probe::ProbeArgs),
    /// Kubernetes YAML in, YAML with the sidecar injected out
    Inject(inject::InjectArgs),
    /// Install, remove or show the transparent-capture iptables rules
    Redirect(redirect::RedirectArgs),
    /// Check a policy file, or explain a decision
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
}

/// Runs the `appid` command and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version: print as clap formats them.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("appid: error: {}", one_line(&error.to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Authority { command } => authority::run(command),
        Command::Issue(args) => issue::run(args),
        Command::Cert { command } => cert::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Proxy(args) => proxy::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Redirect(args) => redirect::run(args),
        Command::Inject(args) => inject::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("appid: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Folds clap's multi-line usage error into one line, without the usage
/// banner: `error: invalid value 'x' for '--id <SPIFFE_ID>': ...`.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exit status 1: a denial or a failed check the user asked about.
pub(crate) fn denied() -> ExitCode {
    ExitCode::from(1)
}
