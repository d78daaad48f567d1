//! Running `iptables-save` / `iptables-restore` (and the IPv6 twins).
//!
//! Backend choice: iptables-nft unless the legacy backend already holds
//! rules and nft holds none (a host whose kube-proxy or firewall still uses
//! legacy: mixing the two makes rule order across them undefined, so we
//! join whichever is in use). The nft backend programs nftables through the
//! iptables rule language, which keeps the rules readable with the tools
//! every operator knows and keeps one generator for both backends; a native
//! nftables table would be cleaner on nft-only hosts but invisible to
//! `iptables-save`, which is where people look first.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use super::{Family, Installed, RedirectOptions, install_script, installed, remove_script};

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Pick: nft, unless only legacy has rules.
    Auto,
    /// `iptables-nft` (nftables underneath).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

/// Why the rules could not be read or applied.
#[derive(Debug, Error)]
pub enum RedirectError {
    #[error("`{command}` not found; install iptables (e.g. apt-get install iptables)")]
    NotFound { command: String },
    #[error("`{command}` needs root or CAP_NET_ADMIN: {stderr}")]
    NotPermitted { command: String, stderr: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{family} rules failed after {done} rules were installed (those were rolled back): {error}"
    )]
    RolledBack {
        family: &'static str,
        done: &'static str,
        error: Box<RedirectError>,
    },
}

impl Backend {
    /// Resolves `Auto` to a concrete backend.
    pub fn resolve(self) -> Backend {
        match self {
            Backend::Auto => {
                let has_rules = |backend: Backend| {
                    run(backend.command(Family::V4, Tool::Save), &[], None)
                        .map(|out| out.lines().any(|l| l.starts_with("-A ")))
                        .unwrap_or(false)
                };
                let nft_missing = !exists(Backend::Nft.command(Family::V4, Tool::Save));
                if nft_missing || (has_rules(Backend::Legacy) && !has_rules(Backend::Nft)) {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            }
            concrete => concrete,
        }
    }

    fn command(self, family: Family, tool: Tool) -> &'static str {
        use {Family::*, Tool::*};
        match (self, family, tool) {
            (Backend::Legacy, V4, Save) => "iptables-legacy-save",
            (Backend::Legacy, V4, Restore) => "iptables-legacy-restore",
            (Backend::Legacy, V6, Save) => "ip6tables-legacy-save",
            (Backend::Legacy, V6, Restore) => "ip6tables-legacy-restore",
            (_, V4, Save) => "iptables-nft-save",
            (_, V4, Restore) => "iptables-nft-restore",
            (_, V6, Save) => "ip6tables-nft-save",
            (_, V6, Restore) => "ip6tables-nft-restore",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Tool {
    Save,
    Restore,
}

/// The families this host can do: IPv4 always, IPv6 when the kernel has it.
pub fn available_families(backend: Backend) -> Vec<Family> {
    let mut families = vec![Family::V4];
    if kernel_has_ipv6() && exists(backend.command(Family::V6, Tool::Save)) {
        families.push(Family::V6);
    }
    families
}

/// Whether this kernel does IPv6 (then the app can open IPv6 connections).
pub fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The IPv6 tool this host lacks although its kernel does IPv6: installing
/// then would capture IPv4 alone, and the app's IPv6 connections (the
/// metadata API's fd00:ec2::254 among them) would go out undecided. `install`
/// refuses that unless told `--ipv4-only`.
pub fn missing_ipv6_tool(backend: Backend) -> Option<&'static str> {
    missing_ipv6_tool_with(backend, kernel_has_ipv6(), exists)
}

fn missing_ipv6_tool_with(
    backend: Backend,
    kernel_has_ipv6: bool,
    exists: impl Fn(&str) -> bool,
) -> Option<&'static str> {
    let save = backend.command(Family::V6, Tool::Save);
    (kernel_has_ipv6 && !exists(save)).then_some(save)
}

/// Reads what of ours is installed, per family.
pub fn show(
    backend: Backend,
    families: &[Family],
) -> Result<Vec<(Family, Installed)>, RedirectError> {
    families
        .iter()
        .map(|&family| Ok((family, read(backend, family)?)))
        .collect()
}

fn read(backend: Backend, family: Family) -> Result<Installed, RedirectError> {
    let save = run(backend.command(family, Tool::Save), &["-t", "nat"], None)?;
    Ok(installed(&save))
}

/// Installs (or re-installs) the rule set for every family, all or nothing.
pub fn apply_install(
    options: &RedirectOptions,
    backend: Backend,
    families: &[Family],
) -> Result<(), RedirectError> {
    let mut done: Vec<Family> = Vec::new();
    for &family in families {
        let result = read(backend, family).and_then(|existing| {
            let script = install_script(options, family, &existing);
            run(
                backend.command(family, Tool::Restore),
                &["--noflush"],
                Some(&script),
            )
            .map(|_| ())
        });
        if let Err(error) = result {
            if let Some(&first) = done.first() {
                // Best effort: take back what this call installed.
                let _ = apply_remove(backend, &done);
                return Err(RedirectError::RolledBack {
                    family: family.as_str(),
                    done: first.as_str(),
                    error: Box::new(error),
                });
            }
            return Err(error);
        }
        done.push(family);
    }
    Ok(())
}

/// Removes everything of ours, for every family. Idempotent.
pub fn apply_remove(backend: Backend, families: &[Family]) -> Result<(), RedirectError> {
    for &family in families {
        let existing = read(backend, family)?;
        if let Some(script) = remove_script(&existing) {
            run(
                backend.command(family, Tool::Restore),
                &["--noflush"],
                Some(&script),
            )?;
        }
    }
    Ok(())
}

fn exists(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(command).is_file())
}

/// Runs `command args`, feeding `stdin`, returning stdout.
fn run(command: &str, args: &[&str], stdin: Option<&str>) -> Result<String, RedirectError> {
    let shown = format!("{command} {}", args.join(" "))
        .trim_end()
        .to_string();
    let mut child = Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RedirectError::NotFound {
                command: command.to_string(),
            },
            _ => RedirectError::Failed {
                command: shown.clone(),
                status: "could not start".into(),
                stderr: e.to_string(),
            },
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the command's own failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| RedirectError::Failed {
            command: shown.clone(),
            status: "did not finish".into(),
            stderr: e.to_string(),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        let lowered = stderr.to_lowercase();
        if lowered.contains("permission denied") || lowered.contains("operation not permitted") {
            return Err(RedirectError::NotPermitted {
                command: shown,
                stderr,
            });
        }
        return Err(RedirectError::Failed {
            command: shown,
            status: output.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_with_ipv6_and_no_ip6tables_is_named_not_passed_over() {
        let only_v4 = |command: &str| !command.starts_with("ip6tables");
        assert_eq!(
            missing_ipv6_tool_with(Backend::Nft, true, only_v4),
            Some("ip6tables-nft-save")
        );
        assert_eq!(
            missing_ipv6_tool_with(Backend::Legacy, true, only_v4),
            Some("ip6tables-legacy-save")
        );
        // Without IPv6 in the kernel there is nothing to capture.
        assert_eq!(missing_ipv6_tool_with(Backend::Nft, false, only_v4), None);
        assert_eq!(missing_ipv6_tool_with(Backend::Nft, true, |_| true), None);
    }
}
