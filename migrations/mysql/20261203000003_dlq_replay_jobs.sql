-- Safe replay: a job replays a selection of dead letters canary first, ramping up under a
-- rate cap, and stops by itself when too many of what it replayed fail again. Its state
-- is here so that it survives a restart; `owner` and `lease_until` make one daemon run it.
CREATE TABLE dlq_replay_jobs (
    id                 BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    state              VARCHAR(16)  NOT NULL,           -- running, paused, done, aborted, cancelled
    operator           VARCHAR(255) NOT NULL,
    reason             TEXT         NULL,
    trigger_kind       VARCHAR(32)  NOT NULL,           -- operator, smtp_healed
    selection          TEXT         NOT NULL,           -- JSON: what was asked for
    pace               TEXT         NOT NULL,           -- JSON: canary, ramp, rate_per_second, max_failure_ratio
    force_poison       TINYINT      NOT NULL DEFAULT 0,
    total              INT          NOT NULL,
    owner              VARCHAR(255) NULL,
    lease_until        TIMESTAMP(6) NULL,
    stop_reason        TEXT         NULL,
    created_at         TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at         TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    finished_at        TIMESTAMP(6) NULL,
    INDEX idx_replay_state (state, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The letters of a job, snapshotted when it starts: queued, sent (its replay in flight),
-- succeeded, failed (dead-lettered again) or skipped (no longer pending when its turn came).
CREATE TABLE dlq_replay_items (
    job_id      BIGINT       NOT NULL,
    dlq_id      BIGINT       NOT NULL,
    state       VARCHAR(16)  NOT NULL,
    event_id    CHAR(36)     NULL,
    sent_at     TIMESTAMP(6) NULL,
    PRIMARY KEY (job_id, dlq_id),
    INDEX idx_replay_item_state (job_id, state, dlq_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
