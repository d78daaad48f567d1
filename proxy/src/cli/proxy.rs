//! `appid proxy --config PROXY.yaml`: run the sidecar.
//!
//! The config is parsed and validated once, here, before anything starts;
//! a bad file is exit 2 with every problem listed. Then the runtime is built
//! with the configured number of worker threads and the sidecar runs until
//! SIGTERM or SIGINT, drains, and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{IdentitySource, ProxyConfig};
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
    let service_name = service_name(&config);
    let _telemetry = crate::telemetry::init(
        config
            .otlp_endpoint
            .as_deref()
            .map(|endpoint| crate::telemetry::Export {
                endpoint,
                service_name: &service_name,
                sampling_ratio: config.otlp_sampling_ratio.get(),
            }),
        config.log_format,
    )?;
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

/// `service.name` for exported spans: `otlp_service_name`, else the
/// workload's SPIFFE ID read from `identity.cert` (files identity), else
/// `appid-proxy` (an authority-issued identity is known only after start,
/// and the exporter's resource is fixed when it is built). Only export
/// uses it; a certificate that cannot be read here fails later, at start,
/// with its own error.
fn service_name(config: &ProxyConfig) -> String {
    if let Some(name) = &config.otlp_service_name {
        return name.clone();
    }
    if config.otlp_endpoint.is_some()
        && let IdentitySource::Files { cert, .. } = &config.identity
        && let Ok(claims) = crate::identity::inspect::claims_from_pem_file(cert)
    {
        return claims.id;
    }
    "appid-proxy".to_owned()
}
