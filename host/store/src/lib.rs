//! The store (docs/OPERATIONS.md#store): the database is the source of truth for jobs,
//! their events, operator control events, step attempts and step
//! checkpoints. SQLite by default (a file in the data directory),
//! PostgreSQL when `DATABASE_URL` says so; one SQL dialect through sqlx's
//! `Any` driver, with the few differences (row locking, column types)
//! spelled out where they occur. Migrations (host/store/migrations/) run
//! when a store is opened.
//!
//! Times are Unix milliseconds in the database and RFC 3339 on the wire.

mod artifacts;
mod control;
pub mod crashpoint;
mod jobs;
mod records;
mod schema;
mod submits;

use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use artifacts::{ArtifactChange, StoredArtifact};
pub use control::ControlWrite;
pub use jobs::{ClaimedBy, JobEnding, JobTiming, NewJob, RunContext, StoreGauges};
pub use records::{
    AttemptRow, CheckpointRow, ControlEventRow, CurrentStep, ProgressBatch, ProgressWritten, StoredEvent,
};
pub use schema::{Backend, SchemaError};

use stepd_job::control::LiveControl;

/// Why a store call failed. Names the job or the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database ({operation}): {source}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A job id that is not in the store.
    #[error("unknown job {0}")]
    UnknownJob(String),
    /// A job id that is already in the store.
    #[error("job {0} already exists")]
    DuplicateJob(String),
    /// A row the store wrote cannot be read back (a bug or a hand edit).
    #[error("job {job_id}: stored {column} is malformed: {message}")]
    Malformed {
        /// The job.
        job_id: String,
        /// The column.
        column: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The schema could not be brought up to date (an edited migration, a
    /// database from a newer stepd).
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
    /// Another writer changed the job between read and write too often.
    #[error("job {0} changed concurrently; try again")]
    Contended(String),
}

impl StoreError {
    /// The database could not be reached (a refused or broken connection,
    /// a restart in progress, an exhausted pool): the same request may well
    /// succeed in a moment. Anything else is not worth retrying as is.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database { source, .. } = self else {
            return false;
        };
        match source {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                true
            }
            // SQLSTATE class 08 (connection exception) and 57P0x (the
            // server is shutting down or starting up).
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

/// Where a job stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobState {
    /// Waiting for a worker (maybe until `next_attempt_at`).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A deterministic failure.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Retryable failures (or lost workers) used up the job's attempts.
    DeadLetter,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::DeadLetter,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::DeadLetter => "dead_letter",
        }
    }

    /// Parse a stored or wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True once the job has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// Where it stands.
    pub status: JobState,
    /// The job attempt running or next to run (1-based).
    pub attempt: u32,
    /// The job's attempt budget.
    pub max_attempts: u32,
    /// Not claimable before this (Unix ms).
    pub next_attempt_at: i64,
    /// When a "job ready" message was last sent (Unix ms).
    pub published_at: Option<i64>,
    /// The worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease ends unless renewed (Unix ms).
    pub lease_expires_at: Option<i64>,
    /// The submitted payload (without `liveControl`).
    pub payload: serde_json::Value,
    /// What operators asked of the job.
    pub live_control: LiveControl,
    /// An operator asked to cancel.
    pub cancel_requested: bool,
    /// The step the next run starts at (after `resume_from_step` on a job
    /// that was not running).
    pub resume_step: Option<u32>,
    /// The step running or last run.
    pub current_step_id: Option<String>,
    /// Its index.
    pub current_step_index: Option<u32>,
    /// The workspace directory on the worker that runs or ran it.
    pub workspace_path: Option<String>,
    /// Why it failed, when it did.
    pub last_error: Option<String>,
    /// Optimistic-concurrency counter of control changes.
    pub version: i64,
    /// Submitted (Unix ms).
    pub created_at: i64,
    /// Last changed (Unix ms).
    pub updated_at: i64,
    /// Ended (Unix ms).
    pub finished_at: Option<i64>,
}

