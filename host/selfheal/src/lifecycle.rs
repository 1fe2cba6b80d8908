//! One job lifecycle for `stepd run` and the service worker: open the
//! job's artifacts and events, materialise its workspace, pick up where an
//! earlier run left it, run passes over its steps, and end it — or send it
//! back to work. What differs between the two is a [`JobHost`]: how an
//! ending is recorded (an event, or an event and a status the store must
//! accept), what a queue retry is (wait here, or requeue in the store), what
//! may override a pass's outcome (nothing locally; a lost lease, a cancel, a
//! shutdown or a recovery request in the service), and where the run's
//! checkpoints live (the artifacts locally; the store in the service). A
//! pause or takeover is not an ending: the host's `RunHooks` hold inside
//! the pass.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use stepd_job::control::{ControlAction, RecoveryRequest};
use stepd_job::payload::ValidatedJob;
use stepd_records::artifacts::{ArtifactError, ArtifactMirror, Durability, JobArtifacts};
use stepd_records::events::{Event, EventObserver, EventSink};
use stepd_records::metrics::Metrics;
use stepd_records::phases::{self, Phase};
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_settings::{RetryBackoff, SelfHealConfig, WorkspaceQuota};
use stepd_workspace::remote::RemoteOptions;
use stepd_workspace::Quota;

use crate::baseline::{prepare, BaselineSource, Prepared};
use crate::{blocking, Checkpoint, FailureClass, JobRun, JobRunParts, PassOutcome, RunHooks, SelfHealError};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Every step succeeded.
    Succeeded,
    /// A deterministic failure.
    Failed,
    /// Retryable failures used up the job's attempts.
    DeadLetter,
    /// Cancelled.
    Cancelled,
}

/// Why the lifecycle stopped without an ending it could record. A job
/// failure is not one of these: it is a [`JobStatus`].
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The self-heal loop hit a host-side failure.
    #[error(transparent)]
    SelfHeal(#[from] SelfHealError),
    /// Artifacts could not be opened or written.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The job's work directory could not be prepared.
    #[error("work directory {}: {source}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The host's own records failed (the store, for the service worker).
    #[error("{0}")]
    Host(Box<dyn std::error::Error + Send + Sync>),
}

impl LifecycleError {
    /// Wrap a host-side error.
    pub fn host(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LifecycleError::Host(error.into())
    }
}

/// Everything the lifecycle needs to run one job.
pub struct JobSpec<'a> {
    /// The runtime attempts run on.
    pub runtime: &'a Runtime,
    /// The job's id.
    pub job_id: String,
    /// The job as resolved at submit, or why the host could not read it
    /// (the job then fails `deterministic_contract` with that reason).
    pub job: Result<ValidatedJob, String>,
    /// Self-heal budgets before the job's own overrides.
    pub self_heal: SelfHealConfig,
    /// The queue-retry backoff.
    pub retry: RetryBackoff,
    /// What a step may leave in the workspace.
    pub workspace_quota: WorkspaceQuota,
    /// `STEPD_SECRETS_DIR`: where secrets not in the worker's environment
    /// are read.
    pub secrets_dir: Option<PathBuf>,
    /// Artifacts go to `<artifact_root>/agent_jobs/<job_id>/`.
    pub artifact_root: PathBuf,
    /// The workspace and its git store go to `<work_root>/<job_id>/`.
    pub work_root: PathBuf,
    /// How remote baselines are fetched, and the host's cache of them.
    pub remote: RemoteOptions,
    /// The scrubber every record passes through.
    pub redactor: Arc<Redactor>,
    /// Where metrics go.
    pub metrics: Metrics,
    /// Sees every event as it is recorded (a live view, the store's copy).
    pub observer: Option<EventObserver>,
    /// Gets a copy of every artifact write (the store, when API processes
    /// may run on other hosts than this one).
    pub artifact_mirror: Option<Arc<dyn ArtifactMirror>>,
    /// Whether the artifacts are the job's record (flushed) or a copy of
    /// the host's (the service's store).
    pub artifact_durability: Durability,
}

