-- Workers and the dead-letter queue.

-- A reprocessed dead letter is republished through the outbox as a new event that names it,
-- so the consumer that finally succeeds can resolve it.
ALTER TABLE outbox ADD COLUMN dlq_id BIGINT NULL;

-- The dead-letter row's life: who asked for a reprocess or a discard and why, how many
-- times rules retried it, and whether it has been copied to the DEAD_LETTER_QUEUE stream
-- (`streamed_at`; `stream_version` makes each new failure of a row a new stream message).
ALTER TABLE dead_letter_messages
    ADD COLUMN request_id          VARCHAR(64)  NULL,
    ADD COLUMN operator            VARCHAR(255) NULL,
    ADD COLUMN reason              TEXT         NULL,
    ADD COLUMN reprocess_count     INT          NOT NULL DEFAULT 0,
    ADD COLUMN auto_retry_count    INT          NOT NULL DEFAULT 0,
    ADD COLUMN stream_version      INT          NOT NULL DEFAULT 0,
    ADD COLUMN streamed_at         TIMESTAMP(6) NULL,
    ADD COLUMN updated_at          TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    ADD INDEX idx_streamed (streamed_at, id);

-- What the result email said, once per event (its Message-ID is derived from the event id).
CREATE TABLE sent_emails (
    event_id    CHAR(36)     NOT NULL PRIMARY KEY,
    request_id  CHAR(36)     NULL,
    recipient   VARCHAR(254) NOT NULL,
    message_id  VARCHAR(255) NOT NULL,
    sent_at     TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    INDEX idx_request_id (request_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The prime-check result's details.
ALTER TABLE prime_check_requests
    ADD COLUMN digits       INT NULL,
    ADD COLUMN duration_us  BIGINT NULL;
