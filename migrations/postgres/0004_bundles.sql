-- One-time provisioning bundles. The token is never stored, only SHA-256(token); the payload
-- is sealed under a key derived from the token (HKDF-SHA256) and erased on redeem, cancel and
-- expiry.
CREATE TABLE bundles (
    id            TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL,
    credential    TEXT NOT NULL,      -- x509 | sas | both
    format        TEXT NOT NULL,      -- json | pem-tar | pkcs12
    token_sha256  TEXT NOT NULL,
    payload       BYTEA,               -- sealed under HKDF(token); NULL once erased
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    redeemed_at   BIGINT,
    redeemed_from TEXT,
    cancelled_at  BIGINT
);
CREATE INDEX bundles_by_expiry ON bundles (expires_at);
