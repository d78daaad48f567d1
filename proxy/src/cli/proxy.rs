//! `appid proxy --config PROXY.yaml`: run the sidecar.
//!
//! The config is parsed and validated once, here, before anything starts;
//! a bad file is exit 2 with every problem listed. Then the runtime is built
//! with the configured number of worker threads and the sidecar runs until
//! SIGTERM or SIGINT, drains, and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::ProxyConfig;
use crate::sidecar;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The sidecar configuration (see DESIGN.md "Sidecar configuration")
    #[arg(long, value_name = "PROXY.yaml")]
    config: PathBuf,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = ProxyConfig::load(&args.config)?;
    // Held for the whole run: dropping it flushes pending spans at exit.
    let _telemetry = crate::telemetry::init(config.otlp_endpoint.as_deref(), "appid-proxy")?;
    // One worker: a single-threaded scheduler, which skips the work-stealing
    // machinery (atomics, cross-thread wake-ups) a lone worker cannot use.
    let mut builder = if config.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.workers);
        builder
    };
    let runtime = builder
        .thread_name("appid-worker")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(sidecar::run(config))?;
    Ok(ExitCode::SUCCESS)
}