/// Where a run of the job starts, as earlier runs left it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStart {
    /// The first step to run.
    pub step: u32,
    /// Rebuild the workspace from the checkpoints before `step` first.
    pub rebuild: bool,
    /// The job attempt this run is (queue retries count up).
    pub job_attempt: u32,
    /// Attempts recorded so far as (step index, attempt number), so numbers
    /// run on after the highest of each step.
    pub last_attempts: Vec<(u32, u32)>,
    /// The job's checkpoints when the host keeps them (the service's
    /// store: the one source of truth, written before a step counts as
    /// done); `None` when the artifacts are their record (`stepd run`).
    pub checkpoints: Option<Vec<Checkpoint>>,
    /// Hard resets self-heal already spent on this job (by earlier job
    /// attempts, on any worker): `JOB_SELF_HEAL_MAX_RESETS` is per job.
    pub resets_used: u32,
    /// The retry context an earlier job attempt left for a step (step
    /// index, its JSON as events carry it): the step's next attempt is told.
    pub retry_contexts: Vec<(u32, serde_json::Value)>,
    /// The commit of a remote baseline an earlier run fetched: this run
    /// materialises that one, whatever the branch's tip is now.
    pub baseline_commit: Option<String>,
    /// A recovery an operator asked for before this host took the job:
    /// the start carries it out (`step` is its step, `rebuild` is set),
    /// and it is acknowledged once the rebuild is done.
    pub acknowledge: Option<RecoveryRequest>,
}

impl JobStart {
    /// A job nobody ran before.
    pub fn fresh() -> Self {
        JobStart {
            step: 0,
            rebuild: false,
            job_attempt: 1,
            last_attempts: Vec::new(),
            checkpoints: None,
            resets_used: 0,
            retry_contexts: Vec::new(),
            acknowledge: None,
            baseline_commit: None,
        }
    }
}

/// What overrides a pass's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Interruption {
    /// Another process holds the job now: leave it untouched.
    Lost,
    /// Hand the job back to the queue as it is (the worker is stopping).
    HandBack,
    /// Cancel the job; `reason` goes into `task.job.cancelled`.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Act on an operator's recovery request, then go on.
    Recover(RecoveryRequest),
}

/// A job's ending as the lifecycle decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// The status the job ends with.
    pub status: JobStatus,
    /// Its last event.
    pub event: Event,
    /// The error kept on the job record, when it failed.
    pub error: Option<String>,
}

impl Ending {
    fn succeeded(job_attempt: u32) -> Self {
        Ending {
            status: JobStatus::Succeeded,
            event: Event::JobSucceeded { job_attempt },
            error: None,
        }
    }

    /// A failure of step `(id, index)` when there is one.
    pub(crate) fn failed(step: (Option<String>, Option<u32>), class: &str, reason: String) -> Self {
        Ending {
            status: JobStatus::Failed,
            event: Event::JobFailed {
                step_id: step.0,
                step_index: step.1,
                failure_class: class.to_owned(),
                reason: reason.clone(),
            },
            error: Some(reason),
        }
    }

    fn cancelled(reason: String) -> Self {
        Ending {
            status: JobStatus::Cancelled,
            event: Event::JobCancelled { reason },
            error: None,
        }
    }

    pub(crate) fn dead_letter(job_attempts: u32) -> Self {
        Ending {
            status: JobStatus::DeadLetter,
            event: Event::JobDeadLetter { job_attempts },
            error: Some("retryable failures used up the job's attempts".into()),
        }
    }
}

/// How recording an ending came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The job left this host (ended with the status, or was lost).
    Left(Option<JobStatus>),
    /// An operator asked for more first: run another pass.
    Interrupted,
}

/// What a queue retry came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Run the next job attempt here, now (after the backoff).
    RunAgain,
    /// The job left this host (requeued, or ended meanwhile).
    Left(Option<JobStatus>),
}

