-- the commit of a remote baseline, pinned on the job's first fetch
ALTER TABLE jobs ADD COLUMN baseline_commit TEXT;
