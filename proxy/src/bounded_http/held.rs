//! The connections a bounded server holds, and which one gives way to a
//! newcomer when every slot is taken.
//!
//! Design bias: *fair by source first, then idle before busy*. When full:
//!
//! 1. a newcomer whose source holds fewer connections than the source
//!    holding the most takes the oldest connection of that source, busy or
//!    not (a few addresses cannot keep kubelet out by holding their
//!    shares, even with requests under way: slow app probes, say);
//! 2. otherwise the connection idle longest gives way, if it has been idle
//!    long enough: waiting for a request head at least [`EVICT_AFTER`]
//!    (far longer than a real client takes to send one), or in its TLS
//!    handshake at least [`HANDSHAKE_EVICT_AFTER`] (a far peer needs a few
//!    round trips);
//! 3. otherwise nobody does yet: the newcomer waits for a slot (at most
//!    as many wait as are served; beyond, closed), trying again every
//!    [`EVICT_AFTER`], within the header timeout.
//!
//! The slot of the one that gives way is handed to the newcomer that made
//! it give way (a newcomer must not wait behind others queued earlier, or
//! a queue of an attacker's connections would take every slot freed for
//! kubelet). Idle is counted from when a connection last started waiting
//! (accepted, handshake done, response given), not from when it was
//! opened.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

/// How long a connection must have waited for a request head before it
/// may be closed for a newcomer.
pub const EVICT_AFTER: Duration = Duration::from_millis(200);
/// How long a TLS handshake must have been under way before it may be
/// closed for a newcomer.
pub const HANDSHAKE_EVICT_AFTER: Duration = Duration::from_secs(1);

/// What a held connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    AwaitingHead,
    InRequest,
}

/// Why a connection was told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its source held the most (rule 1): closes even mid-request.
    Fairness,
    /// It was idle long enough (rule 2): closes unless a request started
    /// meanwhile.
    Idle,
}

/// The connections a server holds, oldest first.
#[derive(Debug, Default)]
pub struct Held {
    connections: Mutex<Vec<Weak<Connection>>>,
}

/// One held connection.
#[derive(Debug)]
pub struct Connection {
    source: IpAddr,
    state: Mutex<(Phase, Instant)>,
    /// Told to close, and why (not chosen twice).
    told: Mutex<Option<Eviction>>,
    notice: Notify,
    /// Where its slot goes when it closes: to the newcomer it gave way to.
    handoff: Mutex<Option<oneshot::Sender<OwnedSemaphorePermit>>>,
}

/// One connection's place: its permit goes back when dropped, to the
/// newcomer the connection gave way to if there is one, else to the
/// server's semaphore.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    connection: Arc<Connection>,
}

impl Slot {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let handoff = lock(&self.connection.handoff).take();
        if let (Some(permit), Some(handoff)) = (self.permit.take(), handoff) {
            // Refused (the newcomer gave up): dropped, back to the semaphore.
            let _ = handoff.send(permit);
        }
    }
}

/// How a newcomer is let in (see the module docs).
pub struct Admission {
    permits: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    held: Held,
}

/// A newcomer let in, now or once a slot is free.
pub enum Admitted {
    Now(Slot),
    Later(Later),
}

/// A newcomer waiting for a slot: handed one by the connection that gives
/// way to it, or queued.
pub struct Later {
    source: IpAddr,
    phase: Phase,
    handed: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
    _queued: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `max` connections served at once, as many waiting.
    pub fn new(max: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max)),
            waiting: Arc::new(Semaphore::new(max)),
            held: Held::default(),
        }
    }

    /// A newcomer from `source`, starting in `phase`: a slot now, a place
    /// to wait for one, or `None` (close it).
    pub fn admit(&self, source: IpAddr, phase: Phase) -> Option<Admitted> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(Admitted::Now(self.slot(permit, source, phase)));
        }
        let (handed, queued) = match self.held.make_room(source) {
            Some((_, handed)) => (Some(handed), None),
            None => (None, Some(self.waiting.clone().try_acquire_owned().ok()?)),
        };
        Some(Admitted::Later(Later {
            source,
            phase,
            handed,
            _queued: queued,
        }))
    }

    /// Waits, within `limit`, for the slot of a newcomer let in later;
    /// `None`: none came.
    pub async fn slot_for(&self, mut later: Later, limit: Duration) -> Option<Slot> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(handed) = later.handed.take() {
                match tokio::time::timeout_at(deadline, handed).await {
                    Ok(Ok(permit)) => return Some(self.slot(permit, later.source, later.phase)),
                    // The one told to go stayed (a request had started).
                    Ok(Err(_)) => {}
                    Err(_) => return None,
                }
            }
            let retry = (Instant::now() + EVICT_AFTER).min(deadline);
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    let permit = permit.ok()?;
                    return Some(self.slot(permit, later.source, later.phase));
                }
                () = tokio::time::sleep_until(retry) => {
                    if retry >= deadline {
                        return None;
                    }
                    later.handed = self.held.make_room(later.source).map(|(_, handed)| handed);
                }
            }
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit, source: IpAddr, phase: Phase) -> Slot {
        Slot {
            permit: Some(permit),
            connection: self.held.register(source, phase),
        }
    }
}

