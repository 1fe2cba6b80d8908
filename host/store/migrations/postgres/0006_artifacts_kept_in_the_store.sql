-- every artifact a worker wrote, as written, so any API process serves it
CREATE TABLE artifacts (
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, path)
);
