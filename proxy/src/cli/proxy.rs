//! `appid proxy --config PROXY.yaml`: run the sidecar.
//!
//! The config is parsed and validated once, here, before anything starts;
//! a bad file is exit 2 with every problem listed. Then the sidecar runs
//! (with the configured number of data-plane threads) until SIGTERM or
//! SIGINT, drains, and exits 0.

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
    // A single-threaded runtime: with `workers: 1` it carries everything;
    // with more, the sidecar starts its data-plane threads (each a runtime
    // of its own, see `sidecar::workers`) and this one keeps the control
    // plane (admin, reloads, the authority client).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(sidecar::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// `service.name` for exported spans: `otlp_service_name`, else the
/// workload's SPIFFE ID, read from `identity.cert` (files identity) or
/// from the identity kept in `identity.authority.state_dir` (an
/// authority-issued one, from its second start on), else `appid-proxy`:
/// on its very first start an authority-issued identity is known only
/// after the exporter's resource is fixed (set `otlp_service_name` for
/// that). Only export uses it; a certificate that cannot be read here
/// fails later, at start, with its own error.
fn service_name(config: &ProxyConfig) -> String {
    if let Some(name) = &config.otlp_service_name {
        return name.clone();
    }
    let cert = match &config.identity {
        IdentitySource::Files { cert, .. } => Some(cert.clone()),
        IdentitySource::Authority {
            state_dir: Some(dir),
            ..
        } => Some(dir.join(crate::sidecar::state_dir::IDENTITY_FILE)),
        IdentitySource::Authority { .. } => None,
    };
    if config.otlp_endpoint.is_some()
        && let Some(cert) = cert
        && let Ok(claims) = crate::identity::inspect::claims_from_pem_file(&cert)
    {
        return claims.id;
    }
    "appid-proxy".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::{Ca, KeyAlg};
    use crate::identity::spiffe::SpiffeId;
    use appid_policy::AppIdClaims;
    use appid_policy::claims::attestation;

    #[test]
    fn service_name_is_the_kept_identitys_spiffe_id() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let ca = Ca::init(&dir.join("ca"), "prod.example", KeyAlg::EcdsaP256).unwrap();
        let config = |otlp: bool| {
            let text = format!(
                "identity:\n  authority: {{ url: \"https://a:15170\", bundle: ca/ca.pem, join_token_file: t, state_dir: state }}\n\
                 trust_domains: [prod.example]\npolicy: p.yaml\noutbound: [{{ listen: \"127.0.0.1:15101\" }}]\n{}",
                if otlp {
                    "otlp_endpoint: \"http://127.0.0.1:4318\"\n"
                } else {
                    ""
                }
            );
            ProxyConfig::from_yaml("proxy.yaml", dir, &text).unwrap()
        };
        // First start: nothing kept yet.
        assert_eq!(service_name(&config(true)), "appid-proxy");
        let id = SpiffeId::parse("spiffe://prod.example/vm/web").unwrap();
        let claims = AppIdClaims::new(id.as_str(), attestation::JOIN_TOKEN);
        let key = KeyAlg::EcdsaP256.generate().unwrap();
        let issued = ca
            .issue(&id, &claims, &key, time::Duration::hours(1))
            .unwrap();
        crate::sidecar::state_dir::StateDir::open(&dir.join("state"))
            .unwrap()
            .save(&key.serialize_pem(), &issued.pem)
            .unwrap();
        assert_eq!(service_name(&config(true)), "spiffe://prod.example/vm/web");
        // Without export nothing is read.
        assert_eq!(service_name(&config(false)), "appid-proxy");
    }
}
