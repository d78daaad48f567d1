//! The authority's state, behind one interface with two backends:
//!
//! - [`sqlite`]: one file, `DIR/authority.db` (the default: one authority,
//!   nothing to run beside it);
//! - [`postgres`]: a PostgreSQL database (`--database postgres://…`) that
//!   several authority replicas share.
//!
//! Design bias: *the database is the only truth, and every change is one
//! transaction*. Registrations, join tokens (stored as SHA-256 hashes, never
//! in clear), scan results, issued serials, attested cloud instances,
//! redeemed Kubernetes token IDs and revocations live in tables. A caller
//! says "these steps are one transaction" by handing a closure to
//! [`Store::transaction`]; the steps it can take are the methods of [`Tx`],
//! the same on both backends. SQLite runs the closure inside `BEGIN
//! IMMEDIATE` (one writer at a time); PostgreSQL inside a `SERIALIZABLE`
//! transaction, and runs it again from the start when the database reports
//! a serialization failure (`40001`), a deadlock (`40P01`) or a unique
//! violation (`23505`, a few times: see [`postgres`]). So a closure
//! must have no effect outside the transaction that matters if repeated
//! (signing a certificate that is then thrown away is fine; writing the
//! audit line is not: that happens after the commit).
//!
//! Every exactly-once step is a single statement whose outcome says who won:
//! a join token is consumed by `UPDATE … WHERE consumed_at IS NULL`, a cloud
//! instance, a Kubernetes token and a revocation are claimed by `INSERT … ON
//! CONFLICT DO NOTHING`. Among any number of concurrent callers — threads of
//! one authority, or replicas sharing one PostgreSQL — exactly one sees
//! "changed one row"; under SERIALIZABLE the losers are aborted and, re-run,
//! see the winner's commit.
//!
//! The schema is versioned: SQL files under `store/migrations/<backend>/`,
//! applied at open (see each backend for how concurrent openers agree).

mod group_commit;
mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use appid_policy::claims::Vulns;

pub use self::postgres::DatabaseUrl;

/// File name of the SQLite database inside the authority directory.
pub const DB_FILE: &str = "authority.db";

/// Why the store refused or failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("authority database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A `--database` value that is not a usable PostgreSQL URL; `url` is
    /// redacted.
    #[error("--database {url}: {reason}")]
    BadUrl { url: String, reason: String },
    /// PostgreSQL could not be reached or refused the login; `url` is
    /// redacted.
    #[error(
        "--database {url}: cannot connect: {}; check that PostgreSQL runs there, that the \
         database exists (createdb) and that the user and password are right",
        postgres::describe(error)
    )]
    Connect {
        url: String,
        error: ::postgres::Error,
    },
    #[error("authority database: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The database was migrated by a newer appid than this one.
    #[error(
        "authority database {url}: schema version {found} is newer than this appid knows \
         ({known}); run the same (or a newer) appid on every replica"
    )]
    TooNew { url: String, found: i64, known: i64 },
    /// The SQLite transaction this one was batched with did not commit
    /// ([`group_commit`]): nothing of it was kept.
    #[error("authority database: the transaction did not commit: {0}")]
    NotCommitted(String),
    #[error("authority database: stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

impl StoreError {
    /// Whether trying again later may succeed: the database is down or was
    /// too busy (the authority answers 503, and sidecars retry).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Postgres(error) => postgres::is_transient(error),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Where the authority's state lives.
#[derive(Debug, Clone)]
pub enum Database {
    /// `DIR/authority.db`.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by every replica.
    Postgres(DatabaseUrl),
}

impl Database {
    /// The database of the CLI's `--dir DIR [--database URL]`: PostgreSQL
    /// when a URL is given, else SQLite in `dir`.
    pub fn from_flags(dir: &Path, database: Option<&str>) -> Result<Database, StoreError> {
        match database {
            Some(url) => Ok(Database::Postgres(DatabaseUrl::parse(url)?)),
            None => Ok(Database::Sqlite(dir.to_path_buf())),
        }
    }
}

impl std::fmt::Display for Database {
    /// Where it is, without credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(dir) => write!(f, "SQLite {}", dir.join(DB_FILE).display()),
            Database::Postgres(url) => write!(f, "PostgreSQL {url}"),
        }
    }
}

/// What the authority vouches for about one workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub image_digest: Option<String>,
    /// Cloud facts an attestation document must match (e.g. provider, account,
    /// region), instead of a join token. Empty: join tokens only.
    pub cloud_match: BTreeMap<String, String>,
}

