//! The connections a bounded server holds, and which one gives way to a
//! newcomer when every slot is taken.
//!
//! Design bias: *an address that holds a lot gives way first, then idle
//! before busy*. When full:
//!
//! 1. if some address holds at least half its share of connections, and
//!    more than one more than the newcomer's address, it gives one up: its
//!    connection idle longest if one has been idle long enough (rule 2's
//!    measure), else its oldest, busy or not (a few addresses cannot keep
//!    kubelet out by holding their shares, even with requests under way:
//!    app probes that hang, say; and kubelet, holding a probe or three,
//!    is never cut mid-request by this rule);
//! 2. otherwise the connection idle longest gives way, if it has been idle
//!    long enough: waiting for a request head at least [`EVICT_AFTER`]
//!    (far longer than a real client takes to send one), or in its TLS
//!    handshake at least [`HANDSHAKE_EVICT_AFTER`] (a far peer needs a few
//!    round trips);
//! 3. otherwise nobody does yet: the newcomer waits for a slot (at most as
//!    many wait as are served; beyond, closed), trying again every
//!    [`EVICT_AFTER`], within the header timeout, until the server stops.
//!
//! The slot of the one that gives way is handed to the newcomer that made
//! it give way (a newcomer must not wait behind others queued earlier, or
//! a queue of an attacker's connections would take every slot freed for
//! kubelet), and counts as the newcomer's address's from then on. Idle is
//! counted from when a connection last started waiting (accepted,
//! handshake done, response given), not from when it was opened.
//!
//! Many addresses holding a few connections each can still crowd a server
//! (as any service on a network they reach): that is for a network policy.

use crate::sidecar::shares::Source;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
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
    /// Its address held the most (rule 1): closes even mid-request.
    Fairness,
    /// It was idle long enough (rule 2): closes unless a request started
    /// meanwhile.
    Idle,
}

/// One held connection.
#[derive(Debug)]
pub struct Connection {
    source: Source,
    state: Mutex<(Phase, Instant)>,
    fate: Mutex<Fate>,
    notice: Notify,
}

/// Whether a connection was told to close, for whom, and where its slot
/// goes; all set at once, under [`Held`]'s lock.
#[derive(Debug, Default)]
struct Fate {
    told: Option<(Eviction, Source)>,
    handoff: Option<oneshot::Sender<OwnedSemaphorePermit>>,
    /// Its slot is given up already: never chosen.
    gone: bool,
}

/// The connections a server holds, oldest first.
#[derive(Debug, Default)]
struct Held {
    connections: Mutex<Vec<Weak<Connection>>>,
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
        let handoff = {
            let mut fate = lock(&self.connection.fate);
            fate.gone = true;
            fate.handoff.take()
        };
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
    /// Rule 1 applies to an address holding at least this many.
    big: usize,
    held: Held,
}

/// A newcomer let in, now or once a slot is free.
pub enum Admitted {
    Now(Slot),
    Later(Later),
}

