//! The PostgreSQL backend: one database shared by every authority replica
//! (`appid authority serve --database postgres://…`).
//!
//! Design bias: *let the database decide, and prove nothing by hand*. Every
//! transaction runs at `SERIALIZABLE`: PostgreSQL guarantees the outcome of
//! any set of concurrent transactions is that of some serial order, or it
//! aborts some of them with `40001` (or `40P01`); those are run again from
//! the start, after a short random pause. So "exactly once" needs no
//! argument about which row locks suffice: the exactly-once steps (the
//! conditional `UPDATE` of a join token, the `INSERT … ON CONFLICT DO
//! NOTHING` of a cloud instance, a Kubernetes token or a revocation) are
//! each decided by the rows they changed, and the serial-order guarantee
//! carries that from one replica to all of them. (Those single statements
//! are exactly-once even at READ COMMITTED, through the row lock and the
//! unique index; SERIALIZABLE also keeps the reads around them — "is it
//! revoked?", "which registration?" — consistent with the write.)
//!
//! The client is the synchronous `postgres` crate: the authority calls its
//! store from `spawn_blocking` already, each transaction on a connection of
//! its own from the process's [`super::StorePool`], so an async client
//! would only add a second way of blocking. Each connection prepares a
//! statement once and keeps it (a statement is then one round trip, not
//! two). A transaction whose connection broke before its commit (the
//! database restarted, or failed over) is run once more on a new
//! connection; one that broke during the commit is not (it may have
//! committed): the caller gets a 503 and the sidecar retries.
//!
//! Migrations (`migrations/postgres/*.sql`) are applied at open, under a
//! session advisory lock, each in its own transaction with its row in
//! `appid_schema_migrations`: replicas starting at once apply each exactly
//! once, and one that finds a version it does not know refuses to start.
//! Connections are plain (TCP or a unix socket) unless the URL says
//! `sslmode=require` (or `verify-full`/`verify-ca`) with `sslrootcert=FILE`:
//! then TLS (rustls, aws-lc-rs), and the server's certificate must chain
//! to that CA and name the host — always verified, unlike libpq's
//! `require`. `require` without a CA to verify with is refused.

use std::collections::HashMap;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use appid_policy::claims::Vulns;

use super::{
    Redemption, Registration, StoreError, StoredScan, Tx, k8s_prune_before, redemption,
    registration_from_columns,
};

/// The schema, one file per version.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "0001_initial",
    include_str!("migrations/postgres/0001_initial.sql"),
)];

/// The advisory lock key held while migrating ("appid-db" in ASCII).
const MIGRATION_LOCK: i64 = 0x6170_7069_642d_6462;

/// How often a transaction is run before giving up on serialization
/// failures (each retry after a random pause of up to 2^n ms, n ≤ 7);
/// then the last error is returned (a 503: try again later).
const MAX_ATTEMPTS: usize = 24;
/// How often, when the conflict was a unique violation.
const MAX_UNIQUE_ATTEMPTS: usize = 4;

/// How long connecting may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL connection URL. Displayed (and debug-printed) with its
/// password replaced by `***`, so it can go into errors and logs.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: Box<postgres::Config>,
    redacted: String,
    /// TLS, verifying the server with `sslrootcert`; `None`: plain.
    tls: Option<MakeRustlsConnect>,
}