impl Registration {
    /// Whether an instance with these cloud facts (verified from its signed
    /// document) is this registration's: every `cloud_match` fact is met,
    /// and the match names the customer ([`Self::cloud_match_problem`]; one
    /// stored before `register` refused such matches takes no instance).
    pub fn takes_cloud_instance(&self, facts: &BTreeMap<String, String>) -> bool {
        !self.cloud_match.is_empty()
            && self.cloud_match_problem().is_none()
            && self
                .cloud_match
                .iter()
                .all(|(key, value)| facts.get(key) == Some(value))
    }

    /// Why a cloud identity document may not attest to this registration,
    /// if it may not. AWS and Google sign identity documents for every
    /// customer's instances: a `cloud_match` that does not name the
    /// customer (`account` on AWS, `project` on GCP) would be matched by an
    /// instance anyone launches in an account of their own from the same
    /// public image, in the same region. None for join-token and
    /// Kubernetes registrations (an empty `cloud_match`, `provider:
    /// kubernetes`).
    pub fn cloud_match_problem(&self) -> Option<String> {
        let facts = &self.cloud_match;
        let tenant = match facts.get("provider").map(String::as_str) {
            None if facts.is_empty() => return None,
            Some(super::service::K8S_PROVIDER) => return None,
            Some("aws") => "account",
            Some("gcp") => "project",
            Some(other) => {
                return Some(format!(
                    "provider `{other}` is none appid attests; write provider=aws or provider=gcp"
                ));
            }
            None => {
                return Some(
                    "no provider named; add provider=aws and account=<account ID>, or \
                     provider=gcp and project=<project ID>"
                        .into(),
                );
            }
        };
        (!facts.contains_key(tenant)).then(|| {
            format!(
                "no {tenant} named: the cloud signs identity documents for every customer's \
                 instances, so an instance in anyone's {tenant} would match; add {tenant}=<your {tenant}>"
            )
        })
    }
}

/// How a join token redemption went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call consumed the token; it is for this SPIFFE ID.
    Redeemed {
        id: String,
    },
    Unknown,
    AlreadyUsed,
    Expired,
}

/// The newest scan for an image digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredScan {
    pub vulns: Vulns,
    pub imported_at: i64,
}

/// The steps of one transaction ([`Store::transaction`]); each backend
/// implements every one with the same meaning.
pub trait Tx {
    /// Records (or replaces) a registration.
    fn register(&mut self, registration: &Registration, now: i64) -> Result<(), StoreError>;

    fn registration(&mut self, id: &str) -> Result<Option<Registration>, StoreError>;

    /// Registrations with a `cloud_match`, sorted by ID.
    fn cloud_registrations(&mut self) -> Result<Vec<Registration>, StoreError>;

    /// Stores a new join token (by hash) for `id`, valid until `expires_at`.
    fn add_token(&mut self, token_hash: &str, id: &str, expires_at: i64) -> Result<(), StoreError>;

    /// Consumes a join token. Exactly one concurrent caller gets `Redeemed`.
    fn redeem_token(&mut self, token_hash: &str, now: i64) -> Result<Redemption, StoreError>;

    /// Stores the counts of one report for an image digest.
    fn import_scan(&mut self, digest: &str, vulns: &Vulns, now: i64) -> Result<(), StoreError>;

    /// The newest scan imported for `digest`.
    fn latest_scan(&mut self, digest: &str) -> Result<Option<StoredScan>, StoreError>;

