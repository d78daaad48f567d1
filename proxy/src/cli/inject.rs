//! `appid inject [FILE|-]`: Kubernetes YAML in, the same YAML with the
//! sidecar injected out (on stdout). `appid inject config …` prints the
//! namespace's ConfigMap the injected pods mount (see [`super::k8s`]).
//!
//! One command with both a subcommand and a positional file: clap takes
//! `config` as the subcommand (`args_conflicts_with_subcommands`), so a
//! manifest file literally named `config` is given as `./config`. That
//! keeps the ConfigMap next to the command that relies on it, rather than
//! a separate `inject-config`.
//!
//! See [`crate::inject`] for what is added and what is preserved. Warnings
//! (a workload left alone, and why) and a one-line summary go to stderr, so
//! stdout stays a manifest that can be piped into `kubectl apply -f -`.
//!
//! Exit status: 0 success (also when nothing was injected); 2 bad input:
//! unreadable file, invalid YAML, a bad `appid.dev/*` annotation, a bad
//! `--image`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::inject::{InjectOptions, default_image, inject};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InjectArgs {
    #[command(subcommand)]
    command: Option<InjectCommand>,
    /// The manifest (multi-document YAML or JSON); `-` or nothing reads stdin
    #[arg(value_name = "FILE|-")]
    file: Option<PathBuf>,
    /// The image of the injected containers [default: appid/appid:<version>]
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum InjectCommand {
    /// Print the namespace's ConfigMap `appid-sidecar` (proxy.yaml, the
    /// policy, ca.pem) that injected pods mount
    Config(super::k8s::ConfigArgs),
}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    if let Some(InjectCommand::Config(config)) = args.command {
        return super::k8s::config(config);
    }
    let (name, input) = match args.file.as_deref() {
        None => read_stdin()?,
        Some(path) if path.as_os_str() == "-" => read_stdin()?,
        Some(path) => {
            let name = path.display().to_string();
            let input = std::fs::read_to_string(path)
                .with_context(|| format!("{name}: cannot read it (is it a UTF-8 text file?)"))?;
            (name, input)
        }
    };
    let options = InjectOptions {
        image: args.image.unwrap_or_else(default_image),
    };
    let output = inject(&input, &options).with_context(|| name.clone())?;
    for warning in &output.warnings {
        eprintln!("appid: warning: {name}: {warning}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the manifest to stdout")?;
    eprintln!(
        "appid: {name}: injected {} workload{}, skipped {}",
        output.injected,
        if output.injected == 1 { "" } else { "s" },
        output.skipped
    );
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> anyhow::Result<(String, String)> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("<stdin>: cannot read it (is it UTF-8 text?)")?;
    Ok(("<stdin>".to_owned(), input))
}
