//! The byte budget for data the sidecar holds on behalf of a peer.
//!
//! Design bias: *a peer that stops reading slows itself, never the
//! sidecar*. Data a sidecar has taken from an app but not yet handed to the
//! kernel for a peer waits in the tunnel's HTTP/2 send buffers. A peer that
//! grants huge flow-control windows and then stops reading its socket could
//! make those buffers hold everything its streams ask for (the review pinned
//! 256 MiB with one connection). So every such byte is *charged* before it
//! is queued, and the charge is returned when the byte has left (the buffer
//! holding it is dropped once written out):
//!
//! - to its **peer's share**: one peer identity may hold at most
//!   [`PEER_SHARE`] of the budget, across all its connections and streams;
//!   when that is used up, its writers wait (backpressure: we stop reading
//!   from the app), and other peers go on;
//! - to the **process budget** (`limits.max_buffer_bytes`): when it is used
//!   up, writers wait and new tunnel streams are refused
//!   (`appid_streams_shed_total{reason="memory"}`) until bytes drain.
//!
//! Copy buffers of opaque connections grow from 1 KiB to 64 KiB only while
//! the peer's share and the process budget have room ([`Meter::try_grow`]),
//! and give the growth back once their direction is quiet (`splice`).
//! Callers outside the mesh are charged by source address
//! ([`MemoryBudget::meter`] takes any key).
//!
//! What is not charged here is bounded elsewhere, per connection: received
//! data by the flow-control windows we advertise, TLS records by rustls'
//! buffer limit, HTTP heads by `limits.max_header_bytes`. README "Limits"
//! adds it up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// The fraction of the process budget one peer identity may hold.
pub const PEER_SHARE: usize = 8;
/// The most bytes charged at once (one write of a stream).
pub const MAX_CHARGE: usize = 64 * 1024;

/// The process-wide budget and its per-peer shares.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    process: Arc<Semaphore>,
    peers: Mutex<HashMap<String, Weak<Semaphore>>>,
}

/// Bytes held against a budget, given back on drop.
#[derive(Debug)]
pub struct Charge {
    process: OwnedSemaphorePermit,
    _peer: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at least [`MAX_CHARGE`] per peer share).
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        let limit = limit.max(MAX_CHARGE * PEER_SHARE);
        Arc::new(MemoryBudget {
            limit,
            process: Arc::new(Semaphore::new(limit)),
            peers: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.limit - self.process.available_permits()
    }

    /// Whether the process budget has no room left (new streams are shed).
    pub fn is_exhausted(&self) -> bool {
        self.process.available_permits() < MAX_CHARGE
    }

    /// The meter for one stream or connection of the peer `peer_id` (a
    /// SPIFFE ID, or for callers outside the mesh their address).
    pub fn meter(self: &Arc<Self>, peer_id: &str) -> Meter {
        let share = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            match peers.get(peer_id).and_then(Weak::upgrade) {
                Some(share) => share,
                None => {
                    if peers.len() >= 1024 {
                        peers.retain(|_, share| share.strong_count() > 0);
                    }
                    let share = Arc::new(Semaphore::new(self.limit / PEER_SHARE));
                    peers.insert(peer_id.to_string(), Arc::downgrade(&share));
                    share
                }
            }
        };
        Meter {
            process: PollSemaphore::new(self.process.clone()),
            peer: PollSemaphore::new(share),
            held_peer: None,
        }
    }
}

/// Charges one stream's writes to its peer's share and the process budget.
#[derive(Debug)]
pub struct Meter {
    process: PollSemaphore,
    peer: PollSemaphore,
    /// A peer charge taken while the process budget was still full.
    held_peer: Option<OwnedSemaphorePermit>,
}

impl Meter {
    /// `n` bytes for a copy buffer if the peer's share and the process
    /// budget have room now (never waits: a buffer that cannot grow just
    /// stays small).
    pub fn try_grow(&self, n: usize) -> Option<Charge> {
        let n = u32::try_from(n).ok()?;
        let peer = self.peer.clone_inner().try_acquire_many_owned(n).ok()?;
        let process = self.process.clone_inner().try_acquire_many_owned(n).ok()?;
        Some(Charge {
            process,
            _peer: Some(peer),
        })
    }

    /// A charge for at most `wanted` bytes (at least 1, at most
    /// [`MAX_CHARGE`]), once both the peer's share and the process budget
    /// have room; `Ready(None)` never happens while the budget lives.
    pub fn poll_charge(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<Option<Charge>> {
        let wanted = wanted.clamp(1, MAX_CHARGE);
        if self.held_peer.is_none() {
            let Some(permit) = ready!(self.peer.poll_acquire_many(cx, wanted as u32)) else {
                return Poll::Ready(None);
            };
            self.held_peer = Some(permit);
        }
        let held = self.held_peer.as_mut().expect("set above");
        // The caller may ask for less than before (AsyncWrite may be
        // re-polled with a shorter buffer): give the rest back.
        let n = held.num_permits().min(wanted);
        if let Some(extra) = held.split(held.num_permits() - n) {
            drop(extra);
        }
        let Some(process) = ready!(self.process.poll_acquire_many(cx, n as u32)) else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some(Charge {
            process,
            _peer: self.held_peer.take(),
        }))
    }
}