impl Held {
    /// Registers a new connection from `source`, the newest, in `phase`;
    /// it leaves when dropped.
    fn register(&self, source: IpAddr, phase: Phase) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            source,
            state: Mutex::new((phase, Instant::now())),
            told: Mutex::new(None),
            notice: Notify::new(),
            handoff: Mutex::new(None),
        });
        let mut connections = lock(&self.connections);
        connections.retain(|c| c.strong_count() > 0);
        connections.push(Arc::downgrade(&connection));
        connection
    }

    /// Tells one connection to make room for a newcomer from `source` (see
    /// the module docs); its slot will come through the receiver. `None`:
    /// none may give way.
    fn make_room(
        &self,
        source: IpAddr,
    ) -> Option<(Eviction, oneshot::Receiver<OwnedSemaphorePermit>)> {
        let mut connections = lock(&self.connections);
        connections.retain(|c| c.strong_count() > 0);
        let live: Vec<Arc<Connection>> = connections
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| lock(&c.told).is_none())
            .collect();
        drop(connections);
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for connection in &live {
            *counts.entry(connection.source).or_default() += 1;
        }
        let mine = counts.get(&source).copied().unwrap_or(0);
        // The most; among sources holding as many, the one with the oldest.
        let biggest = live.iter().map(|c| (c.source, counts[&c.source])).fold(
            None::<(IpAddr, usize)>,
            |best, (s, n)| match best {
                Some((_, most)) if most >= n => best,
                _ => Some((s, n)),
            },
        );
        let (victim, why) = match biggest {
            Some((big, most)) if most > mine => {
                (live.iter().find(|c| c.source == big)?, Eviction::Fairness)
            }
            _ => (live.iter().find(|c| c.idle_long_enough())?, Eviction::Idle),
        };
        let (handoff, handed) = oneshot::channel();
        *lock(&victim.handoff) = Some(handoff);
        *lock(&victim.told) = Some(why);
        victim.notice.notify_one();
        Some((why, handed))
    }
}

impl Connection {
    /// Moves to `phase`, from now.
    pub fn enter(&self, phase: Phase) {
        *lock(&self.state) = (phase, Instant::now());
    }

    fn idle_long_enough(&self) -> bool {
        let (phase, since) = *lock(&self.state);
        match phase {
            Phase::AwaitingHead => since.elapsed() >= EVICT_AFTER,
            Phase::Handshake => since.elapsed() >= HANDSHAKE_EVICT_AFTER,
            Phase::InRequest => false,
        }
    }

    /// Resolves when the connection must close. An idle eviction that
    /// raced a request's start is withdrawn (the request finishes; the
    /// connection may be chosen again later).
    pub async fn evicted(&self) -> Eviction {
        loop {
            self.notice.notified().await;
            let mut told = lock(&self.told);
            match *told {
                Some(Eviction::Idle) if lock(&self.state).0 == Phase::InRequest => {
                    *told = None;
                    // The newcomer learns at once, and tries elsewhere.
                    *lock(&self.handoff) = None;
                }
                Some(why) => return why,
                None => {}
            }
        }
    }
}

/// Marks a connection's request under way until dropped; then it waits
/// for its next request head, from then.
pub struct InRequest(Arc<Connection>);

