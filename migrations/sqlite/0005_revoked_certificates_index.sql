-- The CRL query reads an issuer's revoked certificates in serial order. Index only those: the
-- index stays as small as the CRL, serves its order directly, and the certificates issued in
-- bulk (never revoked at insert) add no entry to it.
DROP INDEX certificates_by_issuer;
CREATE INDEX certificates_revoked_by_issuer ON certificates (issuer_id, serial)
    WHERE revoked_at IS NOT NULL;