impl Charge {
    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.process.num_permits()
    }

    /// `data` (no more than [`Charge::bytes`]) as a buffer that returns the
    /// charge when the last reference to it drops, i.e. once h2 has written
    /// it out.
    pub fn attach(self, data: Bytes) -> Bytes {
        Bytes::from_owner(Charged {
            data,
            _charge: self,
        })
    }
}

/// A buffer and its charge: alive together, dropped together.
struct Charged {
    data: Bytes,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    const MIB: usize = 1024 * 1024;

    #[tokio::test]
    async fn charges_come_back_when_the_buffer_drops() {
        let budget = MemoryBudget::new(8 * MIB);
        let mut meter = budget.meter("spiffe://t/a");
        let charge = poll_fn(|cx| meter.poll_charge(cx, 1000)).await.unwrap();
        assert_eq!(charge.bytes(), 1000);
        assert_eq!(budget.used(), 1000);
        let data = charge.attach(Bytes::from(vec![7u8; 1000]));
        let clone = data.clone();
        drop(data);
        assert_eq!(budget.used(), 1000, "still referenced");
        assert_eq!(&clone[..3], &[7, 7, 7]);
        drop(clone);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn one_peer_waits_at_its_share_while_another_goes_on() {
        let budget = MemoryBudget::new(8 * MIB);
        let share = budget.limit() / PEER_SHARE;
        let mut greedy = budget.meter("spiffe://t/greedy");
        let mut held = Vec::new();
        while held.iter().map(Charge::bytes).sum::<usize>() < share {
            held.push(
                poll_fn(|cx| greedy.poll_charge(cx, MAX_CHARGE))
                    .await
                    .unwrap(),
            );
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(50),
            poll_fn(|cx| greedy.poll_charge(cx, 1)),
        )
        .await;
        assert!(blocked.is_err(), "the greedy peer waits at its share");
        // The same identity on another connection shares the same share.
        let mut same = budget.meter("spiffe://t/greedy");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            poll_fn(|cx| same.poll_charge(cx, 1)),
        );
        assert!(waiting.await.is_err());
        // Another peer is not affected.
        let mut other = budget.meter("spiffe://t/other");
        let got = poll_fn(|cx| other.poll_charge(cx, MAX_CHARGE))
            .await
            .unwrap();
        assert_eq!(got.bytes(), MAX_CHARGE);
        // Draining the greedy peer's bytes lets it write again.
        held.clear();
        let again = poll_fn(|cx| greedy.poll_charge(cx, 10)).await.unwrap();
        assert_eq!(again.bytes(), 10);
        assert_eq!(budget.used(), MAX_CHARGE + 10);
        drop((again, got));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_process_budget_bounds_all_peers_and_copy_buffers() {
        let budget = MemoryBudget::new(MAX_CHARGE * PEER_SHARE);
        let mut held = Vec::new();
        for i in 0..PEER_SHARE {
            let mut meter = budget.meter(&format!("spiffe://t/{i}"));
            held.push(
                poll_fn(|cx| meter.poll_charge(cx, MAX_CHARGE))
                    .await
                    .unwrap(),
            );
        }
        assert!(budget.is_exhausted());
        let copies = budget.meter("spiffe://t/copies");
        assert!(copies.try_grow(4096).is_none(), "copy buffers stay small");
        let mut late = budget.meter("spiffe://t/late");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            poll_fn(|cx| late.poll_charge(cx, 1)),
        );
        assert!(waiting.await.is_err());
        drop(late); // (a waiting meter would take the first bytes freed)
        held.pop();
        assert!(!budget.is_exhausted());
        assert!(copies.try_grow(4096).is_some());
    }

    #[tokio::test]
    async fn a_shorter_second_ask_gives_back_the_difference() {
        let budget = MemoryBudget::new(8 * MIB);
        let mut meter = budget.meter("spiffe://t/a");
        let charge = poll_fn(|cx| meter.poll_charge(cx, 500)).await.unwrap();
        drop(charge);
        // Simulate a held peer charge larger than the next ask.
        meter.held_peer = Some(
            meter
                .peer
                .clone_inner()
                .try_acquire_many_owned(900)
                .unwrap(),
        );
        let charge = poll_fn(|cx| meter.poll_charge(cx, 100)).await.unwrap();
        assert_eq!(charge.bytes(), 100);
        drop(charge);
        assert_eq!(budget.used(), 0);
        let share = meter.peer.available_permits();
        assert_eq!(share, budget.limit() / PEER_SHARE);
    }
}
