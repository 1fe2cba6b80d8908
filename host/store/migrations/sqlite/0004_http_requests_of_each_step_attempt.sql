-- the HTTP requests of each step attempt (JSON)
ALTER TABLE step_attempts ADD COLUMN http TEXT;
