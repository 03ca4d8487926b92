-- Safe replay jobs (see the MySQL migration of the same name).
CREATE TABLE dlq_replay_jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    state              TEXT    NOT NULL,
    operator           TEXT    NOT NULL,
    reason             TEXT    NULL,
    trigger_kind       TEXT    NOT NULL,
    selection          TEXT    NOT NULL,
    pace               TEXT    NOT NULL,
    force_poison       INTEGER NOT NULL DEFAULT 0,
    total              INTEGER NOT NULL,
    owner              TEXT    NULL,
    lease_until        INTEGER NULL,
    stop_reason        TEXT    NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    finished_at        INTEGER NULL
);
CREATE INDEX idx_replay_state ON dlq_replay_jobs (state, id);
CREATE TABLE dlq_replay_items (
    job_id      INTEGER NOT NULL,
    dlq_id      INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    event_id    TEXT    NULL,
    sent_at     INTEGER NULL,
    PRIMARY KEY (job_id, dlq_id)
);
CREATE INDEX idx_replay_item_state ON dlq_replay_items (job_id, state, dlq_id);
