//! The job lifecycle's host for a job this worker claimed: endings are
//! settled with the store under this worker's lease (an operator's request
//! that arrived meanwhile interrupts the ending, so an accepted action is
//! never dropped), a queue retry is a requeue in the store, and the store's
//! checkpoints are where a run that another worker started picks up.

use std::sync::Arc;
use std::time::Duration;

use stepd_job::control::RecoveryRequest;
use stepd_records::artifacts::{JobArtifacts, StepState};
use stepd_records::events::{Event, EventRecord, EventSink};
use stepd_records::redact::Redactor;
use stepd_runtime::CancellationToken;
use stepd_selfheal::{
    blocking, Checkpoint, Ending, Interruption, JobHost, JobStart, JobStatus, LifecycleError, Requeued, RunHooks,
    Settled,
};
use stepd_store::{ClaimedBy, JobEnding, JobRecord, JobState, RunContext, Store};

use crate::live::{JobLink, ServiceHooks};
use crate::on_store;
use crate::recorder::EventRecorder;

/// A claimed job's host.
pub struct ServiceHost {
    store: Store,
    by: ClaimedBy,
    job_id: String,
    job_attempt: u32,
    /// The step an operator asked the job to resume from before it was
    /// claimed; cleared once the workspace is rebuilt there.
    resume_step: Option<u32>,
    /// A recovery an operator asked for before this worker claimed the
    /// job (`liveControl.recovery` of a queued or re-opened job, or of a
    /// job whose worker died before acting on it). The claim's own
    /// rebuild carries it out, so it is acknowledged after that rebuild
    /// rather than acted on a second time.
    claimed_recovery: Option<(RecoveryRequest, Option<u32>)>,
    link: Arc<JobLink>,
    recorder: EventRecorder,
    /// Scrubs the job's ending message before the store keeps it.
    redactor: Arc<Redactor>,
    /// The pinned baseline commit and the hard resets spent, read with the
    /// resolved job.
    context: RunContext,
    /// No attempt of the job ever started (its first job attempt, no
    /// running step noted): there are no checkpoints or attempts to read.
    untouched: bool,
}

fn store_error(e: stepd_store::StoreError) -> LifecycleError {
    LifecycleError::host(e)
}

impl ServiceHost {
    /// The host of `job`, claimed by `by`, with its run context.
    pub fn new(
        store: Store,
        by: ClaimedBy,
        job: &JobRecord,
        context: RunContext,
        link: Arc<JobLink>,
        recorder: EventRecorder,
        redactor: Arc<Redactor>,
    ) -> Self {
        // Taken from the link now, so neither the first pass nor a
        // heartbeat that still reads it in the store acts on it again.
        let claimed_recovery = link.take_pending().map(|request| {
            let index = job.step_ids().iter().position(|s| *s == request.step_id);
            (request, index.and_then(|i| u32::try_from(i).ok()))
        });
        ServiceHost {
            untouched: job.attempt == 1 && job.current_step_id.is_none(),
            context,
            claimed_recovery,
            redactor,
            store,
            by,
            job_id: job.id.clone(),
            job_attempt: job.attempt,
            resume_step: job.resume_step,
            link,
            recorder,
        }
    }

    fn owner(&self) -> &str {
        &self.by.owner
    }
}