impl JobRecord {
    /// The ids of the job's steps, in order (an unnamed step is `step-N`,
    /// as validation names it).
    pub fn step_ids(&self) -> Vec<String> {
        self.payload["task"]["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s["id"].as_str().map_or_else(|| format!("step-{i}"), str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The payload as the API shows it: with `liveControl`.
    pub fn payload_with_live_control(&self) -> serde_json::Value {
        let mut payload = self.payload.clone();
        if let Some(object) = payload.as_object_mut() {
            object.insert(
                "liveControl".into(),
                serde_json::to_value(&self.live_control).unwrap_or_default(),
            );
        }
        payload
    }
}

/// The store: a pool on SQLite or PostgreSQL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Everything a worker writes, and every read.
    pool: AnyPool,
    /// Writes a caller was promised are kept (submit, operator control).
    durable: AnyPool,
    backend: Backend,
    /// SQLite's submits, committed in groups (`submits.rs`).
    submits: Option<submits::SubmitGroups>,
    /// On SQLite, this process's writers take turns here (see
    /// [`Store::write_turn`]); `None` on PostgreSQL.
    write_turns: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// How SQLite commits reach the disk (WAL mode). `Normal` flushes the log
/// only at checkpoints: a process crash loses nothing, a power loss may
/// lose the last commits but never corrupts the file. `Full` flushes the
/// log at every commit, and with it every commit before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Normal,
    Full,
}

async fn connect(url: &str, backend: Backend, synchronous: Synchronous) -> Result<AnyPool, StoreError> {
    let connections = match (backend, synchronous) {
        (Backend::Postgres, _) => 8,
        (Backend::Sqlite, Synchronous::Normal) => 4,
        (Backend::Sqlite, Synchronous::Full) => 2,
    };
    let mut options = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30));
    if backend == Backend::Sqlite {
        // WAL lets readers go on while a writer commits; writers wait
        // for each other instead of failing at once.
        options = options.after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 30000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute(match synchronous {
                    Synchronous::Normal => "PRAGMA synchronous = NORMAL",
                    Synchronous::Full => "PRAGMA synchronous = FULL",
                })
                .await?;
                Ok(())
            })
        });
    }
    let pool = options.connect(url).await.map_err(db("connect"))?;
    if backend == Backend::Sqlite {
        pool.execute("PRAGMA journal_mode = WAL")
            .await
            .map_err(db("enable WAL"))?;
    }
    Ok(pool)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn ms_to_rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Connect to `url` (`sqlite://path?mode=rwc` or `postgres://…`) and
    /// bring the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let pool = connect(url, backend, Synchronous::Normal).await?;
        // Submits and operator actions are promises to a caller: on SQLite
        // they commit through connections that flush the log to disk
        // (docs/OPERATIONS.md#store-durability). PostgreSQL flushes every
        // commit.
        let durable = match backend {
            Backend::Sqlite => connect(url, backend, Synchronous::Full).await?,
            Backend::Postgres => pool.clone(),
        };
        let mut store = Store {
            pool,
            durable,
            backend,
            submits: None,
            write_turns: (backend == Backend::Sqlite).then(Arc::default),
        };
        store.migrate().await?;
        if backend == Backend::Sqlite {
            store.submits = submits::SubmitGroups::start(store.clone());
        }
        Ok(store)
    }

    /// Wait for this process's turn to write, on SQLite; hold the guard
    /// until the commit. SQLite lets one connection write at a time, and a
    /// connection that finds the file locked sleeps in its busy handler
    /// (1, 2, 5, 10 ms … before it looks again), so writers of one
    /// process that raced each other for the lock paid those sleeps on
    /// every contended commit: about a millisecond of each step end's 1.3
    /// ms. Queued here they start the moment the writer before them
    /// commits. Writers in other processes still meet the busy handler.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_turns {
            Some(turns) => Some(turns.lock().await),
            None => None,
        }
    }

    /// The SQLite file `<dir>/stepd.db`, created when missing.
    pub fn sqlite_url(dir: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", dir.join("stepd.db").display())
    }

    /// Now, in Unix milliseconds, by the database's clock on PostgreSQL:
    /// leases written by workers on several hosts and checked by sweeps on
    /// others are all measured against one clock, whatever the hosts' skew.
    /// (A SQLite file lives on one host: its clock is the local one.)
    pub async fn clock(&self) -> Result<i64, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(now_ms()),
            Backend::Postgres => {
                let row = sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db("read the database clock"))?;
                row.try_get::<i64, _>(0).map_err(db("read the database clock"))
            }
        }
    }

    /// `template` with every `{now}` replaced by the database's own
    /// clock ([`Backend::now_sql`]).
    fn with_now(&self, template: &str) -> String {
        template.replace("{now}", self.backend.now_sql())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Close the pool (tests and shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
        self.durable.close().await;
    }

    /// Bring the schema up to date: old bookkeeping bridged, then sqlx's
    /// migrator (which checks the checksums of what was applied). On
    /// PostgreSQL two processes starting together take turns.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("migrate: acquire"))?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(7301)")
                .await
                .map_err(db("migrate: lock"))?;
        }
        let result = async {
            schema::bridge_legacy_versions(&mut conn, self.backend).await?;
            self.backend
                .migrator()
                .run(&mut *conn)
                .await
                .map_err(|e| StoreError::Schema(e.into()))
        }
        .await;
        if self.backend == Backend::Postgres {
            if result.is_ok() {
                let _ = conn.execute("SELECT pg_advisory_unlock(7301)").await;
            } else {
                // sqlx's migrator keeps its own lock when it fails: close
                // the connection (releasing every lock) rather than pool it.
                let _ = conn.close().await;
            }
        }
        result
    }

    /// The applied migration versions (for `/healthz` and tests).
    pub async fn schema_versions(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(db("schema versions"))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(db("schema versions")))
            .collect()
    }
}

fn opt_u32(row: &AnyRow, column: &str) -> Result<Option<u32>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
}

fn u32_col(row: &AnyRow, column: &str) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i64, _>(column)?).unwrap_or(u32::MAX))
}