/// A newcomer waiting for a slot: handed one by the connection that gives
/// way to it, or queued (holding a place among those waiting).
pub struct Later {
    source: Source,
    phase: Phase,
    handed: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
    queued: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `max` connections served at once, as many waiting; one address
    /// holds at most `per_source`.
    pub fn new(max: usize, per_source: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max)),
            waiting: Arc::new(Semaphore::new(max)),
            big: (per_source / 2).max(2),
            held: Held::default(),
        }
    }

    /// A newcomer from `source`, starting in `phase`: a slot now, a place
    /// to wait for one, or `None` (close it).
    pub fn admit(&self, source: Source, phase: Phase) -> Option<Admitted> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(Admitted::Now(self.slot(permit, source, phase)));
        }
        let mut later = Later {
            source,
            phase,
            handed: self.held.make_room(source, self.big),
            queued: None,
        };
        if later.handed.is_none() {
            later.queued = Some(self.waiting.clone().try_acquire_owned().ok()?);
        }
        Some(Admitted::Later(later))
    }

    /// Waits, within `limit` and until `stop` turns true, for the slot of
    /// a newcomer let in later; `None`: none came.
    pub async fn slot_for(
        &self,
        mut later: Later,
        limit: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Option<Slot> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(handed) = later.handed.take() {
                let handed = tokio::time::timeout_at(deadline, handed);
                tokio::select! {
                    done = handed => match done {
                        Ok(Ok(permit)) => {
                            return Some(self.slot(permit, later.source, later.phase));
                        }
                        // The one told to go stayed (a request had started).
                        Ok(Err(_)) => {}
                        Err(_) => return None,
                    },
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
            if later.queued.is_none() {
                later.queued = Some(self.waiting.clone().try_acquire_owned().ok()?);
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
                    later.handed = self.held.make_room(later.source, self.big);
                }
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit, source: Source, phase: Phase) -> Slot {
        Slot {
            permit: Some(permit),
            connection: self.held.register(source, phase),
        }
    }
}

impl Held {
    /// Registers a new connection from `source`, the newest, in `phase`;
    /// it leaves when dropped.
    fn register(&self, source: Source, phase: Phase) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            source,
            state: Mutex::new((phase, Instant::now())),
            fate: Mutex::new(Fate::default()),
            notice: Notify::new(),
        });
        let mut connections = lock(&self.connections);
        connections.retain(|c| c.strong_count() > 0);
        connections.push(Arc::downgrade(&connection));
        connection
    }

    /// Tells one connection to make room for a newcomer from `source` (see
    /// the module docs; rule 1 for addresses holding at least `big`); its
    /// slot will come through the receiver. `None`: none may give way.
    /// Chosen and told under one lock: two newcomers never pick the same.
    fn make_room(
        &self,
        source: Source,
        big: usize,
    ) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        let mut connections = lock(&self.connections);
        connections.retain(|c| c.strong_count() > 0);
        let live: Vec<Arc<Connection>> = connections.iter().filter_map(Weak::upgrade).collect();
        // What each address holds: a connection told to give way counts for
        // the address it gives way to.
        let mut counts: HashMap<Source, usize> = HashMap::new();
        let mut candidates = Vec::with_capacity(live.len());
        for connection in &live {
            let fate = lock(&connection.fate);
            if fate.gone {
                continue;
            }
            match fate.told {
                Some((_, to)) => *counts.entry(to).or_default() += 1,
                None => {
                    *counts.entry(connection.source).or_default() += 1;
                    candidates.push(connection);
                }
            }
        }
        let mine = counts.get(&source).copied().unwrap_or(0);
        // The address holding the most, if rule 1 applies to it; among
        // addresses holding as many, the one with the oldest connection.
        let most = counts
            .iter()
            .filter(|&(&address, &n)| address != source && n >= big && n > mine + 1)
            .map(|(_, &n)| n)
            .max();
        let biggest = most.and_then(|most| {
            let holder = candidates
                .iter()
                .find(|c| c.source != source && counts[&c.source] == most)?;
            Some(holder.source)
        });
        let (victim, why) = match biggest {
            Some(holder) => {
                let theirs = candidates.iter().copied().filter(|c| c.source == holder);
                let victim = idle_longest(theirs.clone()).or_else(|| theirs.clone().next())?;
                (victim, Eviction::Fairness)
            }
            None => (idle_longest(candidates.iter().copied())?, Eviction::Idle),
        };
        let (handoff, handed) = oneshot::channel();
        {
            let mut fate = lock(&victim.fate);
            if fate.gone {
                // Closed meanwhile: its slot is back in the semaphore.
                return None;
            }
            fate.told = Some((why, source));
            fate.handoff = Some(handoff);
        }
        victim.notice.notify_one();
        Some(handed)
    }
}