impl JobHost for ServiceHost {
    /// The store's checkpoints are the one source of truth: the run keeps
    /// them (the unbroken run from step 0) and replays them, hash-checked;
    /// this host's artifacts get a copy for operators, never read back. It
    /// goes on at the first unfinished step (or before it, when an operator
    /// asked to resume earlier).
    async fn restore(&mut self, artifacts: &JobArtifacts) -> Result<JobStart, LifecycleError> {
        let rows = if self.untouched {
            Vec::new()
        } else {
            on_store(self.store.checkpoints(&self.job_id))
                .await
                .map_err(store_error)?
        };
        let any_stored = !rows.is_empty();
        let mut checkpoints = Vec::new();
        for (row, step_index) in rows.into_iter().zip(0u32..) {
            if row.step_index != step_index {
                break;
            }
            let state: StepState = serde_json::from_str(&row.state).map_err(LifecycleError::host)?;
            blocking(|| artifacts.write_step_checkpoint(&row.patch, &state))?;
            checkpoints.push(Checkpoint {
                patch: row.patch,
                state,
            });
        }
        let prefix = u32::try_from(checkpoints.len()).unwrap_or(u32::MAX);
        let attempts = if self.untouched {
            Vec::new()
        } else {
            on_store(self.store.attempts(&self.job_id)).await.map_err(store_error)?
        };
        let last_attempts = attempts.iter().map(|row| (row.step_index, row.attempt)).collect();
        // Each step's last recorded attempt (rows come by step, then
        // attempt): when it failed with a successor to tell, tell it.
        let mut last_rows = std::collections::BTreeMap::new();
        for row in &attempts {
            last_rows.insert(row.step_index, row);
        }
        let retry_contexts = last_rows
            .into_iter()
            .filter_map(|(step, row)| row.retry_context.clone().map(|context| (step, context)))
            .collect();
        // A recovery asked before the claim names where to start: a
        // resume its step; a retry or a hard reset of the step that was
        // running is this claim's rebuild at that step (the store's
        // checkpoints end there).
        if let Some((_, Some(index))) = &self.claimed_recovery {
            self.resume_step = Some(self.resume_step.map_or(*index, |k| k.min(*index)));
        }
        let step = self.resume_step.map_or(prefix, |k| k.min(prefix));
        // Every hard reset self-heal spent is an event in the store.
        let resets_used = self.context.resets_used;
        let baseline_commit = self.context.baseline_commit.clone();
        Ok(JobStart {
            baseline_commit,
            resets_used,
            retry_contexts,
            acknowledge: self.claimed_recovery.take().map(|(request, _)| request),
            step,
            rebuild: step > 0 || self.resume_step.is_some() || any_stored,
            job_attempt: self.job_attempt,
            last_attempts,
            checkpoints: Some(checkpoints),
        })
    }

    fn hooks(&self, events: &EventSink) -> Option<Arc<dyn RunHooks>> {
        Some(Arc::new(ServiceHooks {
            link: self.link.clone(),
            events: events.clone(),
            recorder: self.recorder.clone(),
        }))
    }

    fn new_pass(&mut self) -> CancellationToken {
        self.link.new_pass()
    }

    async fn interruption(&mut self) -> Option<Interruption> {
        let interruption = if self.link.lease_lost() {
            Some(Interruption::Lost)
        } else if self.link.cancel_requested() {
            Some(Interruption::Cancel {
                reason: "cancel requested by an operator".into(),
            })
        } else if self.link.stopping() {
            Some(Interruption::HandBack)
        } else {
            self.link.take_pending().map(Interruption::Recover)
        };
        // What an interruption writes comes after every record so far. A
        // pass that simply ended needs no flush: its ending goes through
        // the recorder, behind them.
        if interruption.is_some() {
            self.recorder.flush().await;
        }
        interruption
    }

