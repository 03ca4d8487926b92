-- Crashes per message (see the MySQL migration of the same name).
CREATE TABLE message_crashes (
    event_id    TEXT    NOT NULL PRIMARY KEY,
    crashes     INTEGER NOT NULL,
    last_error  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);
