//! The attempt loop (docs/ARCHITECTURE.md#self-heal): run a job's steps over its workspace,
//! one fresh instance per attempt; classify each failure, compute its
//! signature and diff, apply the no-progress rule and walk the strategy
//! ladder — soft reset, hard reset (rebuild from baseline + patches), or
//! give up with a queue retry or a terminal failure. Every decision leaves
//! an artifact, an event and a metric.
//!
//! The crate is laid out along that path: `lifecycle` takes a job from
//! its workspace to its ending (the one lifecycle behind `stepd run`, in
//! `local`, and the service worker, in the stepd-worker crate), `job_run`
//! runs passes over the steps and rebuilds the workspace, `step` runs one
//! step's attempts and heals, `strategy` and `classify` decide (pure).
//! The runtime runs, the workspace snapshots and rebuilds,
//! artifacts/events/metrics record. Nothing here knows about queues,
//! leases or HTTP (tests/tests/architecture.rs holds it to that).

mod baseline;
mod classify;
mod grants;
mod job_run;
mod lifecycle;
mod local;
mod step;
mod strategy;

use futures_util::future::BoxFuture;

pub use classify::{classify, classify_message, failure_signature, FailureClass, FailureSignature};
pub use job_run::{Checkpoint, JobRun, JobRunParts};
pub use lifecycle::{
    run_job, Ending, Interruption, JobHost, JobSpec, JobStart, JobStatus, LifecycleError, Requeued, Settled,
};
pub use local::{run_local, LocalRun, LocalRunError, LocalRunOptions};
pub use strategy::{decide, DecisionInput, NoProgressTracker, Strategy};

use stepd_records::artifacts::{ArtifactError, StepState};
use stepd_records::events::StepAttemptRef;
use stepd_runtime::RuntimeError;
use stepd_workspace::WorkspaceError;

/// The two constraints every retry is given (docs/ARCHITECTURE.md#retry-context).
pub const RETRY_CONSTRAINTS: [&str; 2] = [
    "do not re-run unchanged remediation",
    "if test harness instability is detected, isolate the cause before editing product code",
];

/// A host-side failure that stops the loop: the job cannot go on safely
/// (an artifact could not be written, the workspace could not be read).
#[derive(Debug, thiserror::Error)]
pub enum SelfHealError {
    /// Writing or reading an artifact failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The workspace could not be snapshotted or diffed.
    #[error("workspace: {0}")]
    Workspace(#[from] WorkspaceError),
    /// The runtime could not set an attempt up.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// A checkpoint could not be made durable beyond the artifacts (the
    /// store refused it): going on would risk losing it.
    #[error("checkpoint of step {step_index}: {message}")]
    Checkpoint {
        /// The step.
        step_index: u32,
        /// Why.
        message: String,
    },
}

/// What a worker adds to the loop: holding while an operator pauses the
/// job, and keeping each checkpoint somewhere that outlives this host.
/// `stepd run` has none.
pub trait RunHooks: Send + Sync {
    /// Called before every attempt; returns once the job may go on (at
    /// once unless paused or taken over; early when the run is cancelled).
    fn before_attempt<'a>(&'a self, at: &'a StepAttemptRef) -> BoxFuture<'a, ()>;
    /// Called once a step's checkpoint is in the artifacts; the step does
    /// not count as done until this returns `Ok`. For the job's
    /// `last_step` the host may keep the checkpoint with the job's ending
    /// (one commit instead of two): nothing but that ending, an
    /// interruption or a requeue follows it, and the host writes it before
    /// any of them. A crash in between loses it as it would lose a
    /// checkpoint not yet written: the lease expires and the step runs
    /// again.
    fn checkpointed<'a>(
        &'a self,
        patch: &'a [u8],
        state: &'a StepState,
        last_step: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// How one pass over the steps ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PassOutcome {
    /// Every step from the start step on succeeded.
    Succeeded,
    /// A deterministic failure: the job fails, no queue retry.
    Failed {
        /// The step that failed.
        step_id: String,
        /// Its index.
        step_index: u32,
        /// The class that ended it.
        class: FailureClass,
        /// Why, for the operator.
        reason: String,
    },
    /// A step used its attempts on retryable failures: the queue may retry
    /// the job, which then resumes at `step_index`.
    RetryableExhausted {
        /// The step that gave up.
        step_index: u32,
        /// Its last failure class.
        class: FailureClass,
    },
    /// The host could not start the step's attempt (no memory for its
    /// instance): the job goes back to the queue at the same job attempt,
    /// and resumes at `step_index`.
    HostUnavailable {
        /// The step that could not start.
        step_index: u32,
        /// What the host said.
        reason: String,
    },
    /// A cancel was requested.
    Cancelled,
}

/// Why the workspace could not be rebuilt from the checkpoints; always a
/// `deterministic_repo` failure of the job.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// A step before the target has no state file.
    #[error("checkpoint of step {step_index} is missing (state/steps/step-{step_index:04}.json)")]
    MissingState {
        /// The step.
        step_index: u32,
    },
    /// The patch file is missing.
    #[error("patch of step {step_index} is missing (patches/steps/step-{step_index:04}.patch)")]
    MissingPatch {
        /// The step.
        step_index: u32,
    },
    /// The patch's hash is not the one its state recorded.
    #[error("patch of step {step_index} was altered: its sha256 is {actual}, its state says {expected}")]
    AlteredPatch {
        /// The step.
        step_index: u32,
        /// What the state says.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The patches do not apply onto the baseline.
    #[error("replaying the patches failed: {0}")]
    Replay(WorkspaceError),
    /// The artifacts could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// Run blocking work — libgit2, file-system walks, artifact writes — off
/// the async worker threads, so a large workspace being rebuilt never holds
/// up another job's heartbeat on the same runtime. On a current-thread
/// runtime (a unit test) there is no other thread to hand over to, and the
/// work runs in place.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
