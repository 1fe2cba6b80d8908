-- claims take the oldest due jobs in (next_attempt_at, created_at) order:
-- with created_at in the index that order is read from it, not sorted
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (status, next_attempt_at, created_at);
