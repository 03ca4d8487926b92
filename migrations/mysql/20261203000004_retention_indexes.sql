-- Retention: the retention actor deletes what has outlived its setting in small batches,
-- oldest first; each table it prunes needs an index on the instant it prunes by (the others
-- have one already: message_processing_logs.created_at, processed_events.processed_at,
-- dlq_statistics.date_hour, worker_health_checks (status, last_heartbeat)).
ALTER TABLE sent_emails ADD INDEX idx_sent_at (sent_at);
ALTER TABLE dead_letter_messages ADD INDEX idx_status_resolved (status, resolved_at);
ALTER TABLE message_crashes ADD INDEX idx_crash_updated (updated_at);
ALTER TABLE worker_health_checks ADD INDEX idx_last_heartbeat (last_heartbeat);
