-- AWS IoT fleet provisioning (API.md A26, A30).

-- An `aws_claim` group's template: JSON {"template_name", "parameters": {"registration_id",
-- "tags"}}; its claim CAs are in `ca_certificates` as for `x509_ca`. NULL for other types.
ALTER TABLE enrollment_groups ADD COLUMN aws_claim TEXT;

-- Certificate ownership tokens of CreateCertificateFromCsr / CreateKeysAndCertificate. The
-- token itself is never stored, only SHA-256(token) (256 random bits). Each is bound to the
-- held certificate it was issued with, the group and the MQTT connection that asked, and is
-- consumed once by RegisterThing with one conditional UPDATE (`used_at IS NULL AND
-- expires_at > now`). The periodic sweep turns the hold of a certificate whose token expired
-- unused into cessationOfOperation and deletes expired rows.
CREATE TABLE aws_ownership_tokens (
    token_sha256  TEXT PRIMARY KEY,
    serial        TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT,
    used_for      TEXT
);
CREATE INDEX aws_ownership_tokens_by_expiry ON aws_ownership_tokens (expires_at);
CREATE INDEX aws_ownership_tokens_pending ON aws_ownership_tokens (group_id, expires_at)
    WHERE used_at IS NULL;
