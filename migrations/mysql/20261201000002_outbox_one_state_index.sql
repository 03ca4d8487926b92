-- One secondary index for both of the relay's questions: "which rows are pending, oldest
-- first" (state = 'pending' AND published_at = epoch, by id) and "which published rows are
-- past their retention" (state = 'published', by published_at). Marking a row published now
-- moves one index entry instead of two: 8.9 ms per 1,000 rows against 12.6 ms, and with it
-- the relay went from 45 % to 54 % of raw JetStream publishing (BENCHMARKS.md, "Pipeline").
-- A row that is not published must carry the epoch; rows from before the previous
-- migration, and any NULL written by hand later, are set to it here and by the relay's
-- once-a-second sweep.
UPDATE outbox SET published_at = DEFAULT
WHERE state <> 'published' AND (published_at IS NULL OR published_at <> '1970-01-01 00:00:01');
ALTER TABLE outbox
    DROP INDEX idx_state_id,
    DROP INDEX idx_published_at,
    ADD INDEX idx_state_published_id (state, published_at, id);
