//! What a job leaves in the store besides its row: events (numbered per
//! job by the store, so events from the API and from workers share one
//! order), control events, step attempts and step checkpoints.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::artifacts::{apply_artifact_change, ArtifactChange};
use super::crashpoint::hold_before_commit;
use super::jobs::JobEnding;
use super::{db, now_ms, u32_col, Store, StoreError};
use stepd_records::events::{Event, HttpRequestRecord};

/// One event as the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredEvent {
    /// 1-based, per job, assigned by the store.
    pub seq: i64,
    /// The job.
    pub job_id: String,
    /// RFC 3339.
    pub at: String,
    /// Its name (`task.control`, ...).
    pub event: String,
    /// Its fields.
    pub payload: serde_json::Value,
}

/// One operator action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControlEventRow {
    /// Row id (increasing).
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// The action's wire name.
    pub action: String,
    /// The step it named.
    pub step_id: Option<String>,
    /// The operator's reason.
    pub reason: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// When (Unix ms).
    pub created_at: i64,
}

/// One finished step attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRow {
    /// The step's index.
    pub step_index: u32,
    /// The attempt (1-based, across job attempts).
    pub attempt: u32,
    /// The step's id.
    pub step_id: String,
    /// `succeeded` or the runtime outcome of the failure.
    pub outcome: String,
    /// The failure class, for a failure.
    pub failure_class: Option<String>,
    /// The strategy chosen, for a failure.
    pub strategy: Option<String>,
    /// How long it ran.
    pub wall_clock_seconds: f64,
    /// Fuel it burned (`None` with metering off).
    pub fuel_consumed: Option<i64>,
    /// The worker that ran it.
    pub worker: String,
    /// RFC 3339.
    pub finished_at: String,
    /// The HTTP requests it made, allowed and denied (never a query,
    /// header or body).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRequestRecord>,
    /// What the step's next attempt is told, for a failure that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_context: Option<serde_json::Value>,
}

/// A finished step's checkpoint: enough to rebuild the workspace after it
/// on any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// The step's index.
    pub step_index: u32,
    /// The step's id.
    pub step_id: String,
    /// The step's patch, byte-exact.
    pub patch: Vec<u8>,
    /// The step's state JSON (`state/steps/step-XXXX.json`).
    pub state: String,
}

/// The step a worker is running, as the job row shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentStep {
    /// The step's id.
    pub step_id: String,
    /// Its index.
    pub step_index: u32,
    /// The workspace directory on the worker.
    pub workspace: String,
}

/// What a worker writes in one transaction ([`Store::record_progress`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressBatch {
    /// Events (already redacted), each with its time, in order.
    pub events: Vec<(String, serde_json::Value)>,
    /// The step now running, when one started.
    pub current_step: Option<CurrentStep>,
    /// Finished attempts.
    pub attempts: Vec<AttemptRow>,
    /// A finished step's checkpoint.
    pub checkpoint: Option<CheckpointRow>,
    /// Changes to the job's artifact copy (PostgreSQL deployments), in
    /// order.
    pub artifacts: Vec<ArtifactChange>,
    /// The job's end: its status written under the same conditions as
    /// [`Store::finish`], its last event numbered after the batch's
    /// others (and not written when the status was refused).
    pub ending: Option<JobEnding>,
}

/// What [`Store::record_progress`] wrote of a batch's conditional parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressWritten {
    /// The checkpoint was kept (true without one).
    pub checkpoint_kept: bool,
    /// The job ended (false without an ending, or when the ending was
    /// refused: the lease lost or the job changed).
    pub finished: bool,
}

impl ProgressBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.current_step.is_none()
            && self.attempts.is_empty()
            && self.checkpoint.is_none()
            && self.artifacts.is_empty()
            && self.ending.is_none()
    }
}

fn decode_event(row: &AnyRow) -> Result<StoredEvent, StoreError> {
    let get = |r: &AnyRow| -> Result<(i64, String, String, String, String), sqlx::Error> {
        Ok((
            r.try_get("seq")?,
            r.try_get("job_id")?,
            r.try_get("at")?,
            r.try_get("name")?,
            r.try_get("payload")?,
        ))
    };
    let (seq, job_id, at, event, payload) = get(row).map_err(db("decode event"))?;
    let payload = serde_json::from_str(&payload).map_err(|e| StoreError::Malformed {
        job_id: job_id.clone(),
        column: "job_events.payload",
        message: e.to_string(),
    })?;
    Ok(StoredEvent {
        seq,
        job_id,
        at,
        event,
        payload,
    })
}

