//! The authority's state: one SQLite database file, `DIR/authority.db`.
//!
//! Design bias: *the database is the only truth, and every change is one
//! transaction*. Registrations, join tokens (stored as SHA-256 hashes, never
//! in clear), scan results, issued serials, attested cloud instances,
//! redeemed Kubernetes token IDs and revocations live in tables;
//! WAL mode with `synchronous = FULL` means a `kill -9` at any point leaves
//! either the old or the new state, never half of one. A join token is
//! consumed by a single conditional `UPDATE ... WHERE consumed_at IS NULL`,
//! so among any number of concurrent redemptions exactly one wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;

use appid_policy::claims::Vulns;

/// File name of the database inside the authority directory.
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
    Sql(#[from] rusqlite::Error),
    #[error("authority database: stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
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

/// An open authority database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|error| StoreError::Open {
            path: path.clone(),
            error,
        })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Starts a write transaction (IMMEDIATE: the write lock is taken now,
    /// so two writers never deadlock upgrading). Everything done through
    /// this store until `commit` is part of it; dropping it rolls back.
    pub fn begin(&self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        Ok(rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?)
    }

    /// Records (or replaces) a registration.
    pub fn register(&self, registration: &Registration, now: i64) -> Result<(), StoreError> {
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

    pub fn registration(&self, id: &str) -> Result<Option<Registration>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, labels, image_digest, cloud_match FROM registrations WHERE id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(id, labels, image_digest, cloud_match)| {
            Ok(Registration {
                id,
                labels: serde_json::from_str(&labels)?,
                image_digest,
                cloud_match: serde_json::from_str(&cloud_match)?,
            })
        })
        .transpose()
    }

    /// Registrations whose every `cloud_match` fact equals the given facts.
    pub fn registrations_matching_cloud(
        &self,
        facts: &BTreeMap<String, String>,
    ) -> Result<Vec<Registration>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT id FROM registrations WHERE cloud_match != '{}' ORDER BY id")?;
        let ids: Vec<String> = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut matching = Vec::new();
        for id in ids {
            if let Some(registration) = self.registration(&id)? {
                let all_match = registration
                    .cloud_match
                    .iter()
                    .all(|(key, value)| facts.get(key) == Some(value));
                if all_match {
                    matching.push(registration);
                }
            }
        }
        Ok(matching)
    }

    /// Stores a new join token (by hash) for `id`, valid until `expires_at`.
    pub fn add_token(&self, token_hash: &str, id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO join_tokens (token_hash, id, expires_at) VALUES (?1, ?2, ?3)",
            params![token_hash, id, expires_at],
        )?;
        Ok(())
    }

    /// Consumes a join token. Exactly one concurrent caller gets `Redeemed`.
    pub fn redeem_token(&self, token_hash: &str, now: i64) -> Result<Redemption, StoreError> {
        let consumed = self.conn.execute(
            "UPDATE join_tokens SET consumed_at = ?2
             WHERE token_hash = ?1 AND consumed_at IS NULL AND expires_at > ?2",
            params![token_hash, now],
        )?;
        let row = self
            .conn
            .query_row(
                "SELECT id, expires_at, consumed_at FROM join_tokens WHERE token_hash = ?1",
                params![token_hash],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                    ))
                },
            )
            .optional()?;
        Ok(match (consumed, row) {
            (1, Some((id, _, _))) => Redemption::Redeemed { id },
            (_, None) => Redemption::Unknown,
            (_, Some((_, _, Some(_)))) => Redemption::AlreadyUsed,
            (_, Some(_)) => Redemption::Expired,
        })
    }

    /// Stores the counts of one report for an image digest.
    pub fn import_scan(&self, digest: &str, vulns: &Vulns, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO scans (digest, report, vulns, imported_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(digest, report) DO UPDATE SET vulns = ?3, imported_at = ?4",
            params![digest, vulns.report, serde_json::to_string(vulns)?, now],
        )?;
        Ok(())
    }

    /// The newest scan imported for `digest`.
    pub fn latest_scan(&self, digest: &str) -> Result<Option<StoredScan>, StoreError> {
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

    /// Records an issued certificate.
    pub fn record_issued(
        &self,
        serial: &str,
        id: &str,
        not_after: i64,
        attestation: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO issued (serial, id, not_after, attestation, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![serial, id, not_after, attestation, now],
        )?;
        Ok(())
    }

    /// Whether a certificate with `serial` (lowercase hex) was issued here.
    pub fn was_issued(&self, serial: &str) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM issued WHERE serial = ?1)",
            params![serial],
            |row| row.get::<_, bool>(0),
        )?)
    }

    /// How many certificates were issued for `id`.
    pub fn issued_count(&self, id: &str) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM issued WHERE id = ?1",
            params![id],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    /// Records that a cloud instance attested, once. `false` if it already
    /// had: a second first-attestation is a replayed document (trust on
    /// first use; the real instance renews over mTLS).
    pub fn claim_instance(&self, instance: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.conn.execute(
            "INSERT INTO cloud_instances (instance, id, attested_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(instance) DO NOTHING",
            params![instance, id, now],
        )?;
        Ok(added == 1)
    }

    /// Records that a Kubernetes service-account token (by its
    /// [`token_id`](crate::attest::K8sIdentity::token_id)) was redeemed for
    /// `id`. `false` if it already was: a token attests once. Records of
    /// tokens expired for longer than the clock skew are dropped first,
    /// since such tokens are refused before reaching here anyway.
    pub fn redeem_k8s_token(
        &self,
        token_id: &str,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let skew = crate::attest::CLOCK_SKEW.as_secs() as i64;
        self.conn.execute(
            "DELETE FROM k8s_tokens WHERE expires_at < ?1",
            params![now.saturating_sub(2 * skew)],
        )?;
        let added = self.conn.execute(
            "INSERT INTO k8s_tokens (token_id, id, expires_at, redeemed_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(token_id) DO NOTHING",
            params![token_id, id, expires_at, now],
        )?;
        Ok(added == 1)
    }

    /// Revokes a SPIFFE ID: no more certificates, and peers refuse it.
    pub fn revoke(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.conn.execute(
            "INSERT INTO revocations (id, revoked_at) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![id, now],
        )?;
        Ok(added == 1)
    }

    pub fn is_revoked(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM revocations WHERE id = ?1",
                params![id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every revoked SPIFFE ID, sorted.
    pub fn revoked(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT id FROM revocations ORDER BY id")?;
        let ids = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registrations (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    image_digest TEXT,
    cloud_match TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS join_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL REFERENCES registrations(id),
    expires_at INTEGER NOT NULL,
    consumed_at INTEGER
);
CREATE TABLE IF NOT EXISTS scans (
    digest TEXT NOT NULL,
    report TEXT NOT NULL,
    vulns TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (digest, report)
);
CREATE TABLE IF NOT EXISTS issued (
    serial TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    attestation TEXT NOT NULL,
    issued_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_instances (
    instance TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    attested_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS k8s_tokens (
    token_id TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    redeemed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
";

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str) -> Registration {
        Registration {
            id: id.into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            image_digest: Some(format!("sha256:{}", "a".repeat(64))),
            cloud_match: BTreeMap::new(),
        }
    }

    #[test]
    fn a_token_is_redeemed_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.register(&registration("spiffe://td/web"), 0).unwrap();
        store.add_token("h1", "spiffe://td/web", 100).unwrap();
        store.add_token("h2", "spiffe://td/web", 100).unwrap();
        assert_eq!(
            store.redeem_token("h1", 50).unwrap(),
            Redemption::Redeemed {
                id: "spiffe://td/web".into()
            }
        );
        assert_eq!(
            store.redeem_token("h1", 51).unwrap(),
            Redemption::AlreadyUsed
        );
        assert_eq!(store.redeem_token("h2", 100).unwrap(), Redemption::Expired);
        assert_eq!(store.redeem_token("nope", 1).unwrap(), Redemption::Unknown);
    }

    #[test]
    fn concurrent_redemptions_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.register(&registration("spiffe://td/web"), 0).unwrap();
            store.add_token("h", "spiffe://td/web", i64::MAX).unwrap();
        }
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        let store = Store::open(dir.path()).unwrap();
                        matches!(
                            store.redeem_token("h", 1).unwrap(),
                            Redemption::Redeemed { .. }
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn newest_scan_wins_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let vulns = |critical, report: &str| Vulns {
            critical,
            scanner: "trivy".into(),
            report: report.into(),
            ..Vulns::default()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .import_scan(&digest, &vulns(0, "sha256:1"), 10)
                .unwrap();
            store
                .import_scan(&digest, &vulns(3, "sha256:2"), 20)
                .unwrap();
            store.revoke("spiffe://td/bad", 5).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.latest_scan(&digest).unwrap().unwrap().vulns.critical,
            3
        );
        assert!(store.is_revoked("spiffe://td/bad").unwrap());
        assert_eq!(
            store.revoked().unwrap(),
            vec!["spiffe://td/bad".to_string()]
        );
        assert!(
            !store.revoke("spiffe://td/bad", 6).unwrap(),
            "already revoked"
        );
    }

    #[test]
    fn a_k8s_token_is_redeemed_once_and_forgotten_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = "spiffe://td/ns/shop/sa/web";
        assert!(store.redeem_k8s_token("jti:a", id, 1000, 400).unwrap());
        assert!(!store.redeem_k8s_token("jti:a", id, 1000, 401).unwrap());
        assert!(store.redeem_k8s_token("jti:b", id, 1000, 402).unwrap());
        let count = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM k8s_tokens", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&store), 2);
        // Long after both expired, a redemption prunes them.
        assert!(store.redeem_k8s_token("jti:c", id, 5000, 4000).unwrap());
        assert_eq!(count(&store), 1);
    }

    #[test]
    fn cloud_registrations_match_on_all_facts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut aws = registration("spiffe://td/vm");
        aws.cloud_match = BTreeMap::from([
            ("provider".into(), "aws".into()),
            ("account".into(), "123".into()),
            ("region".into(), "ap-southeast-2".into()),
        ]);
        store.register(&aws, 0).unwrap();
        store.register(&registration("spiffe://td/web"), 0).unwrap();
        let mut facts = BTreeMap::from([
            ("provider".to_string(), "aws".to_string()),
            ("account".to_string(), "123".to_string()),
            ("region".to_string(), "ap-southeast-2".to_string()),
            ("zone".to_string(), "ap-southeast-2a".to_string()),
        ]);
        assert_eq!(store.registrations_matching_cloud(&facts).unwrap().len(), 1);
        facts.insert("region".into(), "us-east-1".into());
        assert!(
            store
                .registrations_matching_cloud(&facts)
                .unwrap()
                .is_empty()
        );
    }
}
