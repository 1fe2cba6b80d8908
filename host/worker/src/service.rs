//! The service worker: claims jobs from the store (told by the
//! dispatcher), holds each with a heartbeated lease, runs its steps through
//! `selfheal` with the operator's live control honoured between and during
//! attempts, keeps every checkpoint in the store, and ends the job — or
//! queues it again with backoff. A job another worker started continues at
//! its first unfinished step, rebuilt from the stored checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::live::{JobLink, ServiceHooks};
use super::recorder::EventRecorder;
use stepd_job::control::{ControlAction, RecoveryRequest};
use stepd_job::payload::JobPayload;
use stepd_queue::{Dispatcher, Hint};
use stepd_records::artifacts::{JobArtifacts, StepState};
use stepd_records::events::{Event, EventSink};
use stepd_records::metrics::Metrics;
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_selfheal::{JobRun, JobRunParts, JobStatus, PassOutcome};
use stepd_settings::Settings;
use stepd_store::{ClaimedBy, JobRecord, JobState, Store};
use stepd_workspace::Workspace;

/// Where a worker keeps files and how much it runs at once.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Artifacts go to `<artifact_root>/agent_jobs/<job_id>/`.
    pub artifact_root: PathBuf,
    /// Workspaces go to `<work_root>/<job_id>/`.
    pub work_root: PathBuf,
    /// Named plugins are looked up here.
    pub plugin_dir: PathBuf,
    /// Jobs run at once (and the RabbitMQ prefetch).
    pub concurrency: usize,
    /// This worker's id in leases (`host:pid:n`).
    pub name: String,
}

/// A worker: everything a claimed job needs. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    dispatcher: Dispatcher,
    runtime: Arc<Runtime>,
    settings: Arc<Settings>,
    options: Arc<WorkerOptions>,
    redactor: Arc<Redactor>,
}

/// A default worker name: host, process and a short random part.
pub fn worker_name(index: usize) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{index}:{}", std::process::id(), &tag[..6])
}

impl Worker {
    /// A worker on `store`, woken by `dispatcher`.
    pub fn new(
        store: Store,
        dispatcher: Dispatcher,
        runtime: Arc<Runtime>,
        settings: Arc<Settings>,
        options: WorkerOptions,
        redactor: Arc<Redactor>,
    ) -> Self {
        Worker {
            store,
            dispatcher,
            runtime,
            settings,
            options: Arc::new(options),
            redactor,
        }
    }

    fn claimed_by(&self) -> ClaimedBy {
        ClaimedBy {
            owner: self.options.name.clone(),
            lease: self.settings.service.lease,
        }
    }

