//! The authority's audit log: one JSON line per attestation, issuance,
//! renewal, revocation and refusal.
//!
//! Design bias: *every decision is on record, and no caller fills the
//! disk*. Refusals are the one kind of line anyone can cause without a
//! credential (a malformed `POST /v1/attest` is enough), so at most
//! [`REFUSALS_PER_SECOND`] of them are written per second; the rest of
//! that second's refusals are counted, and written as one line once the
//! second is over (`"event": "refuse"`, `"repeated": N`: the sidecar's
//! audit log counts repeated denials the same way). Issuances, renewals,
//! revocations and refusals of a caller the authority knows (a renewal
//! refused to a certificate it issued) are always written.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use super::service::Refusal;

/// Refusal lines written per second at most; more are counted.
pub const REFUSALS_PER_SECOND: u32 = 100;

/// Where the lines go: a file, or standard error.
#[derive(Debug)]
pub struct EventLog {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: Option<File>,
    /// The second (Unix time) `written` and `held_back` count refusals of.
    second: i64,
    written: u32,
    held_back: u64,
}

impl EventLog {
    /// Lines go to `file`, or to standard error without one.
    pub fn new(file: Option<File>) -> EventLog {
        EventLog {
            state: Mutex::new(State {
                file,
                second: 0,
                written: 0,
                held_back: 0,
            }),
        }
    }

    /// Writes one event at `now` (Unix time), unless it is a refusal of an
    /// unknown caller (no `id`) past this second's [`REFUSALS_PER_SECOND`]:
    /// then it is counted.
    pub fn event(
        &self,
        now: i64,
        event: &str,
        id: Option<&str>,
        method: &str,
        refusal: Option<&Refusal>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.roll(now);
        if refusal.is_some() && id.is_none() {
            if state.written >= REFUSALS_PER_SECOND {
                state.held_back += 1;
                return;
            }
            state.written += 1;
        }
        let line = serde_json::json!({
            "time": crate::identity::inspect::rfc3339(now),
            "event": event,
            "id": id,
            "attestation": method,
            "refusal": refusal.map(Refusal::short),
            "reason": refusal.map(ToString::to_string),
        });
        let _ = state.write(&line);
    }

    /// Writes the revocation of `id` at `now` (`appid authority revoke`),
    /// on disk before it returns: unlike the server's lines, a failure is
    /// the caller's to report.
    pub fn revoked(&self, now: i64, id: &str) -> std::io::Result<()> {
        let line = serde_json::json!({
            "time": crate::identity::inspect::rfc3339(now),
            "event": "revoke",
            "id": id,
        });
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.write(&line)?;
        match state.file.as_ref() {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Writes the count of refusals held back in a second that is over
    /// (called every second, so the count is not left for the next event).
    pub fn flush(&self, now: i64) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .roll(now);
    }

    /// Writes the count of refusals held back so far, the current second's
    /// too (at shutdown).
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = state.second.saturating_add(1);
        state.roll(next);
    }
}

impl State {
    /// Moves on to `now`'s second, first writing what the last one held
    /// back. Time only moves forward here: an event stamped with an
    /// earlier second (a thread that read the clock, then waited for the
    /// lock) is counted in the current one.
    fn roll(&mut self, now: i64) {
        if now <= self.second {
            return;
        }
        if self.held_back > 0 {
            let line = serde_json::json!({
                "time": crate::identity::inspect::rfc3339(self.second),
                "event": "refuse",
                "repeated": self.held_back,
                "reason": format!(
                    "refusals past {REFUSALS_PER_SECOND} in one second, counted rather than written"
                ),
            });
            let _ = self.write(&line);
        }
        self.second = now;
        self.written = 0;
        self.held_back = 0;
    }

    /// One write per line: formatting straight into the file would write
    /// each JSON token with a system call of its own, and a line written in
    /// parts could be split by another process appending to the same file
    /// (`revoke` beside `serve`).
    fn write(&mut self, line: &serde_json::Value) -> std::io::Result<()> {
        let line = format!("{line}\n");
        match self.file.as_mut() {
            Some(file) => file.write_all(line.as_bytes()),
            None => {
                eprint!("{line}");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn refusals_past_the_rate_are_counted_and_every_one_is_accounted_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = EventLog::new(Some(File::create(&path).unwrap()));
        let refusal = Refusal::BadRequest("request JSON: EOF".into());
        let extra = 25;
        for _ in 0..REFUSALS_PER_SECOND + extra {
            log.event(1_000, "refuse", None, "join_token", Some(&refusal));
        }
        // Issuances are never held back.
        log.event(1_000, "issue", Some("spiffe://t/web"), "join_token", None);
        assert_eq!(
            lines(&path).len(),
            REFUSALS_PER_SECOND as usize + 1,
            "the count waits for the second to end"
        );
        log.flush(1_000);
        assert_eq!(lines(&path).len(), REFUSALS_PER_SECOND as usize + 1);
        log.flush(1_001);
        let all = lines(&path);
        let last = all.last().unwrap();
        assert_eq!(last["event"], "refuse");
        assert_eq!(last["repeated"], extra);
        let accounted: u64 = all
            .iter()
            .filter(|l| l["event"] == "refuse")
            .map(|l| l["repeated"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(accounted, u64::from(REFUSALS_PER_SECOND) + u64::from(extra));
        // A new second writes refusals again, and nothing is held back.
        log.event(1_002, "refuse", None, "join_token", Some(&refusal));
        log.flush(1_003);
        assert_eq!(lines(&path).len(), all.len() + 1);
        // At shutdown, the current second's count is written too.
        for _ in 0..REFUSALS_PER_SECOND + 1 {
            log.event(1_004, "refuse", None, "join_token", Some(&refusal));
        }
        log.finish();
        assert_eq!(lines(&path).last().unwrap()["repeated"], 1);
    }

    #[test]
    fn a_late_event_does_not_turn_the_clock_back_and_known_callers_are_always_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = EventLog::new(Some(File::create(&path).unwrap()));
        let refusal = Refusal::BadRequest("request JSON: EOF".into());
        for _ in 0..REFUSALS_PER_SECOND {
            log.event(2_000, "refuse", None, "join_token", Some(&refusal));
        }
        // Stamped a second earlier (read the clock, then waited for the
        // lock): it counts in 2 000, which is full, and starts no new second.
        log.event(1_999, "refuse", None, "join_token", Some(&refusal));
        log.event(2_000, "refuse", None, "join_token", Some(&refusal));
        assert_eq!(lines(&path).len(), REFUSALS_PER_SECOND as usize);
        // A renewal refused to an identity the authority issued is written
        // even in a full second.
        log.event(
            2_000,
            "refuse",
            Some("spiffe://t/web"),
            "renewal",
            Some(&refusal),
        );
        assert_eq!(lines(&path).len(), REFUSALS_PER_SECOND as usize + 1);
        log.flush(2_001);
        assert_eq!(lines(&path).last().unwrap()["repeated"], 2);
    }
}
