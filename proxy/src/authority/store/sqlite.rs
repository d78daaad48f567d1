//! The SQLite backend: one file, `DIR/authority.db`.
//!
//! Design bias: *one writer at a time, every commit on disk*. WAL mode with
//! `synchronous = FULL` means a `kill -9` at any point leaves either the old
//! or the new state, never half of one. Every transaction is `BEGIN
//! IMMEDIATE`: the write lock is taken at the start, so two writers (two
//! threads, or `appid authority register` beside a running `serve`) never
//! deadlock upgrading a read lock; a busy database is waited for (10 s).
//! SQLite serializes writers, so nothing is ever retried here. The
//! statements of issuance and renewal are prepared once per connection
//! (`prepare_cached`). A serving authority does not commit each
//! transaction by itself: concurrent ones share a commit and its `fsync`
//! ([`super::group_commit`], through [`SqliteStore::begin`],
//! [`SqliteStore::savepoint`] and [`SqliteStore::commit`]); the CLI's
//! one-off commands use [`SqliteStore::transaction`].
//!
//! The schema version is `PRAGMA user_version`; the migrations
//! (`migrations/sqlite/*.sql`) are applied in one IMMEDIATE transaction, so
//! two processes opening a new database at once apply them once. Databases
//! from before versioning (version 0, tables present) are adopted: the
//! first migration only creates what is missing.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use appid_policy::claims::Vulns;

use super::{
    DB_FILE, Redemption, Registration, StoreError, StoredScan, Tx, k8s_prune_before, redemption,
    registration_from_columns,
};

/// The schema, one file per version (version = position + 1).
const MIGRATIONS: &[&str] = &[include_str!("migrations/sqlite/0001_initial.sql")];

