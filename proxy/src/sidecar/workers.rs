//! Data-plane threads: one single-threaded runtime per worker.
//!
//! Design bias: *a connection's tasks stay on the thread that accepted it*.
//! A proxied connection is a handful of tasks that wake each other for
//! every chunk: the app connection's copy task, the tunnel's HTTP/2
//! connection task, the peer's stream. On tokio's work-stealing runtime
//! any wake that lands in a run queue (a task yielding, two tasks woken at
//! once) also wakes an idle worker, which steals one of them, and from then
//! on the tasks of one connection ping-pong between threads: each hand-off
//! a futex wake, each idle moment a sleep in `epoll_wait`. Measured in the
//! mesh benchmark (bulk TCP through a tunnel, two sidecars on 2 CPUs): with
//! `workers: 2` on the work-stealing runtime each sidecar's two threads
//! were equally busy and switched context about 26 times per MiB, against
//! 15 with one thread, and carried 20% less than with one thread.
//!
//! So `workers: N` (N ≥ 2) starts N threads here, each running a
//! current-thread runtime, and every data-plane listener is served on each
//! of them from its own registration of the same socket: the kernel wakes
//! every worker's epoll on a new connection, whichever accepts it keeps it
//! unless another worker holds fewer of the listener's connections (then
//! it is handed to that one, [`super::balance`]), and the worker that
//! keeps it owns it for its whole life — its task, the app connection, the
//! tunnel stream and the tunnel itself (the pool keeps tunnels per worker,
//! see [`current`]). That is the model of Envoy's workers: nothing of one
//! connection crosses threads except the shared state every connection
//! reads (policy, identity, metrics, budgets), which is `Arc`s and atomics.
//! The control plane (admin, health, reloads, the authority client) stays
//! on the caller's runtime. With `workers: 1` no thread is started and
//! everything runs on the caller's runtime.

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number (1-based; 0 for any other thread).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The data-plane worker running on this thread: `1..=N` on a worker's
/// thread, `0` on any other (the caller's runtime, with `workers: 1`).
/// Tunnels are pooled per worker, so that a stream and its tunnel's
/// connection task run on the same thread.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The running worker threads; dropping it stops them, cancelling any
/// task still on them (after the sidecar's drain), and waits for them.
pub struct Workers {
    handles: Vec<Handle>,
    /// One per thread: dropping it ends that thread's runtime.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads, each with an idle runtime.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for number in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            // On failure `workers` drops here, stopping those already started.
            let thread = std::thread::Builder::new()
                .name("appid-worker".into())
                .spawn(move || {
                    WORKER.with(|worker| worker.set(number));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Each worker's runtime, to register sockets with and spawn on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_tasks_on_its_own_thread_and_knows_its_number() {
        let workers = Workers::start(2).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen: Vec<(usize, std::thread::ThreadId)> = runtime.block_on(async {
            let mut seen = Vec::new();
            for handle in workers.handles() {
                // Twice each: a worker's tasks always run on its thread.
                for _ in 0..2 {
                    let task = handle.spawn(async {
                        tokio::task::yield_now().await;
                        (current(), std::thread::current().id())
                    });
                    seen.push(task.await.unwrap());
                }
            }
            seen
        });
        assert_eq!(current(), 0, "not a worker's thread");
        assert_eq!(seen[0].0, 1);
        assert_eq!(seen[2].0, 2);
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[2], seen[3]);
        assert_ne!(seen[0].1, seen[2].1);
    }

    #[test]
    fn dropping_the_workers_cancels_what_runs_on_them() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.handles()[0].spawn(async move {
            let _tx = tx; // dropped when the task is cancelled
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(rx.recv().is_err(), "the task was dropped with its worker");
    }
}
