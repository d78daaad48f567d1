//! `appid-proxy`: the `appid` binary's library.
//!
//! - [`identity`]: the CA, AppID certificate issuance and peer verification.
//! - [`scan`]: Trivy and Grype scanner reports, read into vulnerability counts.
//! - [`cli`]: the command-line edge (the only place `anyhow` is used).
#![forbid(unsafe_code)]

pub mod cli;
pub mod identity;
pub mod scan;
