//! The command-line edge: parse arguments once, call the library, map the
//! outcome to an exit status.
//!
//! Exit status (DESIGN.md "Commands"): 0 success; 1 a denial or failed check
//! the user asked about; 2 bad input. Errors print as one line,
//! `appid: error: <what>: <why>`, naming the file and what to do.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod args;
mod authority;
mod cert;
mod inject;
mod issue;
mod k8s;
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
    /// The authority: its CA, its API, registrations, scans and revocations
    Authority {
        #[command(subcommand)]
        command: Box<authority::AuthorityCommand>,
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
    /// Print a shell completion script (e.g. `appid completions bash > /etc/bash_completion.d/appid`)
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Writes the completion script for `shell` to stdout, from the same
/// definitions the parser uses (so it cannot drift from the real flags).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "appid", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the `appid` command and returns its exit status.
pub fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version: print as clap formats them.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error)
            if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // `appid` (or `appid cert`) alone: the usage, on stderr.
            let _ = error.print();
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("appid: error: {}", one_line(&error.to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Authority { command } => authority::run(*command),
        Command::Issue(args) => issue::run(args),
        Command::Cert { command } => cert::run(command),
        Command::Policy { command } => policy::run(command),
        Command::Proxy(args) => proxy::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Redirect(args) => redirect::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing to say.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("appid: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `appid redirect show | head`: when the reader goes away, stop quietly
/// (exit 0) instead of panicking on the failed print. Rust ignores SIGPIPE,
/// and restoring it would take `unsafe`; the standard output macros report
/// the broken pipe as a panic, which this hook turns into a quiet exit.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
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

/// Whether `appid <args>` parses: for tests of the command lines appid
/// writes into manifests.
#[cfg(test)]
pub(crate) fn parses(args: &[&str]) -> Result<(), String> {
    Cli::try_parse_from(std::iter::once("appid").chain(args.iter().copied()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
