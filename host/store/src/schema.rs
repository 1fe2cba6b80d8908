//! Versioned migrations, run at start by whoever opens the store. One text
//! per migration, with the few words SQLite and PostgreSQL spell apart
//! (`{blob}`, `{double}`, `{serial}`) filled in per backend.

/// One migration: its version (never reused), a name, and its SQL.
pub struct Migration {
    /// Applied in ascending order; recorded in `stepd_migrations`.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// Statements separated by `;` (none contains a `;` of its own).
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs, events, control events, attempts, checkpoints",
        sql: r#"
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
    id {serial},
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
    wall_clock_seconds {double} NOT NULL,
    worker TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (job_id, step_index, attempt)
);
CREATE TABLE step_checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step_index BIGINT NOT NULL,
    step_id TEXT NOT NULL,
    patch {blob} NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, step_index)
)
"#,
    },
    Migration {
        version: 2,
        name: "fuel burned by each step attempt",
        sql: "ALTER TABLE step_attempts ADD COLUMN fuel_consumed BIGINT",
    },
    Migration {
        version: 3,
        name: "the job as resolved at submit (absolute paths, plugin hashes)",
        sql: "ALTER TABLE jobs ADD COLUMN resolved TEXT",
    },
    Migration {
        version: 4,
        name: "the HTTP requests of each step attempt (JSON)",
        sql: "ALTER TABLE step_attempts ADD COLUMN http TEXT",
    },
    Migration {
        version: 5,
        name: "what a failed step attempt's successor is told (JSON)",
        sql: "ALTER TABLE step_attempts ADD COLUMN retry_context TEXT",
    },
];

/// The backend a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server (scale-out).
    Postgres,
}

impl Backend {
    /// The migration's statements for this backend.
    pub fn statements(self, migration: &Migration) -> Vec<String> {
        let (blob, double, serial) = match self {
            Backend::Sqlite => ("BLOB", "REAL", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            Backend::Postgres => ("BYTEA", "DOUBLE PRECISION", "BIGSERIAL PRIMARY KEY"),
        };
        migration
            .sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.replace("{blob}", blob)
                    .replace("{double}", double)
                    .replace("{serial}", serial)
            })
            .collect()
    }
}