impl Store {
    /// Append `event` to job `job_id`'s events (already redacted by the
    /// caller) at `at`, numbered after the last one.
    pub async fn append_event(&self, job_id: &str, at: &str, event: &serde_json::Value) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("append event"))?;
        let seq = Self::append_value_in(&mut tx, job_id, at, event).await?;
        tx.commit().await.map_err(db("append event"))?;
        Ok(seq)
    }

    /// Append `event`, now, inside `tx`.
    pub(super) async fn append_event_in(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        event: &Event,
    ) -> Result<i64, StoreError> {
        let value = serde_json::to_value(event).unwrap_or_default();
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        Self::append_value_in(tx, job_id, &at, &value).await
    }

    pub(super) async fn append_value_in(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        at: &str,
        event: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        // Numbering through the job row serialises appenders on the row
        // lock, on SQLite and PostgreSQL alike.
        let row = sqlx::query("UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1 RETURNING event_seq")
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("number event"))?
            .ok_or_else(|| StoreError::UnknownJob(job_id.to_owned()))?;
        let seq: i64 = row.try_get(0).map_err(db("number event"))?;
        sqlx::query("INSERT INTO job_events (job_id, seq, at, name, payload) VALUES ($1, $2, $3, $4, $5)")
            .bind(job_id)
            .bind(seq)
            .bind(at)
            .bind(event["event"].as_str().unwrap_or_default())
            .bind(event["payload"].to_string())
            .execute(&mut **tx)
            .await
            .map_err(db("append event"))?;
        Ok(seq)
    }

    /// Write what a worker recorded of job `job_id` since its last batch
    /// in one transaction: its events, numbered together after the last
    /// one; the running step, while `owner` holds the job; the finished
    /// attempts; a finished step's checkpoint, only under `owner`'s lease;
    /// the artifact copy's changes; and the job's end, when it ended. All
    /// or nothing, so a retry after a failure numbers no event twice.
    pub async fn record_progress(
        &self,
        job_id: &str,
        owner: &str,
        batch: &ProgressBatch,
    ) -> Result<ProgressWritten, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(db("record progress"))?;
        if let Some(step) = &batch.current_step {
            // The version moves so that a control write planned against
            // the old step is refused — except under the job's ending,
            // which moves it itself and was decided at the version before
            // this batch (a one-step job's start, step end and ending are
            // one batch).
            let bump = if batch.ending.is_some() { 0 } else { 1 };
            sqlx::query(&self.with_now(&format!(
                "UPDATE jobs SET current_step_id = $1, current_step_index = $2, workspace_path = $3, \
                 updated_at = {{now}}, version = version + {bump} \
                 WHERE id = $4 AND lease_owner = $5 AND status = 'running'",
            )))
            .bind(&step.step_id)
            .bind(i64::from(step.step_index))
            .bind(&step.workspace)
            .bind(job_id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db("set current step"))?;
        }
        for attempt in &batch.attempts {
            Self::record_attempt_in(&mut tx, job_id, attempt).await?;
        }
        let kept = match &batch.checkpoint {
            Some(checkpoint) => Self::put_checkpoint_in(&mut tx, job_id, owner, checkpoint).await?,
            None => true,
        };
        for change in &batch.artifacts {
            apply_artifact_change(self.backend, &mut *tx, job_id, change).await?;
        }
        let finished = match &batch.ending {
            Some(ending) => self.end_status_in(&mut tx, job_id, owner, ending).await?,
            None => false,
        };
        // The batch's events, and the ending's last when the job ended:
        // numbered together (one statement takes the numbers, one inserts
        // them), after the writes above, which read none of them.
        let mut events: Vec<(&str, &serde_json::Value)> =
            batch.events.iter().map(|(at, event)| (at.as_str(), event)).collect();
        if let Some(ending) = batch.ending.as_ref().filter(|_| finished) {
            events.push((&ending.at, &ending.event));
        }
        Self::append_values_in(&mut tx, job_id, &events).await?;
        if batch.checkpoint.is_some() {
            hold_before_commit("step_end").await;
        }
        tx.commit().await.map_err(db("record progress"))?;
        Ok(ProgressWritten {
            checkpoint_kept: kept,
            finished,
        })
    }

    /// Append `events` (each its time and JSON) inside `tx`, numbered
    /// together: one statement takes their numbers, a few insert them.
    pub(super) async fn append_values_in(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        events: &[(&str, &serde_json::Value)],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        // Numbering through the job row serialises appenders on the row
        // lock, on SQLite and PostgreSQL alike.
        let row = sqlx::query("UPDATE jobs SET event_seq = event_seq + $1 WHERE id = $2 RETURNING event_seq")
            .bind(count)
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("number events"))?
            .ok_or_else(|| StoreError::UnknownJob(job_id.to_owned()))?;
        let last: i64 = row.try_get(0).map_err(db("number events"))?;
        let mut seq = last - count + 1;
        // Five parameters a row; well under both databases' limits.
        for chunk in events.chunks(200) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = i * 5;
                    format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5)
                })
                .collect();
            let sql = format!(
                "INSERT INTO job_events (job_id, seq, at, name, payload) VALUES {}",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (at, event) in chunk {
                query = query
                    .bind(job_id)
                    .bind(seq)
                    .bind(*at)
                    .bind(event["event"].as_str().unwrap_or_default().to_owned())
                    .bind(event["payload"].to_string());
                seq += 1;
            }
            query.execute(&mut **tx).await.map_err(db("append events"))?;
        }
        Ok(())
    }

    /// Events of a job after `after`, oldest first, at most `limit`.
    pub async fn events_after(&self, job_id: &str, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, job_id, at, name, payload FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read events"))?;
        rows.iter().map(decode_event).collect()
    }

    /// The job's control events, oldest first.
    pub async fn control_events(&self, job_id: &str) -> Result<Vec<ControlEventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job_id, action, step_id, reason, requested_by, created_at FROM control_events \
             WHERE job_id = $1 ORDER BY id",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read control events"))?;
        rows.iter()
            .map(|r| {
                Ok(ControlEventRow {
                    id: r.try_get("id")?,
                    job_id: r.try_get("job_id")?,
                    action: r.try_get("action")?,
                    step_id: r.try_get("step_id")?,
                    reason: r.try_get("reason")?,
                    requested_by: r.try_get("requested_by")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read control events"))
    }

    /// Record (or replace) one step attempt.
    pub async fn record_attempt(&self, job_id: &str, attempt: &AttemptRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("record attempt"))?;
        Self::record_attempt_in(&mut tx, job_id, attempt).await?;
        tx.commit().await.map_err(db("record attempt"))
    }

    async fn record_attempt_in(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        attempt: &AttemptRow,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO step_attempts (job_id, step_index, attempt, step_id, outcome, failure_class, strategy, \
             wall_clock_seconds, worker, finished_at, fuel_consumed, http, retry_context) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (job_id, step_index, attempt) DO UPDATE SET outcome = excluded.outcome, \
             failure_class = excluded.failure_class, strategy = excluded.strategy, \
             wall_clock_seconds = excluded.wall_clock_seconds, worker = excluded.worker, finished_at = excluded.finished_at, \
             fuel_consumed = excluded.fuel_consumed, http = excluded.http, retry_context = excluded.retry_context",
        )
        .bind(job_id)
        .bind(i64::from(attempt.step_index))
        .bind(i64::from(attempt.attempt))
        .bind(&attempt.step_id)
        .bind(&attempt.outcome)
        .bind(attempt.failure_class.as_deref())
        .bind(attempt.strategy.as_deref())
        .bind(attempt.wall_clock_seconds)
        .bind(&attempt.worker)
        .bind(&attempt.finished_at)
        .bind(attempt.fuel_consumed)
        .bind((!attempt.http.is_empty()).then(|| serde_json::to_string(&attempt.http).unwrap_or_default()))
        .bind(attempt.retry_context.as_ref().map(ToString::to_string))
        .execute(&mut **tx)
        .await
        .map_err(db("record attempt"))?;
        Ok(())
    }

    /// Every recorded attempt of a job, by step then attempt.
    pub async fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT step_index, attempt, step_id, outcome, failure_class, strategy, wall_clock_seconds, worker, \
             finished_at, fuel_consumed, http, retry_context FROM step_attempts WHERE job_id = $1 ORDER BY step_index, attempt",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read attempts"))?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    step_index: u32_col(r, "step_index")?,
                    attempt: u32_col(r, "attempt")?,
                    step_id: r.try_get("step_id")?,
                    outcome: r.try_get("outcome")?,
                    failure_class: r.try_get("failure_class")?,
                    strategy: r.try_get("strategy")?,
                    wall_clock_seconds: r.try_get("wall_clock_seconds")?,
                    worker: r.try_get("worker")?,
                    finished_at: r.try_get("finished_at")?,
                    fuel_consumed: r.try_get("fuel_consumed")?,
                    http: r
                        .try_get::<Option<String>, _>("http")?
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or_default(),
                    retry_context: r
                        .try_get::<Option<String>, _>("retry_context")?
                        .and_then(|text| serde_json::from_str(&text).ok()),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read attempts"))
    }

    /// Store step `step_index`'s checkpoint (replacing one left by an
    /// earlier run of the same step) — only while `owner` holds the job's
    /// lease, so a worker that lost its job cannot splice its patch into
    /// another worker's chain. False when it does not hold it.
    pub async fn put_checkpoint(
        &self,
        job_id: &str,
        owner: &str,
        checkpoint: &CheckpointRow,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("store checkpoint"))?;
        let kept = Self::put_checkpoint_in(&mut tx, job_id, owner, checkpoint).await?;
        tx.commit().await.map_err(db("store checkpoint"))?;
        Ok(kept)
    }

    async fn put_checkpoint_in(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        owner: &str,
        checkpoint: &CheckpointRow,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO step_checkpoints (job_id, step_index, step_id, patch, state, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
               (SELECT 1 FROM jobs WHERE id = $1 AND lease_owner = $7 AND status = 'running') \
             ON CONFLICT (job_id, step_index) DO UPDATE SET \
             step_id = excluded.step_id, patch = excluded.patch, state = excluded.state, created_at = excluded.created_at",
        )
        .bind(job_id)
        .bind(i64::from(checkpoint.step_index))
        .bind(&checkpoint.step_id)
        .bind(checkpoint.patch.clone())
        .bind(&checkpoint.state)
        .bind(now_ms())
        .bind(owner)
        .execute(&mut **tx)
        .await
        .map_err(db("store checkpoint"))?;
        Ok(done.rows_affected() == 1)
    }

    /// A job's checkpoints, by step.
    pub async fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT step_index, step_id, patch, state FROM step_checkpoints WHERE job_id = $1 ORDER BY step_index",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read checkpoints"))?;
        rows.iter()
            .map(|r| {
                Ok(CheckpointRow {
                    step_index: u32_col(r, "step_index")?,
                    step_id: r.try_get("step_id")?,
                    patch: r.try_get("patch")?,
                    state: r.try_get("state")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("read checkpoints"))
    }

    /// The index of the first step without a checkpoint (the step a run
    /// continues at).
    pub async fn first_unfinished_step(&self, job_id: &str) -> Result<u32, StoreError> {
        let ids = [job_id.to_owned()];
        Ok(self.first_unfinished_steps(&ids).await?.remove(job_id).unwrap_or(0))
    }

    /// [`Store::first_unfinished_step`] of several jobs in one query (a
    /// job list must not cost a query per job).
    pub async fn first_unfinished_steps(&self, job_ids: &[String]) -> Result<HashMap<String, u32>, StoreError> {
        let mut first: HashMap<String, u32> = job_ids.iter().map(|id| (id.clone(), 0)).collect();
        if job_ids.is_empty() {
            return Ok(first);
        }
        let placeholders: Vec<String> = (1..=job_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT job_id, step_index FROM step_checkpoints WHERE job_id IN ({}) ORDER BY job_id, step_index",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in job_ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db("read checkpoints"))?;
        for r in &rows {
            let job_id: String = r.try_get("job_id").map_err(db("read checkpoints"))?;
            let index = u32_col(r, "step_index").map_err(db("read checkpoints"))?;
            // Rows come in step order: the prefix grows while it is contiguous.
            if let Some(next) = first.get_mut(&job_id) {
                if index == *next {
                    *next += 1;
                }
            }
        }
        Ok(first)
    }

    /// Forget the checkpoints of steps `from` on (the job goes back there).
    pub async fn delete_checkpoints_from(&self, job_id: &str, from: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM step_checkpoints WHERE job_id = $1 AND step_index >= $2")
            .bind(job_id)
            .bind(i64::from(from))
            .execute(&self.pool)
            .await
            .map_err(db("delete checkpoints"))?;
        Ok(())
    }
}
