//! Group commit for the SQLite backend: many transactions, one `fsync`.
//!
//! Design bias: *a caller learns its outcome only once it is on disk, and
//! never pays alone for the disk*. With `synchronous = FULL` every SQLite
//! commit waits for an `fsync` of the write-ahead log, and SQLite has one
//! writer: with one transaction per commit, issuances are capped at one
//! per `fsync` time, with CPU to spare (about 0.4 ms on the benchmark's
//! machine, so no cap showed there; a network disk taking 2 ms would cap
//! an authority near 500 a second). Here the threads that want the one connection take
//! turns inside one open transaction (a *batch*): each runs its steps in a
//! `SAVEPOINT` of its own, kept if they succeed and rolled back to if they
//! fail or panic, and the last of the batch (the one that finds nobody
//! waiting, or the batch full) commits for all. Everyone of the batch then
//! gets their result, or, if the batch did not commit, the error saying
//! so: a refusal or an issuance is never reported for state that did not
//! reach the disk.
//!
//! A member sees the writes of the members before it, uncommitted, as it
//! would see them committed without batching: they are serial either way,
//! and they commit or fail together. PostgreSQL needs none of this: it
//! flushes concurrent commits together on its own.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use super::sqlite::SqliteStore;
use super::{StoreError, Tx};

/// Most transactions committed by one `fsync`: a bound on how long the
/// first of a batch waits for its answer under a steady stream of callers.
pub const MAX_BATCH: usize = 64;

/// The SQLite connection, shared by batching.
pub struct GroupCommit {
    state: Mutex<State>,
    /// Signalled when the connection is handed back.
    available: Condvar,
    /// Signalled when a batch has an outcome.
    finished: Condvar,
}

struct State {
    /// The connection, while no member runs on it.
    store: Option<SqliteStore>,
    /// The batch open on the connection, if any.
    batch: Option<Batch>,
    /// Threads waiting for the connection.
    waiting: usize,
    /// Batches committed so far (tests).
    committed: u64,
}

struct Batch {
    members: usize,
    /// A savepoint could not be ended, or SQLite rolled the whole
    /// transaction back on an error: this batch must not commit.
    doomed: Option<String>,
    outcome: Arc<Outcome>,
}

/// What became of a batch: committed, or why not.
type Outcome = OnceLock<Result<(), String>>;

/// How one member's steps ended.
enum Ran<T> {
    Returned(T),
    Panicked(Box<dyn std::any::Any + Send>),
}