impl InRequest {
    pub fn new(connection: Arc<Connection>) -> InRequest {
        connection.enter(Phase::InRequest);
        InRequest(connection)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.enter(Phase::AwaitingHead);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn why<T>(room: Option<(Eviction, T)>) -> Option<Eviction> {
        room.map(|(why, _)| why)
    }

    #[tokio::test]
    async fn the_biggest_source_gives_way_first_even_mid_request() {
        tokio::time::pause();
        let held = Held::default();
        let attacker: Vec<_> = (0..3)
            .map(|_| held.register(ip(1), Phase::InRequest))
            .collect();
        let other = held.register(ip(2), Phase::InRequest);
        // A newcomer from a third source: the attacker's oldest goes.
        assert_eq!(why(held.make_room(ip(3))), Some(Eviction::Fairness));
        assert_eq!(attacker[0].evicted().await, Eviction::Fairness);
        // From the attacker's own source (it holds the most, 2) with
        // nobody idle: nobody goes.
        assert_eq!(why(held.make_room(ip(1))), None);
        drop(other);
        // Told once only: the next fairness victim is the attacker's second.
        assert_eq!(why(held.make_room(ip(2))), Some(Eviction::Fairness));
        assert_eq!(attacker[1].evicted().await, Eviction::Fairness);
    }

    #[tokio::test]
    async fn among_equals_the_one_idle_longest_gives_way() {
        tokio::time::pause();
        let held = Held::default();
        let first = held.register(ip(1), Phase::AwaitingHead);
        let second = held.register(ip(2), Phase::AwaitingHead);
        let handshake = held.register(ip(3), Phase::Handshake);
        assert_eq!(why(held.make_room(ip(1))), None, "none idle long enough");
        tokio::time::advance(EVICT_AFTER).await;
        // The first is mid-request now: the second gives way.
        let request = InRequest::new(first.clone());
        assert_eq!(why(held.make_room(ip(1))), Some(Eviction::Idle));
        assert_eq!(second.evicted().await, Eviction::Idle);
        // A handshake waits longer before it may go.
        assert_eq!(why(held.make_room(ip(1))), None);
        tokio::time::advance(HANDSHAKE_EVICT_AFTER).await;
        assert_eq!(why(held.make_room(ip(1))), Some(Eviction::Idle));
        assert_eq!(handshake.evicted().await, Eviction::Idle);
        // Idle is counted from the end of its request, not from the start.
        drop(request);
        assert_eq!(why(held.make_room(ip(1))), None);
        tokio::time::advance(EVICT_AFTER).await;
        assert_eq!(why(held.make_room(ip(1))), Some(Eviction::Idle));
        assert_eq!(first.evicted().await, Eviction::Idle);
    }

    #[tokio::test]
    async fn the_slot_of_the_one_that_gives_way_goes_to_the_newcomer() {
        tokio::time::pause();
        let admission = Admission::new(1);
        let source = ip(1);
        let Some(Admitted::Now(first)) = admission.admit(source, Phase::AwaitingHead) else {
            panic!("a free slot");
        };
        // Full, and the first is too young to go: queued.
        let Some(Admitted::Later(queued)) = admission.admit(source, Phase::AwaitingHead) else {
            panic!("queued");
        };
        // A newcomer from another source: the first gives way to it.
        let Some(Admitted::Later(handed)) = admission.admit(ip(2), Phase::AwaitingHead) else {
            panic!("handed a slot");
        };
        assert_eq!(first.connection().evicted().await, Eviction::Fairness);
        drop(first);
        let slot = admission.slot_for(handed, Duration::from_secs(5)).await;
        assert!(
            slot.is_some(),
            "the freed slot went to the one it was freed for"
        );
        // The queued one got nothing, and gives up at its limit.
        assert!(
            admission
                .slot_for(queued, Duration::from_secs(1))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_idle_eviction_that_raced_a_request_is_withdrawn() {
        tokio::time::pause();
        let held = Held::default();
        let connection = held.register(ip(1), Phase::AwaitingHead);
        tokio::time::advance(EVICT_AFTER).await;
        // A newcomer from the same source holds as many: the idle rule.
        assert_eq!(why(held.make_room(ip(1))), Some(Eviction::Idle));
        let _request = InRequest::new(connection.clone());
        let evicted = tokio::time::timeout(Duration::from_secs(1), connection.evicted());
        assert!(evicted.await.is_err(), "withdrawn: the request finishes");
        // And it may be chosen again.
        assert_eq!(why(held.make_room(ip(2))), Some(Eviction::Fairness));
        assert_eq!(connection.evicted().await, Eviction::Fairness);
    }
}
