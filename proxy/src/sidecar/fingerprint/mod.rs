//! The runtime fingerprint: what the sidecar can see of its workload
//! (executable and library hashes, user, kernel, OS, container), sent to
//! the authority as `reported` with every attestation and renewal.
//!
//! Design bias: *report what is there, never hold up the identity for it*.
//! These facts are self-reported — the authority cannot check them, so
//! they land under `reported.*` and are only as trustworthy as the host —
//! which makes them worth having but never worth a missed renewal. Mining
//! runs off the async runtime (`spawn_blocking`) within a time budget
//! ([`BUDGET`]) and a size bound ([`facts::MAX_REPORTED_BYTES`]); every
//! read is capped and every hash streamed. A round that fails is logged
//! once per kind of failure and the last good facts are sent instead.
//! Everything is read from the real `/proc` and the workload's own root
//! file system (`/proc/<pid>/root`, so in a pod sharing its process
//! namespace the container's `passwd` and `os-release`, not the sidecar's);
//! only the parsers are pure functions of text, and they are what the unit
//! tests feed by hand.
//!
//! One job per file: [`workload`] finds the process, [`mine`] reads it,
//! [`maps`], [`container`], [`ids`], [`os_release`] parse, [`hash`] hashes,
//! [`facts`] is the wire shape and its bound.

pub mod container;
pub mod facts;
pub mod hash;
pub mod ids;
pub mod maps;
pub mod mine;
pub mod os_release;
pub mod read;
pub mod workload;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

pub use mine::MineError;
pub use workload::Workload;

/// How long one round of mining may take.
pub const BUDGET: Duration = Duration::from_secs(2);

/// Mines the workload's facts on demand and remembers the last good ones.
pub struct Fingerprinter {
    workload: Workload,
    last_good: Mutex<Option<Map<String, Value>>>,
    /// Kinds of failure already logged since the last good round.
    warned: Mutex<HashSet<&'static str>>,
    /// A round is running on the blocking pool (it may outlive its budget
    /// if a read blocks; no second one is started meanwhile).
    busy: Arc<AtomicBool>,
}

impl Fingerprinter {
    pub fn new(workload: Workload) -> Fingerprinter {
        Fingerprinter {
            workload,
            last_good: Mutex::new(None),
            warned: Mutex::new(HashSet::new()),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The facts to send now: freshly mined, or if that fails the last
    /// good ones (`None` before any round succeeded).
    pub async fn reported(&self) -> Option<Map<String, Value>> {
        match self.mine_now().await {
            Ok(facts) => {
                let mut last = lock(&self.last_good);
                if last.as_ref() != Some(&facts) {
                    let sha256 = facts
                        .get("process")
                        .and_then(|p| p.get("sha256"))
                        .and_then(|s| s.as_str());
                    let bytes = serde_json::to_string(&facts).map_or(0, |j| j.len());
                    tracing::info!(
                        process_sha256 = sha256,
                        bytes,
                        "runtime fingerprint mined (reported, not vouched for)"
                    );
                }
                *last = Some(facts.clone());
                lock(&self.warned).clear();
                Some(facts)
            }
            Err(error) => {
                let last = lock(&self.last_good).clone();
                if lock(&self.warned).insert(error.kind()) {
                    tracing::warn!(
                        %error,
                        kind = error.kind(),
                        sending = if last.is_some() { "the last good facts" } else { "no facts" },
                        "mining the runtime fingerprint failed; the renewal goes ahead"
                    );
                } else {
                    tracing::debug!(%error, "mining the runtime fingerprint failed again");
                }
                last
            }
        }
    }

    async fn mine_now(&self) -> Result<Map<String, Value>, MineError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(MineError::Busy);
        }
        let busy = ClearOnDrop(self.busy.clone());
        let workload = self.workload.clone();
        let deadline = Instant::now() + BUDGET;
        let task = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            mine::mine(&workload, deadline)
        });
        // The blocking task checks the deadline itself; this is the
        // backstop for a read that blocks (the task finishes on its own).
        let facts = match tokio::time::timeout(BUDGET + Duration::from_millis(500), task).await {
            Err(_) => return Err(MineError::OutOfTime),
            Ok(Err(join)) => return Err(MineError::Task(join.to_string())),
            Ok(Ok(result)) => result?,
        };
        Ok(facts.to_bounded_map(facts::MAX_REPORTED_BYTES)?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Clears the busy flag when the blocking round ends, however it ends.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_round_sends_the_last_good_facts() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        let fingerprinter = Fingerprinter::new(Workload::PidFile(pid_file.clone()));
        let good = fingerprinter.reported().await.expect("mined this process");
        assert!(good["process"]["sha256"].is_string());
        // The pid file now names a process that does not exist.
        std::fs::write(&pid_file, "4000000000").unwrap();
        assert_eq!(fingerprinter.reported().await, Some(good.clone()));
        assert!(lock(&fingerprinter.warned).contains("no_process"));
        // Fixed: fresh facts again, the warning re-armed.
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        assert_eq!(fingerprinter.reported().await, Some(good));
        assert!(lock(&fingerprinter.warned).is_empty());
    }

    #[tokio::test]
    async fn nothing_before_the_first_good_round() {
        let fingerprinter = Fingerprinter::new(Workload::PidFile("/nonexistent/app.pid".into()));
        assert_eq!(fingerprinter.reported().await, None);
    }
}