/// Of `connections`, the one idle longest past its phase's threshold.
/// All are measured against one `now`: read per connection, a later
/// reading (the thread preempted between two) made a younger connection
/// look idler than an older one (CI: the health port closed its fourth
/// connection for a probe, not its first).
fn idle_longest<'a>(
    connections: impl Iterator<Item = &'a Arc<Connection>>,
) -> Option<&'a Arc<Connection>> {
    let now = Instant::now();
    connections
        .filter_map(|c| c.idle_past_threshold(now).map(|past| (past, c)))
        .max_by_key(|(past, _)| *past)
        .map(|(_, c)| c)
}

impl Connection {
    /// Moves to `phase`, from now.
    pub fn enter(&self, phase: Phase) {
        *lock(&self.state) = (phase, Instant::now());
    }

    /// How long past its phase's threshold it has been idle; `None`: not
    /// idle, or not long enough.
    fn idle_past_threshold(&self, now: Instant) -> Option<Duration> {
        let (phase, since) = *lock(&self.state);
        let threshold = match phase {
            Phase::AwaitingHead => EVICT_AFTER,
            Phase::Handshake => HANDSHAKE_EVICT_AFTER,
            Phase::InRequest => return None,
        };
        now.saturating_duration_since(since).checked_sub(threshold)
    }