impl DatabaseUrl {
    /// Parses `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?…]`.
    pub fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        let redacted = redact(url);
        let bad = |reason: &str| StoreError::BadUrl {
            url: redacted.clone(),
            reason: reason.to_string(),
        };
        // What a URL looks like, for the reasons that are about its form.
        let form = |reason: &str| {
            bad(&format!(
                "{reason}; write postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE \
                 (or leave --database out to use SQLite in --dir)"
            ))
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(form("not a PostgreSQL URL"));
        }
        let (url, root_cert) = split_tls_params(url);
        let mut config: postgres::Config = url.parse().map_err(|e| form(&describe(&e)))?;
        if config.get_hosts().is_empty() {
            return Err(form("no host"));
        }
        if config.get_user().is_none() {
            return Err(form("no user"));
        }
        let tls = match (config.get_ssl_mode(), root_cert) {
            (SslMode::Require, Some(path)) => Some(tls_connector(&path).map_err(|e| bad(&e))?),
            (SslMode::Require, None) => {
                return Err(bad(
                    "sslmode=require needs sslrootcert=FILE, the CA certificate (PEM) that \
                     signed the server's (appid always verifies the server's certificate and name)",
                ));
            }
            (_, Some(_)) => {
                return Err(bad(
                    "sslrootcert is only used with sslmode=require (or verify-full)",
                ));
            }
            (_, None) => None,
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("appid-authority");
        }
        Ok(DatabaseUrl {
            config: Box::new(config),
            redacted,
            tls,
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The parsed settings (tests connect with them directly).
    #[cfg(test)]
    pub(super) fn config_for_tests(&self) -> &postgres::Config {
        &self.config
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        connected.map_err(|error| StoreError::Connect {
            url: self.redacted.clone(),
            error,
        })
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted)
    }
}

/// `url` without libpq's `sslrootcert=FILE` (which the client library does
/// not know), and with `sslmode=verify-full`/`verify-ca` as `require`
/// (appid verifies fully whenever it uses TLS); and the `sslrootcert` path.
fn split_tls_params(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("sslrootcert", path)) => root_cert = Some(percent_decode(path)),
            Some(("sslmode", "verify-full" | "verify-ca")) => kept.push("sslmode=require"),
            _ => kept.push(param),
        }
    }
    let url = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    (url, root_cert)
}

