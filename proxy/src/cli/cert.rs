//! `appid cert inspect`: what a certificate says, readable, or the AppID
//! claims document alone with `-o json` / `-o yaml` (`--json` is kept as
//! the older spelling of `-o json`).
//!
//! Claims print as flattened `path = value` lines, the same dotted paths a
//! policy uses (`labels.app`, `vulns.critical`), so what you read is what you
//! can write in a rule. Self-reported facts (`reported.*`, the runtime
//! fingerprint) are listed apart from the claims the authority vouches for.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::args::{Output, OutputFormat};
use crate::identity::files;
use crate::identity::inspect::CertInfo;

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Show a certificate's SPIFFE ID, validity, issuer and AppID claims
    Inspect {
        /// A PEM file; the first certificate is inspected
        file: PathBuf,
        /// The same as `-o json` (kept for scripts that use it)
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text: everything, readable; json or yaml: only the AppID claims
        /// document
        #[command(flatten)]
        output: Output,
    },
}

pub fn run(command: CertCommand) -> anyhow::Result<ExitCode> {
    let CertCommand::Inspect {
        file,
        json,
        mut output,
    } = command;
    if json {
        output.format = OutputFormat::Json;
    }
    let certs = files::read_certs(&file)?;
    let name = file.display().to_string();
    let info = CertInfo::from_der(&name, &certs[0])?;

    if !output.is_text() {
        return match &info.claims {
            Ok(claims) => {
                output.print(claims)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(problem) => {
                eprintln!("appid: {name}: {problem}");
                Ok(super::denied())
            }
        };
    }

    let id = match info.uri_sans.as_slice() {
        [one] => one.clone(),
        [] => "(none: no URI SAN)".to_string(),
        many => format!("(ambiguous: {} URI SANs: {})", many.len(), many.join(", ")),
    };
    println!("File:       {name}");
    println!("SPIFFE ID:  {id}");
    println!("Subject:    {}", info.subject);
    println!("Issuer:     {}", info.issuer);
    println!("Serial:     {}", info.serial);
    println!("Valid:      {} to {}", info.not_before, info.not_after);
    println!("Expires:    {}", describe_expiry(info.expires_in_secs));
    if info.is_ca {
        println!("CA:         yes (this is a CA certificate, not a workload)");
    }
    if certs.len() > 1 {
        println!(
            "Chain:      {} more certificate(s) in the file",
            certs.len() - 1
        );
    }
    match &info.claims {
        Ok(claims) => {
            let mut value = serde_json::to_value(claims).context("claims to JSON")?;
            let reported = value
                .as_object_mut()
                .and_then(|claims| claims.remove("reported"));
            // Nothing here checks a signature: a self-signed certificate
            // states whatever it likes, and a sidecar would refuse it.
            println!(
                "AppID claims (vouched for by the issuer, if its chain verifies: \
                 inspect checks no signature):"
            );
            print_flat("", &value);
            if let Some(reported) = reported {
                println!(
                    "Self-reported (not vouched for: what the workload's sidecar said; \
                     only as trustworthy as its host):"
                );
                print_flat("reported", &reported);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("AppID claims: none usable: {problem}");
            Ok(super::denied())
        }
    }
}

fn describe_expiry(secs: i64) -> String {
    let magnitude = humantime::format_duration(std::time::Duration::from_secs(secs.unsigned_abs()));
    if secs >= 0 {
        format!("in {magnitude}")
    } else {
        format!("EXPIRED {magnitude} ago")
    }
}

/// Prints `value` as aligned `path = value` lines under `prefix`.
fn print_flat(prefix: &str, value: &serde_json::Value) {
    let mut lines = Vec::new();
    flatten(prefix, value, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (path, value) in lines {
        println!("  {path:width$} = {value}");
    }
}

/// Flattens JSON into `(dotted.path, rendered value)` pairs, in order; a
/// list of objects (`reported.process.libraries`) as `path[i].key`.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, child, out);
            }
        }
        serde_json::Value::Array(items) if items.iter().any(serde_json::Value::is_object) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_claims_into_policy_paths() {
        let value = serde_json::json!({"v":1,"labels":{"app":"web"},"vulns":{"critical":2}});
        let mut out = Vec::new();
        flatten("", &value, &mut out);
        assert_eq!(
            out,
            vec![
                ("labels.app".to_string(), "web".to_string()),
                ("v".to_string(), "1".to_string()),
                ("vulns.critical".to_string(), "2".to_string()),
            ]
        );
        let reported = serde_json::json!({"process":{"uid":0,"libraries":[{"path":"/l.so","sha256":"ab"}]},
                                          "host":{"os":{"id":"debian"}},"tags":["a","b"]});
        let mut out = Vec::new();
        flatten("reported", &reported, &mut out);
        let paths: Vec<_> = out.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            paths,
            [
                "reported.host.os.id=debian",
                "reported.process.libraries[0].path=/l.so",
                "reported.process.libraries[0].sha256=ab",
                "reported.process.uid=0",
                "reported.tags=[\"a\",\"b\"]",
            ]
        );
    }
}
