//! `appid redirect install|remove|show`: transparent capture rules.
//!
//! See [`crate::redirect`] for the rule set. `--dry-run` prints the exact
//! `iptables-restore` input instead of applying it.

use std::process::ExitCode;

use anyhow::Context;
use ipnet::IpNet;

use super::args::Output;
use crate::redirect::{self, Backend, Family, Installed, RedirectOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Install (or update) the rules; running it twice installs them once
    Install,
    /// Remove every rule and chain of ours; nothing else is touched
    Remove,
    /// Print the rules of ours that are installed (exit 1 if none)
    Show,
}

#[derive(Debug, clap::Args)]
pub struct RedirectArgs {
    action: Action,
    /// The sidecar's uid: its own traffic is never redirected
    #[arg(long, value_name = "UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// Also exclude traffic of this gid
    #[arg(long, value_name = "GID")]
    proxy_gid: Option<u32>,
    /// The sidecar's transparent inbound port
    #[arg(long, value_name = "N", default_value_t = 15106)]
    inbound_port: u16,
    /// The sidecar's transparent outbound port
    #[arg(long, value_name = "N", default_value_t = 15101)]
    outbound_port: u16,
    /// The sidecar's health port (config `health:`), never captured inbound
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_HEALTH_PORT)]
    health_port: u16,
    /// The port of an authority that runs on this host: left uncaptured
    /// inbound so that sidecars reach it (e.g. 15170) [default: none]
    #[arg(long, value_name = "N", value_parser = parse_port)]
    authority_port: Option<u16>,
    /// Inbound ports left alone, comma-separated (e.g. 22,8081)
    #[arg(long, value_name = "PORTS", value_delimiter = ',', value_parser = parse_port)]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone, comma-separated
    #[arg(long, value_name = "PORTS", value_delimiter = ',', value_parser = parse_port)]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone, comma-separated
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    exclude_outbound_cidrs: Vec<IpNet>,
    /// A sidecar config whose `services:` get their own outbound capture
    /// (each service's uid, user or cgroup to its own outbound listener)
    #[arg(long, value_name = "PROXY.yaml")]
    services_from: Option<std::path::PathBuf>,
    /// Which iptables to drive
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Only IPv4, even where the host has IPv6
    #[arg(long)]
    ipv4_only: bool,
    /// Print the exact iptables-restore input instead of applying it
    #[arg(long)]
    dry_run: bool,
    /// For show: text (iptables-save lines), json or yaml
    #[command(flatten)]
    output: Output,
}

/// `redirect show -o json|yaml`: one entry per address family.
#[derive(serde::Serialize)]
struct ShowReport<'a> {
    family: &'static str,
    backend: &'static str,
    installed: bool,
    rules: &'a [String],
}

fn parse_port(input: &str) -> Result<u16, String> {
    match input.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{input}` is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn parse_cidr(input: &str) -> Result<IpNet, String> {
    input
        .trim()
        .parse()
        .map_err(|_| format!("`{input}` is not a CIDR; write e.g. 10.0.0.0/8 or fd00::/8"))
}

pub fn run(args: RedirectArgs) -> anyhow::Result<ExitCode> {
    let services = match &args.services_from {
        None => Vec::new(),
        Some(path) => {
            let config = crate::config::ProxyConfig::load(path)
                .map_err(|e| anyhow::anyhow!("--services-from: {e}"))?;
            if config.services.is_empty() {
                anyhow::bail!(
                    "--services-from {}: the config has no `services:`; remove the option, or add the services",
                    path.display()
                );
            }
            redirect::ServiceRedirect::from_config(&config)
        }
    };
    let options = RedirectOptions {
        services,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        health_port: args.health_port,
        authority_port: args.authority_port,
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
        exclude_outbound_ports: args.exclude_outbound_ports.clone(),
        exclude_outbound_cidrs: args.exclude_outbound_cidrs.clone(),
    };
    let backend = args.backend.resolve();
    let families = if args.ipv4_only {
        if matches!(args.action, Action::Install) && redirect::kernel_has_ipv6() {
            eprintln!(
                "warning: --ipv4-only: this host has IPv6, and the app's IPv6 connections are not \
                 captured: they go out with no decision and no audit line, the metadata API's \
                 fd00:ec2::254 and fd20:ce::254 among them"
            );
        }
        vec![Family::V4]
    } else {
        if matches!(args.action, Action::Install)
            && let Some(tool) = redirect::missing_ipv6_tool(backend)
        {
            anyhow::bail!(
                "this host has IPv6 but `{tool}` is not installed: only IPv4 would be captured, and \
                 the app's IPv6 connections (the metadata API's fd00:ec2::254 among them) would go \
                 out with no decision and no audit line; install ip6tables (Debian's and Alpine's \
                 iptables packages have it), or pass --ipv4-only to capture IPv4 alone knowingly"
            );
        }
        redirect::available_families(backend)
    };

    if args.dry_run {
        // Against the current state when readable (then the script is
        // exactly what would run), else against an empty table.
        let current = redirect::show(backend, &families).ok();
        for &family in &families {
            let existing = current
                .as_ref()
                .and_then(|c| c.iter().find(|(f, _)| *f == family))
                .map(|(_, i)| i.clone())
                .unwrap_or_default();
            println!("# {} ({} backend)", family.as_str(), backend.as_str());
            match args.action {
                Action::Install => {
                    print!("{}", redirect::install_script(&options, family, &existing))
                }
                Action::Remove => match redirect::remove_script(&existing) {
                    Some(script) => print!("{script}"),
                    None => println!("# nothing of ours is installed"),
                },
                Action::Show => print_installed(&existing),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    match args.action {
        Action::Install => {
            redirect::apply_install(&options, backend, &families)
                .context("installing the redirect rules")?;
            let names: Vec<_> = families.iter().map(|f| f.as_str()).collect();
            println!(
                "installed appid redirect ({}, {} backend): inbound -> :{}, outbound -> :{}, uid {} excluded",
                names.join(" + "),
                backend.as_str(),
                options.inbound_port,
                options.outbound_port,
                options.proxy_uid
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Remove => {
            redirect::apply_remove(backend, &families).context("removing the redirect rules")?;
            println!("removed appid redirect ({} backend)", backend.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Action::Show => {
            let installed = redirect::show(backend, &families).context("reading the rules")?;
            if !args.output.is_text() {
                let report: Vec<ShowReport<'_>> = installed
                    .iter()
                    .map(|(family, found)| ShowReport {
                        family: family.as_str(),
                        backend: backend.as_str(),
                        installed: !found.is_empty(),
                        rules: &found.lines,
                    })
                    .collect();
                args.output.print(&report)?;
                return Ok(if report.iter().any(|r| r.installed) {
                    ExitCode::SUCCESS
                } else {
                    super::denied()
                });
            }
            let mut any = false;
            for (family, found) in installed {
                println!("# {} ({} backend)", family.as_str(), backend.as_str());
                any |= !found.is_empty();
                print_installed(&found);
            }
            Ok(if any {
                ExitCode::SUCCESS
            } else {
                super::denied()
            })
        }
    }
}

fn print_installed(found: &Installed) {
    if found.is_empty() {
        println!("# not installed");
    }
    for line in &found.lines {
        println!("{line}");
    }
}
