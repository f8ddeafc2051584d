-- Trust boundaries (API.md A24/A30).

-- Every device has one owner: an admin (PUT /v1/devices, import), one enrollment group
-- (`enrollment_group_id`) or one individual enrollment (the device's own registration id).
-- Registrations re-provision only what their own enrollment owns.
ALTER TABLE devices ADD COLUMN owner_kind TEXT NOT NULL DEFAULT 'admin';
UPDATE devices SET owner_kind = 'enrollment_group' WHERE enrollment_group_id IS NOT NULL;
UPDATE devices SET owner_kind = 'enrollment'
WHERE enrollment_group_id IS NULL
  AND device_id IN (SELECT registration_id FROM registrations WHERE group_id IS NULL);

-- One-time tokens may be bound to one registration id at minting; a consumed token remembers
-- the id it registered (it then authenticates only status reads of that id).
ALTER TABLE enrollment_tokens ADD COLUMN registration_id TEXT;
ALTER TABLE enrollment_tokens ADD COLUMN used_for TEXT;

-- Operator sessions carry the generation they were issued under; a password or permission
-- change, or a delete and re-create, draws a new one and ends every older session.
ALTER TABLE operators ADD COLUMN generation TEXT NOT NULL DEFAULT '';
UPDATE operators SET generation = lower(hex(randomblob(16)));

-- A bundle is bound to the device generation it was made for.
ALTER TABLE bundles ADD COLUMN device_generation TEXT;
-- A bundle made before its device was last (re-)created belongs to an older generation: it
-- keeps NULL, which matches no device, and is refused (410).
UPDATE bundles SET device_generation =
    (SELECT generation_id FROM devices
     WHERE devices.device_id = bundles.device_id AND devices.created_at <= bundles.created_at);

-- Public keys whose certificate was revoked for key or CA compromise are never certified again.
CREATE TABLE compromised_keys (
    spki_sha256 TEXT PRIMARY KEY,   -- lowercase hex SHA-256 of the SubjectPublicKeyInfo DER
    serial      TEXT NOT NULL,      -- the certificate whose revocation listed it
    created_at  BIGINT NOT NULL
);

-- Lists are in byte order: SQLite's default (BINARY) collation already is.
