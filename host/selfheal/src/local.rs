//! [`run_local`]: the in-process runner behind `stepd run` — one job, no
//! server, no queue; a retryable failure is retried here, after the same
//! backoff the queue would apply.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{JobRun, JobRunParts, PassOutcome, SelfHealError};
use stepd_job::payload::ValidatedJob;
use stepd_records::artifacts::JobArtifacts;
use stepd_records::events::{Event, EventObserver, EventSink};
use stepd_records::metrics::Metrics;
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_settings::Settings;
use stepd_workspace::Workspace;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// Where a local run keeps its files.
#[derive(Debug, Clone)]
pub struct LocalRunOptions {
    /// `var/artifacts` by default: artifacts go to
    /// `<root>/agent_jobs/<job_id>/`.
    pub artifact_root: PathBuf,
    /// `var/work` by default: the workspace and its git store go to
    /// `<root>/<job_id>/{workspace,git}`.
    pub work_root: PathBuf,
    /// The job's id.
    pub job_id: String,
}

/// Why a local run could not run at all or had to stop (not a job
/// failure, which is a [`JobStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum LocalRunError {
    /// The loop hit a host-side failure.
    #[error(transparent)]
    SelfHeal(#[from] SelfHealError),
    /// Artifacts could not be opened.
    #[error(transparent)]
    Artifact(#[from] stepd_records::artifacts::ArtifactError),
    /// The baseline could not be materialised.
    #[error("materialising the baseline: {0}")]
    Baseline(#[from] stepd_workspace::WorkspaceError),
    /// The job id already has artifacts: running again would mix two runs
    /// in one audit trail.
    #[error("job {job_id} already has artifacts in {}; pick another --job-id or remove them", path.display())]
    JobExists {
        /// The job id.
        job_id: String,
        /// Its artifact directory.
        path: PathBuf,
    },
    /// The work directory could not be prepared.
    #[error("work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Run a validated job to its end in this process. `observer` sees every
/// event as it is recorded (the CLI's live view).
pub async fn run_local(
    runtime: &Runtime,
    settings: &Settings,
    job: ValidatedJob,
    options: &LocalRunOptions,
    redactor: Arc<Redactor>,
    cancel: CancellationToken,
    observer: Option<EventObserver>,
) -> Result<JobStatus, LocalRunError> {
    let existing = options.artifact_root.join("agent_jobs").join(&options.job_id);
    if existing.join("events.jsonl").exists() {
        return Err(LocalRunError::JobExists {
            job_id: options.job_id.clone(),
            path: existing,
        });
    }
    let artifacts = JobArtifacts::open(&options.artifact_root, &options.job_id, redactor.clone())?;
    let mut events = EventSink::new(&options.job_id, artifacts.clone(), redactor.clone())?;
    if let Some(observer) = observer {
        events = events.with_observer(observer);
    }
    let job_dir = options.work_root.join(&options.job_id);
    if job_dir.exists() {
        std::fs::remove_dir_all(&job_dir).map_err(|source| LocalRunError::WorkDir {
            path: job_dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&job_dir).map_err(|source| LocalRunError::WorkDir {
        path: job_dir.clone(),
        source,
    })?;
    let (workspace, baseline) = Workspace::create_from_baseline(
        &job.repository,
        &job.payload.task.starting_branch,
        &job_dir.join("workspace"),
        &job_dir.join("git"),
    )?;
    let config = settings.self_heal.with_overrides(&job.payload.task.self_heal);
    let max_attempts = job.payload.max_attempts;
    let metrics = Metrics::new(settings.statsd.as_ref(), redactor.clone());
    let mut run = JobRun::new(JobRunParts {
        runtime,
        job_id: options.job_id.clone(),
        job,
        config,
        artifacts,
        events: events.clone(),
        metrics,
        redactor,
        workspace,
        baseline,
        cancel: cancel.clone(),
    });

    let mut job_attempt = 1;
    let mut start = 0;
    loop {
        events.emit(Event::JobStarted {
            job_attempt,
            max_attempts,
            first_step_index: start,
        })?;
        let pass = match run.run_from(start).await {
            Ok(pass) => pass,
            Err(e) => {
                // The host itself failed (disk full, workspace unreadable):
                // record an ending if we still can, then report the error.
                let _ = events.emit(Event::JobFailed {
                    step_id: None,
                    step_index: None,
                    failure_class: "host_error".into(),
                    reason: e.to_string(),
                });
                return Err(e.into());
            }
        };
        match pass {
            PassOutcome::Succeeded => {
                events.emit(Event::JobSucceeded { job_attempt })?;
                return Ok(JobStatus::Succeeded);
            }
            PassOutcome::Failed {
                step_id,
                step_index,
                class,
                reason,
            } => {
                events.emit(Event::JobFailed {
                    step_id: Some(step_id),
                    step_index: Some(step_index),
                    failure_class: class.as_str().to_owned(),
                    reason,
                })?;
                return Ok(JobStatus::Failed);
            }
            PassOutcome::Cancelled => {
                events.emit(Event::JobCancelled {
                    reason: "cancel requested".into(),
                })?;
                return Ok(JobStatus::Cancelled);
            }
            PassOutcome::RetryableExhausted { step_index, .. } => {
                if job_attempt >= max_attempts {
                    events.emit(Event::JobDeadLetter {
                        job_attempts: job_attempt,
                    })?;
                    return Ok(JobStatus::DeadLetter);
                }
                let delay = settings.retry.delay_after(job_attempt);
                job_attempt += 1;
                events.emit(Event::JobRequeued {
                    next_job_attempt: job_attempt,
                    delay_seconds: delay.as_secs(),
                })?;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => {
                        events.emit(Event::JobCancelled { reason: "cancel requested".into() })?;
                        return Ok(JobStatus::Cancelled);
                    }
                }
                start = step_index;
                if let Err(e) = run.resume_from_step(start)? {
                    events.emit(Event::JobFailed {
                        step_id: None,
                        step_index: Some(start),
                        failure_class: "deterministic_repo".into(),
                        reason: e.to_string(),
                    })?;
                    return Ok(JobStatus::Failed);
                }
            }
        }
    }
}
