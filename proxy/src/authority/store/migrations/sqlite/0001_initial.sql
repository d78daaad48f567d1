-- The authority's tables, as the first SQLite release made them (IF NOT
-- EXISTS: a database from before versioned migrations is adopted as is).
-- Times are seconds since the epoch; JSON columns hold serde_json text.
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
