-- `auth.failure.summary` rows (API.md A25, A30) stand for many refused failures of one
-- rate-limited key in one window: how many is `failure_count`. NULL on every other row, so rows
-- written before this column keep their hash (the canonical row includes it only when set).
ALTER TABLE audit_log ADD COLUMN failure_count BIGINT;