impl GroupCommit {
    pub(super) fn new(store: SqliteStore) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                store: Some(store),
                batch: None,
                waiting: 0,
                committed: 0,
            }),
            available: Condvar::new(),
            finished: Condvar::new(),
        }
    }

    /// Runs `steps` as one transaction of a batch (see the module docs):
    /// `Ok` once its writes are committed; its own `Err` once the batch
    /// committed without them; the batch's error if the batch did not
    /// commit. A panic in `steps` undoes its writes and goes on after the
    /// batch's outcome.
    pub fn transaction<T, E>(&self, steps: impl FnOnce(&mut dyn Tx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (mut store, outcome) = self.join()?;
        let ran = match store.savepoint(|tx| catch_unwind(AssertUnwindSafe(|| steps(tx)))) {
            Ok(Ok(result)) => Ran::Returned(result),
            Ok(Err(panic)) => Ran::Panicked(panic),
            Err(broken) => {
                self.leave(store, Some(broken.to_string()));
                return Err(E::from(self.wait(&outcome).err().unwrap_or(broken)));
            }
        };
        let doomed = (!store.in_transaction())
            .then(|| "SQLite rolled the transaction back after an error".to_string());
        self.leave(store, doomed);
        let committed = self.wait(&outcome);
        match ran {
            Ran::Panicked(panic) => resume_unwind(panic),
            Ran::Returned(result) => match committed {
                Ok(()) => result,
                Err(error) => Err(E::from(error)),
            },
        }
    }

    /// Batches committed so far.
    #[cfg(test)]
    pub fn committed(&self) -> u64 {
        self.lock().committed
    }

    /// Threads waiting for the connection now (tests).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Takes the connection, opening a batch if none is open, and joins it.
    fn join(&self) -> Result<(SqliteStore, Arc<Outcome>), StoreError> {
        let mut state = self.lock();
        state.waiting += 1;
        let mut state = self
            .available
            .wait_while(state, |state| state.store.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting -= 1;
        let Some(mut store) = state.store.take() else {
            unreachable!("waited for the connection");
        };
        if state.batch.is_none() {
            if let Err(error) = store.begin() {
                state.store = Some(store);
                self.available.notify_one();
                return Err(error);
            }
            state.batch = Some(Batch {
                members: 0,
                doomed: None,
                outcome: Arc::default(),
            });
        }
        let Some(batch) = state.batch.as_mut() else {
            unreachable!("opened above");
        };
        batch.members += 1;
        Ok((store, batch.outcome.clone()))
    }

    /// Hands the connection on to a waiting thread, or, when nobody waits,
    /// the batch is full or it is doomed, ends the batch: commit (or roll
    /// back a doomed one) and tell every member.
    fn leave(&self, mut store: SqliteStore, doomed: Option<String>) {
        let mut state = self.lock();
        let waiting = state.waiting;
        let Some(batch) = state.batch.as_mut() else {
            unreachable!("a member leaves an open batch");
        };
        if batch.doomed.is_none() {
            batch.doomed = doomed;
        }
        // A doomed batch ends now: a member joining it would run outside
        // any transaction (its writes committed on their own).
        if waiting > 0 && batch.members < MAX_BATCH && batch.doomed.is_none() {
            state.store = Some(store);
            self.available.notify_one();
            return;
        }
        let Some(batch) = state.batch.take() else {
            unreachable!("checked above");
        };
        let outcome = match batch.doomed {
            Some(why) => {
                store.rollback();
                Err(why)
            }
            None => store.commit().map_err(|error| {
                store.rollback();
                error.to_string()
            }),
        };
        if outcome.is_ok() {
            state.committed += 1;
        } else if let Err(why) = &outcome {
            tracing::error!(members = batch.members, error = %why, "authority database: a batch of transactions did not commit");
        }
        let _ = batch.outcome.set(outcome);
        state.store = Some(store);
        self.available.notify_one();
        self.finished.notify_all();
    }

    /// Waits for the outcome of a batch.
    fn wait(&self, outcome: &Outcome) -> Result<(), StoreError> {
        let state = self.lock();
        let _state = self
            .finished
            .wait_while(state, |_| outcome.get().is_none())
            .unwrap_or_else(PoisonError::into_inner);
        match outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(StoreError::NotCommitted(why.clone())),
            None => unreachable!("waited for the outcome"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it: member steps run unlocked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn group(dir: &std::path::Path) -> GroupCommit {
        GroupCommit::new(SqliteStore::open(dir).unwrap())
    }

    fn register(tx: &mut dyn Tx, id: &str) -> Result<(), StoreError> {
        let registration = super::super::Registration {
            id: id.to_string(),
            labels: Default::default(),
            image_digest: None,
            cloud_match: Default::default(),
        };
        tx.register(&registration, 1)
    }

    /// Waits (bounded) until `n` threads wait for the connection.
    fn until_waiting(group: &GroupCommit, n: usize) {
        let start = Instant::now();
        while group.waiting() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "threads did not queue"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn callers_queued_behind_one_share_its_commit_and_failures_keep_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let group = &group(dir.path());
        std::thread::scope(|scope| {
            // The first member holds the connection until 8 others queue.
            let (inside, first_inside) = std::sync::mpsc::channel();
            let first = scope.spawn(move || {
                group.transaction(move |tx| {
                    inside.send(()).unwrap();
                    until_waiting(group, 8);
                    register(tx, "spiffe://td/first")
                })
            });
            first_inside.recv().unwrap();
            let others: Vec<_> = (0..8)
                .map(|n| {
                    scope.spawn(move || {
                        group.transaction(|tx| {
                            register(tx, &format!("spiffe://td/{n}"))?;
                            match n % 3 {
                                // A refusal after a write: the write is undone.
                                0 => Err(StoreError::NotCommitted("refused".into())),
                                // A panic after a write: undone too.
                                1 if n == 1 => panic!("member panics"),
                                _ => Ok(()),
                            }
                        })
                    })
                })
                .collect();
            first.join().unwrap().unwrap();
            for (n, other) in others.into_iter().enumerate() {
                match (n % 3, other.join()) {
                    (0, Ok(result)) => assert!(result.is_err()),
                    (1, Err(_)) if n == 1 => {}
                    (_, Ok(result)) => result.unwrap(),
                    (_, Err(_)) => panic!("member {n} panicked"),
                }
            }
        });
        // One fsync for all nine.
        assert_eq!(group.committed(), 1);
        let kept: Vec<_> = (0..8)
            .filter(|n| {
                group
                    .transaction(|tx| tx.registration(&format!("spiffe://td/{n}")))
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(kept, [2, 4, 5, 7]);
        let first = group.transaction(|tx| tx.registration("spiffe://td/first"));
        assert!(first.unwrap().is_some());
        // And it is on disk, for another connection.
        let mut other = super::super::Store::open(dir.path()).unwrap();
        assert!(other.registration("spiffe://td/7").unwrap().is_some());
        assert!(other.registration("spiffe://td/3").unwrap().is_none());
    }

    #[test]
    fn a_batch_sqlite_rolled_back_fails_its_members_and_the_next_caller_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let group = &group(dir.path());
        let (mut store, outcome) = group.join().unwrap();
        std::thread::scope(|scope| {
            let next = scope.spawn(|| group.transaction(|tx| register(tx, "spiffe://td/next")));
            until_waiting(group, 1);
            // What SQLite does by itself after a full disk or an I/O error.
            store.rollback();
            let doomed = (!store.in_transaction()).then(|| "rolled back".to_string());
            group.leave(store, doomed);
            // The waiting caller does not join the dead batch (its writes
            // would commit outside it): it opens its own, and it commits.
            next.join().unwrap().unwrap();
        });
        assert!(matches!(
            group.wait(&outcome),
            Err(StoreError::NotCommitted(_))
        ));
        let mut other = super::super::Store::open(dir.path()).unwrap();
        assert!(other.registration("spiffe://td/next").unwrap().is_some());
        assert_eq!(group.committed(), 1);
    }

    #[test]
    fn a_lone_caller_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let group = group(dir.path());
        for n in 0..3 {
            group
                .transaction(|tx| register(tx, &format!("spiffe://td/{n}")))
                .unwrap();
            assert_eq!(group.committed(), n + 1);
        }
    }

    #[test]
    fn a_batch_is_never_larger_than_max_batch() {
        let dir = tempfile::tempdir().unwrap();
        let group = &group(dir.path());
        let callers = MAX_BATCH + 10;
        std::thread::scope(|scope| {
            let (inside, first_inside) = std::sync::mpsc::channel();
            let first = scope.spawn(move || {
                group.transaction(move |tx| {
                    inside.send(()).unwrap();
                    until_waiting(group, callers - 1);
                    register(tx, "spiffe://td/first")
                })
            });
            first_inside.recv().unwrap();
            for n in 1..callers {
                scope.spawn(move || {
                    group
                        .transaction(|tx| register(tx, &format!("spiffe://td/{n}")))
                        .unwrap()
                });
            }
            first.join().unwrap().unwrap();
        });
        assert_eq!(group.committed(), 2);
    }
}
