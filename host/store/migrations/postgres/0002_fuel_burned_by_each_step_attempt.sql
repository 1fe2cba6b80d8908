-- fuel burned by each step attempt
ALTER TABLE step_attempts ADD COLUMN fuel_consumed BIGINT;