/// `%XX` escapes decoded (a URL's query value); invalid ones kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS connector that trusts only the CA certificates in `path` (PEM).
fn tls_connector(path: &str) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert={path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| {
            format!("sslrootcert={path}: not PEM certificates (-----BEGIN CERTIFICATE-----)")
        })?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert={path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert={path}: no PEM certificate in it"));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `url` with any password replaced by `***`: the one in the user info
/// (`user:PASSWORD@`) and a `password=` parameter. When in doubt (an
/// unencoded `@` or `/` in the password), more is hidden, never less.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let before_query = &rest[..rest.find('?').unwrap_or(rest.len())];
        if let Some(at) = before_query.rfind('@') {
            let userinfo = &before_query[..at];
            if let Some(colon) = userinfo.find(':') {
                out = format!(
                    "{}{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    // `?password=…` / `&password=…`, and `password=…` in key=value form.
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(found) = rest.to_ascii_lowercase().find("password=") {
        let value_start = found + "password=".len();
        redacted.push_str(&rest[..value_start]);
        redacted.push_str("***");
        let value_len = rest[value_start..]
            .find(['&', ' '])
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    redacted.push_str(rest);
    redacted
}

/// A client error with its cause (the server's message, the I/O error):
/// `postgres::Error`'s own text is only the kind ("db error").
pub(super) fn describe(error: &postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Why a transaction is worth running again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflict {
    /// `40001` or `40P01`: PostgreSQL aborted it to keep the serial order.
    Serialization,
    /// `23505`: a key that a concurrent transaction inserted, which this
    /// one could not see (PostgreSQL reports such a clash of serializable
    /// transactions as a unique violation, not always as `40001`); run
    /// again, it sees the row. A true duplicate fails every time, so only
    /// a few retries.
    UniqueViolation,
    /// The connection broke (the server restarted or ended the session)
    /// before the commit was sent, so the server rolled the transaction
    /// back: run it once more on a new connection, so one failover or
    /// restart of the database costs a request nothing.
    Lost,
}

/// The runs of one transaction so far.
#[derive(Default)]
struct Retries {
    total: usize,
    unique: usize,
    lost: usize,
}

impl Retries {
    /// Whether to run the transaction again after a run that failed with
    /// `conflict` (`None`: not a conflict, so no).
    fn again(&mut self, conflict: Option<Conflict>) -> bool {
        self.total += 1;
        match conflict {
            Some(Conflict::Serialization) => self.total < MAX_ATTEMPTS,
            Some(Conflict::UniqueViolation) => {
                self.unique += 1;
                self.unique < MAX_UNIQUE_ATTEMPTS && self.total < MAX_ATTEMPTS
            }
            Some(Conflict::Lost) => {
                self.lost += 1;
                self.lost < 2 && self.total < MAX_ATTEMPTS
            }
            None => false,
        }
    }
}

fn conflict_of(error: &postgres::Error) -> Option<Conflict> {
    if is_lost(error) {
        return Some(Conflict::Lost);
    }
    let code = error.code()?;
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        Some(Conflict::Serialization)
    } else if *code == SqlState::UNIQUE_VIOLATION {
        Some(Conflict::UniqueViolation)
    } else {
        None
    }
}

/// The connection is gone: closed, ended by the server (shutdown,
/// `pg_terminate_backend`), a connection-class error, or an I/O error.
fn is_lost(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
        None => std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>()),
    }
}

/// Whether the database may answer later: the connection is gone, or the
/// transaction kept conflicting.
pub(super) fn is_transient(error: &postgres::Error) -> bool {
    matches!(
        conflict_of(error),
        Some(Conflict::Lost | Conflict::Serialization)
    )
}

pub(super) struct PostgresStore {
    client: Client,
    url: DatabaseUrl,
    /// The statements prepared on `client`, by their SQL.
    statements: HashMap<&'static str, Statement>,
}

impl PostgresStore {
    pub(super) fn open(url: &DatabaseUrl) -> Result<PostgresStore, StoreError> {
        let mut client = url.connect()?;
        migrate(&mut client, url)?;
        Ok(PostgresStore {
            client,
            url: url.clone(),
            statements: HashMap::new(),
        })
    }

    pub(super) fn transaction<T, E>(
        &mut self,
        mut steps: impl FnMut(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut retries = Retries::default();
        let mut reconnect = false;
        loop {
            if reconnect || self.client.is_closed() {
                self.statements.clear();
                self.client = self.url.connect()?;
            }
            let started = self
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start();
            let tx = match started {
                Ok(tx) => tx,
                Err(error) if retries.again(conflict_of(&error)) => {
                    reconnect = true;
                    continue;
                }
                Err(error) => return Err(StoreError::from(error).into()),
            };
            let mut pg = PgTx {
                tx,
                statements: &mut self.statements,
                conflict: None,
            };
            let outcome = steps(&mut pg);
            let conflict = pg.conflict;
            match outcome {
                Ok(value) => match pg.tx.commit() {
                    Ok(()) => return Ok(value),
                    // Lost during COMMIT, it may have committed: not run
                    // again (the caller gets the error, a 503).
                    Err(error)
                        if retries.again(conflict_of(&error).filter(|c| *c != Conflict::Lost)) => {}
                    Err(error) => return Err(StoreError::from(error).into()),
                },
                // Dropping the transaction rolls it back.
                Err(_) if retries.again(conflict) => {}
                Err(error) => return Err(error),
            }
            reconnect = conflict == Some(Conflict::Lost);
            backoff(retries.total);
        }
    }
}

/// A random pause of up to 2^attempt ms (at most 128 ms), so conflicting
/// replicas do not collide again in lockstep.
fn backoff(attempt: usize) {
    let ceiling = 1u64 << attempt.min(7);
    let mut byte = [0u8; 2];
    let jitter = match aws_lc_rs::rand::fill(&mut byte) {
        Ok(()) => u64::from(u16::from_le_bytes(byte)) % ceiling,
        Err(_) => ceiling / 2,
    };
    std::thread::sleep(Duration::from_millis(1 + jitter));
}

fn migrate(client: &mut Client, url: &DatabaseUrl) -> Result<(), StoreError> {
    // A session lock: held across the migrations' own transactions, and
    // released by the server if this process dies holding it.
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = apply_migrations(client, url);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked?;
    Ok(())
}

fn apply_migrations(client: &mut Client, url: &DatabaseUrl) -> Result<(), StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS appid_schema_migrations (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )?;
    let found: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM appid_schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if found > known {
        return Err(StoreError::TooNew {
            url: url.redacted.clone(),
            found,
            known,
        });
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO appid_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[version, name, &now],
        )?;
        tx.commit()?;
        tracing::info!(version, name, "authority database migrated");
    }
    Ok(())
}

/// The steps of one SERIALIZABLE transaction. `conflict` records that a
/// statement failed as conflicting with a concurrent transaction, whatever
/// the caller turned that error into: the transaction is then run again.
struct PgTx<'a> {
    tx: postgres::Transaction<'a>,
    /// The connection's prepared statements (they outlive transactions).
    statements: &'a mut HashMap<&'static str, Statement>,
    conflict: Option<Conflict>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];
/// SQL text: always a literal of this file, so it can key the statements.
type Sql = &'static str;

