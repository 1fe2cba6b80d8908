//! [`run_local`]: the in-process runner behind `stepd run` — one job, no
//! server, no queue. It is the one job lifecycle (`lifecycle`) with a host
//! that records endings as events only, retries a job here after the same
//! backoff the queue would apply, and ends it `cancelled` when its token is
//! (Ctrl-C).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stepd_job::control::RecoveryRequest;
use stepd_job::payload::ValidatedJob;
use stepd_records::artifacts::{Durability, JobArtifacts};
use stepd_records::events::{Event, EventObserver, EventSink};
use stepd_records::metrics::Metrics;
use stepd_records::redact::Redactor;
use stepd_runtime::{CancellationToken, Runtime};
use stepd_settings::Settings;
use stepd_workspace::remote::{RemoteOptions, BASELINE_CACHE};

use crate::lifecycle::{
    run_job, Ending, Interruption, JobHost, JobSpec, JobStart, JobStatus, LifecycleError, Requeued, Settled,
};
use crate::RunHooks;

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
    /// The lifecycle hit a host-side failure.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The job id already has artifacts: running again would mix two runs
    /// in one audit trail.
    #[error("job {job_id} already has artifacts in {}; pick another --job-id or remove them", path.display())]
    JobExists {
        /// The job id.
        job_id: String,
        /// Its artifact directory.
        path: PathBuf,
    },
}

/// What a local run runs with.
pub struct LocalRun<'a> {
    /// The runtime attempts run on.
    pub runtime: &'a Runtime,
    /// Budgets, backoff and metrics settings.
    pub settings: &'a Settings,
    /// The scrubber every record passes through.
    pub redactor: Arc<Redactor>,
    /// Cancelled on Ctrl-C: the job ends `cancelled`.
    pub cancel: CancellationToken,
    /// Sees every event as it is recorded (the CLI's live view).
    pub observer: Option<EventObserver>,
}

/// Run a validated job to its end in this process.
pub async fn run_local(
    local: LocalRun<'_>,
    job: ValidatedJob,
    options: &LocalRunOptions,
) -> Result<JobStatus, LocalRunError> {
    let LocalRun {
        runtime,
        settings,
        redactor,
        cancel,
        observer,
    } = local;
    let existing = options.artifact_root.join("agent_jobs").join(&options.job_id);
    if existing.join("events.jsonl").exists() {
        return Err(LocalRunError::JobExists {
            job_id: options.job_id.clone(),
            path: existing,
        });
    }
    let spec = JobSpec {
        runtime,
        job_id: options.job_id.clone(),
        job: Ok(job),
        self_heal: settings.self_heal,
        retry: settings.retry,
        workspace_quota: settings.workspace,
        secrets_dir: settings.grants.secrets_dir.clone(),
        artifact_root: options.artifact_root.clone(),
        work_root: options.work_root.clone(),
        metrics: Metrics::new(settings.statsd.as_ref(), redactor.clone()),
        remote: RemoteOptions {
            cache_dir: options.work_root.join(BASELINE_CACHE),
            timeout: settings.grants.baseline_fetch_timeout(),
            extra_ca: settings.runtime.http_extra_ca.clone(),
        },
        redactor,
        observer,
        artifact_mirror: None,
        artifact_durability: Durability::Flushed,
    };
    let status = run_job(spec, &mut LocalHost { cancel }).await?;
    // A local host always ends the job itself.
    Ok(status.unwrap_or(JobStatus::Cancelled))
}

/// `stepd run`'s host: endings are events, a queue retry waits here.
struct LocalHost {
    cancel: CancellationToken,
}

impl LocalHost {
    fn cancelled(events: &EventSink) -> Result<Option<JobStatus>, LifecycleError> {
        events.emit(Event::JobCancelled {
            reason: "cancel requested".into(),
        })?;
        Ok(Some(JobStatus::Cancelled))
    }
}

impl JobHost for LocalHost {
    async fn restore(&mut self, _artifacts: &JobArtifacts) -> Result<JobStart, LifecycleError> {
        Ok(JobStart::fresh())
    }

    fn hooks(&self, _events: &EventSink) -> Option<Arc<dyn RunHooks>> {
        None
    }

    fn new_pass(&mut self) -> CancellationToken {
        self.cancel.clone()
    }

    async fn interruption(&mut self) -> Option<Interruption> {
        None
    }

    async fn settle(
        &mut self,
        events: &EventSink,
        ending: Ending,
        _interruptible: bool,
    ) -> Result<Settled, LifecycleError> {
        events.emit(ending.event)?;
        Ok(Settled::Left(Some(ending.status)))
    }

    async fn requeue(
        &mut self,
        events: &EventSink,
        _next_attempt: u32,
        delay: Duration,
    ) -> Result<Requeued, LifecycleError> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(Requeued::RunAgain),
            () = self.cancel.cancelled() => Ok(Requeued::Left(Self::cancelled(events)?)),
        }
    }

    /// Only a cancel tears a local pass down.
    async fn hand_back(&mut self, events: &EventSink) -> Result<Option<JobStatus>, LifecycleError> {
        Self::cancelled(events)
    }

    async fn forget_checkpoints_from(&mut self, _k: u32) -> Result<(), LifecycleError> {
        Ok(())
    }

    async fn acknowledge(&mut self, _events: &EventSink, _request: &RecoveryRequest) -> Result<(), LifecycleError> {
        Ok(())
    }
}
