//! Operator control as the store writes it: an action's new job state, its
//! control-event row and its events in one transaction, guarded by the
//! job's version; and the live control a worker reads at its heartbeat.

use stepd_job::control::{ControlAction, LiveControl};
use stepd_records::events::Event;

use super::{db, JobRecord, JobState, Store, StoreError};

/// An operator action as the store writes it: the rules that decided it
/// live with the API; the store only makes it durable.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlWrite {
    /// The action.
    pub action: ControlAction,
    /// The step it names, when it names one.
    pub step_id: Option<String>,
    /// The job with the action applied (status, attempt, cancel flag,
    /// resume step, `liveControl`, finish time, last error).
    pub job: JobRecord,
    /// The job had ended and runs again (due at once).
    pub reopened: bool,
}

impl Store {
    /// Write an operator's action: the job's new control state (if nobody
    /// changed the job since the caller read it), one control-event row, a
    /// `task.control` event and `extra` events — all or nothing.
    /// `Contended` when the job changed meanwhile (decide again).
    pub async fn apply_control(
        &self,
        plan: &ControlWrite,
        expected_version: i64,
        requested_by: &str,
        reason: Option<&str>,
        extra: &[Event],
    ) -> Result<JobRecord, StoreError> {
        let job = &plan.job;
        let now = self.clock().await?;
        let live = serde_json::to_string(&job.live_control).unwrap_or_default();
        let mut tx = self.durable.begin().await.map_err(db("apply control"))?;
        let done = sqlx::query(
            "UPDATE jobs SET status = $1, attempt = $2, cancel_requested = $3, resume_step = $4, live_control = $5, \
             held = $6, finished_at = $7, last_error = $8, updated_at = $9, version = version + 1, \
             next_attempt_at = CASE WHEN $10 = 1 THEN $9 ELSE next_attempt_at END, \
             published_at = CASE WHEN $10 = 1 THEN NULL ELSE published_at END \
             WHERE id = $11 AND version = $12",
        )
        .bind(job.status.as_str())
        .bind(i64::from(job.attempt))
        .bind(i64::from(job.cancel_requested))
        .bind(job.resume_step.map(i64::from))
        .bind(live)
        .bind(i64::from(job.live_control.holds()))
        .bind(if job.status.is_terminal() {
            Some(job.finished_at.unwrap_or(now))
        } else {
            None
        })
        .bind(job.last_error.as_deref())
        .bind(now)
        .bind(i64::from(plan.reopened))
        .bind(&job.id)
        .bind(expected_version)
        .execute(&mut *tx)
        .await
        .map_err(db("apply control"))?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Contended(job.id.clone()));
        }
        sqlx::query(
            "INSERT INTO control_events (job_id, action, step_id, reason, requested_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&job.id)
        .bind(plan.action.as_str())
        .bind(plan.step_id.as_deref())
        .bind(reason)
        .bind(requested_by)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("record control event"))?;
        let control = Event::Control {
            action: plan.action.as_str().to_owned(),
            step_id: plan.step_id.clone(),
            reason: reason.map(str::to_owned),
        };
        Self::append_event_in(&mut tx, &job.id, &control).await?;
        for event in extra {
            Self::append_event_in(&mut tx, &job.id, event).await?;
        }
        tx.commit().await.map_err(db("apply control"))?;
        self.get_job(&job.id)
            .await?
            .ok_or_else(|| StoreError::UnknownJob(job.id.clone()))
    }

    /// Change the `liveControl` of a job `owner` holds with `change`
    /// (the worker clearing a recovery it acted on), retrying when an
    /// operator wrote meanwhile. Returns the control as written, or `None`
    /// when `owner` lost the job.
    pub async fn update_live_control(
        &self,
        id: &str,
        owner: &str,
        change: impl Fn(&mut LiveControl),
    ) -> Result<Option<LiveControl>, StoreError> {
        for _ in 0..20 {
            let Some(job) = self.get_job(id).await? else {
                return Err(StoreError::UnknownJob(id.to_owned()));
            };
            if job.lease_owner.as_deref() != Some(owner) || job.status != JobState::Running {
                return Ok(None);
            }
            let mut live = job.live_control.clone();
            change(&mut live);
            let done = sqlx::query(
                "UPDATE jobs SET live_control = $1, held = $2, version = version + 1, updated_at = $3 \
                 WHERE id = $4 AND version = $5 AND lease_owner = $6",
            )
            .bind(serde_json::to_string(&live).unwrap_or_default())
            .bind(i64::from(live.holds()))
            .bind(self.clock().await?)
            .bind(id)
            .bind(job.version)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db("update live control"))?;
            if done.rows_affected() == 1 {
                return Ok(Some(live));
            }
        }
        Err(StoreError::Contended(id.to_owned()))
    }
}
