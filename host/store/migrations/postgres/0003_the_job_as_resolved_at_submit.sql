-- the job as resolved at submit (absolute paths, plugin hashes)
ALTER TABLE jobs ADD COLUMN resolved TEXT;
