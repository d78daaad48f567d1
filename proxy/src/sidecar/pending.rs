//! Connections not yet known (in protocol detection or in a TLS handshake),
//! and who gives way when full.
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
//! against its source until the handshake proves who sent it). Many
//! sources can still send a few bytes, or ClientHellos, and stall: with no
//! silent connection left to evict, the one whose first bytes have stayed
//! unfinished the longest gives way (`reason="evicted_unfinished"`), then
//! the handshake under way the longest (`reason="evicted_handshake"`), each
//! after at least [`HANDSHAKE_EVICT_AFTER`].
//! Idle connections and stalled handshakes then cannot lock the mesh out of
//! a sidecar: they can only take each other's place. (Per source and only
//! while anonymous: a peer
//! sidecar's connection stops counting once its handshake completes, so
//! peers behind one NAT address are not limited as a group.)

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::shares::{ShareGuard, Shares, Source};

/// How long a connection must have been in detection before it may be
/// evicted for a newcomer.
pub const EVICT_AFTER: Duration = Duration::from_millis(200);
/// How long a TLS handshake must have been under way before it may be
/// evicted for a newcomer (a real one takes a few round trips).
pub const HANDSHAKE_EVICT_AFTER: Duration = Duration::from_secs(1);

/// Where an anonymous connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In detection, waiting for its first bytes.
    Silent,
    /// It sent bytes that do not say yet what it is (a first line or a
    /// ClientHello cut short). A real client finishes them within a round
    /// trip; one that stops there would otherwise hold its slot until the
    /// detection timeout, unevictable.
    Unfinished,
    /// It sent a ClientHello; the handshake has not proved who it is yet.
    Handshaking,
}

impl Stage {
    /// The `reason` label of a connection evicted at this stage.
    pub fn eviction_reason(self) -> &'static str {
        match self {
            Stage::Silent => "evicted_silent",
            Stage::Unfinished => "evicted_unfinished",
            Stage::Handshaking => "evicted_handshake",
        }
    }

    fn evict_after(self) -> Duration {
        match self {
            Stage::Silent => EVICT_AFTER,
            Stage::Unfinished | Stage::Handshaking => HANDSHAKE_EVICT_AFTER,
        }
    }
}

type Queue = Mutex<VecDeque<(Instant, Weak<Notify>)>>;

/// The anonymous connections, oldest first per stage, and how many per
/// source.
#[derive(Debug)]
pub struct Pending {
    silent: Queue,
    unfinished: Queue,
    handshaking: Queue,
    sources: Shares<Source>,
}

/// One source's connection in detection, counted until dropped.
pub type SourceGuard = ShareGuard<Source>;

/// One connection in a stage; dropping it (stage over) leaves the queue.
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
            silent: Mutex::new(VecDeque::new()),
            unfinished: Mutex::new(VecDeque::new()),
            handshaking: Mutex::new(VecDeque::new()),
            sources: Shares::new(per_source),
        }
    }

    /// Counts a connection from `ip` entering detection, or `None` when
    /// that source has [`Pending::new`]'s `per_source` in detection already.
    pub fn source(&self, ip: IpAddr) -> Option<SourceGuard> {
        self.sources.take(&Source::of(ip))
    }

    fn queue(&self, stage: Stage) -> &Queue {
        match stage {
            Stage::Silent => &self.silent,
            Stage::Unfinished => &self.unfinished,
            Stage::Handshaking => &self.handshaking,
        }
    }

    /// Registers a connection entering (or still in) `stage`, at the end of
    /// its eviction queue.
    pub fn enter(&self, stage: Stage) -> PendingGuard {
        let notify = Arc::new(Notify::new());
        let mut queue = self.queue(stage).lock().unwrap_or_else(|e| e.into_inner());
        // Forget entries whose stage is over (their guard was dropped).
        while queue.front().is_some_and(|(_, w)| w.strong_count() == 0) {
            queue.pop_front();
        }
        queue.push_back((Instant::now(), Arc::downgrade(&notify)));
        PendingGuard(notify)
    }

    /// Evicts the oldest silent connection in detection for at least
    /// [`EVICT_AFTER`], else the oldest with unfinished first bytes, else
    /// the oldest handshake under way, each for at least
    /// [`HANDSHAKE_EVICT_AFTER`]. Returns the stage of the one evicted.
    pub fn evict_oldest(&self) -> Option<Stage> {
        [Stage::Silent, Stage::Unfinished, Stage::Handshaking]
            .into_iter()
            .find(|stage| self.evict_oldest_in(*stage, stage.evict_after()))
    }

    fn evict_oldest_in(&self, stage: Stage, older_than: Duration) -> bool {
        let mut queue = self.queue(stage).lock().unwrap_or_else(|e| e.into_inner());
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
        let first = pending.enter(Stage::Silent);
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(pending.evict_oldest(), None, "none old enough");
        tokio::time::advance(Duration::from_millis(150)).await;
        let second = pending.enter(Stage::Silent);
        assert_eq!(pending.evict_oldest(), Some(Stage::Silent));
        first.evicted().await; // resolves: it was told
        // The second is too young; a finished one is skipped.
        assert_eq!(pending.evict_oldest(), None);
        drop(second);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            pending.evict_oldest(),
            None,
            "a finished one is not evicted"
        );
    }

    #[tokio::test]
    async fn unfinished_first_bytes_give_way_after_silence_and_before_handshakes() {
        tokio::time::pause();
        let pending = Pending::new(10);
        let handshake = pending.enter(Stage::Handshaking);
        let unfinished = pending.enter(Stage::Unfinished);
        tokio::time::advance(Duration::from_millis(500)).await;
        let silent = pending.enter(Stage::Silent);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(pending.evict_oldest(), Some(Stage::Silent));
        silent.evicted().await;
        assert_eq!(pending.evict_oldest(), None, "none unfinished for 1 s");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(pending.evict_oldest(), Some(Stage::Unfinished));
        unfinished.evicted().await;
        assert_eq!(pending.evict_oldest(), Some(Stage::Handshaking));
        handshake.evicted().await;
    }

    #[tokio::test]
    async fn silent_connections_give_way_before_handshakes_which_get_longer() {
        tokio::time::pause();
        let pending = Pending::new(10);
        let handshake = pending.enter(Stage::Handshaking);
        tokio::time::advance(Duration::from_millis(500)).await;
        let silent = pending.enter(Stage::Silent);
        tokio::time::advance(Duration::from_millis(300)).await;
        // Both old enough for detection; the handshake (older) is not yet.
        assert_eq!(pending.evict_oldest(), Some(Stage::Silent));
        silent.evicted().await;
        assert_eq!(pending.evict_oldest(), None);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(pending.evict_oldest(), Some(Stage::Handshaking));
        handshake.evicted().await;
    }
}