/// What differs between `stepd run` and the service worker.
pub trait JobHost: Send {
    /// Say where this run starts: the step, the job attempt, the attempt
    /// numbers so far and — when the host keeps them — the checkpoints
    /// earlier runs left (a copy may go to `artifacts` for operators).
    fn restore(&mut self, artifacts: &JobArtifacts) -> impl Future<Output = Result<JobStart, LifecycleError>> + Send;
    /// The attempt loop's hooks (holding for an operator, keeping
    /// checkpoints beyond this host), if any.
    fn hooks(&self, events: &EventSink) -> Option<Arc<dyn RunHooks>>;
    /// The cancel token of the next pass.
    fn new_pass(&mut self) -> CancellationToken;
    /// After a pass, before its outcome counts: what overrides it.
    fn interruption(&mut self) -> impl Future<Output = Option<Interruption>> + Send;
    /// Record `ending`: its event, then the job's status. When
    /// `interruptible`, an operator's request that arrived meanwhile sends
    /// the job back to work instead ([`Settled::Interrupted`]).
    fn settle(
        &mut self,
        events: &EventSink,
        ending: Ending,
        interruptible: bool,
    ) -> impl Future<Output = Result<Settled, LifecycleError>> + Send;
    /// Retryable failures used up this job attempt and attempts remain;
    /// `task.job.requeued` is recorded. Run again here after `delay`, or
    /// leave the job to the queue.
    fn requeue(
        &mut self,
        events: &EventSink,
        next_attempt: u32,
        delay: Duration,
    ) -> impl Future<Output = Result<Requeued, LifecycleError>> + Send;
    /// The pass was torn down with nothing the lifecycle knows behind it:
    /// hand the job back as it is.
    fn hand_back(
        &mut self,
        events: &EventSink,
    ) -> impl Future<Output = Result<Option<JobStatus>, LifecycleError>> + Send;
    /// The workspace was rebuilt before step `k`, and the checkpoints from
    /// `k` on are gone from the run: forget them wherever else they are
    /// kept (and whatever asked for the rebuild, such as an operator's
    /// resume step, is done).
    fn forget_checkpoints_from(&mut self, k: u32) -> impl Future<Output = Result<(), LifecycleError>> + Send;
    /// An operator's recovery was acted on (or failed): say so.
    fn acknowledge(
        &mut self,
        events: &EventSink,
        request: &RecoveryRequest,
    ) -> impl Future<Output = Result<(), LifecycleError>> + Send;
    /// The job's remote baseline was fetched for the first time, at
    /// `commit`: keep it where the job's later runs find it
    /// ([`JobStart::baseline_commit`]). A host whose runs never leave it
    /// keeps nothing.
    fn pin_baseline(&mut self, commit: &str) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        let _ = commit;
        async { Ok(()) }
    }
}

/// Run a job on `host` until it ends or leaves: `None` when it left
/// without an ending of this host's (requeued, handed back, lost).
pub async fn run_job<H: JobHost>(spec: JobSpec<'_>, host: &mut H) -> Result<Option<JobStatus>, LifecycleError> {
    // Every line logged while the job runs carries its id.
    let span = tracing::info_span!("job", job = %spec.job_id);
    run_job_in_span(spec, host).instrument(span).await
}