impl PgTx<'_> {
    fn checked<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, StoreError> {
        result.map_err(|error| {
            if let Some(conflict) = conflict_of(&error) {
                self.conflict = Some(conflict);
            }
            StoreError::Postgres(error)
        })
    }

    /// `sql`, prepared on this connection: at its first use, then kept.
    fn statement(&mut self, sql: Sql) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let result = self.tx.prepare(sql);
        let statement = self.checked(result)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn execute(&mut self, sql: Sql, params: Params<'_>) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.tx.execute(&statement, params);
        self.checked(result)
    }

    fn query(&mut self, sql: Sql, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query(&statement, params);
        self.checked(result)
    }

    fn query_opt(&mut self, sql: Sql, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query_opt(&statement, params);
        self.checked(result)
    }

    fn query_one(&mut self, sql: Sql, params: Params<'_>) -> Result<Row, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.tx.query_one(&statement, params);
        self.checked(result)
    }
}

fn registration_of(row: &Row) -> Result<Registration, StoreError> {
    registration_from_columns(
        row.try_get(0)?,
        row.try_get::<_, &str>(1)?,
        row.try_get(2)?,
        row.try_get::<_, &str>(3)?,
    )
}

impl Tx for PgTx<'_> {
    fn register(&mut self, registration: &Registration, now: i64) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&registration.labels)?;
        let cloud_match = serde_json::to_string(&registration.cloud_match)?;
        self.execute(
            "INSERT INTO registrations (id, labels, image_digest, cloud_match, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET labels = EXCLUDED.labels,
                 image_digest = EXCLUDED.image_digest, cloud_match = EXCLUDED.cloud_match,
                 updated_at = EXCLUDED.updated_at",
            &[
                &registration.id,
                &labels,
                &registration.image_digest,
                &cloud_match,
                &now,
            ],
        )?;
        Ok(())
    }

    fn registration(&mut self, id: &str) -> Result<Option<Registration>, StoreError> {
        self.query_opt(
            "SELECT id, labels, image_digest, cloud_match FROM registrations WHERE id = $1",
            &[&id],
        )?
        .as_ref()
        .map(registration_of)
        .transpose()
    }

    fn cloud_registrations(&mut self) -> Result<Vec<Registration>, StoreError> {
        self.query(
            "SELECT id, labels, image_digest, cloud_match FROM registrations
             WHERE cloud_match <> '{}' ORDER BY id",
            &[],
        )?
        .iter()
        .map(registration_of)
        .collect()
    }

    fn add_token(&mut self, token_hash: &str, id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO join_tokens (token_hash, id, expires_at) VALUES ($1, $2, $3)",
            &[&token_hash, &id, &expires_at],
        )?;
        Ok(())
    }

    fn redeem_token(&mut self, token_hash: &str, now: i64) -> Result<Redemption, StoreError> {
        // The common case in one round trip: the token was consumed now.
        if let Some(row) = self.query_opt(
            "UPDATE join_tokens SET consumed_at = $2
             WHERE token_hash = $1 AND consumed_at IS NULL AND expires_at > $2
             RETURNING id",
            &[&token_hash, &now],
        )? {
            return Ok(Redemption::Redeemed {
                id: row.try_get(0)?,
            });
        }
        let consumed = 0;
        let row = self
            .query_opt(
                "SELECT id, consumed_at FROM join_tokens WHERE token_hash = $1",
                &[&token_hash],
            )?
            .map(|row| Ok::<_, StoreError>((row.try_get(0)?, row.try_get(1)?)))
            .transpose()?;
        Ok(redemption(consumed, row))
    }

    fn import_scan(&mut self, digest: &str, vulns: &Vulns, now: i64) -> Result<(), StoreError> {
        let json = serde_json::to_string(vulns)?;
        self.execute(
            "INSERT INTO scans (digest, report, vulns, imported_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (digest, report) DO UPDATE SET vulns = EXCLUDED.vulns,
                 imported_at = EXCLUDED.imported_at",
            &[&digest, &vulns.report, &json, &now],
        )?;
        Ok(())
    }

    fn latest_scan(&mut self, digest: &str) -> Result<Option<StoredScan>, StoreError> {
        let Some(row) = self.query_opt(
            "SELECT vulns, imported_at FROM scans WHERE digest = $1
             ORDER BY imported_at DESC, seq DESC LIMIT 1",
            &[&digest],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(StoredScan {
            vulns: serde_json::from_str(row.try_get::<_, &str>(0)?)?,
            imported_at: row.try_get(1)?,
        }))
    }

    fn record_issued(
        &mut self,
        serial: &str,
        id: &str,
        not_after: i64,
        attestation: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO issued (serial, id, not_after, attestation, issued_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&serial, &id, &not_after, &attestation, &now],
        )?;
        Ok(())
    }

    fn was_issued(&mut self, serial: &str) -> Result<bool, StoreError> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM issued WHERE serial = $1)",
                &[&serial],
            )?
            .try_get(0)?)
    }

    fn issued_count(&mut self, id: &str) -> Result<u64, StoreError> {
        let count: i64 = self
            .query_one("SELECT COUNT(*) FROM issued WHERE id = $1", &[&id])?
            .try_get(0)?;
        Ok(count.max(0) as u64)
    }

    fn claim_instance(&mut self, instance: &str, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.execute(
            "INSERT INTO cloud_instances (instance, id, attested_at) VALUES ($1, $2, $3)
             ON CONFLICT (instance) DO NOTHING",
            &[&instance, &id, &now],
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
        self.execute(
            "DELETE FROM k8s_tokens WHERE expires_at < $1",
            &[&k8s_prune_before(now)],
        )?;
        let added = self.execute(
            "INSERT INTO k8s_tokens (token_id, id, expires_at, redeemed_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (token_id) DO NOTHING",
            &[&token_id, &id, &expires_at, &now],
        )?;
        Ok(added == 1)
    }

    fn revoke(&mut self, id: &str, now: i64) -> Result<bool, StoreError> {
        let added = self.execute(
            "INSERT INTO revocations (id, revoked_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &now],
        )?;
        Ok(added == 1)
    }

    fn is_revoked(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE id = $1)",
                &[&id],
            )?
            .try_get(0)?)
    }

    fn revoked(&mut self) -> Result<Vec<String>, StoreError> {
        self.query("SELECT id FROM revocations ORDER BY id", &[])?
            .iter()
            .map(|row| Ok(row.try_get(0)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://appid:s3cret@db.example:5432/appid",
                "postgres://appid:***@db.example:5432/appid",
            ),
            (
                "postgresql://appid@db.example/appid?password=s3cret&sslmode=disable",
                "postgresql://appid@db.example/appid?password=***&sslmode=disable",
            ),
            // An unencoded '@' or '/' in the password: hidden all the same.
            (
                "postgres://appid:s3@c/ret@db.example/appid",
                "postgres://appid:***@db.example/appid",
            ),
            (
                "host=db.example user=appid password=s3cret dbname=appid",
                "host=db.example user=appid password=*** dbname=appid",
            ),
            (
                "postgres://appid@db.example/appid",
                "postgres://appid@db.example/appid",
            ),
        ] {
            assert_eq!(redact(url), shown);
            assert!(!redact(url).contains("s3"), "{url}");
        }
        let url = DatabaseUrl::parse("postgres://appid:s3cret@db.example/appid").unwrap();
        assert!(!format!("{url} {url:?}").contains("s3cret"));
    }

    #[test]
    fn tls_parameters_are_taken_out_for_the_client_library() {
        assert_eq!(
            split_tls_params("postgres://a@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"),
            (
                "postgres://a@h/d?sslmode=require".to_string(),
                Some("/etc/ca.pem".to_string())
            )
        );
        assert_eq!(
            split_tls_params("postgres://a@h/d?sslrootcert=/ca.pem"),
            ("postgres://a@h/d".to_string(), Some("/ca.pem".to_string()))
        );
        assert_eq!(
            split_tls_params("postgres://a@h/d?connect_timeout=3"),
            ("postgres://a@h/d?connect_timeout=3".to_string(), None)
        );
        assert_eq!(percent_decode("%2Fa%zz%4"), "/a%zz%4");
    }

    #[test]
    fn bad_urls_name_the_flag_and_hide_the_password() {
        for (url, why) in [
            ("mysql://appid:s3cret@db/appid", "not a PostgreSQL URL"),
            ("postgres://appid:s3cret@db:notaport/appid", "invalid"),
            ("postgres://:s3cret@/appid", "no host"),
            (
                "postgres://appid:s3cret@db/appid?sslmode=require",
                "needs sslrootcert",
            ),
            (
                "postgres://appid:s3cret@db/appid?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert=/nonexistent/ca.pem: No such file",
            ),
            (
                "postgres://appid:s3cret@db/appid?sslrootcert=%2Fetc%2Fca.pem",
                "only used with sslmode=require",
            ),
        ] {
            let error = DatabaseUrl::parse(url).unwrap_err().to_string();
            assert!(error.starts_with("--database "), "{error}");
            assert!(error.contains(why), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
}
