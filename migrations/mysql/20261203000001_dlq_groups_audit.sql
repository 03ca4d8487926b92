-- Error fingerprints and the DLQ's audit trail.

-- A dead letter's fingerprint: subject + error type + the error message with its values
-- replaced by placeholders (see actors::fingerprint), 16 hex digits. Dead letters that
-- failed the same way share it and are shown, replayed and discarded as a group. Rows
-- written before this migration get theirs when the groups are first read.
ALTER TABLE dead_letter_messages
    ADD COLUMN fingerprint CHAR(16) NULL,
    ADD INDEX idx_fingerprint (fingerprint, status);

-- Every operator action on the DLQ: who, when, why, what it acted on and what changed
-- (`detail`: JSON, e.g. the payload before and after an edit, or how many a group discard
-- closed).
CREATE TABLE dlq_audit (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at          TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    operator    VARCHAR(255) NOT NULL,
    action      VARCHAR(32)  NOT NULL,
    dlq_id      BIGINT       NULL,
    fingerprint CHAR(16)     NULL,
    reason      TEXT         NULL,
    detail      TEXT         NULL,
    INDEX idx_audit_dlq (dlq_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