async fn run_job_in_span<H: JobHost>(spec: JobSpec<'_>, host: &mut H) -> Result<Option<JobStatus>, LifecycleError> {
    let redactor = spec.redactor.clone();
    let (durability, mirror) = (spec.artifact_durability, spec.artifact_mirror);
    // One hand-off to a blocking thread for both: each costs a thread
    // switch, which a trivial job feels.
    let (artifacts, mut events) = blocking(|| -> Result<_, LifecycleError> {
        let mut artifacts =
            JobArtifacts::open(&spec.artifact_root, &spec.job_id, redactor.clone())?.with_durability(durability);
        if let Some(mirror) = mirror {
            artifacts = artifacts.with_mirror(mirror);
        }
        let events = EventSink::new(&spec.job_id, artifacts.clone(), redactor.clone())?;
        Ok((artifacts, events))
    })?;
    if let Some(observer) = spec.observer {
        events = events.with_observer(observer);
    }
    let job = match spec.job {
        Ok(job) => job,
        Err(reason) => {
            let ending = Ending::failed((None, None), FailureClass::DeterministicContract.as_str(), reason);
            return settled(host.settle(&events, ending, false).await?);
        }
    };
    if let Some(ending) = missing_plugin(&job) {
        return settled(host.settle(&events, ending, false).await?);
    }
    let start = host.restore(&artifacts).await?;
    let max_attempts = job.payload.max_attempts;
    let mut job_attempt = start.job_attempt;
    let source = BaselineSource {
        work_root: &spec.work_root,
        job_id: &spec.job_id,
        remote: &spec.remote,
        secrets_dir: spec.secrets_dir.as_deref(),
        pinned: start.baseline_commit.as_deref(),
    };
    let (workspace, baseline) = loop {
        let prepared = phases::timed_async(Phase::Workspace, prepare(&source, &job, host, &events, &redactor)).await?;
        match prepared {
            Prepared::Ready(workspace, tree) => break (*workspace, tree),
            // An operator's request this run was to carry out ends with
            // the job: it was acted on, and is acknowledged.
            Prepared::Failed(ending) => {
                if let Some(request) = &start.acknowledge {
                    host.acknowledge(&events, request).await?;
                }
                return settled(host.settle(&events, *ending, false).await?);
            }
            // A remote that cannot be reached now: a queue retry, as a
            // step's transient failure would be (a pending request waits
            // for the run that can carry it out).
            Prepared::Transient(reason) if job_attempt >= max_attempts => {
                if let Some(request) = &start.acknowledge {
                    host.acknowledge(&events, request).await?;
                }
                let mut ending = Ending::dead_letter(job_attempt);
                ending.error = Some(reason);
                return settled(host.settle(&events, ending, false).await?);
            }
            Prepared::Transient(reason) => {
                tracing::warn!(job = %spec.job_id, %reason, "baseline not fetched; requeueing the job");
                let delay = spec.retry.delay_after(job_attempt);
                events.emit(Event::JobRequeued {
                    next_job_attempt: job_attempt + 1,
                    delay_seconds: delay.as_secs(),
                    reason: Some(reason),
                })?;
                match host.requeue(&events, job_attempt + 1, delay).await? {
                    Requeued::Left(status) => return Ok(status),
                    Requeued::RunAgain => job_attempt += 1,
                }
            }
        }
    };
    let config = spec.self_heal.with_overrides(&job.payload.task.self_heal);
    let step_ids: Vec<String> = job.steps.iter().map(|s| s.id.clone()).collect();
    let mut run = JobRun::new(JobRunParts {
        runtime: spec.runtime,
        job_id: spec.job_id,
        job,
        config,
        artifacts,
        events: events.clone(),
        metrics: spec.metrics,
        redactor,
        workspace,
        baseline,
        cancel: CancellationToken::new(),
        quota: Quota {
            max_bytes: spec.workspace_quota.max_bytes,
            max_entries: spec.workspace_quota.max_entries,
            max_change_bytes: spec.workspace_quota.max_change_bytes,
        },
        secrets_dir: spec.secrets_dir,
    });
    if let Some(hooks) = host.hooks(&events) {
        run = run.with_hooks(hooks);
    }
    run.continue_attempt_numbers(start.last_attempts);
    run.resets_used = start.resets_used;
    run.carry_retry_contexts(start.retry_contexts);
    if let Some(checkpoints) = start.checkpoints {
        run.keep_checkpoints(checkpoints);
    }
    let rebuilt = if start.rebuild {
        Some(run.resume_from_step(start.step)?)
    } else {
        // Just materialised: the workspace is the baseline tree, and the
        // first step's patch starts from it without a snapshot.
        run.current_tree = Some(baseline);
        None
    };
    if let Some(Ok(())) = rebuilt {
        host.forget_checkpoints_from(start.step).await?;
    }
    // Acted on either way, as a running job's recovery is: a failed
    // rebuild ends the job, and says why.
    if let Some(request) = &start.acknowledge {
        host.acknowledge(&events, request).await?;
    }
    if let Some(Err(e)) = rebuilt {
        let step = (step_ids.get(start.step as usize).cloned(), Some(start.step));
        let reason = format!("rebuilding the workspace for step {}: {e}", start.step);
        let ending = Ending::failed(step, FailureClass::DeterministicRepo.as_str(), reason);
        return settled(host.settle(&events, ending, false).await?);
    }
    let mut passes = Passes {
        run,
        host,
        events,
        step_ids,
        max_attempts,
        retry: spec.retry,
        job_attempt,
    };
    passes.drive(start.step).await
}

