-- every artifact a worker wrote, as written, so any API process serves it
CREATE TABLE artifacts (
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, path)
);
