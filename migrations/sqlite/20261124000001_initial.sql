-- primed schema for the embedded mode (SQLite). The same logical schema as
-- migrations/mysql; times are INTEGER microseconds since the Unix epoch (UTC), so that
-- comparisons are exact; enums are TEXT with CHECK constraints.

CREATE TABLE prime_check_requests (
    id               TEXT    NOT NULL PRIMARY KEY,
    number           TEXT    NOT NULL,
    email            TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    is_prime         INTEGER NULL,
    factor           TEXT    NULL,
    error            TEXT    NULL,
    idempotency_key  TEXT    NULL UNIQUE,
    request_id       TEXT    NULL,
    created_at       INTEGER NOT NULL,
    completed_at     INTEGER NULL
);
CREATE INDEX idx_requests_status_id ON prime_check_requests (status, id);

CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    subject        TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    request_id     TEXT    NULL,
    traceparent    TEXT    NULL,
    state          TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'published', 'dead')),
    created_at     INTEGER NOT NULL,
    published_at   INTEGER NULL,
    claimed_until  INTEGER NULL,
    retry_count    INTEGER NOT NULL DEFAULT 0,
    max_retries    INTEGER NOT NULL DEFAULT 3,
    next_retry_at  INTEGER NULL,
    error_message  TEXT    NULL,
    last_error_at  INTEGER NULL
);
CREATE INDEX idx_outbox_state_id ON outbox (state, id);
CREATE INDEX idx_outbox_next_retry_at ON outbox (next_retry_at);
CREATE INDEX idx_outbox_published_at ON outbox (published_at);

CREATE TABLE message_processing_logs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id          TEXT    NOT NULL,
    subject             TEXT    NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('processing', 'success', 'failed', 'retry')),
    error_message       TEXT,
    processing_time_ms  INTEGER,
    created_at          INTEGER NOT NULL
);
CREATE INDEX idx_logs_message_id ON message_processing_logs (message_id);
CREATE INDEX idx_logs_subject_status ON message_processing_logs (subject, status);
CREATE INDEX idx_logs_created_at ON message_processing_logs (created_at);

CREATE TABLE worker_health_checks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_name     TEXT    NOT NULL UNIQUE,
    status          TEXT    NOT NULL CHECK (status IN ('healthy', 'unhealthy')),
    last_heartbeat  INTEGER NOT NULL,
    error_message   TEXT,
    metadata        TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX idx_health_status_heartbeat ON worker_health_checks (status, last_heartbeat);

CREATE TABLE dead_letter_messages (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    original_subject     TEXT    NOT NULL,
    original_message_id  TEXT,
    dlq_subject          TEXT    NOT NULL,
    payload              TEXT    NOT NULL,
    error_message        TEXT    NOT NULL,
    error_type           TEXT    NOT NULL CHECK (error_type IN ('transient', 'permanent', 'poison')),
    retry_count          INTEGER NOT NULL DEFAULT 0,
    original_created_at  INTEGER NOT NULL,
    dlq_created_at       INTEGER NOT NULL,
    last_retry_at        INTEGER NULL,
    status               TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'reprocessing', 'resolved', 'discarded')),
    resolved_at          INTEGER NULL,
    resolved_by          TEXT    NULL
);
CREATE INDEX idx_dlq_subject ON dead_letter_messages (original_subject);
CREATE INDEX idx_dlq_status_created ON dead_letter_messages (status, dlq_created_at);
CREATE INDEX idx_dlq_error_type ON dead_letter_messages (error_type);
CREATE INDEX idx_dlq_original_message_id ON dead_letter_messages (original_message_id);

CREATE TABLE dlq_statistics (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    date_hour   INTEGER NOT NULL,
    subject     TEXT    NOT NULL,
    error_type  TEXT    NOT NULL CHECK (error_type IN ('transient', 'permanent', 'poison')),
    count       INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    UNIQUE (date_hour, subject, error_type)
);

CREATE TABLE processed_events (
    event_id      TEXT    NOT NULL,
    consumer      TEXT    NOT NULL,
    processed_at  INTEGER NOT NULL,
    PRIMARY KEY (event_id, consumer)
);

-- The embedded broker: a durable queue. A message is invisible while a consumer leases it
-- (visible_at in the future); a consumer that dies leaves it to reappear when the lease
-- runs out. event_id is unique: publishing an event twice stores it once.
CREATE TABLE queue_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    subject      TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    request_id   TEXT    NULL,
    traceparent  TEXT    NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    visible_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX idx_queue_subject_visible ON queue_messages (subject, visible_at, id);
