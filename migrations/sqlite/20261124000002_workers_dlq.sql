-- Workers and the dead-letter queue (see the MySQL migration of the same name).
ALTER TABLE outbox ADD COLUMN dlq_id INTEGER NULL;
ALTER TABLE dead_letter_messages ADD COLUMN request_id TEXT NULL;
ALTER TABLE dead_letter_messages ADD COLUMN operator TEXT NULL;
ALTER TABLE dead_letter_messages ADD COLUMN reason TEXT NULL;
ALTER TABLE dead_letter_messages ADD COLUMN reprocess_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter_messages ADD COLUMN auto_retry_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter_messages ADD COLUMN stream_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter_messages ADD COLUMN streamed_at INTEGER NULL;
ALTER TABLE dead_letter_messages ADD COLUMN updated_at INTEGER NULL;
CREATE INDEX idx_dlq_streamed ON dead_letter_messages (streamed_at, id);
CREATE TABLE sent_emails (
    event_id    TEXT    NOT NULL PRIMARY KEY,
    request_id  TEXT    NULL,
    recipient   TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    sent_at     INTEGER NOT NULL
);
ALTER TABLE prime_check_requests ADD COLUMN digits INTEGER NULL;
ALTER TABLE prime_check_requests ADD COLUMN duration_us INTEGER NULL;
ALTER TABLE queue_messages ADD COLUMN dlq_id INTEGER NULL;
