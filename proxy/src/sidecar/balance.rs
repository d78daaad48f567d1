//! A listener's connections kept even across the data-plane workers.
//!
//! Design bias: *a worker never keeps a connection while another worker of
//! the same listener holds fewer*. With `workers: N` every worker accepts
//! from its own registration of the listening socket ([`super::workers`]),
//! and the kernel wakes them all on a new connection: whichever gets to
//! `accept` first owns the connection for its whole life. Left to that
//! race, connections pile up on one thread. A burst of app connections
//! often lands on one worker of the client's sidecar; that worker's pool
//! then opens one tunnel, and the server's sidecar, which sees only
//! tunnels (one per client worker), runs every request of every stream on
//! the one worker that accepted it. Measured in the mesh benchmark
//! (HTTP/1.1 keep-alive, `workers: 2` on both sidecars): in two of three
//! rounds one worker per sidecar did all the work while the other slept,
//! and the round whose server split its two tunnels unevenly carried 16%
//! less than the round whose four workers were even.
//!
//! So the workers share a count of the connections each holds, all
//! listeners together ([`Balance`], one per listener over the same counts,
//! exported as `appid_worker_connections`). The worker that accepts a
//! connection keeps it if no other worker holds fewer (ties stay: a hand-off is not free), and
//! otherwise hands it to the one that holds the fewest, through that
//! worker's inbox: the socket leaves this worker's reactor
//! (`into_std`) and joins the other's, which then serves it exactly as if
//! it had accepted it. Envoy's `exact_balance` does the same with a lock;
//! here the counts are atomics read without one, so workers accepting at
//! the same instant may all pick the same one (the counts then differ by
//! up to the number of workers less one, until later connections even them
//! out). Nothing is moved once it is served: connections that end leave
//! their worker with fewer, and the next ones go there.
//!
//! A connection's count travels with it as a [`Ticket`], given back when
//! the ticket drops: with the connection's task, after the connection
//! ends, or wherever the connection is dropped unserved. A tunnel counts
//! as one connection however many streams it carries (streams are not
//! accepted). With one worker there is nothing to balance and nothing is
//! shared.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// At most this many connections wait in one worker's inbox; a worker
/// whose inbox is full (it is not getting to run) is skipped: the
/// acceptor keeps the connection itself.
const INBOX_CAPACITY: usize = 64;

/// A connection handed from one worker to another, already counted for
/// the receiver.
type Handed = (std::net::TcpStream, SocketAddr, Ticket);

/// The connections each worker holds, and the workers' inboxes for one
/// listener.
pub struct Balance {
    workers: Vec<Slot>,
}

struct Slot {
    /// The connections the worker holds, of every listener (each
    /// listener's `Balance` is given the same gauges).
    live: Gauge,
    inbox: mpsc::Sender<Handed>,
}

impl Balance {
    /// A balance over the workers whose counts are `live` (in order, one
    /// per worker) and, in the same order, each one's end of its inbox
    /// (to make its [`Acceptor`] with).
    pub fn new(live: Vec<Gauge>) -> (Arc<Balance>, Vec<mpsc::Receiver<Handed>>) {
        let (workers, inboxes) = live
            .into_iter()
            .map(|live| {
                let (inbox, receiver) = mpsc::channel(INBOX_CAPACITY);
                (Slot { live, inbox }, receiver)
            })
            .unzip();
        (Arc::new(Balance { workers }), inboxes)
    }

    /// The worker that should hold a connection `me` accepted: `me` unless
    /// another holds fewer, then the one that holds the fewest (the first
    /// of equals).
    fn choose(&self, me: usize) -> usize {
        let mut fewest = (self.live(me), me);
        for (worker, slot) in self.workers.iter().enumerate() {
            let live = slot.live.get();
            if live < fewest.0 {
                fewest = (live, worker);
            }
        }
        fewest.1
    }

    fn live(&self, worker: usize) -> i64 {
        self.workers[worker].live.get()
    }

    /// Counts a connection for `worker`, until the ticket drops.
    fn ticket(self: &Arc<Self>, worker: usize) -> Ticket {
        self.workers[worker].live.inc();
        Ticket(Some((self.clone(), worker)))
    }
}

/// A worker's count for one connection it holds, given back on drop.
#[must_use = "the connection is counted until its ticket drops"]
pub struct Ticket(Option<(Arc<Balance>, usize)>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((balance, worker)) = self.0.take() {
            balance.workers[worker].live.dec();
        }
    }
}

/// One worker's accepts from one listener: what it accepts and keeps, and
/// what other workers hand it.
pub struct Acceptor {
    listener: TcpListener,
    balanced: Option<Balanced>,
}

/// An acceptor's place among the listener's workers.
struct Balanced {
    /// This worker's index in `balance`.
    me: usize,
    balance: Arc<Balance>,
    inbox: mpsc::Receiver<Handed>,
}

