//! How many connections the process can afford: file descriptors.
//!
//! Design bias: *run out of slots, never out of descriptors*. Every proxied
//! connection costs two descriptors (the caller's and the one we dial), in
//! each direction. A sidecar that runs out of descriptors cannot accept its
//! admin probes or dial its authority, and gets restarted; one that runs out
//! of connection slots refuses the excess (counted) and keeps serving. So at
//! start the soft `RLIMIT_NOFILE` is raised to the hard limit, and
//! `max_connections` (per direction) is capped so that both directions at
//! full load use at most half of it: `nofile / 8`. The other half is left for
//! the admin API, the authority, logs and the listeners themselves.

/// The effective per-direction connection limit for `configured` (raising
/// the descriptor limit first). Logs when the configured value is lowered.
pub fn max_connections(configured: usize) -> usize {
    let nofile = raise_nofile();
    let cap = cap_for(nofile);
    if configured > cap {
        tracing::info!(
            configured,
            effective = cap,
            nofile,
            "max_connections lowered to fit the file descriptor limit (2 per connection, 2 directions, half kept free)"
        );
    }
    configured.min(cap)
}

/// `nofile / 8`, at least 1.
fn cap_for(nofile: u64) -> usize {
    usize::try_from(nofile / 8).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit
/// in force afterwards (`u64::MAX` when unlimited).
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if limit.current == limit.maximum {
        return soft;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum.unwrap_or(u64::MAX),
        Err(e) => {
            tracing::debug!(error = %e, soft, "could not raise RLIMIT_NOFILE; keeping the soft limit");
            soft
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_descriptors_for_both_directions() {
        assert_eq!(cap_for(20_000), 2_500);
        assert_eq!(cap_for(1_048_576), 131_072);
        assert_eq!(cap_for(4), 1);
        assert_eq!(cap_for(u64::MAX), (u64::MAX / 8) as usize);
    }

    #[test]
    fn a_small_configured_limit_is_kept() {
        assert_eq!(max_connections(2), 2);
    }
}
