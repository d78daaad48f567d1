//! The authority: attests workloads and issues their AppID certificates.
//!
//! - [`store`]: the database, SQLite or PostgreSQL (registrations, one-time
//!   tokens, scans, issued serials, revocations);
//! - [`service`]: attestation, claim derivation, issuance, audit lines;
//! - [`cloud`]: AWS and GCP instance documents (via [`crate::attest`]);
//! - [`k8s_api`]: the pod lookup at the Kubernetes API (`serve --k8s-api`);
//! - [`reported`]: bounds on the workload's self-reported facts;
//! - [`server`]: the HTTPS API (`appid authority serve`);
//! - [`federation`]: other trust domains' bundles, and our bundle endpoint;
//! - [`client`]: the sidecar's side (bootstrap, renewal, revocations).

pub mod client;
pub mod cloud;
pub mod event_log;
pub mod federation;
pub mod k8s_api;
pub mod reported;
pub mod server;
pub mod service;
pub mod store;

/// The authority's default port.
pub const DEFAULT_PORT: u16 = 15170;
