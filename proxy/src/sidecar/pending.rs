//! Connections still in protocol detection, and who gives way when full.
//!
//! Design bias: *a silent stranger yields to a newcomer*. Before detection
//! a connection is anonymous: it may be a peer sidecar's ClientHello a
//! millisecond away, or an attacker holding a slot open without a byte. So
//! when the inbound budget is full, a new connection does not simply get
//! refused: the connection that has been in detection the longest — at
//! least [`EVICT_AFTER`], far longer than any real client takes to speak —
//! is closed to make room (counted as `reason="evicted_silent"`). And one
//! source address may have at most [`Pending::per_source`] connections in
//! detection at once (beyond: `reason="max_pending_per_source"`), so a
//! single attacker cannot fill the budget with connections that do send
//! bytes, or with TLS handshakes it never finishes (a ClientHello counts
//! against its source until the handshake proves who sent it). Idle
//! connections then cannot lock the mesh out of a sidecar: they can only
//! take each other's place. (Per source and only while anonymous: a peer
//! sidecar's connection stops counting once its handshake completes, so
//! peers behind one NAT address are not limited as a group.)

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::shares::{ShareGuard, Shares};

/// How long a connection must have been in detection before it may be
/// evicted for a newcomer.
pub const EVICT_AFTER: Duration = Duration::from_millis(200);

/// The connections in detection, oldest first, and how many per source.
#[derive(Debug)]
pub struct Pending {
    queue: Mutex<VecDeque<(Instant, Weak<Notify>)>>,
    sources: Shares<IpAddr>,
}

/// One source's connection in detection, counted until dropped.
pub type SourceGuard = ShareGuard<IpAddr>;

/// One connection in detection; dropping it (detection over) leaves the
/// queue.
#[derive(Debug)]
pub struct PendingGuard(Arc<Notify>);

impl PendingGuard {
    /// Resolves when this connection was evicted for a newcomer.
    pub async fn evicted(&self) {
        self.0.notified().await
    }
}

impl Pending {
    /// At most `per_source` connections in detection per source address.
    pub fn new(per_source: usize) -> Pending {
        Pending {
            queue: Mutex::new(VecDeque::new()),
            sources: Shares::new(per_source),
        }
    }

    /// Counts a connection from `ip` entering detection, or `None` when
    /// that source has [`Pending::new`]'s `per_source` in detection already.
    pub fn source(&self, ip: IpAddr) -> Option<SourceGuard> {
        self.sources.take(&ip)
    }

    /// Registers a connection entering (or still in) detection, at the end
    /// of the eviction queue.
    pub fn enter(&self) -> PendingGuard {
        let notify = Arc::new(Notify::new());
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // Forget entries whose detection is over (their guard was dropped).
        while queue.front().is_some_and(|(_, w)| w.strong_count() == 0) {
            queue.pop_front();
        }
        queue.push_back((Instant::now(), Arc::downgrade(&notify)));
        PendingGuard(notify)
    }

    /// Evicts the oldest connection still in detection, if it has been
    /// there at least `older_than`. Returns whether one was.
    pub fn evict_oldest(&self, older_than: Duration) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((since, weak)) = queue.front() {
            let Some(notify) = weak.upgrade() else {
                queue.pop_front();
                continue;
            };
            if since.elapsed() < older_than {
                return false;
            }
            queue.pop_front();
            notify.notify_one();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_silent_connection_gives_way() {
        tokio::time::pause();
        let pending = Pending::new(10);
        let first = pending.enter();
        tokio::time::advance(Duration::from_millis(300)).await;
        let second = pending.enter();
        assert!(
            !pending.evict_oldest(Duration::from_secs(1)),
            "none old enough"
        );
        assert!(pending.evict_oldest(EVICT_AFTER));
        first.evicted().await; // resolves: it was told
        // The second is too young; a finished one is skipped.
        assert!(!pending.evict_oldest(EVICT_AFTER));
        drop(second);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !pending.evict_oldest(EVICT_AFTER),
            "a finished one is not evicted"
        );
    }
}
