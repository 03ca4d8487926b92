-- Retention (see the MySQL migration of the same name): an index on the instant each
-- pruned table is pruned by.
CREATE INDEX idx_sent_emails_sent_at ON sent_emails (sent_at);
CREATE INDEX idx_dlq_status_resolved ON dead_letter_messages (status, resolved_at);
CREATE INDEX idx_crashes_updated ON message_crashes (updated_at);
CREATE INDEX idx_processed_events_at ON processed_events (processed_at);
CREATE INDEX idx_dlq_statistics_hour ON dlq_statistics (date_hour);
CREATE INDEX idx_health_last_heartbeat ON worker_health_checks (last_heartbeat);