impl Acceptor {
    /// The only worker of `listener`: keeps everything it accepts.
    pub fn alone(listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            balanced: None,
        }
    }

    /// Worker `me` of `balance`, with its inbox; `listener` must be
    /// registered with this worker's runtime.
    pub fn shared(
        listener: TcpListener,
        me: usize,
        balance: Arc<Balance>,
        inbox: mpsc::Receiver<Handed>,
    ) -> Acceptor {
        Acceptor {
            listener,
            balanced: Some(Balanced { me, balance, inbox }),
        }
    }

    /// The next connection for this worker: one it accepted and keeps, or
    /// one another worker handed it. An error is the listener's (`accept`
    /// failed); a connection lost on its way between workers is logged and
    /// skipped. Cancel safe: nothing is held across its one `await` (both
    /// of whose branches are cancel safe).
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr, Ticket)> {
        let Some(balanced) = &mut self.balanced else {
            let (stream, addr) = self.listener.accept().await?;
            return Ok((stream, addr, Ticket(None)));
        };
        loop {
            let (stream, addr) = tokio::select! {
                // Handed connections first: they have waited already.
                biased;
                Some(handed) = balanced.inbox.recv() => match register(handed) {
                    Some(connection) => return Ok(connection),
                    None => continue,
                },
                accepted = self.listener.accept() => accepted?,
            };
            let worker = balanced.balance.choose(balanced.me);
            if worker == balanced.me {
                return Ok((stream, addr, balanced.balance.ticket(worker)));
            }
            // Counted for `worker` before it is sent, so that the next
            // accept (here or on another worker) already sees it there.
            let ticket = balanced.balance.ticket(worker);
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, peer = %addr, "a connection to hand to another worker could not leave this one; closed");
                    continue;
                }
            };
            let Err(refused) = balanced.balance.workers[worker]
                .inbox
                .try_send((stream, addr, ticket))
            else {
                continue;
            };
            // That worker's inbox is full (it is not getting to run) or
            // gone (shutting down): this one keeps the connection.
            let (stream, addr, ticket) = refused.into_inner();
            drop(ticket);
            let kept = (stream, addr, balanced.balance.ticket(balanced.me));
            if let Some(connection) = register(kept) {
                return Ok(connection);
            }
        }
    }

    /// Stops taking connections from other workers and returns those they
    /// handed over that were not served yet (at shutdown: served like the
    /// ones this worker accepted before it, not dropped).
    pub fn close(mut self) -> Vec<(TcpStream, SocketAddr, Ticket)> {
        let Some(balanced) = &mut self.balanced else {
            return Vec::new();
        };
        balanced.inbox.close();
        let mut waiting = Vec::new();
        while let Ok(handed) = balanced.inbox.try_recv() {
            waiting.extend(register(handed));
        }
        waiting
    }
}