/// How long a locked database is waited for.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub(super) fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        let opened = |error| StoreError::Open {
            path: path.clone(),
            error,
        };
        let mut conn = Connection::open(&path).map_err(opened)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching to WAL takes an exclusive lock, and SQLite answers
        // "database is locked" at once, without its busy handler, when
        // another connection opens the same new file at that moment (seen
        // with a dozen concurrent opens): wait for it as for any lock.
        let start = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && start.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => break result?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, &path)?;
        Ok(SqliteStore { conn })
    }

    pub(super) fn transaction<T, E>(
        &mut self,
        mut steps: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = steps(&mut SqliteTx { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Opens a batch of [`super::group_commit`]: `BEGIN IMMEDIATE` (the
    /// write lock, waited for up to [`BUSY_TIMEOUT`]).
    pub(super) fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Runs one member of the open batch in a savepoint: kept when `steps`
    /// returned `Ok`, rolled back to when it returned `Err` or panicked.
    /// `Err` here: the savepoint could not be made or ended, and the
    /// connection's state is unknown (the batch must not commit).
    pub(super) fn savepoint<T, E>(
        &mut self,
        steps: impl FnOnce(&mut dyn Tx) -> std::thread::Result<Result<T, E>>,
    ) -> Result<std::thread::Result<Result<T, E>>, StoreError> {
        // Outside a transaction, SAVEPOINT would start one of its own and
        // RELEASE commit it: never run a member there.
        if !self.in_transaction() {
            return Err(StoreError::NotCommitted(
                "no batch transaction is open".into(),
            ));
        }
        self.conn.execute_batch("SAVEPOINT member")?;
        let ran = steps(&mut SqliteTx { conn: &self.conn });
        let end = match &ran {
            Ok(Ok(_)) => "RELEASE member",
            _ => "ROLLBACK TO member; RELEASE member",
        };
        self.conn.execute_batch(end)?;
        Ok(ran)
    }

    /// Whether a transaction is open (SQLite rolls one back by itself
    /// after some errors: a full disk, an I/O error).
    pub(super) fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Commits the open batch (one `fsync`).
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Ends the open batch without keeping anything, if one is open.
    pub(super) fn rollback(&mut self) {
        if self.in_transaction()
            && let Err(error) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "authority database: ROLLBACK failed");
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            url: path.display().to_string(),
            found: version,
            known,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    if version < known {
        tx.pragma_update(None, "user_version", known)?;
    }
    tx.commit()?;
    Ok(())
}

/// The steps of one SQLite transaction (the transaction derefs to its
/// connection).
struct SqliteTx<'a> {
    conn: &'a Connection,
}

impl Tx for SqliteTx<'_> {
    fn register(&mut self, registration: &Registration, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO registrations (id, labels, image_digest, cloud_match, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(id) DO UPDATE SET labels = ?2, image_digest = ?3,
                 cloud_match = ?4, updated_at = ?5",
            params![
                registration.id,
                serde_json::to_string(&registration.labels)?,
                registration.image_digest,
                serde_json::to_string(&registration.cloud_match)?,
                now
            ],
        )?;
        Ok(())
    }

    fn registration(&mut self, id: &str) -> Result<Option<Registration>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, labels, image_digest, cloud_match FROM registrations WHERE id = ?1",
            )?
            .query_row(params![id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        row.map(
            |(id, labels, image_digest, cloud_match): (String, String, _, String)| {
                registration_from_columns(id, &labels, image_digest, &cloud_match)
            },
        )
        .transpose()
    }

    fn cloud_registrations(&mut self) -> Result<Vec<Registration>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT id, labels, image_digest, cloud_match FROM registrations
             WHERE cloud_match != '{}' ORDER BY id",
        )?;
        let rows: Vec<(String, String, Option<String>, String)> = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, labels, image_digest, cloud_match)| {
                registration_from_columns(id, &labels, image_digest, &cloud_match)
            })
            .collect()
    }

    fn add_token(&mut self, token_hash: &str, id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO join_tokens (token_hash, id, expires_at) VALUES (?1, ?2, ?3)",
            params![token_hash, id, expires_at],
        )?;
        Ok(())
    }

    fn redeem_token(&mut self, token_hash: &str, now: i64) -> Result<Redemption, StoreError> {
        // The common case in one statement: the token was consumed now.
        let redeemed = self
            .conn
            .prepare_cached(
                "UPDATE join_tokens SET consumed_at = ?2
                 WHERE token_hash = ?1 AND consumed_at IS NULL AND expires_at > ?2
                 RETURNING id",
            )?
            .query_row(params![token_hash, now], |row| row.get::<_, String>(0))
            .optional()?;
        if let Some(id) = redeemed {
            return Ok(Redemption::Redeemed { id });
        }
        let consumed = 0;
        let row = self
            .conn
            .query_row(
                "SELECT id, consumed_at FROM join_tokens WHERE token_hash = ?1",
                params![token_hash],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?)),
            )
            .optional()?;
        Ok(redemption(consumed as u64, row))
    }

    fn import_scan(&mut self, digest: &str, vulns: &Vulns, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO scans (digest, report, vulns, imported_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(digest, report) DO UPDATE SET vulns = ?3, imported_at = ?4",
            params![digest, vulns.report, serde_json::to_string(vulns)?, now],
        )?;
        Ok(())
    }

    fn latest_scan(&mut self, digest: &str) -> Result<Option<StoredScan>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT vulns, imported_at FROM scans WHERE digest = ?1
                 ORDER BY imported_at DESC, rowid DESC LIMIT 1",
                params![digest],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()?;
        row.map(|(vulns, imported_at)| {
            Ok(StoredScan {
                vulns: serde_json::from_str(&vulns)?,
                imported_at,
            })
        })
        .transpose()
    }

    fn record_issued(
        &mut self,
        serial: &str,
        id: &str,
        not_after: i64,
        attestation: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO issued (serial, id, not_after, attestation, issued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![serial, id, not_after, attestation, now])?;
        Ok(())
    }

    fn was_issued(&mut self, serial: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM issued WHERE serial = ?1)")?
            .query_row(params![serial], |row| row.get::<_, bool>(0))?)
    }

    fn issued_count(&mut self, id: &str) -> Result<u64, StoreError> {
        let count = self.conn.query_row(
            "SELECT COUNT(*) FROM issued WHERE id = ?1",
            params![id],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(count.max(0) as u64)
    }

    fn claim_instance(&mut self, instance: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.conn.execute(
            "INSERT INTO cloud_instances (instance, id, attested_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(instance) DO NOTHING",
            params![instance, id, now],
        )?;
        Ok(added == 1)
    }

    fn redeem_k8s_token(
        &mut self,
        token_id: &str,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.conn.execute(
            "DELETE FROM k8s_tokens WHERE expires_at < ?1",
            params![k8s_prune_before(now)],
        )?;
        let added = self.conn.execute(
            "INSERT INTO k8s_tokens (token_id, id, expires_at, redeemed_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(token_id) DO NOTHING",
            params![token_id, id, expires_at, now],
        )?;
        Ok(added == 1)
    }

    fn revoke(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.conn.execute(
            "INSERT INTO revocations (id, revoked_at) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![id, now],
        )?;
        Ok(added == 1)
    }

    fn is_revoked(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM revocations WHERE id = ?1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn revoked(&mut self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT id FROM revocations ORDER BY id")?;
        let ids = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }
}
