-- provisiond schema v1. Secret columns hold AES-256-GCM blobs (see service/src/seal.rs) and
-- record the master key version in `key_version` so rotation can find rows to re-seal.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Sealed singletons: the audit HMAC key, the JWT signing key.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    key_version BIGINT NOT NULL,
    value       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- CA certificates. The root has no private key here (it lives in a file, then offline).
CREATE TABLE issuers (
    id          TEXT PRIMARY KEY,          -- lowercase hex SKI
    cert_der    BYTEA NOT NULL,
    is_root     BIGINT NOT NULL,
    active      BIGINT NOT NULL,           -- 1 = the intermediate that issues now
    key_version BIGINT,
    private_key BYTEA,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE policies (
    name          TEXT PRIMARY KEY,
    permissions   TEXT NOT NULL,           -- JSON array
    scope         TEXT,                    -- JSON object or NULL
    key_version   BIGINT NOT NULL,
    primary_key   BYTEA NOT NULL,
    secondary_key BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY,    -- lowercase hex
    device_id         TEXT,
    issuer_id         TEXT NOT NULL REFERENCES issuers (id),
    profile           TEXT NOT NULL,       -- device | server
    der               BYTEA NOT NULL,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT,
    created_at        BIGINT NOT NULL
);
CREATE INDEX certificates_by_device ON certificates (device_id, serial);
CREATE INDEX certificates_by_issuer ON certificates (issuer_id, revoked_at);

CREATE TABLE crls (
    issuer_id   TEXT PRIMARY KEY REFERENCES issuers (id),
    number      BIGINT NOT NULL,
    this_update BIGINT NOT NULL,
    next_update BIGINT NOT NULL,
    der         BYTEA NOT NULL
);

-- Append-only, HMAC-chained audit trail; audit_head is the single-row chain head that writers
-- lock to keep the chain linear across instances.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    client_addr TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Periodic-job leases (DESIGN.md "Scale-out").
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
