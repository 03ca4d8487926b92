-- Who submitted a request: the `sub` of the user token it came with (NULL: anonymous, or an
-- admin or service caller). GET /prime-check-list shows a user only their own requests.
ALTER TABLE prime_check_requests ADD COLUMN owner TEXT NULL;
CREATE INDEX idx_requests_owner_id ON prime_check_requests (owner, id);
