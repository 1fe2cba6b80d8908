//! The attempt loop (docs/ARCHITECTURE.md#self-heal): run a job's steps over its workspace,
//! one fresh instance per attempt; classify each failure, compute its
//! signature and diff, apply the no-progress rule and walk the strategy
//! ladder — soft reset, hard reset (rebuild from baseline + patches), or
//! give up with a queue retry or a terminal failure. Every decision leaves
//! an artifact, an event and a metric.
//!
//! `selfheal` decides; the runtime runs, the workspace snapshots and
//! rebuilds, artifacts/events/metrics record. Nothing here knows about
//! queues, leases or HTTP.

mod classify;
mod local;
mod strategy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

pub use classify::{classify, classify_message, failure_signature, FailureClass, FailureSignature};
pub use local::{run_local, JobStatus, LocalRunError, LocalRunOptions};
pub use strategy::{decide, DecisionInput, NoProgressTracker, Strategy};

use stepd_job::payload::{ResolvedStep, ValidatedJob};
use stepd_records::artifacts::{ArtifactError, AttemptRecord, JobArtifacts, StepState, SCHEMA_VERSION};
use stepd_records::events::{AttemptFailure, Event, EventSink, SelfHealDecision, StepAttemptRef};
use stepd_records::metrics::{MetricScope, Metrics};
use stepd_records::redact::Redactor;
use stepd_runtime::{
    AttemptLimits, AttemptOutcome, AttemptReport, AttemptRequest, CancellationToken, Plugin, RetryContext, Runtime,
    RuntimeError, StepContext,
};
use stepd_settings::SelfHealConfig;
use stepd_workspace::{Patch, TreeId, Workspace, WorkspaceError};

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
    /// not count as done until this returns `Ok`.
    fn checkpointed<'a>(&'a self, patch: &'a [u8], state: &'a StepState) -> BoxFuture<'a, Result<(), String>>;
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

/// One job's self-heal state: its workspace, baseline, budgets and
/// recorders. Lives as long as the job runs in this process.
pub struct JobRun<'a> {
    runtime: &'a Runtime,
    job_id: String,
    job: ValidatedJob,
    config: SelfHealConfig,
    artifacts: JobArtifacts,
    events: EventSink,
    metrics: Metrics,
    redactor: Arc<Redactor>,
    workspace: Workspace,
    baseline: TreeId,
    cancel: CancellationToken,
    resets_used: u32,
    /// The tree the next step starts from: the workspace as of the last
    /// checkpoint or rebuild (or as first seen). It survives a torn-down
    /// pass and an operator's hold, so whatever a stopped attempt or a human
    /// left in the workspace lands in the step's patch, and the baseline
    /// plus the patches always rebuild the workspace as it is.
    current_tree: Option<TreeId>,
    /// The last attempt number of each step, across job attempts.
    attempts_used: HashMap<u32, u32>,
    plugins: HashMap<u32, Plugin>,
    hooks: Option<Arc<dyn RunHooks>>,
}

