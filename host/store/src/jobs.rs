//! Job rows: submit, read, claim with a lease, heartbeat, finish, requeue,
//! sweep expired leases and unannounced jobs. Operator control is in
//! `control.rs`.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{db, duration_ms, opt_u32, u32_col, JobRecord, JobState, Store, StoreError};

/// The store's part of a metrics scrape ([`Store::gauges`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreGauges {
    /// Jobs by status.
    pub by_status: Vec<(String, i64)>,
    /// Queued jobs that are due (not held, not waiting out a backoff).
    pub due: i64,
    /// Seconds since the least recently renewed lease was renewed.
    pub oldest_lease_age: f64,
}
use stepd_job::control::LiveControl;
use stepd_records::events::{Event, EventRecord};

const JOB_COLUMNS: &str = "id, status, attempt, max_attempts, next_attempt_at, published_at, lease_owner, \
    lease_expires_at, payload, live_control, cancel_requested, resume_step, current_step_id, \
    current_step_index, workspace_path, last_error, version, created_at, updated_at, finished_at";

/// When a job was submitted and ended ([`Store::job_timings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTiming {
    /// Where it stands.
    pub status: JobState,
    /// Submitted (Unix ms).
    pub created_at: i64,
    /// Ended (Unix ms).
    pub finished_at: Option<i64>,
}

/// What a worker reads of a job before running it ([`Store::run_context`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunContext {
    /// The job as resolved at submit (`None` for a job stored without one).
    pub resolved: Option<serde_json::Value>,
    /// The commit its remote baseline was pinned at, if it was.
    pub baseline_commit: Option<String>,
    /// Hard resets self-heal spent on it so far.
    pub resets_used: u32,
}

/// A job's end as its worker writes it: the status, the error kept on
/// the job, the version the worker read (an operator's change since then
/// refuses the end), and the last event (its time and JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnding {
    /// A terminal state.
    pub status: JobState,
    /// Why it failed, when it did (redacted).
    pub error: Option<String>,
    /// The job's version when the worker decided.
    pub version: i64,
    /// The last event's time (RFC 3339).
    pub at: String,
    /// The last event, as JSON.
    pub event: serde_json::Value,
}

impl JobEnding {
    /// An ending with `status` whose last event is `record`.
    pub fn of(status: JobState, error: Option<String>, version: i64, record: &EventRecord) -> Self {
        JobEnding {
            status,
            error,
            version,
            at: record.at.clone(),
            event: serde_json::to_value(record).unwrap_or_default(),
        }
    }
}

/// A job to submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id.
    pub id: String,
    /// The payload as submitted (defaults filled in).
    pub payload: serde_json::Value,
    /// The job as resolved at submit — absolute paths, plugin hashes — which
    /// is what a worker runs.
    pub resolved: Option<serde_json::Value>,
    /// Its attempt budget.
    pub max_attempts: u32,
}

/// Who claims: a worker's id and how long its lease lasts.
#[derive(Debug, Clone)]
pub struct ClaimedBy {
    /// The worker's id (`host:pid:n`).
    pub owner: String,
    /// How long a claim or heartbeat holds.
    pub lease: Duration,
}

