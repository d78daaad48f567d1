//! The first write on a quiet tunnel goes out at once.
//!
//! Design bias: *batch under load, but never make a lone write wait for a
//! batch*. A tunnel's HTTP/2 connection is polled by a task of its own,
//! which [`super::tunnel::Coalesce`] puts behind every stream task woken in
//! the same scheduler tick, so that many streams' frames leave in one TLS
//! record and one syscall. When a burst reaches a quiet tunnel (ten app
//! connections send a request each at the same instant), that holds the
//! first request back until the last one has been read, checked and
//! queued, and only then wakes the peer sidecar, whose wake-up (tens of µs,
//! more on a VM whose idle CPUs halt) is then added to every request of the
//! burst. A TCP proxy pipelines instead: haproxy's first write wakes the
//! peer while it works through the rest (docs/performance.md, "Bursts on a
//! quiet tunnel", has both timelines).
//!
//! So a stream that queues data on a connection nobody has queued data on
//! for [`QUIET`] polls the connection itself, at once ([`Nudge::queued`]),
//! which writes out what is queued. Writes within [`QUIET`] of the last
//! leave with the connection task as before: a burst costs two writes
//! instead of one, and a tunnel at most one extra write per [`QUIET`].
//!
//! The stream polls with the connection task's waker: what the poll
//! registers (socket readiness, h2's own notifications) wakes that task, as
//! if it had run the poll itself, and the task is woken afterwards anyway,
//! so a frame the poll read (a new stream for a server's accept loop) is
//! not left unnoticed. The task takes the connection with it when it ends
//! ([`DrivenConnection`]'s drop), so streams holding a nudge never keep a
//! finished connection's socket open.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};

use super::tunnel::monotonic_us;

/// How long a connection must have had nothing queued for the next write
/// to be sent at once rather than with the connection task's batch. Far
/// longer than the gaps between writes within one burst (µs). Measured at
/// 200 µs, keep-alive load on one core (both sidecars taking turns) was
/// quiet that long between batches: every batch cost a second write, 30%
/// more `writev`s and up to 15% of the rate; at 1 ms neither moved.
pub const QUIET: Duration = Duration::from_millis(1);

/// What a tunnel stream tells its connection after queuing data.
pub trait Nudge: Send + Sync {
    /// A stream queued a frame for the peer.
    fn queued(&self);
}

/// An HTTP/2 connection as its task drives it.
pub trait Drive: Send {
    /// Reads what arrived, writes what is queued; `Ready` once it has ended.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>>;
}

impl<T, B> Drive for h2::client::Connection<T, B>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
    B: Buf + Send,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        Pin::new(self).poll(cx)
    }
}

impl<T, B> Drive for h2::server::Connection<T, B>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
    B: Buf + Send,
{
    /// Incoming streams wait for the accept loop, which is woken after.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        self.poll_closed(cx)
    }
}

/// A connection shared by the task that drives it and the streams that
/// nudge it.
pub struct Shared<C> {
    /// `None` once the task has ended.
    connection: Mutex<Option<C>>,
    /// The connection task's waker, as of its last poll.
    task: Mutex<Option<Waker>>,
    /// How a stream's poll saw the connection end, for the task to return.
    ended: Mutex<Option<Result<(), h2::Error>>>,
    /// Set with `ended`, and never cleared: an ended connection is not
    /// polled again.
    finished: AtomicBool,
    /// When a stream last queued data, in µs on [`monotonic_us`]'s clock
    /// ([`NEVER`] before the first).
    last_queued_us: AtomicU64,
    /// [`QUIET`], in µs (tests set their own).
    quiet_us: u64,
}

const NEVER: u64 = u64::MAX;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves a value half-changed: a panic elsewhere while
    // holding it does not make it unusable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<C: Drive> Nudge for Shared<C> {
    fn queued(&self) {
        let now = monotonic_us();
        let before = self.last_queued_us.swap(now, Ordering::Relaxed);
        if before != NEVER && now.saturating_sub(before) < self.quiet_us {
            return; // the write before it has not gone out yet, or just did
        }
        let Some(waker) = lock(&self.task).clone() else {
            return; // the task has not run yet: it writes soon anyway
        };
        // A nudge never waits: the lock is held only while the task (or
        // another nudge) polls, and then that poll writes this frame out.
        let Ok(mut connection) = self.connection.try_lock() else {
            return;
        };
        let Some(connection) = connection.as_mut() else {
            return;
        };
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        if let Poll::Ready(result) = connection.poll_drive(&mut Context::from_waker(&waker)) {
            *lock(&self.ended) = Some(result);
            self.finished.store(true, Ordering::Relaxed);
        }
        waker.wake();
    }
}

