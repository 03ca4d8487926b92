-- Error fingerprints and the DLQ's audit trail (see the MySQL migration of the same name).
ALTER TABLE dead_letter_messages ADD COLUMN fingerprint TEXT NULL;
CREATE INDEX idx_dlq_fingerprint ON dead_letter_messages (fingerprint, status);
CREATE TABLE dlq_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    operator    TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    dlq_id      INTEGER NULL,
    fingerprint TEXT    NULL,
    reason      TEXT    NULL,
    detail      TEXT    NULL
);
CREATE INDEX idx_dlq_audit_dlq ON dlq_audit (dlq_id, id);
