-- what a failed step attempt's successor is told (JSON)
ALTER TABLE step_attempts ADD COLUMN retry_context TEXT;