/// The connection task's handle on a [`Shared`] connection: it polls the
/// connection and, when dropped (the task ended), drops the connection.
pub struct DrivenConnection<C> {
    shared: Arc<Shared<C>>,
}

impl<C: Drive + 'static> DrivenConnection<C> {
    pub fn new(connection: C) -> Self {
        Self::with_quiet(connection, QUIET)
    }

    fn with_quiet(connection: C, quiet: Duration) -> Self {
        DrivenConnection {
            shared: Arc::new(Shared {
                connection: Mutex::new(Some(connection)),
                task: Mutex::new(None),
                ended: Mutex::new(None),
                finished: AtomicBool::new(false),
                last_queued_us: AtomicU64::new(NEVER),
                quiet_us: quiet.as_micros() as u64,
            }),
        }
    }

    /// What the connection's streams nudge.
    pub fn nudge(&self) -> Arc<dyn Nudge> {
        self.shared.clone()
    }

    /// Runs `poll` on the connection with the task's context, remembering
    /// the task's waker for nudges. `Err` with how it ended when a nudge's
    /// poll saw the connection end (it is not polled again).
    pub fn poll_with<R>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut C, &mut Context<'_>) -> Poll<R>,
    ) -> Result<Poll<R>, Result<(), h2::Error>> {
        // The connection first: a nudge sets `ended` while it holds it.
        let mut connection = lock(&self.shared.connection);
        if self.shared.finished.load(Ordering::Relaxed)
            && let Some(result) = lock(&self.shared.ended).take()
        {
            return Err(result);
        }
        {
            let mut task = lock(&self.shared.task);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let connection = connection
            .as_mut()
            .unwrap_or_else(|| unreachable!("only taken by drop"));
        Ok(poll(connection, cx))
    }

    /// The connection, for calls that need no context (e.g. a server's
    /// `graceful_shutdown`).
    pub fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        let mut connection = lock(&self.shared.connection);
        f(connection
            .as_mut()
            .unwrap_or_else(|| unreachable!("only taken by drop")))
    }
}

impl<C: Drive + 'static> Future for DrivenConnection<C> {
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.poll_with(cx, Drive::poll_drive) {
            Ok(poll) => poll,
            Err(ended) => Poll::Ready(ended),
        }
    }
}

impl<C> Drop for DrivenConnection<C> {
    fn drop(&mut self) {
        // Closes the socket now, whoever still holds a nudge; and the task
        // whose waker this was is gone.
        let connection = lock(&self.shared.connection).take();
        lock(&self.shared.task).take();
        drop(connection);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use bytes::Bytes;
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::sidecar::test_io::{Recorder, frames_written};
    use crate::sidecar::tunnel::{self, TunnelStream};

    /// A connection that counts its polls, remembers the wakers it was
    /// polled with, and ends at its `end_at`th poll.
    #[derive(Default)]
    struct Fake {
        polls: Arc<AtomicUsize>,
        wakers: Arc<Mutex<Vec<Waker>>>,
        end_at: Option<usize>,
        dropped: Arc<AtomicBool>,
    }

    impl Drive for Fake {
        fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&self.wakers).push(cx.waker().clone());
            if self.end_at.is_some_and(|end| n >= end) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// The connection task's waker: counts its wake-ups.
    #[derive(Default)]
    struct TaskWaker(AtomicUsize);

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A driven fake after its task's first poll, with what the tests
    /// look at.
    struct Driven {
        driven: DrivenConnection<Fake>,
        polls: Arc<AtomicUsize>,
        wakers: Arc<Mutex<Vec<Waker>>>,
        task: Arc<TaskWaker>,
    }

    fn driven(quiet: Duration, end_at: Option<usize>) -> Driven {
        let mut fake = Fake::default();
        fake.end_at = end_at;
        let (polls, wakers) = (fake.polls.clone(), fake.wakers.clone());
        let mut driven = DrivenConnection::with_quiet(fake, quiet);
        let task = Arc::new(TaskWaker::default());
        let waker = Waker::from(task.clone());
        assert!(
            Pin::new(&mut driven)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        Driven {
            driven,
            polls,
            wakers,
            task,
        }
    }

    #[test]
    fn a_write_on_a_quiet_connection_polls_it_at_once_as_its_task_would() {
        let Driven {
            driven,
            polls,
            wakers,
            task,
        } = driven(Duration::from_secs(60), None);
        driven.nudge().queued();
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "polled by the write, not only by its task"
        );
        let task_waker = Waker::from(task.clone());
        assert!(
            lock(&wakers)[1].will_wake(&task_waker),
            "with the task's waker: what the poll registers wakes the task"
        );
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "and the task is woken after"
        );
    }

