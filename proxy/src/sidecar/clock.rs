//! When a request arrived: the clocks read once for all that a request
//! needs a time for.
//!
//! Design bias: **read the clocks once per batch of bytes, not once per
//! use.** A request needed a time six times in each sidecar: its start and
//! its response (the latency histogram), the start and end of its policy
//! decision, the certificate-expiry check and its audit line. A clock
//! reading is tens of nanoseconds on a VM (16 ns in a loop here, more in
//! real code, where the read waits for the loads before it), and in a
//! profile of HTTP/2 through the pair (`bench/e2e/run.sh`, stop 57) the
//! vDSO's `clock_gettime` was 3.6% of the sidecars' core: more than any
//! function of ours but the relay's loop and the HPACK decoder.
//!
//! So a request carries a [`Stamp`], both clocks read when its bytes were
//! read, and everything about the request that needs a time takes it from
//! there: the expiry check and the audit line the wall clock, the latency
//! the monotonic one. The HTTP/2 relay reads the clocks at most once per
//! batch of bytes it reads from a side ([`BatchClock`]), however many
//! requests and responses the batch holds: the time they were read, to
//! within the time it takes to handle the batch (microseconds; the
//! latency histogram's smallest bucket is 0.5 ms, the audit line's time is
//! to the millisecond).
//!
//! The policy decision is timed with two readings of its own, for one
//! decision in 16 (`authz::TIMED_DECISIONS`). Timeouts read the clock as
//! they always did (and tokio's timer reads its own).

use std::time::{Instant, SystemTime};

/// Both clocks, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// For durations (latency, rapid resets).
    pub mono: Instant,
    /// For what is compared with dates or written down: certificate
    /// expiry, the audit line's time.
    pub wall: SystemTime,
}

impl Stamp {
    /// Both clocks, now.
    pub fn now() -> Stamp {
        Stamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Seconds since the Unix epoch at `wall` (negative before it, rounded
/// down, as `OffsetDateTime::unix_timestamp` has it), without the calendar
/// arithmetic of going through a date.
pub fn unix_seconds(wall: SystemTime) -> i64 {
    since_epoch(wall).0
}

/// `wall` as whole seconds since the Unix epoch, rounded down (before 1970
/// too), and the nanoseconds after that second: what a date's seconds and
/// subsecond are, with no calendar arithmetic.
pub fn since_epoch(wall: SystemTime) -> (i64, u32) {
    match wall.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => (
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            since.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-whole, 0),
                nanos => (-whole - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

/// The clocks read at most once per batch of bytes: [`Self::bytes_read`]
/// when a read returned bytes, then [`Self::stamp`] (or [`Self::mono`],
/// when only a duration is wanted) for the time of what they hold. Each
/// clock is read at its first call after the read, and that reading is
/// the answer until the next read.
#[derive(Debug, Default)]
pub struct BatchClock {
    mono: Option<Instant>,
    wall: Option<SystemTime>,
}

impl BatchClock {
    /// New bytes were read: the next calls read the clocks again.
    pub fn bytes_read(&mut self) {
        *self = BatchClock::default();
    }

    /// When the bytes of the last read arrived, on the monotonic clock.
    pub fn mono(&mut self) -> Instant {
        *self.mono.get_or_insert_with(Instant::now)
    }

    /// When the bytes of the last read arrived, on both clocks.
    pub fn stamp(&mut self) -> Stamp {
        Stamp {
            mono: self.mono(),
            wall: *self.wall.get_or_insert_with(SystemTime::now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_batch_has_one_time_until_the_next_read() {
        let mut clock = BatchClock::default();
        let early = clock.mono();
        std::thread::sleep(Duration::from_millis(2));
        let first = clock.stamp();
        assert_eq!(first.mono, early, "the same batch, the same time");
        assert_eq!(clock.stamp(), first);
        clock.bytes_read();
        let second = clock.stamp();
        assert!(second.mono >= first.mono + Duration::from_millis(2));
        assert!(second.wall > first.wall);
    }

    #[test]
    fn unix_seconds_match_the_calendar() {
        for (wall, seconds) in [
            (SystemTime::UNIX_EPOCH, 0),
            (SystemTime::UNIX_EPOCH + Duration::from_millis(1_999), 1),
            (SystemTime::UNIX_EPOCH - Duration::from_millis(1), -1),
            (SystemTime::UNIX_EPOCH - Duration::from_secs(2), -2),
        ] {
            assert_eq!(unix_seconds(wall), seconds, "{wall:?}");
            assert_eq!(
                time::OffsetDateTime::from(wall).unix_timestamp(),
                seconds,
                "as the calendar has it"
            );
        }
        let now = SystemTime::now();
        assert_eq!(
            unix_seconds(now),
            time::OffsetDateTime::from(now).unix_timestamp()
        );
    }
}