    /// Settle with the store first — a recovery request or a cancel that
    /// arrived while the pass ended interrupts the ending — then write the
    /// last event and the status together, only if nothing changed the job
    /// meanwhile.
    async fn settle(
        &mut self,
        events: &EventSink,
        ending: Ending,
        interruptible: bool,
    ) -> Result<Settled, LifecycleError> {
        let state = match ending.status {
            JobStatus::Succeeded => JobState::Succeeded,
            JobStatus::Failed => JobState::Failed,
            JobStatus::DeadLetter => JobState::DeadLetter,
            JobStatus::Cancelled => JobState::Cancelled,
        };
        let error = ending.error.as_deref().map(|e| self.redactor.redact(e));
        // Recorded in the artifacts once, on the first try.
        let mut record: Option<EventRecord> = None;
        loop {
            // A read, not a renewal: the ending below is written only if
            // this worker still holds the job and nothing changed it.
            let now = on_store(self.store.get_job(&self.job_id))
                .await
                .map_err(store_error)?
                .filter(|job| job.status == JobState::Running && job.lease_owner.as_deref() == Some(self.owner()));
            let Some(now) = now else {
                return Ok(Settled::Left(None));
            };
            self.link.observe(&now);
            // A cancel beats everything: a recovery that was pending when
            // it came (the store dropped it) must not send the job back to
            // work, or the cancelled pass would end the same way for ever.
            let cancelling = state == JobState::Cancelled;
            let recovery_waiting = self.link.has_pending() && !cancelling;
            let cancel_waiting = self.link.cancel_requested() && !cancelling;
            if interruptible && (recovery_waiting || cancel_waiting) {
                return Ok(Settled::Interrupted);
            }
            // The last event goes to the store with the status, in one
            // transaction (see `Store::finish`) with every record before
            // it, so the order holds.
            let ending_record = match record.take() {
                Some(recorded) => recorded,
                None => events.emit_unobserved(ending.event.clone())?,
            };
            let finished = self
                .recorder
                .finish(JobEnding::of(state, error.clone(), now.version, &ending_record))
                .await
                .map_err(LifecycleError::host)?;
            record = Some(ending_record);
            if finished {
                return Ok(Settled::Left(Some(ending.status)));
            }
        }
    }

    async fn requeue(
        &mut self,
        events: &EventSink,
        next_attempt: u32,
        delay: Duration,
    ) -> Result<Requeued, LifecycleError> {
        self.recorder.flush().await;
        let now = on_store(self.store.requeue(&self.job_id, self.owner(), next_attempt, delay))
            .await
            .map_err(store_error)?;
        if now == Some(JobState::Cancelled) {
            // A cancel arrived while the job was being requeued.
            events.emit(Event::JobCancelled {
                reason: "cancel requested by an operator".into(),
            })?;
            self.recorder.flush().await;
            return Ok(Requeued::Left(Some(JobStatus::Cancelled)));
        }
        Ok(Requeued::Left(None))
    }

    /// Torn down with no cancel or recovery behind it (the worker is
    /// stopping, or the pass ended early): hand the job back rather than
    /// lose it.
    async fn hand_back(&mut self, _events: &EventSink) -> Result<Option<JobStatus>, LifecycleError> {
        self.recorder.flush().await;
        on_store(self.store.release(&self.job_id, self.owner()))
            .await
            .map_err(store_error)?;
        Ok(None)
    }

    async fn forget_checkpoints_from(&mut self, k: u32) -> Result<(), LifecycleError> {
        // A held checkpoint written after the delete would come back.
        self.recorder.flush().await;
        self.store
            .delete_checkpoints_from(&self.job_id, k)
            .await
            .map_err(store_error)?;
        if self.resume_step.take().is_some() {
            self.store
                .clear_resume_step(&self.job_id, self.owner())
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn pin_baseline(&mut self, commit: &str) -> Result<(), LifecycleError> {
        self.store
            .pin_baseline_commit(&self.job_id, self.owner(), commit)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn acknowledge(&mut self, events: &EventSink, request: &RecoveryRequest) -> Result<(), LifecycleError> {
        let cleared = request.clone();
        self.store
            .update_live_control(&self.job_id, self.owner(), move |live| {
                if live.recovery.as_ref() == Some(&cleared) {
                    live.recovery = None;
                }
            })
            .await
            .map_err(store_error)?;
        events.emit(Event::RecoveryAck {
            action: request.action.as_str().to_owned(),
            step_id: Some(request.step_id.clone()),
        })?;
        Ok(())
    }
}
