//! Workload identity: the CA, AppID certificate issuance, peer verification.
//!
//! - [`spiffe`]: SPIFFE IDs, validated once at the edge.
//! - [`ca`]: the CA directory (`appid authority init`).
//! - [`issue`]: signing AppID certificates (SPIFFE X509-SVIDs + claims).
//! - [`verify`]: verifying a peer's chain and claims (the data plane's check).
//! - [`spiffe_bundle`]: SPIFFE bundles (JWK Sets) for federation.
//! - [`inspect`]: reading a certificate for people (`appid cert inspect`).
//! - [`files`]: PEM input and all-or-nothing output.

pub mod ca;
pub mod ca_rotation;
pub mod files;
pub mod inspect;
pub mod issue;
mod oid_rewrite;
pub mod spiffe;
pub mod spiffe_bundle;
pub mod verify;

pub use inspect::claims_from_pem_file;
