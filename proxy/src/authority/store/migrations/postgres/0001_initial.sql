-- The authority's tables on PostgreSQL: the same as SQLite's
-- (migrations/sqlite/0001_initial.sql), with BIGINT times (seconds since
-- the epoch) and, for scans, an identity column standing in for SQLite's
-- rowid (the tie-break between two reports imported in the same second).
-- Applied once, under the advisory lock, by the first replica to open the
-- database (store/postgres.rs).
CREATE TABLE registrations (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    image_digest TEXT,
    cloud_match TEXT NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL
);
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL REFERENCES registrations(id),
    expires_at BIGINT NOT NULL,
    consumed_at BIGINT
);
CREATE TABLE scans (
    digest TEXT NOT NULL,
    report TEXT NOT NULL,
    vulns TEXT NOT NULL,
    imported_at BIGINT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (digest, report)
);
CREATE TABLE issued (
    serial TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    attestation TEXT NOT NULL,
    issued_at BIGINT NOT NULL
);
CREATE INDEX issued_by_id ON issued (id);
CREATE TABLE cloud_instances (
    instance TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    attested_at BIGINT NOT NULL
);
CREATE TABLE k8s_tokens (
    token_id TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    redeemed_at BIGINT NOT NULL
);
CREATE INDEX k8s_tokens_by_expiry ON k8s_tokens (expires_at);
CREATE TABLE revocations (
    id TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);
