//! Artifacts kept in the store: with PostgreSQL, API processes and workers
//! run on different hosts, so each artifact a worker writes to its own disk
//! is copied here, byte for byte (already redacted), and the API serves
//! this copy. The embedded default keeps artifacts on disk only. Paths are
//! the artifact's path inside its job directory, written by stepd itself.

use sqlx::Row;

use super::{db, now_ms, Backend, Store, StoreError};

/// One artifact the store holds: its path and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    /// Its path inside the job's artifact directory (`logs/steps/…`).
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// One change to a job's artifact copy in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactChange {
    /// `path` now holds `bytes`.
    Put {
        /// The artifact's path inside its job directory.
        path: String,
        /// Its bytes, as written.
        bytes: Vec<u8>,
    },
    /// `text` was appended to `path` (created when missing). Appends are
    /// text: SQLite joins values as text.
    Append {
        /// The artifact's path inside its job directory.
        path: String,
        /// What was appended.
        text: String,
    },
    /// `path` is gone (a checkpoint a resume undid).
    Remove {
        /// The artifact's path inside its job directory.
        path: String,
    },
}

impl ArtifactChange {
    /// Fold `next` into this change when both append to the same artifact
    /// (the event log grows a line per event): one statement instead of
    /// two. Returns `next` back when it cannot be folded.
    pub fn absorb(&mut self, next: ArtifactChange) -> Option<ArtifactChange> {
        match (self, next) {
            (ArtifactChange::Append { path, text }, ArtifactChange::Append { path: p, text: t }) if *path == p => {
                text.push_str(&t);
                None
            }
            (_, next) => Some(next),
        }
    }
}

/// Apply `change` to job `job_id`'s artifacts through `executor` (the pool
/// or a transaction).
pub(super) async fn apply_artifact_change<'e, E>(
    backend: Backend,
    executor: E,
    job_id: &str,
    change: &ArtifactChange,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    match change {
        ArtifactChange::Put { path, bytes } => {
            sqlx::query(
                "INSERT INTO artifacts (job_id, path, bytes, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (job_id, path) DO UPDATE SET bytes = excluded.bytes, updated_at = excluded.updated_at",
            )
            .bind(job_id)
            .bind(path.as_str())
            .bind(bytes.clone())
            .bind(now_ms())
            .execute(executor)
            .await
            .map_err(db("store artifact"))?;
        }
        ArtifactChange::Append { path, text } => {
            let joined = match backend {
                Backend::Postgres => "artifacts.bytes || excluded.bytes",
                Backend::Sqlite => "CAST(artifacts.bytes || excluded.bytes AS BLOB)",
            };
            sqlx::query(&format!(
                "INSERT INTO artifacts (job_id, path, bytes, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (job_id, path) DO UPDATE SET bytes = {joined}, updated_at = excluded.updated_at"
            ))
            .bind(job_id)
            .bind(path.as_str())
            .bind(text.as_bytes().to_vec())
            .bind(now_ms())
            .execute(executor)
            .await
            .map_err(db("append to artifact"))?;
        }
        ArtifactChange::Remove { path } => {
            sqlx::query("DELETE FROM artifacts WHERE job_id = $1 AND path = $2")
                .bind(job_id)
                .bind(path.as_str())
                .execute(executor)
                .await
                .map_err(db("remove artifact"))?;
        }
    }
    Ok(())
}

impl Store {
    /// Job `job_id`'s artifact `path` now holds `bytes`.
    pub async fn put_artifact(&self, job_id: &str, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let change = ArtifactChange::Put {
            path: path.to_owned(),
            bytes: bytes.to_vec(),
        };
        apply_artifact_change(self.backend, &self.pool, job_id, &change).await
    }

    /// Append `text` to job `job_id`'s artifact `path` (a log, the event
    /// log), creating it when missing.
    pub async fn append_artifact(&self, job_id: &str, path: &str, text: &str) -> Result<(), StoreError> {
        let change = ArtifactChange::Append {
            path: path.to_owned(),
            text: text.to_owned(),
        };
        apply_artifact_change(self.backend, &self.pool, job_id, &change).await
    }

    /// Forget job `job_id`'s artifact `path` (a checkpoint a resume undid).
    pub async fn remove_artifact(&self, job_id: &str, path: &str) -> Result<(), StoreError> {
        let change = ArtifactChange::Remove { path: path.to_owned() };
        apply_artifact_change(self.backend, &self.pool, job_id, &change).await
    }

    /// Every artifact the store holds for job `job_id`, by path.
    pub async fn artifacts(&self, job_id: &str) -> Result<Vec<StoredArtifact>, StoreError> {
        let rows = sqlx::query(
            "SELECT path, CAST(LENGTH(bytes) AS BIGINT) AS size FROM artifacts WHERE job_id = $1 ORDER BY path",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list artifacts"))?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get("size")?;
                Ok(StoredArtifact {
                    path: r.try_get("path")?,
                    size: u64::try_from(size).unwrap_or(0),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("list artifacts"))
    }

    /// The bytes of job `job_id`'s artifact `path`, if the store holds it.
    pub async fn artifact(&self, job_id: &str, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT bytes FROM artifacts WHERE job_id = $1 AND path = $2")
            .bind(job_id)
            .bind(path)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read artifact"))?;
        row.map(|r| r.try_get::<Vec<u8>, _>("bytes"))
            .transpose()
            .map_err(db("read artifact"))
    }
}