    /// Claim and run jobs until `stop`; then hand running jobs back to the
    /// queue and return.
    pub async fn run(&self, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let running: Arc<std::sync::Mutex<HashMap<String, Arc<JobLink>>>> = Arc::default();
        let prefetch = u16::try_from(self.options.concurrency).unwrap_or(u16::MAX);
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                () = stop.cancelled() => break,
            };
            let job = tokio::select! {
                job = self.next_job(prefetch) => job,
                () = stop.cancelled() => break,
            };
            let Some(job) = job else { continue };
            let link = JobLink::new(&job);
            running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(job.id.clone(), link.clone());
            let worker = self.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let id = job.id.clone();
                worker.run_claimed(job, link).await;
                running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
                drop(permit);
            });
        }
        // Shutting down: stop every running job and wait until each was
        // handed back.
        for link in running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            link.stop();
        }
        let _ = slots
            .acquire_many(u32::try_from(self.options.concurrency.max(1)).unwrap_or(1))
            .await;
    }

    /// Claim one job: any claimable one (embedded), or the one a message
    /// names (RabbitMQ; the message is acked once the claim was tried).
    async fn next_job(&self, prefetch: u16) -> Option<JobRecord> {
        let by = self.claimed_by();
        if let Dispatcher::Embedded(_) = self.dispatcher {
            match self.store.claim_next(&by).await {
                Ok(Some(job)) => return Some(job),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "claiming failed"),
            }
        }
        match self.dispatcher.next(prefetch).await {
            Ok(Hint::Any) => match self.store.claim_next(&by).await {
                Ok(job) => job,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming failed");
                    None
                }
            },
            Ok(Hint::Job(delivery)) => {
                let claimed = self.store.claim_job(&delivery.job_id, &by).await;
                match claimed {
                    Ok(job) => {
                        delivery.ack().await;
                        job
                    }
                    // Handed back to the broker, which delivers it again.
                    Err(e) => {
                        tracing::warn!(job = %delivery.job_id, error = %e, "claiming failed");
                        delivery.nack().await;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for work failed");
                None
            }
        }
    }

    /// Run a claimed job with its heartbeat, then stop the heartbeat —
    /// also when the run panics (a guard cancels it), so a broken run's
    /// lease expires instead of being renewed for ever.
    pub async fn run_claimed(&self, job: JobRecord, link: Arc<JobLink>) {
        struct StopOnDrop(CancellationToken);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.cancel();
            }
        }
        let done = CancellationToken::new();
        let _guard = StopOnDrop(done.clone());
        let heartbeat = tokio::spawn(link.clone().heartbeat(
            self.store.clone(),
            job.id.clone(),
            self.claimed_by(),
            self.settings.service.heartbeat,
            Some(self.dispatcher.control_wake()),
            done.clone(),
        ));
        let id = job.id.clone();
        match self.drive(job, &link).await {
            Ok(status) => tracing::info!(job = %id, ?status, "job left this worker"),
            Err(e) => tracing::error!(job = %id, error = %e, "job stopped on a host error"),
        }
        done.cancel();
        let _ = heartbeat.await;
    }

    /// End the job: settle with the store first — a recovery request or a
    /// cancel that arrived while the pass ended interrupts the ending, so an
    /// accepted operator action is never dropped — then its last event,
    /// flushed, then its status, written only if nothing changed the job
    /// meanwhile.
    async fn end(
        &self,
        scope: &Scope<'_>,
        status: JobState,
        event: Event,
        error: Option<&str>,
    ) -> anyhow::Result<Ending> {
        let mut event = Some(event);
        loop {
            let Some(now) = self.store.heartbeat(scope.id, &self.claimed_by()).await? else {
                return Ok(Ending::Left(None));
            };
            scope.link.observe(&now);
            let cancel_waiting = scope.link.cancel_requested() && status != JobState::Cancelled;
            if scope.interruptible && (scope.link.has_pending() || cancel_waiting) {
                return Ok(Ending::Interrupted);
            }
            if let Some(event) = event.take() {
                scope.events.emit(event)?;
                scope.recorder.flush().await;
            }
            if self
                .store
                .finish(scope.id, &self.options.name, status, error, now.version)
                .await?
            {
                return Ok(Ending::Left(Some(match status {
                    JobState::Succeeded => JobStatus::Succeeded,
                    JobState::Cancelled => JobStatus::Cancelled,
                    JobState::DeadLetter => JobStatus::DeadLetter,
                    _ => JobStatus::Failed,
                })));
            }
        }
    }

    /// End the job `failed` with `class` and `reason`, naming the step
    /// `(id, index)` when there is one.
    async fn fail(
        &self,
        scope: &Scope<'_>,
        step: (Option<String>, Option<u32>),
        class: &str,
        reason: String,
    ) -> anyhow::Result<Ending> {
        let event = Event::JobFailed {
            step_id: step.0,
            step_index: step.1,
            failure_class: class.to_owned(),
            reason: reason.clone(),
        };
        self.end(scope, JobState::Failed, event, Some(&reason)).await
    }

    /// Everything between claim and the job leaving this worker. `None`
    /// when the job left without ending (requeued, handed back, lost).
    async fn drive(&self, job: JobRecord, link: &Arc<JobLink>) -> anyhow::Result<Option<JobStatus>> {
        let id = job.id.clone();
        let owner = self.options.name.clone();
        let artifacts = JobArtifacts::open(&self.options.artifact_root, &id, self.redactor.clone())?;
        let job_dir = self.options.work_root.join(&id);
        let workspace_dir = job_dir.join("workspace");
        let recorder = EventRecorder::start(
            self.store.clone(),
            id.clone(),
            owner.clone(),
            workspace_dir.display().to_string(),
        );
        let events = EventSink::new(&id, artifacts.clone(), self.redactor.clone())?.with_observer(recorder.observer());
        // Before the loop there is no pass to go back to: endings here are final.
        let setup = Scope {
            link,
            id: &id,
            events: &events,
            recorder: &recorder,
            interruptible: false,
        };

        // The payload is checked again here: this host's plugins and paths.
        let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let validated =
            JobPayload::parse(&job.payload.to_string()).and_then(|p| p.validate(&base_dir, &self.options.plugin_dir));
        let validated = match validated {
            Ok(v) => v,
            Err(e) => {
                let reason = format!("payload refused on worker {owner}: {e}");
                let ending = self
                    .fail(&setup, (None, None), "deterministic_contract", reason)
                    .await?;
                return Ok(ending.status());
            }
        };

        if job_dir.exists() {
            std::fs::remove_dir_all(&job_dir)?;
        }
        std::fs::create_dir_all(&job_dir)?;
        let (workspace, baseline) = match Workspace::create_from_baseline(
            &validated.repository,
            &validated.payload.task.starting_branch,
            &workspace_dir,
            &job_dir.join("git"),
        ) {
            Ok(pair) => pair,
            Err(e) => {
                let reason = format!("materialising the baseline: {e}");
                let ending = self.fail(&setup, (None, None), "deterministic_repo", reason).await?;
                return Ok(ending.status());
            }
        };

        // The store's checkpoints are the truth: lay them into this host's
        // artifacts, where the loop's rebuild reads (and verifies) them.
        let checkpoints = self.store.checkpoints(&id).await?;
        let mut prefix = 0u32;
        for checkpoint in &checkpoints {
            if checkpoint.step_index != prefix {
                break;
            }
            let state: StepState = serde_json::from_str(&checkpoint.state)?;
            artifacts.write_step_checkpoint(&checkpoint.patch, &state)?;
            prefix += 1;
        }
        let mut start = job.resume_step.map_or(prefix, |k| k.min(prefix));
        let mut last_attempts: HashMap<u32, u32> = HashMap::new();
        for row in self.store.attempts(&id).await? {
            let entry = last_attempts.entry(row.step_index).or_insert(0);
            *entry = (*entry).max(row.attempt);
        }

        let config = self
            .settings
            .self_heal
            .with_overrides(&validated.payload.task.self_heal);
        let max_attempts = job.max_attempts;
        let step_ids: Vec<String> = validated.steps.iter().map(|s| s.id.clone()).collect();
        let metrics = Metrics::new(self.settings.statsd.as_ref(), self.redactor.clone());
        let hooks = Arc::new(ServiceHooks {
            link: link.clone(),
            events: events.clone(),
            store: self.store.clone(),
            job_id: id.clone(),
            owner: owner.clone(),
        });
        let runtime = self.runtime.clone();
        let mut run = JobRun::new(JobRunParts {
            runtime: &runtime,
            job_id: id.clone(),
            job: validated,
            config,
            artifacts,
            events: events.clone(),
            metrics,
            redactor: self.redactor.clone(),
            workspace,
            baseline,
            cancel: link.pass(),
        })
        .with_hooks(hooks);
        run.continue_attempt_numbers(last_attempts);

        if start > 0 || job.resume_step.is_some() || !checkpoints.is_empty() {
            if let Err(e) = run.resume_from_step(start)? {
                let step = (step_ids.get(start as usize).cloned(), Some(start));
                let reason = format!("rebuilding the workspace for step {start}: {e}");
                let ending = self.fail(&setup, step, "deterministic_repo", reason).await?;
                return Ok(ending.status());
            }
            self.store.delete_checkpoints_from(&id, start).await?;
        }
        if job.resume_step.is_some() {
            self.store.clear_resume_step(&id, &owner).await?;
        }

        let scope = Scope {
            interruptible: true,
            ..setup
        };
        let job_attempt = job.attempt;
        let mut announce_start = true;
        loop {
            let pass = link.new_pass();
            run.set_cancel(pass.clone());
            if announce_start {
                events.emit(Event::JobStarted {
                    job_attempt,
                    max_attempts,
                    first_step_index: start,
                })?;
            }
            // Whatever happens next continues this job attempt.
            announce_start = false;
            let outcome = match run.run_from(start).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    let ending = self.fail(&setup, (None, None), "host_error", e.to_string()).await?;
                    return Ok(ending.status());
                }
            };
            recorder.flush().await;
            if link.lease_lost() {
                return Ok(None);
            }
            let ending = if link.cancel_requested() {
                let event = Event::JobCancelled {
                    reason: "cancel requested by an operator".into(),
                };
                self.end(&scope, JobState::Cancelled, event, None).await?
            } else if link.stopping() {
                self.store.release(&id, &owner).await?;
                return Ok(None);
            } else if let Some(request) = link.take_pending() {
                match self.recover(&mut run, &request, &step_ids, &id).await? {
                    Ok(k) => {
                        start = k;
                        self.acknowledge(&events, &request, &id).await?;
                        continue;
                    }
                    Err(reason) => {
                        self.acknowledge(&events, &request, &id).await?;
                        let k = step_ids.iter().position(|s| *s == request.step_id);
                        let step = (Some(request.step_id.clone()), k.and_then(|k| u32::try_from(k).ok()));
                        self.fail(&setup, step, "deterministic_repo", reason).await?
                    }
                }
            } else {
                match outcome {
                    PassOutcome::Succeeded => {
                        let event = Event::JobSucceeded { job_attempt };
                        self.end(&scope, JobState::Succeeded, event, None).await?
                    }
                    PassOutcome::Failed {
                        step_id,
                        step_index,
                        class,
                        reason,
                    } => {
                        let step = (Some(step_id), Some(step_index));
                        self.fail(&scope, step, class.as_str(), reason).await?
                    }
                    PassOutcome::Cancelled => {
                        // Torn down with no cancel, stop or recovery behind
                        // it: hand the job back rather than lose it.
                        self.store.release(&id, &owner).await?;
                        return Ok(None);
                    }
                    PassOutcome::RetryableExhausted { .. } if job_attempt >= max_attempts => {
                        let event = Event::JobDeadLetter {
                            job_attempts: job_attempt,
                        };
                        let why = "retryable failures used up the job's attempts";
                        self.end(&scope, JobState::DeadLetter, event, Some(why)).await?
                    }
                    PassOutcome::RetryableExhausted { .. } => {
                        let delay = self.settings.retry.delay_after(job_attempt);
                        events.emit(Event::JobRequeued {
                            next_job_attempt: job_attempt + 1,
                            delay_seconds: delay.as_secs(),
                        })?;
                        recorder.flush().await;
                        let now = self.store.requeue(&id, &owner, job_attempt + 1, delay).await?;
                        if now == Some(JobState::Cancelled) {
                            // A cancel arrived while the job was being requeued.
                            events.emit(Event::JobCancelled {
                                reason: "cancel requested by an operator".into(),
                            })?;
                            recorder.flush().await;
                            return Ok(Some(JobStatus::Cancelled));
                        }
                        return Ok(None);
                    }
                }
            };
            match ending {
                Ending::Left(status) => return Ok(status),
                // An operator asked for more while the job was ending: the
                // next pass is cancelled at once and the request handled.
                Ending::Interrupted => continue,
            }
        }
    }

    /// Act on a recovery request; returns the step to go on at, or why
    /// the workspace could not be rebuilt. A step action naming a step that
    /// already finished (the request crossed the step's end) rebuilds the
    /// workspace before that step, as `resume_from_step` does, rather than
    /// run the step again over its own changes.
    async fn recover(
        &self,
        run: &mut JobRun<'_>,
        request: &RecoveryRequest,
        step_ids: &[String],
        id: &str,
    ) -> anyhow::Result<Result<u32, String>> {
        let Some(k) = step_ids.iter().position(|s| *s == request.step_id) else {
            return Ok(Err(format!("recovery names unknown step {}", request.step_id)));
        };
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        let finished = run.has_checkpoint(k);
        match request.action {
            // Same workspace, fresh instance, fresh attempt budget (the
            // step's patch still starts from its last checkpoint).
            ControlAction::RetryStep if !finished => {}
            ControlAction::HardResetStep if !finished => {
                if let Err(e) = run.rebuild_for_step(k) {
                    return Ok(Err(format!("hard reset of step {} failed: {e}", request.step_id)));
                }
            }
            _ => {
                if let Err(e) = run.resume_from_step(k)? {
                    return Ok(Err(format!(
                        "{} of step {} failed: {e}",
                        request.action.as_str(),
                        request.step_id
                    )));
                }
                self.store.delete_checkpoints_from(id, k).await?;
            }
        }
        Ok(Ok(k))
    }

    async fn acknowledge(&self, events: &EventSink, request: &RecoveryRequest, id: &str) -> anyhow::Result<()> {
        let cleared = request.clone();
        self.store
            .update_live_control(id, &self.options.name, move |live| {
                if live.recovery.as_ref() == Some(&cleared) {
                    live.recovery = None;
                }
            })
            .await?;
        events.emit(Event::RecoveryAck {
            action: request.action.as_str().to_owned(),
            step_id: Some(request.step_id.clone()),
        })?;
        Ok(())
    }
}

/// What a job's ending needs.
#[derive(Clone, Copy)]
struct Scope<'a> {
    link: &'a JobLink,
    id: &'a str,
    events: &'a EventSink,
    recorder: &'a EventRecorder,
    /// Whether an operator's late request may send the job back to work.
    interruptible: bool,
}

/// How an attempt to end a job came out.
enum Ending {
    /// The job left this worker (ended, or lost).
    Left(Option<JobStatus>),
    /// An operator asked for more first.
    Interrupted,
}

impl Ending {
    fn status(self) -> Option<JobStatus> {
        match self {
            Ending::Left(status) => status,
            Ending::Interrupted => None,
        }
    }
}
