//! Rapid reset (CVE-2023-44487): requests opened only to be cancelled.
//!
//! Design bias: *count what reached the app, judge the whole connection*.
//! A client that sends a request head and resets it at once costs nothing
//! per stream at a time (the stream is gone before the next arrives, so
//! [`super::MAX_STREAMS`] never fills) and one reset per stream is what the
//! control-frame budget ([`super::super::flood`]) allows — yet each such
//! request is authorized, audited twice (both sidecars) and passed to the
//! app, which starts work on it. A rate limit would also catch a busy,
//! honest client; what sets the attack apart is the *share* of requests
//! cancelled almost as soon as they were sent. So, as Envoy does since that
//! CVE: once [`MIN_REQUESTS`] requests of a connection went to the app,
//! more than half of them reset by the client within [`PREMATURE`] ends the
//! connection (GOAWAY `ENHANCE_YOUR_CALM`, audited and counted as a flood).
//!
//! What an honest client keeps: cancelling any request it likes, however
//! soon, as long as most of its requests run (a gRPC client's deadlines, a
//! hedged call's loser: one cancelled for each that ran is not over half);
//! cancelling a request after a second, always. Requests the relay
//! answered itself (denied, refused, `502`) never reached the app and are
//! not counted either way.

use std::time::Duration;

/// Requests a connection passes to the app before its share of early
/// resets is judged (Envoy's `premature_reset_total_stream_count`).
pub const MIN_REQUESTS: u64 = 500;
/// A request the client resets sooner than this after sending it was
/// cancelled early (Envoy's `premature_reset_min_stream_lifetime_seconds`).
pub const PREMATURE: Duration = Duration::from_secs(1);

/// What one connection's client did with the requests it sent the app.
#[derive(Debug, Default)]
pub(super) struct RapidReset {
    /// Requests passed to the app.
    forwarded: u64,
    /// Of those, reset by the client within [`PREMATURE`].
    premature: u64,
}

/// What a client's reset makes of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Carry,
    /// Over half of at least [`MIN_REQUESTS`] requests cancelled early.
    RapidReset,
}

impl RapidReset {
    /// A request head went to the app.
    pub(super) fn forwarded(&mut self) {
        self.forwarded += 1;
    }

    /// The client reset a request the app has, `age` after sending it.
    pub(super) fn reset(&mut self, age: Duration) -> Verdict {
        if age < PREMATURE {
            self.premature += 1;
        }
        if self.forwarded >= MIN_REQUESTS && self.premature * 2 > self.forwarded {
            Verdict::RapidReset
        } else {
            Verdict::Carry
        }
    }

    /// Requests passed to the app, and how many of them were reset early.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.forwarded, self.premature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(1);

    #[test]
    fn every_request_reset_at_once_ends_the_connection_at_the_minimum() {
        let mut watch = RapidReset::default();
        for n in 1..=MIN_REQUESTS {
            watch.forwarded();
            let verdict = watch.reset(SOON);
            if n < MIN_REQUESTS {
                assert_eq!(verdict, Verdict::Carry, "request {n}");
            } else {
                assert_eq!(verdict, Verdict::RapidReset);
            }
        }
    }

    #[test]
    fn one_cancelled_for_each_that_ran_is_not_a_rapid_reset() {
        // A hedged client: two attempts per call, the loser cancelled.
        let mut watch = RapidReset::default();
        for _ in 0..10 * MIN_REQUESTS {
            watch.forwarded();
            watch.forwarded();
            assert_eq!(watch.reset(SOON), Verdict::Carry);
        }
        assert_eq!(watch.counts(), (20 * MIN_REQUESTS, 10 * MIN_REQUESTS));
        // One more early reset tips it over half.
        assert_eq!(watch.reset(SOON), Verdict::RapidReset);
    }

    #[test]
    fn resets_after_a_second_are_no_evidence() {
        let mut watch = RapidReset::default();
        for _ in 0..2 * MIN_REQUESTS {
            watch.forwarded();
            assert_eq!(watch.reset(PREMATURE), Verdict::Carry);
        }
        assert_eq!(watch.counts(), (2 * MIN_REQUESTS, 0));
    }

    #[test]
    fn honest_requests_first_do_not_buy_unlimited_resets() {
        // The share is over the connection's life: after 1 000 requests
        // that ran, 1 001 early resets (of 1 001 more requests) trip it.
        let mut watch = RapidReset::default();
        for _ in 0..1000 {
            watch.forwarded();
        }
        let mut resets = 0;
        loop {
            watch.forwarded();
            resets += 1;
            if watch.reset(SOON) == Verdict::RapidReset {
                break;
            }
            assert!(resets < 5000, "never tripped");
        }
        assert_eq!(resets, 1001);
    }
}