    /// Resolves when the connection must close. An idle eviction that
    /// raced a request's start is withdrawn (the request finishes; the
    /// newcomer learns at once; the connection may be chosen again).
    pub async fn evicted(&self) -> Eviction {
        loop {
            self.notice.notified().await;
            let mut fate = lock(&self.fate);
            match fate.told {
                Some((Eviction::Idle, _)) if lock(&self.state).0 == Phase::InRequest => {
                    fate.told = None;
                    fate.handoff = None;
                }
                Some((why, _)) => return why,
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

    fn ip(last: u8) -> Source {
        Source::of(std::net::IpAddr::from([10, 0, 0, last]))
    }

    /// Rule 1 for addresses holding at least 2 (a share of 4).
    const BIG: usize = 2;

    fn register(held: &Held, from: u8, phase: Phase) -> Arc<Connection> {
        held.register(ip(from), phase)
    }

    #[tokio::test]
    async fn an_address_holding_a_lot_gives_way_first_even_mid_request() {
        tokio::time::pause();
        let held = Held::default();
        let attacker: Vec<_> = (0..3)
            .map(|_| register(&held, 1, Phase::InRequest))
            .collect();
        let other = register(&held, 2, Phase::InRequest);
        // A newcomer from a third address: the attacker's oldest goes.
        assert!(held.make_room(ip(3), BIG).is_some());
        assert_eq!(attacker[0].evicted().await, Eviction::Fairness);
        // The attacker now holds 2, the third address 1 (what it was given):
        // from the second address (1), nobody goes (2 > 1 + 1 is false),
        // and nobody is idle.
        assert!(held.make_room(ip(2), BIG).is_none());
        // From a fourth (0): 2 > 0 + 1, the attacker's next.
        assert!(held.make_room(ip(4), BIG).is_some());
        assert_eq!(attacker[1].evicted().await, Eviction::Fairness);
        drop(other);
    }

    #[tokio::test]
    async fn an_address_holding_little_is_never_cut_mid_request() {
        tokio::time::pause();
        let held = Held::default();
        // Kubelet: one probe under way, from an address holding 1 (< BIG).
        let kubelet = register(&held, 1, Phase::InRequest);
        assert!(held.make_room(ip(2), BIG).is_none());
        let _ = kubelet;
    }

    #[tokio::test]
    async fn the_address_that_gives_way_gives_its_idle_connection_first() {
        tokio::time::pause();
        let held = Held::default();
        let busy = register(&held, 1, Phase::InRequest);
        let idle = register(&held, 1, Phase::AwaitingHead);
        tokio::time::advance(EVICT_AFTER).await;
        assert!(held.make_room(ip(2), BIG).is_some());
        assert_eq!(idle.evicted().await, Eviction::Fairness);
        let _ = busy;
    }

    #[tokio::test]
    async fn among_equals_the_one_idle_longest_gives_way() {
        tokio::time::pause();
        let held = Held::default();
        let first = register(&held, 1, Phase::AwaitingHead);
        let second = register(&held, 2, Phase::InRequest);
        let handshake = register(&held, 3, Phase::Handshake);
        assert!(
            held.make_room(ip(4), BIG).is_none(),
            "none idle long enough"
        );
        tokio::time::advance(EVICT_AFTER).await;
        // The second's request ends: idle from now, the first idle longer.
        second.enter(Phase::AwaitingHead);
        tokio::time::advance(EVICT_AFTER).await;
        assert!(held.make_room(ip(4), BIG).is_some());
        assert_eq!(first.evicted().await, Eviction::Idle);
        assert!(held.make_room(ip(4), BIG).is_some());
        assert_eq!(second.evicted().await, Eviction::Idle);
        // A handshake waits longer before it may go.
        assert!(held.make_room(ip(4), BIG).is_none());
        tokio::time::advance(HANDSHAKE_EVICT_AFTER).await;
        assert!(held.make_room(ip(4), BIG).is_some());
        assert_eq!(handshake.evicted().await, Eviction::Idle);
    }

    #[tokio::test]
    async fn an_idle_eviction_that_raced_a_request_is_withdrawn() {
        tokio::time::pause();
        let held = Held::default();
        let connection = register(&held, 1, Phase::AwaitingHead);
        tokio::time::advance(EVICT_AFTER).await;
        let handed = held.make_room(ip(1), BIG).expect("idle long enough");
        let _request = InRequest::new(connection.clone());
        let evicted = tokio::time::timeout(Duration::from_secs(1), connection.evicted());
        assert!(evicted.await.is_err(), "withdrawn: the request finishes");
        assert!(handed.await.is_err(), "the newcomer learns at once");
        // And it may be chosen again once idle.
        drop(_request);
        tokio::time::advance(EVICT_AFTER).await;
        assert!(held.make_room(ip(1), BIG).is_some());
        assert_eq!(connection.evicted().await, Eviction::Idle);
    }

    #[tokio::test]
    async fn the_slot_of_the_one_that_gives_way_goes_to_the_newcomer() {
        tokio::time::pause();
        let admission = Admission::new(2, 4);
        let (_stop, stop) = watch::channel(false);
        let mut first = Vec::new();
        for _ in 0..2 {
            let Some(Admitted::Now(slot)) = admission.admit(ip(1), Phase::AwaitingHead) else {
                panic!("a free slot");
            };
            first.push(slot);
        }
        // Full, and none too idle: from the same address, queued.
        let Some(Admitted::Later(queued)) = admission.admit(ip(1), Phase::AwaitingHead) else {
            panic!("queued");
        };
        // From another address: the first address (2, half its share)
        // gives one up to it.
        let Some(Admitted::Later(handed)) = admission.admit(ip(2), Phase::AwaitingHead) else {
            panic!("handed a slot");
        };
        assert!(handed.handed.is_some());
        let given = first.remove(0);
        assert_eq!(given.connection().evicted().await, Eviction::Fairness);
        drop(given);
        let slot = admission
            .slot_for(handed, Duration::from_secs(5), stop.clone())
            .await;
        assert!(
            slot.is_some(),
            "the freed slot went to the one it was freed for"
        );
        // The queued one got nothing, and gives up at its limit.
        let waited = admission.slot_for(queued, Duration::from_secs(1), stop.clone());
        assert!(waited.await.is_none());
    }

    #[tokio::test]
    async fn waiting_ends_when_the_server_stops() {
        let admission = Admission::new(1, 4);
        let Some(Admitted::Now(_slot)) = admission.admit(ip(1), Phase::InRequest) else {
            panic!("a free slot");
        };
        let Some(Admitted::Later(later)) = admission.admit(ip(1), Phase::AwaitingHead) else {
            panic!("queued");
        };
        let (stop_tx, stop) = watch::channel(false);
        let waiting = admission.slot_for(later, Duration::from_secs(60), stop);
        let _ = stop_tx.send(true);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(waited, Ok(None)), "stopped waiting at shutdown");
    }
}