    /// Records an issued certificate.
    fn record_issued(
        &mut self,
        serial: &str,
        id: &str,
        not_after: i64,
        attestation: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Whether a certificate with `serial` (lowercase hex) was issued here.
    fn was_issued(&mut self, serial: &str) -> Result<bool, StoreError>;

    /// How many certificates were issued for `id`.
    fn issued_count(&mut self, id: &str) -> Result<u64, StoreError>;

    /// Records that a cloud instance attested, once. `false` if it already
    /// had: a second first-attestation is a replayed document (trust on
    /// first use; the real instance renews over mTLS).
    fn claim_instance(&mut self, instance: &str, id: &str, now: i64) -> Result<bool, StoreError>;

    /// Records that a Kubernetes service-account token (by its
    /// [`token_id`](crate::attest::K8sIdentity::token_id)) was redeemed for
    /// `id`. `false` if it already was: a token attests once. Records of
    /// tokens expired for longer than twice the clock skew are dropped
    /// first, since such tokens are refused before reaching here anyway.
    fn redeem_k8s_token(
        &mut self,
        token_id: &str,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Revokes a SPIFFE ID: no more certificates, and peers refuse it.
    /// `false` if it already was.
    fn revoke(&mut self, id: &str, now: i64) -> Result<bool, StoreError>;

    fn is_revoked(&mut self, id: &str) -> Result<bool, StoreError>;

    /// Every revoked SPIFFE ID, sorted.
    fn revoked(&mut self) -> Result<Vec<String>, StoreError>;
}

/// The cut-off below which redeemed Kubernetes tokens are forgotten.
fn k8s_prune_before(now: i64) -> i64 {
    let skew = crate::attest::CLOCK_SKEW.as_secs() as i64;
    now.saturating_sub(2 * skew)
}

/// Registrations among `candidates` whose every `cloud_match` fact equals
/// the given facts.
/// The registrations whose `cloud_match` the facts meet
/// ([`Registration::takes_cloud_instance`]).
fn matching(candidates: Vec<Registration>, facts: &BTreeMap<String, String>) -> Vec<Registration> {
    candidates
        .into_iter()
        .filter(|registration| registration.takes_cloud_instance(facts))
        .collect()
}

/// A redemption's outcome from the rows the `UPDATE` changed and the
/// token's row (`id`, `consumed_at`) after it.
fn redemption(consumed: u64, row: Option<(String, Option<i64>)>) -> Redemption {
    match (consumed, row) {
        (1, Some((id, _))) => Redemption::Redeemed { id },
        (_, None) => Redemption::Unknown,
        (_, Some((_, Some(_)))) => Redemption::AlreadyUsed,
        (_, Some((_, None))) => Redemption::Expired,
    }
}

/// Registration columns as stored (JSON text) into a [`Registration`].
fn registration_from_columns(
    id: String,
    labels: &str,
    image_digest: Option<String>,
    cloud_match: &str,
) -> Result<Registration, StoreError> {
    Ok(Registration {
        id,
        labels: serde_json::from_str(labels)?,
        image_digest,
        cloud_match: serde_json::from_str(cloud_match)?,
    })
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PostgresStore>),
}

/// An open authority database.
pub struct Store {
    backend: Backend,
    database: Database,
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_database(&Database::Sqlite(dir.to_path_buf()))
    }

    /// Opens `database`, bringing its schema up to date.
    pub fn open_database(database: &Database) -> Result<Store, StoreError> {
        let backend = match database {
            Database::Sqlite(dir) => Backend::Sqlite(sqlite::SqliteStore::open(dir)?),
            Database::Postgres(url) => {
                Backend::Postgres(Box::new(postgres::PostgresStore::open(url)?))
            }
        };
        Ok(Store {
            backend,
            database: database.clone(),
        })
    }

    /// Where this store is (no credentials).
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `steps` as one transaction: committed if it returns `Ok`,
    /// rolled back if it returns `Err` (or panics). On PostgreSQL `steps`
    /// may run more than once (see the module documentation); the result
    /// is that of the run that committed.
    pub fn transaction<T, E>(
        &mut self,
        steps: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        match &mut self.backend {
            Backend::Sqlite(store) => store.transaction(steps),
            Backend::Postgres(store) => store.transaction(steps),
        }
    }

    /// One step, as its own transaction.
    fn one<T>(
        &mut self,
        mut step: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(|tx| step(tx))
    }

    /// [`Tx::register`] alone.
    pub fn register(&mut self, registration: &Registration, now: i64) -> Result<(), StoreError> {
        self.one(|tx| tx.register(registration, now))
    }

    pub fn registration(&mut self, id: &str) -> Result<Option<Registration>, StoreError> {
        self.one(|tx| tx.registration(id))
    }

    /// Registrations whose every `cloud_match` fact equals the given facts.
    pub fn registrations_matching_cloud(
        &mut self,
        facts: &BTreeMap<String, String>,
    ) -> Result<Vec<Registration>, StoreError> {
        self.one(|tx| registrations_matching_cloud(tx, facts))
    }

    pub fn add_token(
        &mut self,
        token_hash: &str,
        id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.one(|tx| tx.add_token(token_hash, id, expires_at))
    }

    pub fn redeem_token(&mut self, token_hash: &str, now: i64) -> Result<Redemption, StoreError> {
        self.one(|tx| tx.redeem_token(token_hash, now))
    }

    pub fn import_scan(&mut self, digest: &str, vulns: &Vulns, now: i64) -> Result<(), StoreError> {
        self.one(|tx| tx.import_scan(digest, vulns, now))
    }

    pub fn latest_scan(&mut self, digest: &str) -> Result<Option<StoredScan>, StoreError> {
        self.one(|tx| tx.latest_scan(digest))
    }

    pub fn record_issued(
        &mut self,
        serial: &str,
        id: &str,
        not_after: i64,
        attestation: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.one(|tx| tx.record_issued(serial, id, not_after, attestation, now))
    }

    pub fn was_issued(&mut self, serial: &str) -> Result<bool, StoreError> {
        self.one(|tx| tx.was_issued(serial))
    }

    pub fn issued_count(&mut self, id: &str) -> Result<u64, StoreError> {
        self.one(|tx| tx.issued_count(id))
    }

