-- a CA key held in a PKCS#11 token: its label (no sealed key then)
ALTER TABLE issuers ADD COLUMN key_label TEXT;