/// What a [`JobRun`] is made of.
pub struct JobRunParts<'a> {
    /// The runtime attempts run on.
    pub runtime: &'a Runtime,
    /// The job's id.
    pub job_id: String,
    /// The validated job.
    pub job: ValidatedJob,
    /// Budgets, the job's overrides applied.
    pub config: SelfHealConfig,
    /// Where artifacts go.
    pub artifacts: JobArtifacts,
    /// Where events go.
    pub events: EventSink,
    /// Where metrics go.
    pub metrics: Metrics,
    /// The scrubber.
    pub redactor: Arc<Redactor>,
    /// The job's workspace.
    pub workspace: Workspace,
    /// The baseline tree.
    pub baseline: TreeId,
    /// The job's cancel flag.
    pub cancel: CancellationToken,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl<'a> JobRun<'a> {
    /// Assemble a job run.
    pub fn new(parts: JobRunParts<'a>) -> Self {
        JobRun {
            runtime: parts.runtime,
            job_id: parts.job_id,
            job: parts.job,
            config: parts.config,
            artifacts: parts.artifacts,
            events: parts.events,
            metrics: parts.metrics,
            redactor: parts.redactor,
            workspace: parts.workspace,
            baseline: parts.baseline,
            cancel: parts.cancel,
            resets_used: 0,
            current_tree: None,
            attempts_used: HashMap::new(),
            plugins: HashMap::new(),
            hooks: None,
        }
    }

    /// The same run, with a worker's hooks.
    pub fn with_hooks(mut self, hooks: Arc<dyn RunHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Use `cancel` from now on (a worker starts a new pass after tearing
    /// the last one down for an operator's recovery request).
    pub fn set_cancel(&mut self, cancel: CancellationToken) {
        self.cancel = cancel;
    }

    /// Continue attempt numbering after `last` (step index → last attempt
    /// number), as recorded by another process that ran the job before.
    pub fn continue_attempt_numbers(&mut self, last: impl IntoIterator<Item = (u32, u32)>) {
        for (step, attempt) in last {
            let entry = self.attempts_used.entry(step).or_insert(0);
            *entry = (*entry).max(attempt);
        }
    }

    /// True when step `k` has a checkpoint in this run's artifacts.
    pub fn has_checkpoint(&self, k: u32) -> bool {
        matches!(self.artifacts.read_step_state(k), Ok(Some(_)))
    }

    // `&mut self` (not `&self`) across awaits: the run's future stays
    // `Send` although a workspace (libgit2) is not `Sync`.
    async fn hold_if_asked(&mut self, at: &StepAttemptRef) {
        if let Some(hooks) = self.hooks.clone() {
            hooks.before_attempt(at).await;
        }
    }

    /// Rebuild the workspace as it was before step `k`: baseline, then the
    /// patches of steps `0..k`, each checked against its state's hash first.
    /// Returns the rebuilt tree.
    pub fn rebuild_for_step(&mut self, k: u32) -> Result<TreeId, RebuildError> {
        let mut patches: Vec<Vec<u8>> = Vec::new();
        for step_index in 0..k {
            let state = self
                .artifacts
                .read_step_state(step_index)?
                .ok_or(RebuildError::MissingState { step_index })?;
            let patch = self
                .artifacts
                .read_step_patch(step_index)?
                .ok_or(RebuildError::MissingPatch { step_index })?;
            let actual = sha256_hex(&patch);
            match &state.diff_hash {
                Some(expected) if *expected != actual => {
                    return Err(RebuildError::AlteredPatch {
                        step_index,
                        expected: expected.clone(),
                        actual,
                    })
                }
                None if !patch.is_empty() => {
                    return Err(RebuildError::AlteredPatch {
                        step_index,
                        expected: "an empty patch".into(),
                        actual,
                    })
                }
                _ => {}
            }
            if !patch.is_empty() {
                patches.push(patch);
            }
        }
        let refs: Vec<&[u8]> = patches.iter().map(Vec::as_slice).collect();
        self.current_tree = None;
        let tree = self
            .workspace
            .rebuild_from_baseline(self.baseline, &refs)
            .map_err(RebuildError::Replay)?;
        self.current_tree = Some(tree);
        Ok(tree)
    }

    /// Resume at step `k`: rebuild the workspace from the checkpoints before
    /// it, forget the checkpoints from `k` on, and record
    /// `task.resume.from_step`.
    pub fn resume_from_step(&mut self, k: u32) -> Result<Result<(), RebuildError>, SelfHealError> {
        // Rebuild first: if the replay fails, every checkpoint is kept.
        if let Err(e) = self.rebuild_for_step(k) {
            return Ok(Err(e));
        }
        for step in self.job.steps.iter().filter(|s| s.index >= k) {
            self.artifacts.remove_step_checkpoint(step.index)?;
        }
        let step_id = self
            .job
            .steps
            .iter()
            .find(|s| s.index == k)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        self.events.emit(Event::ResumeFromStep {
            step_id,
            step_index: k,
            patches_replayed: k,
        })?;
        Ok(Ok(()))
    }

    /// Run the steps from `start` to the end, healing as the ladder says.
    pub async fn run_from(&mut self, start: u32) -> Result<PassOutcome, SelfHealError> {
        let steps: Vec<ResolvedStep> = self.job.steps.iter().filter(|s| s.index >= start).cloned().collect();
        for step in &steps {
            if self.cancel.is_cancelled() {
                return Ok(PassOutcome::Cancelled);
            }
            match self.run_step(step).await? {
                PassOutcome::Succeeded => {}
                other => return Ok(other),
            }
        }
        Ok(PassOutcome::Succeeded)
    }

    fn plugin_for(&mut self, step: &ResolvedStep) -> Result<Plugin, String> {
        if let Some(plugin) = self.plugins.get(&step.index) {
            return Ok(plugin.clone());
        }
        let plugin = self.runtime.load_plugin(&step.plugin_path).map_err(|e| e.to_string())?;
        if plugin.sha256() != step.plugin_sha256 {
            return Err(format!(
                "plugin {} changed since the job was validated (sha256 {}, expected {})",
                step.plugin_name,
                plugin.sha256(),
                step.plugin_sha256
            ));
        }
        self.plugins.insert(step.index, plugin.clone());
        Ok(plugin)
    }

    /// Run one step until it succeeds or self-heal gives up on it.
    async fn run_step(&mut self, step: &ResolvedStep) -> Result<PassOutcome, SelfHealError> {
        let plugin = match self.plugin_for(step) {
            Ok(plugin) => plugin,
            Err(reason) => {
                return Ok(PassOutcome::Failed {
                    step_id: step.id.clone(),
                    step_index: step.index,
                    class: FailureClass::DeterministicContract,
                    reason,
                });
            }
        };
        let first_attempt = self.attempts_used.get(&step.index).copied().unwrap_or(0) + 1;
        let first_at = StepAttemptRef {
            step_id: step.id.clone(),
            step_index: step.index,
            attempt: first_attempt,
        };
        self.hold_if_asked(&first_at).await;
        if self.cancel.is_cancelled() {
            return Ok(PassOutcome::Cancelled);
        }
        let mut start_tree = match self.current_tree {
            Some(tree) => tree,
            None => {
                let tree = self.workspace.snapshot()?;
                self.current_tree = Some(tree);
                tree
            }
        };
        let mut tracker = NoProgressTracker::default();
        let mut retry_context: Option<RetryContext> = None;
        let mut healed_by: Option<(FailureClass, Strategy)> = None;
        // Attempt numbers run on across job attempts (a queue retry's first
        // attempt of this step is 4, not 1 again), so no record is
        // overwritten; the budget counts the attempts of this pass.
        let mut attempt = first_attempt;
        loop {
            self.attempts_used.insert(step.index, attempt);
            let at = StepAttemptRef {
                step_id: step.id.clone(),
                step_index: step.index,
                attempt,
            };
            if attempt != first_attempt {
                self.hold_if_asked(&at).await;
                if self.cancel.is_cancelled() {
                    return Ok(PassOutcome::Cancelled);
                }
            }
            let scope = MetricScope {
                step: &step.id,
                attempt,
            };
            self.events.emit(Event::AttemptStarted(at.clone()))?;
            let report = self.run_attempt(step, &plugin, attempt, retry_context.take()).await?;
            self.metrics
                .step_duration(scope, Duration::from_secs_f64(report.wall_clock_seconds));
            self.artifacts
                .append_step_log(step.index, &attempt_log(attempt, &report))?;
            let after = self.workspace.snapshot()?;
            let patch = self.workspace.diff(start_tree, after)?;

            if let AttemptOutcome::Succeeded { summary, .. } = &report.outcome {
                if let Some(p) = &patch {
                    // A patch is kept byte-exact (replay checks its hash), so
                    // it cannot be redacted: a step that wrote a secret into
                    // the workspace fails instead of leaking it to disk.
                    if self.redactor.contains_secret(&String::from_utf8_lossy(&p.bytes)) {
                        return Ok(PassOutcome::Failed {
                            step_id: step.id.clone(),
                            step_index: step.index,
                            class: FailureClass::DeterministicPolicy,
                            reason: format!(
                                "step {} wrote a secret into the workspace ({}); its patch was not kept",
                                step.id,
                                p.changed_files.join(", ")
                            ),
                        });
                    }
                }
                tracker.record_success();
                let state = StepState {
                    schema_version: SCHEMA_VERSION,
                    step_id: step.id.clone(),
                    step_index: step.index,
                    attempt,
                    summary: summary.clone(),
                    diff_hash: patch.as_ref().map(|p| p.sha256.clone()),
                    changed_files: patch.as_ref().map(|p| p.changed_files.clone()).unwrap_or_default(),
                    finished_at: now_rfc3339(),
                };
                let bytes = patch.as_ref().map(|p| p.bytes.as_slice()).unwrap_or_default();
                self.artifacts.write_step_checkpoint(bytes, &state)?;
                if let Some(hooks) = self.hooks.clone() {
                    hooks
                        .checkpointed(bytes, &state)
                        .await
                        .map_err(|message| SelfHealError::Checkpoint {
                            step_index: step.index,
                            message,
                        })?;
                }
                self.current_tree = Some(after);
                self.events.emit(Event::AttemptFinished {
                    step: at,
                    summary: summary.clone(),
                    diff_hash: state.diff_hash.clone(),
                    wall_clock_seconds: report.wall_clock_seconds,
                    fuel_consumed: report.fuel_consumed,
                })?;
                if let Some((class, strategy)) = healed_by {
                    self.metrics.recovered(scope, class.as_str(), strategy.as_str());
                }
                return Ok(PassOutcome::Succeeded);
            }
            if report.outcome == AttemptOutcome::Cancelled || self.cancel.is_cancelled() {
                return Ok(PassOutcome::Cancelled);
            }

            let failure = self.assess_failure(step, attempt, &report, patch.as_ref(), &mut tracker, scope);
            let strategy = decide(DecisionInput {
                cancel_requested: self.cancel.is_cancelled(),
                class: failure.class,
                attempt: attempt - first_attempt + 1,
                step_max_attempts: self.config.step_max_attempts,
                resets_left: self.config.job_self_heal_max_resets.saturating_sub(self.resets_used),
            });
            let next_context = matches!(strategy, Strategy::SoftReset | Strategy::HardReset)
                .then(|| self.retry_context(&failure, patch.as_ref(), strategy));
            self.record_failure(
                step,
                attempt,
                &report,
                &failure,
                patch.as_ref(),
                strategy,
                next_context.as_ref(),
            )?;

            let decision = SelfHealDecision {
                step: at,
                failure_class: failure.class.as_str().to_owned(),
                failure_signature: failure.signature.hash.clone(),
                diff_hash: failure.diff_hash.clone(),
                strategy: strategy.as_str().to_owned(),
                retryable: None,
            };
            match strategy {
                Strategy::SoftReset => {
                    self.events.emit(Event::SelfHealTriggered(decision))?;
                }
                Strategy::HardReset => {
                    self.events.emit(Event::SelfHealEscalated(decision))?;
                    self.resets_used += 1;
                    match self.rebuild_for_step(step.index) {
                        Ok(tree) => start_tree = tree,
                        Err(e) => {
                            return Ok(PassOutcome::Failed {
                                step_id: step.id.clone(),
                                step_index: step.index,
                                class: FailureClass::DeterministicRepo,
                                reason: format!("hard reset of step {} failed: {e}", step.id),
                            })
                        }
                    }
                }
                Strategy::QueueRetry | Strategy::Fail => {
                    // Self-heal gives up: the queue may retry the job, or the
                    // failure is deterministic and the job fails.
                    let retryable = strategy == Strategy::QueueRetry;
                    self.metrics.exhausted(scope, failure.class.as_str(), strategy.as_str());
                    self.events.emit(Event::SelfHealExhausted(SelfHealDecision {
                        retryable: Some(retryable),
                        ..decision
                    }))?;
                    return Ok(if retryable {
                        PassOutcome::RetryableExhausted {
                            step_index: step.index,
                            class: failure.class,
                        }
                    } else {
                        PassOutcome::Failed {
                            step_id: step.id.clone(),
                            step_index: step.index,
                            class: failure.class,
                            reason: failure.summary,
                        }
                    });
                }
                Strategy::Cancel => return Ok(PassOutcome::Cancelled),
            }
            healed_by = Some((failure.class, strategy));
            retry_context = next_context;
            attempt += 1;
        }
    }

    async fn run_attempt(
        &mut self,
        step: &ResolvedStep,
        plugin: &Plugin,
        attempt: u32,
        retry_context: Option<RetryContext>,
    ) -> Result<AttemptReport, RuntimeError> {
        let context = StepContext {
            job_id: self.job_id.clone(),
            step_id: step.id.clone(),
            step_index: step.index,
            attempt,
            objective: self.job.payload.task.objective.clone(),
            title: step.title.clone(),
            instructions: step.instructions.clone(),
            inputs: step.inputs.clone(),
            retry_context,
        };
        let request = AttemptRequest {
            workspace: self.workspace.root().to_owned(),
            context,
            limits: AttemptLimits::new(self.config.step_timeout(), self.config.step_idle_timeout()),
            cancel: self.cancel.clone(),
        };
        self.runtime.run_attempt(plugin, request).await
    }

    /// Classify, sign and measure a failed attempt, applying the
    /// no-progress rule.
    fn assess_failure(
        &self,
        step: &ResolvedStep,
        attempt: u32,
        report: &AttemptReport,
        patch: Option<&Patch>,
        tracker: &mut NoProgressTracker,
        scope: MetricScope<'_>,
    ) -> AssessedFailure {
        let base_class = classify(&report.outcome).unwrap_or(FailureClass::TransientRuntime);
        let signature = failure_signature(&step.id, &step.plugin_name, &report.outcome, &self.redactor);
        let diff_hash = patch.map(|p| p.sha256.clone());
        let run = tracker.record_failure(&signature.hash, diff_hash.as_deref());
        let class = if !base_class.is_deterministic() && run >= self.config.step_no_progress_limit {
            self.metrics.no_progress(scope);
            FailureClass::StuckNoProgress
        } else {
            base_class
        };
        match report.outcome {
            AttemptOutcome::WallTimeout => self.metrics.wall_timeout(scope),
            AttemptOutcome::IdleTimeout => self.metrics.idle_timeout(scope),
            _ => {}
        }
        // Redact the whole text first, then shorten it: a cut through a
        // secret would leave a prefix the scrubber no longer recognises.
        let summary: String = self
            .redactor
            .redact(&failure_summary(step, attempt, report, run))
            .chars()
            .take(1000)
            .collect();
        AssessedFailure {
            class,
            signature,
            diff_hash,
            summary,
        }
    }

    fn retry_context(&self, failure: &AssessedFailure, patch: Option<&Patch>, strategy: Strategy) -> RetryContext {
        RetryContext {
            failure_summary: failure.summary.clone(),
            failure_class: failure.class.as_str().to_owned(),
            failure_signature: failure.signature.hash.clone(),
            changed_files: patch.map(|p| p.changed_files.clone()).unwrap_or_default(),
            diff_hash: failure.diff_hash.clone(),
            strategy: strategy.as_str().to_owned(),
            constraints: RETRY_CONSTRAINTS.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_failure(
        &self,
        step: &ResolvedStep,
        attempt: u32,
        report: &AttemptReport,
        failure: &AssessedFailure,
        patch: Option<&Patch>,
        strategy: Strategy,
        next_context: Option<&RetryContext>,
    ) -> Result<(), SelfHealError> {
        let scope = MetricScope {
            step: &step.id,
            attempt,
        };
        self.metrics
            .attempt_failed(scope, failure.class.as_str(), strategy.as_str(), report.outcome.name());
        self.artifacts.write_attempt_record(&AttemptRecord {
            step_id: step.id.clone(),
            step_index: step.index,
            attempt,
            failure_class: failure.class.as_str().to_owned(),
            failure_summary: failure.summary.clone(),
            failure_signature: failure.signature.text.clone(),
            failure_signature_hash: failure.signature.hash.clone(),
            strategy: strategy.as_str().to_owned(),
            wall_clock_seconds: report.wall_clock_seconds,
            idle_seconds: report.idle_seconds,
            fuel_consumed: report.fuel_consumed,
            idle_timeout_triggered: report.outcome == AttemptOutcome::IdleTimeout,
            diff_hash: failure.diff_hash.clone(),
            changed_files: patch.map(|p| p.changed_files.clone()).unwrap_or_default(),
            retry_context: next_context.map(retry_context_json),
            timestamp: now_rfc3339(),
        })?;
        self.events.emit(Event::AttemptFailed(AttemptFailure {
            step: StepAttemptRef {
                step_id: step.id.clone(),
                step_index: step.index,
                attempt,
            },
            outcome: report.outcome.name().to_owned(),
            strategy: strategy.as_str().to_owned(),
            failure_class: failure.class.as_str().to_owned(),
            failure_signature: failure.signature.hash.clone(),
            diff_hash: failure.diff_hash.clone(),
            wall_clock_seconds: report.wall_clock_seconds,
            fuel_consumed: report.fuel_consumed,
        }))?;
        Ok(())
    }
}

/// A failed attempt, judged.
struct AssessedFailure {
    class: FailureClass,
    signature: FailureSignature,
    diff_hash: Option<String>,
    summary: String,
}

/// The retry context as the attempt artifact records it (camelCase, like
/// every artifact).
fn retry_context_json(context: &RetryContext) -> serde_json::Value {
    serde_json::json!({
        "failureSummary": context.failure_summary,
        "failureClass": context.failure_class,
        "failureSignature": context.failure_signature,
        "changedFiles": context.changed_files,
        "diffHash": context.diff_hash,
        "strategy": context.strategy,
        "constraints": context.constraints,
    })
}

/// One paragraph on what went wrong, for the operator and the next attempt.
fn failure_summary(step: &ResolvedStep, attempt: u32, report: &AttemptReport, identical_run: u32) -> String {
    let last_line = report
        .output
        .text()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned);
    let mut summary = format!(
        "Attempt {attempt} of step {} (plugin {}) {} after {:.2}s ({:.2}s without output).",
        step.id, step.plugin_name, report.outcome, report.wall_clock_seconds, report.idle_seconds
    );
    if identical_run > 1 {
        summary.push_str(&format!(
            " The same failure with the same workspace changes {identical_run} times in a row."
        ));
    }
    if let Some(line) = last_line {
        summary.push_str(&format!(" Last output: {line}"));
    }
    summary
}

/// The block an attempt adds to its step's log.
fn attempt_log(attempt: u32, report: &AttemptReport) -> String {
    let mut text = format!("=== attempt {attempt} ===\n");
    text.push_str(&report.output.text());
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if report.output.truncated() {
        text.push_str(&format!(
            "[output truncated: {} bytes dropped]\n",
            report.output.dropped_bytes
        ));
    }
    text.push_str(&format!(
        "=== attempt {attempt}: {} ({:.2}s) ===\n",
        report.outcome, report.wall_clock_seconds
    ));
    text
}