    pub fn claim_instance(
        &mut self,
        instance: &str,
        id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.one(|tx| tx.claim_instance(instance, id, now))
    }

    pub fn redeem_k8s_token(
        &mut self,
        token_id: &str,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.one(|tx| tx.redeem_k8s_token(token_id, id, expires_at, now))
    }

    pub fn revoke(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        self.one(|tx| tx.revoke(id, now))
    }

    pub fn is_revoked(&mut self, id: &str) -> Result<bool, StoreError> {
        self.one(|tx| tx.is_revoked(id))
    }

    pub fn revoked(&mut self) -> Result<Vec<String>, StoreError> {
        self.one(|tx| tx.revoked())
    }
}

/// How many connections one authority process opens to PostgreSQL, at
/// most: transactions of concurrent requests run side by side on them
/// (and PostgreSQL flushes their commits together). Opened as needed, so
/// an idle replica holds one.
pub const POSTGRES_CONNECTIONS: usize = 8;

/// An authority process's way to its database, for transactions of
/// concurrent requests: up to [`POSTGRES_CONNECTIONS`] connections on
/// PostgreSQL, each used by one transaction at a time; on SQLite, which
/// runs one writer at a time anyway, one connection whose transactions
/// share commits ([`group_commit`]).
pub struct StorePool(Pool);

enum Pool {
    Postgres(Connections),
    Sqlite(group_commit::GroupCommit),
}

impl StorePool {
    /// The pool of `store`'s database, starting with `store`.
    pub fn new(store: Store) -> StorePool {
        StorePool(match store.backend {
            Backend::Sqlite(sqlite) => Pool::Sqlite(group_commit::GroupCommit::new(sqlite)),
            Backend::Postgres(_) => Pool::Postgres(Connections::new(store)),
        })
    }

    /// Runs `steps` as one transaction, as [`Store::transaction`] does.
    /// Blocks: call it from `spawn_blocking`, as every store call is.
    pub fn transaction<T, E>(&self, steps: impl FnMut(&mut dyn Tx) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        match &self.0 {
            Pool::Postgres(connections) => connections.get()?.transaction(steps),
            Pool::Sqlite(group) => group.transaction(steps),
        }
    }
}

/// Connections to PostgreSQL, each used by one transaction at a time.
struct Connections {
    state: std::sync::Mutex<PoolState>,
    /// Signalled when a connection is handed back (or failed to open).
    returned: std::sync::Condvar,
    database: Database,
}

struct PoolState {
    idle: Vec<Store>,
    /// Open connections, idle or in use (or being opened).
    open: usize,
}

impl Connections {
    /// Connections that start with `store`, and open more of the same
    /// database, up to [`POSTGRES_CONNECTIONS`], as concurrent requests
    /// need them.
    fn new(store: Store) -> Connections {
        Connections {
            database: store.database().clone(),
            state: std::sync::Mutex::new(PoolState {
                idle: vec![store],
                open: 1,
            }),
            returned: std::sync::Condvar::new(),
        }
    }

    /// An idle connection, else a new one while fewer than the pool's size
    /// are open, else the next one handed back. Blocks: call it from
    /// `spawn_blocking`, as every store call is.
    fn get(&self) -> Result<PooledStore<'_>, StoreError> {
        let mut state = self.lock_state();
        loop {
            if let Some(store) = state.idle.pop() {
                return Ok(PooledStore {
                    store: Some(store),
                    pool: self,
                });
            }
            if state.open < POSTGRES_CONNECTIONS {
                state.open += 1;
                drop(state);
                return match Store::open_database(&self.database) {
                    Ok(store) => Ok(PooledStore {
                        store: Some(store),
                        pool: self,
                    }),
                    Err(error) => {
                        self.lock_state().open -= 1;
                        self.returned.notify_one();
                        Err(error)
                    }
                };
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state is a list and a count, consistent at every unlock.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection taken from [`Connections`]; handed back on drop (a
/// transaction interrupted by a panic was rolled back by then).
struct PooledStore<'a> {
    store: Option<Store>,
    pool: &'a Connections,
}

impl std::ops::Deref for PooledStore<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for PooledStore<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        self.store
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for PooledStore<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            self.pool.lock_state().idle.push(store);
            self.pool.returned.notify_one();
        }
    }
}

/// Registrations whose every `cloud_match` fact equals the given facts,
/// inside a transaction.
pub fn registrations_matching_cloud(
    tx: &mut dyn Tx,
    facts: &BTreeMap<String, String>,
) -> Result<Vec<Registration>, StoreError> {
    Ok(matching(tx.cloud_registrations()?, facts))
}

#[cfg(test)]
mod tests;