    #[test]
    fn writes_soon_after_another_wait_for_the_task() {
        let Driven { driven, polls, .. } = driven(Duration::from_secs(60), None);
        let nudge = driven.nudge();
        nudge.queued();
        nudge.queued();
        nudge.queued();
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "only the first of a burst is sent at once"
        );
    }

    #[test]
    fn every_write_after_a_quiet_spell_is_sent_at_once() {
        let Driven { driven, polls, .. } = driven(Duration::ZERO, None);
        let nudge = driven.nudge();
        nudge.queued();
        nudge.queued();
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn nothing_is_polled_before_the_task_has_run() {
        let fake = Fake::default();
        let polls = fake.polls.clone();
        let driven = DrivenConnection::with_quiet(fake, Duration::ZERO);
        driven.nudge().queued();
        assert_eq!(polls.load(Ordering::SeqCst), 0, "no waker to poll with yet");
    }

    #[test]
    fn an_end_a_write_saw_is_the_tasks_to_return() {
        let Driven {
            mut driven,
            polls,
            task,
            ..
        } = driven(Duration::ZERO, Some(2));
        driven.nudge().queued(); // the second poll: the connection ends
        let waker = Waker::from(task);
        let ended = Pin::new(&mut driven).poll(&mut Context::from_waker(&waker));
        assert!(
            matches!(ended, Poll::Ready(Ok(()))),
            "the task learns how it ended"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2, "without polling it again");
        driven.nudge().queued();
        assert_eq!(polls.load(Ordering::SeqCst), 2, "nor does a later write");
    }

    #[test]
    fn the_connection_goes_with_its_task_whoever_holds_a_nudge() {
        let Driven { driven, polls, .. } = driven(Duration::ZERO, None);
        let dropped = lock(&driven.shared.connection)
            .as_ref()
            .map(|fake| fake.dropped.clone())
            .unwrap();
        let nudge = driven.nudge();
        drop(driven);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the socket closes with the task"
        );
        nudge.queued();
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "and a stream's write is then a no-op"
        );
    }

    /// Through a real HTTP/2 tunnel on one thread: the first write on a
    /// quiet connection has reached the socket when the stream's write
    /// returns, before the connection task has run again; the next one,
    /// right after, reaches it only once the task has run.
    #[tokio::test(flavor = "current_thread")]
    async fn through_a_tunnel_the_first_write_is_on_the_wire_before_the_task_runs() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let mut server = tunnel::server_builder()
                .handshake::<_, Bytes>(server_io)
                .await
                .unwrap();
            while let Some(Ok((request, mut respond))) = server.accept().await {
                let send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let mut body = request.into_body();
                tokio::spawn(async move {
                    let _send = send;
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                });
            }
        });
        let writes = Arc::new(Mutex::new(Vec::new()));
        let client_io = Recorder::new(client_io, writes.clone());
        // DATA frames of stream 1 written so far.
        let data_frames = || {
            frames_written(&lock(&writes))
                .iter()
                .filter(|f| (f.1, f.3) == (0x0, 1))
                .count()
        };
        let (sender, connection) = tunnel::client_builder()
            .handshake::<_, Bytes>(client_io)
            .await
            .unwrap();
        let driven = DrivenConnection::with_quiet(connection, Duration::from_secs(60));
        let nudge = driven.nudge();
        tokio::spawn(driven);
        let mut sender = sender.ready().await.unwrap();
        let request = http::Request::connect("127.0.0.1:1").body(()).unwrap();
        let (response, send) = sender.send_request(request, false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap();
        let mut stream = TunnelStream::new(send, response.into_body(), None, None, Some(nudge));

        let first = stream.write(b"first").now_or_never();
        assert!(matches!(first, Some(Ok(5))), "{first:?}");
        assert_eq!(
            data_frames(),
            1,
            "the first write on a quiet tunnel is written out at once"
        );
        let second = stream.write(b"second").now_or_never();
        assert!(matches!(second, Some(Ok(6))), "{second:?}");
        assert_eq!(
            data_frames(),
            1,
            "the next one, right after, waits for the connection task"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while data_frames() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection task writes it out");
    }
}
