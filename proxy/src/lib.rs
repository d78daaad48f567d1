//! `appid-proxy`: the `appid` binary's library.
//!
//! - [`identity`]: the CA, AppID certificate issuance and peer verification.
//! - [`scan`]: Trivy and Grype scanner reports, read into vulnerability counts.
//! - [`cli`]: the command-line edge (the only place `anyhow` is used).
#![forbid(unsafe_code)]

pub mod attest;
pub mod authority;
pub mod cli;
pub mod detect;
pub mod head_host;
pub mod identity;
pub mod inject;
pub mod k8s;
pub mod redirect;
pub mod replay;
pub mod scan;
pub mod sidecar;
pub mod swar;
// Sidecar surroundings: configuration, audit log, metrics, admin API and
// health port (both served by `bounded_http`).
pub mod admin;
pub mod audit;
pub mod bounded_http;
pub mod config;
pub mod health;
pub mod metrics;
pub mod telemetry;
