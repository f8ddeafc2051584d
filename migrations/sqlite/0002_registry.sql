-- Identity registry: devices and operators.

CREATE TABLE devices (
    device_id            TEXT PRIMARY KEY,
    status               TEXT NOT NULL,      -- enabled | disabled
    status_reason        TEXT,
    auth_type            TEXT NOT NULL,      -- sas | x509_ca | x509_thumbprint
    key_version          BIGINT,             -- master key version of the sealed keys
    primary_key          BLOB,
    secondary_key        BLOB,
    primary_thumbprint   TEXT,
    secondary_thumbprint TEXT,
    etag                 TEXT NOT NULL,
    generation_id        TEXT NOT NULL,
    tags                 TEXT NOT NULL,      -- JSON object
    parent_id            TEXT,
    enrollment_group_id  TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX devices_by_status ON devices (status, device_id);

CREATE TABLE operators (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,             -- argon2id PHC string
    permissions   TEXT NOT NULL,             -- JSON array
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