/// A handed connection registered with this thread's reactor; `None` (and
/// a warning) if it cannot be: the connection is closed, its ticket given
/// back.
fn register(handed: Handed) -> Option<(TcpStream, SocketAddr, Ticket)> {
    let (stream, addr, ticket) = handed;
    match TcpStream::from_std(stream) {
        Ok(stream) => Some((stream, addr, ticket)),
        Err(error) => {
            tracing::warn!(%error, peer = %addr, "a connection moved between workers could not be registered; closed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::workers::{self, Workers};

    /// A count per worker, each its own.
    fn counts(workers: usize) -> Vec<Gauge> {
        (0..workers).map(|_| Gauge::default()).collect()
    }

    /// Accepts on every worker of `workers` from one listener, like the
    /// sidecar does; each connection accepted is reported with the worker
    /// that holds it, and held (with its ticket) until the test ends.
    async fn serve_on(workers: &Workers) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (balance, inboxes) = Balance::new(counts(workers.handles().len()));
        let (seen, accepted) = mpsc::unbounded_channel();
        for (me, (handle, inbox)) in workers.handles().iter().zip(inboxes).enumerate() {
            let registered = {
                let _on_worker = handle.enter();
                TcpListener::from_std(listener.try_clone().unwrap()).unwrap()
            };
            let mut acceptor = Acceptor::shared(registered, me, balance.clone(), inbox);
            let seen = seen.clone();
            handle.spawn(async move {
                let mut held = Vec::new();
                while let Ok((stream, _, ticket)) = acceptor.accept().await {
                    let _ = seen.send(workers::current());
                    held.push((stream, ticket));
                }
            });
        }
        drop(seen); // the workers' tasks hold the others
        (address, accepted)
    }

    #[tokio::test]
    async fn connections_held_open_are_spread_evenly_whoever_accepts_them() {
        let workers = Workers::start(2).unwrap();
        let (address, mut accepted) = serve_on(&workers).await;
        let mut clients = Vec::new();
        let mut held = [0usize; 2];
        for _ in 0..10 {
            clients.push(tokio::net::TcpStream::connect(address).await.unwrap());
            // One at a time: each is counted before the next arrives.
            let worker = accepted.recv().await.expect("an accepting task failed");
            held[worker - 1] += 1;
            assert!(held[0].abs_diff(held[1]) <= 1, "{held:?}");
        }
        assert_eq!(held, [5, 5]);
    }

    #[tokio::test]
    async fn a_handed_connection_carries_its_bytes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let workers = Workers::start(2).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (balance, mut inboxes) = Balance::new(counts(2));
        // Only worker 1 accepts. It keeps the first connection; holding
        // one while worker 2 holds none, it hands the second over.
        let (seen, mut served) = mpsc::unbounded_channel();
        let second = inboxes.pop().unwrap();
        let first = inboxes.pop().unwrap();
        for (me, (handle, inbox)) in workers.handles().iter().zip([first, second]).enumerate() {
            let registered = {
                let _on_worker = handle.enter();
                let listener = if me == 0 {
                    listener.try_clone().unwrap()
                } else {
                    // Worker 2 only receives: a listener nobody connects to.
                    let idle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    idle.set_nonblocking(true).unwrap();
                    idle
                };
                TcpListener::from_std(listener).unwrap()
            };
            let mut acceptor = Acceptor::shared(registered, me, balance.clone(), inbox);
            let seen = seen.clone();
            handle.spawn(async move {
                while let Ok((mut stream, _, ticket)) = acceptor.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _ticket = ticket;
                        let mut line = [0u8; 5];
                        stream.read_exact(&mut line).await.unwrap();
                        stream.write_all(&line).await.unwrap();
                        let _ = seen.send(workers::current());
                        let _ = stream.read(&mut line).await;
                    });
                }
            });
        }
        drop(seen); // a task that panics ends the wait below
        let mut on = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.write_all(b"hello").await.unwrap();
            let mut echo = [0u8; 5];
            client.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"hello");
            on.push(served.recv().await.expect("a serving task failed"));
            clients.push(client);
        }
        assert_eq!(
            on,
            [1, 2],
            "the second connection is served by the worker holding none"
        );
        drop(clients);
        // Both given back once their connections end.
        for _ in 0..100 {
            if balance.live(0) == 0 && balance.live(1) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "counts not given back: {} and {}",
            balance.live(0),
            balance.live(1)
        );
    }

    /// Worker 0's acceptor on this runtime, its listener's address, and
    /// worker 1's inbox (nobody accepts for worker 1).
    fn two_workers_one_accepting() -> (Acceptor, SocketAddr, Arc<Balance>, mpsc::Receiver<Handed>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (balance, mut inboxes) = Balance::new(counts(2));
        let second = inboxes.pop().unwrap();
        let first = inboxes.pop().unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let acceptor = Acceptor::shared(listener, 0, balance.clone(), first);
        (acceptor, address, balance, second)
    }

    #[tokio::test]
    async fn a_worker_that_cannot_take_a_connection_leaves_it_with_the_acceptor() {
        let (mut acceptor, address, balance, second) = two_workers_one_accepting();
        drop(second); // worker 1 is gone (its loop ended)
        let _clients = (
            tokio::net::TcpStream::connect(address).await.unwrap(),
            tokio::net::TcpStream::connect(address).await.unwrap(),
        );
        let first = acceptor.accept().await.unwrap();
        let second = acceptor.accept().await.unwrap();
        assert_eq!((balance.live(0), balance.live(1)), (2, 0));
        drop((first, second));
        assert_eq!((balance.live(0), balance.live(1)), (0, 0));
    }

    #[tokio::test]
    async fn connections_waiting_in_an_inbox_at_shutdown_are_returned_not_dropped() {
        let (mut acceptor, address, balance, second) = two_workers_one_accepting();
        let _first_client = tokio::net::TcpStream::connect(address).await.unwrap();
        let _kept = acceptor.accept().await.unwrap();
        // The second goes to worker 1, which is not accepting; the accept
        // below waits for a third that never comes.
        let _second_client = tokio::net::TcpStream::connect(address).await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(200), acceptor.accept()).await;
        assert!(
            waited.is_err(),
            "the second connection was handed over, not kept"
        );
        assert_eq!((balance.live(0), balance.live(1)), (1, 1));
        let worker_1 = Acceptor::shared(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            1,
            balance.clone(),
            second,
        );
        let waiting = worker_1.close();
        assert_eq!(waiting.len(), 1, "returned to be served");
        drop(waiting);
        assert_eq!((balance.live(0), balance.live(1)), (1, 0));
    }

    #[test]
    fn the_acceptor_keeps_a_tie_and_otherwise_picks_the_fewest() {
        let (balance, _inboxes) = Balance::new(counts(3));
        assert_eq!(balance.choose(1), 1);
        let a = balance.ticket(1);
        assert_eq!(balance.choose(1), 0);
        let b = balance.ticket(0);
        assert_eq!(balance.choose(1), 2);
        let c = balance.ticket(2);
        assert_eq!(balance.choose(0), 0);
        drop((a, b, c));
        assert_eq!(
            (balance.live(0), balance.live(1), balance.live(2)),
            (0, 0, 0)
        );
    }
}
