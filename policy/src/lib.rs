//! `appid-policy`: the pure core of appid.
//!
//! - [`claims`]: the AppID claims document a certificate carries.
//! - [`extension`]: the X.509 extension codec for those claims.
//! - [`policy`]: the policy language and its compiled evaluator.
//!
//! Pure by design: no I/O, no async, no `unsafe`. Everything here can be
//! called from the data plane's hot path or from a command-line tool alike.
#![forbid(unsafe_code)]

pub mod claims;
pub mod extension;
pub mod policy;

pub use claims::AppIdClaims;
pub use policy::{Decision, Outcome, Policy, PolicyErrors, Query};