fn decode_job(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get("id").map_err(db("decode job"))?;
    let malformed = |column: &'static str, message: String| StoreError::Malformed {
        job_id: id.clone(),
        column,
        message,
    };
    let status: String = row.try_get("status").map_err(db("decode job"))?;
    let status = JobState::parse(&status).ok_or_else(|| malformed("status", status.clone()))?;
    let payload: String = row.try_get("payload").map_err(db("decode job"))?;
    let payload = serde_json::from_str(&payload).map_err(|e| malformed("payload", e.to_string()))?;
    let live: String = row.try_get("live_control").map_err(db("decode job"))?;
    let live_control: LiveControl =
        serde_json::from_str(&live).map_err(|e| malformed("live_control", e.to_string()))?;
    let get = |r: &AnyRow| -> Result<JobRecord, sqlx::Error> {
        Ok(JobRecord {
            id: id.clone(),
            status,
            attempt: u32_col(r, "attempt")?,
            max_attempts: u32_col(r, "max_attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            published_at: r.try_get("published_at")?,
            lease_owner: r.try_get("lease_owner")?,
            lease_expires_at: r.try_get("lease_expires_at")?,
            payload,
            live_control,
            cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
            resume_step: opt_u32(r, "resume_step")?,
            current_step_id: r.try_get("current_step_id")?,
            current_step_index: opt_u32(r, "current_step_index")?,
            workspace_path: r.try_get("workspace_path")?,
            last_error: r.try_get("last_error")?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    };
    get(row).map_err(db("decode job"))
}

impl Store {
    /// What a worker needs of job `id` before its run starts, in one
    /// query: the resolved job, the pinned baseline commit, and how many
    /// `escalated` events (hard resets self-heal spent) it recorded.
    pub async fn run_context(&self, id: &str, escalated: &str) -> Result<RunContext, StoreError> {
        let row = sqlx::query(
            "SELECT resolved, baseline_commit, \
             (SELECT COUNT(*) FROM job_events WHERE job_id = $1 AND name = $2) AS resets \
             FROM jobs WHERE id = $1",
        )
        .bind(id)
        .bind(escalated)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read the run context"))?
        .ok_or_else(|| StoreError::UnknownJob(id.to_owned()))?;
        let get = |r: &AnyRow| -> Result<(Option<String>, Option<String>, i64), sqlx::Error> {
            Ok((
                r.try_get("resolved")?,
                r.try_get("baseline_commit")?,
                r.try_get("resets")?,
            ))
        };
        let (resolved, baseline_commit, resets) = get(&row).map_err(db("read the run context"))?;
        let resolved = resolved
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| StoreError::Malformed {
                    job_id: id.to_owned(),
                    column: "resolved",
                    message: e.to_string(),
                })
            })
            .transpose()?;
        Ok(RunContext {
            resolved,
            baseline_commit,
            resets_used: u32::try_from(resets).unwrap_or(u32::MAX),
        })
    }

    /// Add a queued job, claimable at once. No event: a job's log starts
    /// with the first `task.job.started` a worker records.
    pub async fn insert_job(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        self.insert(job, false).await
    }

    /// [`Store::insert_job`] for a dispatcher whose announcement cannot
    /// fail (the embedded one): the job is marked announced as it is
    /// inserted, saving [`Store::mark_announced`]'s write.
    pub async fn insert_announced_job(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        self.insert(job, true).await
    }

    /// Answered only once its commit is: in a group with the other submits
    /// waiting (SQLite, host/store/src/submits.rs), or alone.
    async fn insert(&self, job: &NewJob, announced: bool) -> Result<JobRecord, StoreError> {
        if let Some(groups) = &self.submits {
            if let Some(answer) = groups.submit(job.clone(), announced).await {
                return answer;
            }
        }
        self.insert_alone(job, announced).await
    }

    /// One submit in its own explicit transaction, answered after the
    /// commit: on PostgreSQL, sqlx's Any driver hands back the row of an
    /// `INSERT … RETURNING` before the statement's implicit commit, and a
    /// connection cut between the two answered a `201` for a job that never
    /// existed (`tests/tests/store_outage.rs` caught it once).
    pub(super) async fn insert_alone(&self, job: &NewJob, announced: bool) -> Result<JobRecord, StoreError> {
        let _turn = self.write_turn().await;
        let mut tx = self.durable.begin().await.map_err(db("insert job"))?;
        let record = self
            .insert_in(&mut tx, job, announced)
            .await?
            .ok_or_else(|| StoreError::DuplicateJob(job.id.clone()))?;
        tx.commit().await.map_err(db("insert job"))?;
        Ok(record)
    }

    /// Insert `job` inside `tx`; `None` when its id is taken (which leaves
    /// the transaction usable for the others of a group).
    pub(super) async fn insert_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        job: &NewJob,
        announced: bool,
    ) -> Result<Option<JobRecord>, StoreError> {
        let live = serde_json::to_string(&LiveControl::default()).unwrap_or_default();
        let published_at = if announced { "{now}" } else { "NULL" };
        let rows = sqlx::query(&self.with_now(&format!(
            "INSERT INTO jobs (id, status, attempt, max_attempts, next_attempt_at, payload, resolved, live_control, \
             created_at, updated_at, published_at) \
             VALUES ($1, 'queued', 1, $2, {{now}}, $3, $4, $5, {{now}}, {{now}}, {published_at}) \
             ON CONFLICT (id) DO NOTHING RETURNING {JOB_COLUMNS}",
        )))
        .bind(&job.id)
        .bind(i64::from(job.max_attempts))
        .bind(job.payload.to_string())
        .bind(job.resolved.as_ref().map(serde_json::Value::to_string))
        .bind(live)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("insert job"))?;
        rows.first().map(decode_job).transpose()
    }

    /// One job, or `None`.
    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get job"))?;
        row.as_ref().map(decode_job).transpose()
    }

    /// A job's status and when it last changed (Unix ms), without reading
    /// its payload: what an event stream polls to know when it is done.
    pub async fn job_status(&self, id: &str) -> Result<Option<(JobState, i64)>, StoreError> {
        let row = sqlx::query("SELECT status, updated_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("job status"))?;
        let Some(row) = row else { return Ok(None) };
        let (status, updated_at): (String, i64) = (
            row.try_get("status").map_err(db("job status"))?,
            row.try_get("updated_at").map_err(db("job status"))?,
        );
        let status = JobState::parse(&status).ok_or_else(|| StoreError::Malformed {
            job_id: id.to_owned(),
            column: "status",
            message: format!("unknown status {status:?}"),
        })?;
        Ok(Some((status, updated_at)))
    }

    /// The newest jobs first, optionally of one status.
    pub async fn list_jobs(&self, status: Option<JobState>, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let by_status =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = $1 ORDER BY created_at DESC, id LIMIT $2");
        let all = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT $1");
        let rows = match status {
            Some(status) => sqlx::query(&by_status).bind(status.as_str()).bind(i64::from(limit)),
            None => sqlx::query(&all).bind(i64::from(limit)),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(db("list jobs"))?;
        rows.iter().map(decode_job).collect()
    }

    /// What a metrics scrape shows of the store: jobs by status, queued
    /// jobs that are due, and seconds since the least recently renewed
    /// lease of a running job was renewed (0 with none running), for
    /// leases of length `lease`.
    pub async fn gauges(&self, lease: Duration) -> Result<StoreGauges, StoreError> {
        let now = self.clock().await?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(db("count jobs"))?;
        let by_status = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("status")?, r.try_get::<i64, _>("n")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db("count jobs"))?;
        let due: i64 =
            sqlx::query("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND held = 0 AND next_attempt_at <= $1")
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db("count due jobs"))?;
        let soonest: Option<i64> = sqlx::query("SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running'")
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("oldest lease"))?;
        let oldest_lease_age = soonest.map_or(0.0, |expires| {
            let renewed = expires - duration_ms(lease);
            (now - renewed).max(0) as f64 / 1e3
        });
        Ok(StoreGauges {
            by_status,
            due,
            oldest_lease_age,
        })
    }

    /// Those of `ids` that ended at least `age` ago (by the database's
    /// clock): their work directories may go.
    pub async fn ended_before(&self, ids: &[String], age: Duration) -> Result<Vec<String>, StoreError> {
        let mut ended = Vec::new();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = self.with_now(&format!(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= {{now}} - $1 \
                 AND status NOT IN ('queued', 'running') AND id IN ({})",
                placeholders.join(", ")
            ));
            let mut query = sqlx::query(&sql).bind(duration_ms(age));
            for id in chunk {
                query = query.bind(id);
            }
            let rows = query.fetch_all(&self.pool).await.map_err(db("find ended jobs"))?;
            for row in &rows {
                ended.push(row.try_get::<String, _>("id").map_err(db("find ended jobs"))?);
            }
        }
        Ok(ended)
    }

    /// How many jobs the store holds, and how many of them have not ended
    /// (queued or running): what `stepd bench queue` polls while a burst
    /// runs, so that its waiting costs the machine it measures a count,
    /// not every row.
    pub async fn job_counts(&self) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE status IN ('queued', 'running')) AS open FROM jobs",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("count jobs"))?;
        let count = |name: &str| -> Result<u64, StoreError> {
            let n: i64 = row.try_get(name).map_err(db("count jobs"))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok((count("total")?, count("open")?))
    }

    /// Every job's status, submit time and end time (Unix ms), oldest
    /// first: what `stepd bench queue` measures a run by, with the store's
    /// own clock.
    pub async fn job_timings(&self) -> Result<Vec<JobTiming>, StoreError> {
        let rows = sqlx::query("SELECT status, created_at, finished_at FROM jobs ORDER BY created_at")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read job timings"))?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(db("read job timings"))?;
                Ok(JobTiming {
                    status: JobState::parse(&status).ok_or_else(|| StoreError::Malformed {
                        job_id: String::new(),
                        column: "status",
                        message: format!("unknown status {status:?}"),
                    })?,
                    created_at: r.try_get("created_at").map_err(db("read job timings"))?,
                    finished_at: r.try_get("finished_at").map_err(db("read job timings"))?,
                })
            })
            .collect()
    }

    /// Claim the oldest claimable job: queued, due, not held by a pause.
    /// Atomic: two workers never get the same job.
    pub async fn claim_next(&self, by: &ClaimedBy) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.claim_many(by, 1).await?.into_iter().next())
    }

    /// Claim up to `limit` of the oldest claimable jobs in one statement
    /// (a worker with several free slots fills them at once), oldest first.
    pub async fn claim_many(&self, by: &ClaimedBy, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let set = "status = 'running', lease_owner = $1, lease_expires_at = {now} + $2, updated_at = {now}, \
                   published_at = NULL, version = version + 1";
        let due = "SELECT id AS picked FROM jobs WHERE status = 'queued' AND next_attempt_at <= {now} AND held = 0 \
                   ORDER BY next_attempt_at, created_at LIMIT $3";
        let sql = match self.backend {
            // The rows picked are locked once, by the picking: racing
            // claimers skip them rather than wait and find them taken.
            super::Backend::Postgres => format!(
                "WITH due AS ({due} FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs SET {set} FROM due WHERE jobs.id = due.picked RETURNING {JOB_COLUMNS}"
            ),
            // SQLite has one writer at a time: nobody races the picking.
            // The unary `+` keeps the status test off the index: with it
            // there, SQLite walked every queued job by its status to test
            // `id IN (…)` (2.4 ms of the write lock at 1,000 queued)
            // rather than find the few picked by their id.
            super::Backend::Sqlite => {
                format!("UPDATE jobs SET {set} WHERE id IN ({due}) AND +status = 'queued' RETURNING {JOB_COLUMNS}")
            }
        };
        let _turn = self.write_turn().await;
        let rows = sqlx::query(&self.with_now(&sql))
            .bind(&by.owner)
            .bind(duration_ms(by.lease))
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(db("claim jobs"))?;
        let mut jobs = rows.iter().map(decode_job).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|job| (job.next_attempt_at, job.created_at));
        Ok(jobs)
    }

    /// Claim job `id` if it is claimable (a "job ready" message named it).
    /// `None` when it is not: already claimed, ended, held or not yet due —
    /// which makes duplicate messages harmless.
    pub async fn claim_job(&self, id: &str, by: &ClaimedBy) -> Result<Option<JobRecord>, StoreError> {
        let _turn = self.write_turn().await;
        let row = sqlx::query(&self.with_now(&format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = {{now}} + $2, updated_at = {{now}}, \
             published_at = NULL, version = version + 1 \
             WHERE id = $3 AND status = 'queued' AND next_attempt_at <= {{now}} AND held = 0 \
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(&by.owner)
        .bind(duration_ms(by.lease))
        .bind(id)
        // Every row, not the first: through sqlx's Any driver the first
        // row of an `UPDATE … RETURNING` on PostgreSQL is answered before
        // the statement's implicit commit, and reading to the end waits
        // for that commit (as `insert` waits for its own).
        .fetch_all(&self.pool)
        .await
        .map_err(db("claim job"))?;
        row.first().map(decode_job).transpose()
    }

    /// Renew `by`'s lease on job `id` and return the job (with its
    /// `liveControl`). `None` when `by` no longer holds it.
    pub async fn heartbeat(&self, id: &str, by: &ClaimedBy) -> Result<Option<JobRecord>, StoreError> {
        let _turn = self.write_turn().await;
        let row = sqlx::query(&self.with_now(&format!(
            "UPDATE jobs SET lease_expires_at = {{now}} + $1, updated_at = {{now}} \
             WHERE id = $2 AND lease_owner = $3 AND status = 'running' RETURNING {JOB_COLUMNS}"
        )))
        .bind(duration_ms(by.lease))
        .bind(id)
        .bind(&by.owner)
        // To the end: see `claim_job`.
        .fetch_all(&self.pool)
        .await
        .map_err(db("heartbeat"))?;
        row.first().map(decode_job).transpose()
    }

    /// End job `id` held by `owner` with `status` (a terminal state) and
    /// append its last event, `ending`, in the same transaction — if
    /// nothing changed the job since `version` (an operator's request that
    /// arrived meanwhile must be acted on, not dropped). False when `owner`
    /// lost the lease or the job changed; then neither is written.
    ///
    /// One transaction because a store that fails between the two would
    /// otherwise leave an ended job `running`: its lease expires, another
    /// worker finds every step checkpointed and ends it a second time.
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        status: JobState,
        error: Option<&str>,
        version: i64,
        ending: &EventRecord,
    ) -> Result<bool, StoreError> {
        let ending = JobEnding::of(status, error.map(str::to_owned), version, ending);
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await.map_err(db("finish job"))?;
        if !self.end_status_in(&mut tx, id, owner, &ending).await? {
            return Ok(false);
        }
        Self::append_value_in(&mut tx, id, &ending.at, &ending.event).await?;
        tx.commit().await.map_err(db("finish job"))?;
        Ok(true)
    }

    /// The status half of [`Store::finish`], inside `tx`: the job's row
    /// ended, its last event left to the caller (`record_progress` numbers
    /// it with the batch's others). False, and nothing written, when
    /// `owner` lost the lease or the job changed since `ending.version`.
    pub(super) async fn end_status_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        owner: &str,
        ending: &JobEnding,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.with_now(
            "UPDATE jobs SET status = $1, lease_owner = NULL, lease_expires_at = NULL, finished_at = {now}, \
             updated_at = {now}, last_error = $2, resume_step = NULL, version = version + 1 \
             WHERE id = $3 AND lease_owner = $4 AND status = 'running' AND version = $5",
        ))
        .bind(ending.status.as_str())
        .bind(ending.error.as_deref())
        .bind(id)
        .bind(owner)
        .bind(ending.version)
        .execute(&mut **tx)
        .await
        .map_err(db("finish job"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Put job `id` back in the queue for job attempt `attempt`, claimable
    /// after `delay` — or end it `cancelled` when a cancel arrived
    /// meanwhile. Returns the job's status now, `None` when `owner` lost
    /// the lease meanwhile.
    pub async fn requeue(
        &self,
        id: &str,
        owner: &str,
        attempt: u32,
        delay: Duration,
    ) -> Result<Option<JobState>, StoreError> {
        let _turn = self.write_turn().await;
        let row = sqlx::query(&self.with_now(
            "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, \
             finished_at = CASE WHEN cancel_requested = 1 THEN {now} ELSE NULL END, \
             attempt = $1, next_attempt_at = {now} + $2, lease_owner = NULL, \
             lease_expires_at = NULL, published_at = NULL, updated_at = {now}, version = version + 1 \
             WHERE id = $3 AND lease_owner = $4 AND status = 'running' RETURNING status",
        ))
        .bind(i64::from(attempt))
        .bind(duration_ms(delay))
        .bind(id)
        .bind(owner)
        // To the end: see `claim_job`.
        .fetch_all(&self.pool)
        .await
        .map_err(db("requeue job"))?;
        match row.first() {
            Some(row) => {
                let status: String = row.try_get("status").map_err(db("requeue job"))?;
                Ok(JobState::parse(&status))
            }
            None => Ok(None),
        }
    }

    /// Give up a claim without ending the job (shutdown): queued again at
    /// once, same attempt.
    pub async fn release(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(&self.with_now(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, published_at = NULL, \
             next_attempt_at = {now}, updated_at = {now}, version = version + 1 \
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        ))
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db("release job"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Pin job `id`'s remote baseline at `commit`, once: a later run of the
    /// job, on any worker, materialises that commit. Only under `owner`'s
    /// lease, and never over a pin already there. True when pinned now.
    pub async fn pin_baseline_commit(&self, id: &str, owner: &str, commit: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET baseline_commit = $1 \
             WHERE id = $2 AND lease_owner = $3 AND status = 'running' AND baseline_commit IS NULL",
        )
        .bind(commit)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db("pin baseline commit"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Forget a `resume_step` once the worker has rebuilt for it.
    pub async fn clear_resume_step(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        // Bumping the version makes a control write planned before this
        // one plan again, so it cannot put the old step back.
        sqlx::query("UPDATE jobs SET resume_step = NULL, version = version + 1 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db("clear resume step"))?;
        Ok(())
    }

    /// Requeue every job whose lease has expired: attempt + 1, due after
    /// `delay_after(attempt)` (the queue-retry backoff: a worker that died
    /// mid-attempt is treated as that attempt failing retryably, so a job
    /// that kills its workers cannot spin through them), or `dead_letter`
    /// when its attempts are used up, or `cancelled` when a cancel was
    /// asked. Each gets a `task.job.lease_expired` event. Returns the jobs
    /// queued again.
    pub async fn expire_leases(&self, delay_after: impl Fn(u32) -> Duration) -> Result<Vec<String>, StoreError> {
        let now = self.clock().await?;
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, cancel_requested, lease_owner FROM jobs \
             WHERE status = 'running' AND lease_expires_at < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db("find expired leases"))?;
        let mut requeued = Vec::new();
        for row in rows {
            let decode = |r: &AnyRow| -> Result<(String, u32, u32, bool, Option<String>), sqlx::Error> {
                Ok((
                    r.try_get("id")?,
                    u32_col(r, "attempt")?,
                    u32_col(r, "max_attempts")?,
                    r.try_get::<i64, _>("cancel_requested")? != 0,
                    r.try_get("lease_owner")?,
                ))
            };
            let (id, attempt, max_attempts, cancel, owner) = decode(&row).map_err(db("find expired leases"))?;
            let (status, next_attempt, delay) = if cancel {
                (JobState::Cancelled, attempt, Duration::ZERO)
            } else if attempt >= max_attempts {
                (JobState::DeadLetter, attempt, Duration::ZERO)
            } else {
                (JobState::Queued, attempt + 1, delay_after(attempt))
            };
            let finished = status.is_terminal().then_some(now);
            let mut tx = self.pool.begin().await.map_err(db("expire lease"))?;
            let done = sqlx::query(
                "UPDATE jobs SET status = $1, attempt = $2, lease_owner = NULL, lease_expires_at = NULL, \
                 next_attempt_at = $7, published_at = NULL, finished_at = $4, updated_at = $3, version = version + 1 \
                 WHERE id = $5 AND status = 'running' AND lease_expires_at < $3 AND lease_owner = $6",
            )
            .bind(status.as_str())
            .bind(i64::from(next_attempt))
            .bind(now)
            .bind(finished)
            .bind(&id)
            .bind(&owner)
            .bind(now + duration_ms(delay))
            .execute(&mut *tx)
            .await
            .map_err(db("expire lease"))?;
            if done.rows_affected() != 1 {
                // Another sweeper got there first, or the worker came back.
                continue;
            }
            let event = Event::LeaseExpired {
                lost_owner: owner.unwrap_or_default(),
                status: status.as_str().to_owned(),
                next_job_attempt: next_attempt,
                delay_seconds: delay.as_secs(),
            };
            Self::append_event_in(&mut tx, &id, &event).await?;
            tx.commit().await.map_err(db("expire lease"))?;
            if status == JobState::Queued {
                requeued.push(id);
            }
        }
        Ok(requeued)
    }

    /// Queued, due, unheld jobs that were never announced, or not for
    /// `stale` (a lost message, a broker restart): the sweep announces
    /// them again, marking each once its message went out.
    pub async fn take_unannounced(&self, stale: Duration, limit: u32) -> Result<Vec<String>, StoreError> {
        let now = self.clock().await?;
        let rows = sqlx::query(
            "SELECT id FROM jobs WHERE status = 'queued' AND held = 0 AND next_attempt_at <= $1 \
             AND (published_at IS NULL OR published_at < $2) ORDER BY next_attempt_at LIMIT $3",
        )
        .bind(now)
        .bind(now - duration_ms(stale))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("find unannounced jobs"))?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()
            .map_err(db("find unannounced jobs"))?;
        Ok(ids)
    }

    /// Record that a "job ready" message for `id` went out.
    pub async fn mark_announced(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(&self.with_now("UPDATE jobs SET published_at = {now} WHERE id = $1 AND status = 'queued'"))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("mark announced"))?;
        Ok(())
    }
}
