-- Who submitted a request: the `sub` of the user token it came with (NULL: anonymous, or an
-- admin or service caller). GET /prime-check-list shows a user only their own requests, by
-- this index, newest first.
ALTER TABLE prime_check_requests
    ADD COLUMN owner VARCHAR(256) NULL,
    ADD INDEX idx_owner_id (owner, id);