/// The job names its plugins by the absolute paths resolved at submit: a
/// host that lacks one fails the job before any step runs (a plugin's hash
/// is checked when it is loaded).
fn missing_plugin(job: &ValidatedJob) -> Option<Ending> {
    let step = job.steps.iter().find(|s| !s.plugin_path.is_file())?;
    let reason = format!(
        "plugin {} of step {} is not on this host at {}",
        step.plugin_name,
        step.id,
        step.plugin_path.display()
    );
    Some(Ending::failed(
        (Some(step.id.clone()), Some(step.index)),
        FailureClass::DeterministicContract.as_str(),
        reason,
    ))
}

fn settled(settled: Settled) -> Result<Option<JobStatus>, LifecycleError> {
    Ok(match settled {
        Settled::Left(status) => status,
        Settled::Interrupted => None,
    })
}

/// The passes over a job's steps on one host.
struct Passes<'a, 'h, H: JobHost> {
    run: JobRun<'a>,
    host: &'h mut H,
    events: EventSink,
    step_ids: Vec<String>,
    max_attempts: u32,
    retry: RetryBackoff,
    job_attempt: u32,
}

impl<H: JobHost> Passes<'_, '_, H> {
    /// Run passes from step `start` until the job ends or leaves.
    async fn drive(&mut self, mut start: u32) -> Result<Option<JobStatus>, LifecycleError> {
        let mut announce = true;
        loop {
            self.run.set_cancel(self.host.new_pass());
            if announce {
                self.events.emit(Event::JobStarted {
                    job_attempt: self.job_attempt,
                    max_attempts: self.max_attempts,
                    first_step_index: start,
                })?;
                announce = false;
            }
            let outcome = match self.run.run_from(start).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    // The host itself failed (disk full, workspace
                    // unreadable): record an ending if it still can, then
                    // report the error.
                    let ending = Ending::failed((None, None), "host_error", e.to_string());
                    if let Err(also) = self.host.settle(&self.events, ending, false).await {
                        tracing::warn!(error = %also, "recording the host error's ending failed too");
                    }
                    return Err(e.into());
                }
            };
            let (ending, interruptible) = match self.host.interruption().await {
                Some(Interruption::Lost) => return Ok(None),
                Some(Interruption::HandBack) => return self.host.hand_back(&self.events).await,
                Some(Interruption::Cancel { reason }) => (Ending::cancelled(reason), true),
                Some(Interruption::Recover(request)) => {
                    let recovered = self.recover(&request).await?;
                    self.host.acknowledge(&self.events, &request).await?;
                    match recovered {
                        Ok(k) => {
                            start = k;
                            continue;
                        }
                        Err(reason) => {
                            let k = self.step_ids.iter().position(|s| *s == request.step_id);
                            let step = (Some(request.step_id.clone()), k.and_then(|k| u32::try_from(k).ok()));
                            (
                                Ending::failed(step, FailureClass::DeterministicRepo.as_str(), reason),
                                false,
                            )
                        }
                    }
                }
                None => match self.after_pass(outcome).await? {
                    AfterPass::End(ending, interruptible) => (*ending, interruptible),
                    AfterPass::Left(status) => return Ok(status),
                    AfterPass::RunAgainFrom(k) => {
                        start = k;
                        announce = true;
                        continue;
                    }
                },
            };
            match self.host.settle(&self.events, ending, interruptible).await? {
                Settled::Left(status) => return Ok(status),
                // An operator asked for more while the job was ending: the
                // next pass is cancelled at once and the request handled.
                Settled::Interrupted => continue,
            }
        }
    }

    /// What a pass's own outcome means for the job.
    async fn after_pass(&mut self, outcome: PassOutcome) -> Result<AfterPass, LifecycleError> {
        Ok(match outcome {
            PassOutcome::Succeeded => AfterPass::end(Ending::succeeded(self.job_attempt), true),
            PassOutcome::Failed {
                step_id,
                step_index,
                class,
                reason,
            } => AfterPass::end(
                Ending::failed((Some(step_id), Some(step_index)), class.as_str(), reason),
                true,
            ),
            PassOutcome::Cancelled => AfterPass::Left(self.host.hand_back(&self.events).await?),
            PassOutcome::HostUnavailable { step_index, reason } => {
                // The host's condition, not the job's: back to the queue
                // at the same job attempt, after the first backoff, so
                // this host (or another) tries again once it has room.
                let delay = self.retry.delay_after(1);
                self.events.emit(Event::JobRequeued {
                    next_job_attempt: self.job_attempt,
                    delay_seconds: delay.as_secs(),
                    reason: Some(format!("the host could not start step {step_index}: {reason}")),
                })?;
                self.requeue_at(self.job_attempt, delay, step_index).await?
            }
            PassOutcome::RetryableExhausted { .. } if self.job_attempt >= self.max_attempts => {
                AfterPass::end(Ending::dead_letter(self.job_attempt), true)
            }
            PassOutcome::RetryableExhausted { step_index, .. } => {
                let delay = self.retry.delay_after(self.job_attempt);
                let next_attempt = self.job_attempt + 1;
                self.events.emit(Event::JobRequeued {
                    next_job_attempt: next_attempt,
                    delay_seconds: delay.as_secs(),
                    reason: None,
                })?;
                self.requeue_at(next_attempt, delay, step_index).await?
            }
        })
    }

    /// Hand the job to the queue as job attempt `attempt` after `delay`;
    /// where the host runs it again itself (`stepd run`), rebuild the
    /// workspace before `step_index` and go on there.
    async fn requeue_at(
        &mut self,
        attempt: u32,
        delay: Duration,
        step_index: u32,
    ) -> Result<AfterPass, LifecycleError> {
        Ok(match self.host.requeue(&self.events, attempt, delay).await? {
            Requeued::Left(status) => AfterPass::Left(status),
            Requeued::RunAgain => {
                self.job_attempt = attempt;
                match self.run.resume_from_step(step_index)? {
                    Ok(()) => AfterPass::RunAgainFrom(step_index),
                    Err(e) => {
                        let class = FailureClass::DeterministicRepo.as_str();
                        AfterPass::end(Ending::failed((None, Some(step_index)), class, e.to_string()), false)
                    }
                }
            }
        })
    }

    /// Act on a recovery request; returns the step to go on at, or why the
    /// workspace could not be rebuilt. A step action naming a step that
    /// already finished (the request crossed the step's end) rebuilds the
    /// workspace before that step, as `resume_from_step` does, rather than
    /// run the step again over its own changes.
    async fn recover(&mut self, request: &RecoveryRequest) -> Result<Result<u32, String>, LifecycleError> {
        let Some(k) = self.step_ids.iter().position(|s| *s == request.step_id) else {
            return Ok(Err(format!("recovery names unknown step {}", request.step_id)));
        };
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        let finished = self.run.has_checkpoint(k);
        match request.action {
            // Same workspace, fresh instance, fresh attempt budget (the
            // step's patch still starts from its last checkpoint).
            ControlAction::RetryStep if !finished => self.run.carry_last_failure(k),
            ControlAction::HardResetStep if !finished => {
                if let Err(e) = self.run.rebuild_for_step(k) {
                    return Ok(Err(format!("hard reset of step {} failed: {e}", request.step_id)));
                }
                self.run.carry_last_failure(k);
            }
            _ => {
                if let Err(e) = self.run.resume_from_step(k)? {
                    return Ok(Err(format!(
                        "{} of step {} failed: {e}",
                        request.action.as_str(),
                        request.step_id
                    )));
                }
                self.host.forget_checkpoints_from(k).await?;
            }
        }
        Ok(Ok(k))
    }
}

/// What a pass's outcome came to.
enum AfterPass {
    /// End the job (`true`: an operator's late request may interrupt).
    End(Box<Ending>, bool),
    /// The job left this host.
    Left(Option<JobStatus>),
    /// Another job attempt here, from this step.
    RunAgainFrom(u32),
}

impl AfterPass {
    fn end(ending: Ending, interruptible: bool) -> Self {
        AfterPass::End(Box::new(ending), interruptible)
    }
}
