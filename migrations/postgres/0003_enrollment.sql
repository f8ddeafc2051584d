-- Enrollment: groups, individual enrollments, one-time enrollment tokens.

CREATE TABLE enrollment_groups (
    id                        TEXT PRIMARY KEY,
    attestation_type          TEXT NOT NULL,   -- symmetric_key | x509_ca | token
    ca_certificates           TEXT,            -- JSON array of PEM (x509_ca)
    credential                TEXT NOT NULL,   -- x509 | sas | both
    provisioning_status       TEXT NOT NULL,   -- enabled | disabled
    certificate_validity_days BIGINT NOT NULL,
    allowed_key_types         TEXT NOT NULL,   -- JSON array
    registration_id_pattern   TEXT,
    initial_tags              TEXT NOT NULL,   -- JSON object
    reprovisioning            TEXT NOT NULL,   -- reissue | keep | deny
    key_version               BIGINT NOT NULL,
    primary_key               BYTEA NOT NULL,
    secondary_key             BYTEA NOT NULL,
    etag                      TEXT NOT NULL,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);

CREATE TABLE enrollments (
    registration_id     TEXT PRIMARY KEY,
    attestation_type    TEXT NOT NULL,
    ca_certificates     TEXT,
    credential          TEXT NOT NULL,
    provisioning_status TEXT NOT NULL,
    key_version         BIGINT NOT NULL,
    primary_key         BYTEA NOT NULL,
    secondary_key       BYTEA NOT NULL,
    etag                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- One-time enrollment JWTs: a row per jti, consumed by one conditional UPDATE.
CREATE TABLE enrollment_tokens (
    jti        TEXT PRIMARY KEY,
    group_id   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- Registrations: idempotency of factory-line and device registrations (same id + same CSR →
-- same certificate).
CREATE TABLE registrations (
    registration_id TEXT PRIMARY KEY,
    group_id        TEXT,
    csr_sha256      TEXT,
    serial          TEXT,
    operation_id    TEXT NOT NULL,
    payload         TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
