-- Crashes per message: a handler that panicked on it, or a worker killed while holding it,
-- counted apart from the handler's errors. A message that crashed its workers twice is
-- quarantined (a `poison` dead letter) instead of being delivered again.
CREATE TABLE message_crashes (
    event_id    VARCHAR(64)  NOT NULL PRIMARY KEY,
    crashes     INT          NOT NULL,
    last_error  TEXT         NOT NULL,
    updated_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
