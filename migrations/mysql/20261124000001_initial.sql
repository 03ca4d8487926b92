-- primed schema for MySQL 8 / MariaDB 10.11. Times are UTC (the connection's time_zone is
-- +00:00), with microseconds.

-- Accepted requests and their results.
CREATE TABLE prime_check_requests (
    id               CHAR(36)     NOT NULL PRIMARY KEY,  -- UUIDv7: ordered by creation
    number           TEXT         NOT NULL,              -- decimal digits, validated by the API
    email            VARCHAR(254) NOT NULL,
    status           ENUM('pending', 'done', 'failed') NOT NULL DEFAULT 'pending',
    is_prime         BOOLEAN      NULL,
    factor           TEXT         NULL,                  -- smallest factor found, when composite
    error            TEXT         NULL,
    idempotency_key  VARCHAR(255) NULL,
    request_id       VARCHAR(64)  NULL,
    created_at       TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    completed_at     TIMESTAMP(6) NULL,
    UNIQUE KEY uk_idempotency_key (idempotency_key),
    INDEX idx_status_id (status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Transactional outbox (seed §2.1.2 retry columns), relayed to the broker by state, never
-- by an id cursor. `claimed_until` is the relay's lease on a claimed row.
CREATE TABLE outbox (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id        CHAR(36)     NOT NULL,
    subject         VARCHAR(255) NOT NULL,
    payload         JSON         NOT NULL,
    request_id      VARCHAR(64)  NULL,
    traceparent     VARCHAR(64)  NULL,
    state           ENUM('pending', 'published', 'dead') NOT NULL DEFAULT 'pending',
    created_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at    TIMESTAMP(6) NULL,
    claimed_until   TIMESTAMP(6) NULL,
    retry_count     INT          NOT NULL DEFAULT 0,
    max_retries     INT          NOT NULL DEFAULT 3,
    next_retry_at   TIMESTAMP(6) NULL,
    error_message   TEXT         NULL,
    last_error_at   TIMESTAMP(6) NULL,
    UNIQUE KEY uk_event_id (event_id),
    INDEX idx_state_id (state, id),
    INDEX idx_next_retry_at (next_retry_at),
    INDEX idx_retry_count (retry_count),
    INDEX idx_published_at (published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Every processing attempt (seed §2.1.2).
CREATE TABLE message_processing_logs (
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id          VARCHAR(255) NOT NULL,
    subject             VARCHAR(255) NOT NULL,
    status              ENUM('processing', 'success', 'failed', 'retry') NOT NULL,
    error_message       TEXT,
    processing_time_ms  INT,
    created_at          TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    INDEX idx_message_id (message_id),
    INDEX idx_subject_status (subject, status),
    INDEX idx_created_at (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Worker liveness (seed §2.1.2).
CREATE TABLE worker_health_checks (
    id              INT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    worker_name     VARCHAR(100) NOT NULL,
    status          ENUM('healthy', 'unhealthy') NOT NULL,
    last_heartbeat  TIMESTAMP(6) NOT NULL,
    error_message   TEXT,
    metadata        JSON,
    created_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    UNIQUE KEY uk_worker_name (worker_name),
    INDEX idx_status_heartbeat (status, last_heartbeat)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Dead letters (seed §3.1.2) plus the DLQ subject they were filed under.
CREATE TABLE dead_letter_messages (
    id                   BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    original_subject     VARCHAR(255) NOT NULL,
    original_message_id  VARCHAR(255),
    dlq_subject          VARCHAR(255) NOT NULL,
    payload              JSON         NOT NULL,
    error_message        TEXT         NOT NULL,
    error_type           ENUM('transient', 'permanent', 'poison') NOT NULL,
    retry_count          INT          NOT NULL DEFAULT 0,
    original_created_at  TIMESTAMP(6) NOT NULL,
    dlq_created_at       TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_retry_at        TIMESTAMP(6) NULL,
    status               ENUM('pending', 'reprocessing', 'resolved', 'discarded') NOT NULL DEFAULT 'pending',
    resolved_at          TIMESTAMP(6) NULL,
    resolved_by          VARCHAR(255) NULL,
    INDEX idx_subject (original_subject),
    INDEX idx_status_created (status, dlq_created_at),
    INDEX idx_error_type (error_type),
    INDEX idx_original_message_id (original_message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Dead letters per hour, subject and error type (seed §3.1.2).
CREATE TABLE dlq_statistics (
    id          INT          NOT NULL AUTO_INCREMENT PRIMARY KEY,
    date_hour   TIMESTAMP    NOT NULL,
    subject     VARCHAR(255) NOT NULL,
    error_type  ENUM('transient', 'permanent', 'poison') NOT NULL,
    count       INT          NOT NULL DEFAULT 1,
    created_at  TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE KEY uk_date_subject_type (date_hour, subject, error_type),
    INDEX idx_date_hour (date_hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Effects already applied, per event: a consumer records the event id in the same
-- transaction as its effect, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    event_id      CHAR(36)     NOT NULL,
    consumer      VARCHAR(64)  NOT NULL,
    processed_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (event_id, consumer),
    INDEX idx_processed_at (processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
