-- jobs, events, control events, attempts, checkpoints
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    published_at BIGINT,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    payload TEXT NOT NULL,
    live_control TEXT NOT NULL,
    held BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    resume_step BIGINT,
    current_step_id TEXT,
    current_step_index BIGINT,
    workspace_path TEXT,
    last_error TEXT,
    event_seq BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX jobs_claimable ON jobs (status, next_attempt_at);
CREATE INDEX jobs_by_age ON jobs (created_at);
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE control_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    step_id TEXT,
    reason TEXT,
    requested_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX control_events_by_job ON control_events (job_id, id);
CREATE TABLE step_attempts (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step_index BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    step_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    failure_class TEXT,
    strategy TEXT,
    wall_clock_seconds REAL NOT NULL,
    worker TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (job_id, step_index, attempt)
);
CREATE TABLE step_checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step_index BIGINT NOT NULL,
    step_id TEXT NOT NULL,
    patch BLOB NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, step_index)
);
