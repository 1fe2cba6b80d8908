//! One step's attempts: run a fresh instance, snapshot and diff the
//! workspace, then either checkpoint the step or judge the failure and heal
//! — soft reset, hard reset, or give up. The decisions are pure
//! (`strategy::decide`, [`give_up`] here, `classify`); this module carries
//! them out and records each one as an artifact, an event and a metric.

use std::time::Duration;

use stepd_job::payload::ResolvedStep;
use stepd_records::artifacts::{AttemptRecord, StepState, SCHEMA_VERSION};
use stepd_records::events::{AttemptFailure, Event, SelfHealDecision, StepAttemptRef};
use stepd_records::metrics::MetricScope;
use stepd_records::phases::{self, Phase};
use stepd_runtime::{
    AttemptLimits, AttemptOutcome, AttemptReport, AttemptRequest, Plugin, RetryContext, RuntimeError, StepContext,
};
use stepd_workspace::{Patch, TreeId};

use crate::classify::{classify, failure_signature, FailureClass, FailureSignature};
use crate::grants;
use crate::job_run::now_rfc3339;
use crate::strategy::{decide, DecisionInput, NoProgressTracker, Strategy};
use crate::{blocking, JobRun, PassOutcome, SelfHealError, RETRY_CONSTRAINTS};

/// One step's attempts as they go.
struct StepAttempts {
    /// The first attempt number of this pass (numbers run on across job
    /// attempts, so a queue retry's first attempt of a step is 4, not 1;
    /// the budget counts the attempts of this pass).
    first_attempt: u32,
    /// The attempt running now.
    attempt: u32,
    /// The tree the step's patch is taken from.
    start_tree: TreeId,
    /// Identical consecutive failures (the no-progress rule).
    tracker: NoProgressTracker,
    /// What the next attempt is told.
    retry_context: Option<RetryContext>,
    /// The last healing, for the `recovered` metric when the step succeeds.
    healed_by: Option<(FailureClass, Strategy)>,
}

/// What one attempt left behind.
struct Tried {
    report: AttemptReport,
    /// The workspace after the attempt.
    after: TreeId,
    /// Its changes since the step's start tree.
    patch: Option<Patch>,
}

/// A failed attempt with its verdict.
#[derive(Clone, Copy)]
struct Judged<'a> {
    step: &'a ResolvedStep,
    attempt: u32,
    tried: &'a Tried,
    failure: &'a AssessedFailure,
    strategy: Strategy,
}

/// After an attempt: another one, or the step is done.
enum Next {
    Again,
    Done(PassOutcome),
}

/// A deterministic failure of `step`.
fn step_failed(step: &ResolvedStep, class: FailureClass, reason: String) -> PassOutcome {
    PassOutcome::Failed {
        step_id: step.id.clone(),
        step_index: step.index,
        class,
        reason,
    }
}

/// How the pass ends when self-heal stops trying `step` with `strategy`;
/// `None` while it heals (a soft or hard reset runs another attempt).
pub(crate) fn give_up(
    strategy: Strategy,
    step: &ResolvedStep,
    class: FailureClass,
    summary: &str,
) -> Option<PassOutcome> {
    match strategy {
        Strategy::SoftReset | Strategy::HardReset => None,
        Strategy::QueueRetry => Some(PassOutcome::RetryableExhausted {
            step_index: step.index,
            class,
        }),
        Strategy::Fail => Some(step_failed(step, class, summary.to_owned())),
        Strategy::Cancel => Some(PassOutcome::Cancelled),
    }
}

impl JobRun<'_> {
    /// Run one step until it succeeds or self-heal gives up on it.
    pub(crate) async fn run_step(&mut self, step: &ResolvedStep) -> Result<PassOutcome, SelfHealError> {
        let plugin = match self.plugin_for(step) {
            Ok(plugin) => plugin,
            Err(reason) => return Ok(step_failed(step, FailureClass::DeterministicContract, reason)),
        };
        // Before any instance: a grant this worker cannot honour fails the
        // step here, and every secret is known to the redactor from now on.
        let source = grants::SecretSource {
            env: |name| std::env::var(name).ok(),
            dir: self.secrets_dir.as_deref(),
        };
        self.grants = match grants::resolve(&step.capabilities, &source, &self.redactor) {
            Ok(granted) => granted,
            Err(reason) => return Ok(step_failed(step, FailureClass::DeterministicPolicy, reason)),
        };
        let first_attempt = self.attempts_used.get(&step.index).copied().unwrap_or(0) + 1;
        if !self.hold(step, first_attempt).await {
            return Ok(PassOutcome::Cancelled);
        }
        let mut state = StepAttempts {
            first_attempt,
            attempt: first_attempt,
            start_tree: self.start_tree()?,
            tracker: NoProgressTracker::default(),
            // An earlier job attempt's last failure of this step, if any.
            retry_context: self.carried_contexts.remove(&step.index),
            healed_by: None,
        };
        loop {
            self.attempts_used.insert(step.index, state.attempt);
            if state.attempt != first_attempt && !self.hold(step, state.attempt).await {
                return Ok(PassOutcome::Cancelled);
            }
            let tried = self.try_once(step, &plugin, &mut state).await?;
            let next = if let AttemptOutcome::Succeeded { summary, .. } = &tried.report.outcome {
                Next::Done(self.finish_step(step, &state, &tried, summary).await?)
            } else if tried.report.outcome == AttemptOutcome::Cancelled || self.cancel.is_cancelled() {
                Next::Done(PassOutcome::Cancelled)
            } else if let AttemptOutcome::HostUnavailable { message } = &tried.report.outcome {
                Next::Done(PassOutcome::HostUnavailable {
                    step_index: step.index,
                    reason: message.clone(),
                })
            } else {
                self.heal(step, &mut state, &tried)?
            };
            match next {
                Next::Done(outcome) => return Ok(outcome),
                Next::Again => state.attempt += 1,
            }
        }
    }

    /// Hold while an operator asks (pause, takeover); false when the run
    /// was cancelled meanwhile.
    async fn hold(&mut self, step: &ResolvedStep, attempt: u32) -> bool {
        let at = StepAttemptRef {
            step_id: step.id.clone(),
            step_index: step.index,
            attempt,
        };
        self.hold_if_asked(&at).await;
        !self.cancel.is_cancelled()
    }

    /// The tree the next step's patch starts from: the last checkpoint's or
    /// rebuild's, else the workspace as it is now.
    fn start_tree(&mut self) -> Result<TreeId, SelfHealError> {
        if let Some(tree) = self.current_tree {
            return Ok(tree);
        }
        let tree = blocking(|| phases::timed(Phase::Workspace, || self.workspace.snapshot()))?;
        self.current_tree = Some(tree);
        Ok(tree)
    }

    /// The attempt's HTTP requests in the metrics. Origins label them only
    /// when the step was granted them: the guest names any origin it likes,
    /// and each label value is a series a metrics store keeps for good.
    fn count_http(&self, scope: MetricScope<'_>, step: &ResolvedStep, report: &AttemptReport) {
        let granted = |origin: &str| {
            step.capabilities
                .http
                .as_ref()
                .is_some_and(|h| h.origins.iter().any(|o| o == origin))
        };
        for exchange in &report.http.exchanges {
            let origin = if granted(&exchange.origin) {
                exchange.origin.as_str()
            } else {
                "other"
            };
            match (&exchange.denied, exchange.status) {
                (Some(_), _) => self.metrics.http_denied(scope, origin),
                (None, Some(status)) => self.metrics.http_request(scope, origin, status),
                (None, None) => {}
            }
        }
    }

    /// Run one attempt, then log it and take the workspace's changes.
    async fn try_once(
        &mut self,
        step: &ResolvedStep,
        plugin: &Plugin,
        state: &mut StepAttempts,
    ) -> Result<Tried, SelfHealError> {
        let attempt = state.attempt;
        self.events.emit(Event::AttemptStarted(StepAttemptRef {
            step_id: step.id.clone(),
            step_index: step.index,
            attempt,
        }))?;
        let running = self.metrics.attempt_running();
        let retry_context = state.retry_context.take();
        let mut report =
            phases::timed_async(Phase::Wasm, self.run_attempt(step, plugin, attempt, retry_context)).await?;
        drop(running);
        let scope = MetricScope {
            step: &step.id,
            attempt,
        };
        self.metrics
            .step_duration(scope, Duration::from_secs_f64(report.wall_clock_seconds));
        self.count_http(scope, step, &report);
        let start_tree = state.start_tree;
        let (after, patch) = blocking(|| -> Result<_, SelfHealError> {
            let changes = phases::timed(Phase::Workspace, || {
                self.workspace
                    .snapshot_within(self.quota)
                    .and_then(|after| Ok((after, self.workspace.diff_within(start_tree, after, self.quota)?)))
            });
            let changes = match changes {
                Ok(changes) => changes,
                // The step left the workspace over a limit: its failure.
                Err(e) if e.is_limit() => {
                    report.outcome = AttemptOutcome::WorkspaceLimit { message: e.to_string() };
                    (start_tree, None)
                }
                Err(e) => return Err(e.into()),
            };
            self.artifacts
                .append_step_log(step.index, &attempt_log(attempt, &report))?;
            Ok(changes)
        })?;
        Ok(Tried { report, after, patch })
    }

    /// The attempt succeeded: keep the step's checkpoint (patch and state),
    /// here and wherever the hooks keep it, unless its patch holds a secret.
    async fn finish_step(
        &mut self,
        step: &ResolvedStep,
        state: &StepAttempts,
        tried: &Tried,
        summary: &str,
    ) -> Result<PassOutcome, SelfHealError> {
        let patch = tried.patch.as_ref();
        // A patch is kept byte-exact (replay checks its hash), so it cannot
        // be redacted: a step that wrote a secret into the workspace fails
        // instead of leaking it to disk.
        if let Some(p) = patch.filter(|p| self.redactor.contains_secret(&String::from_utf8_lossy(&p.bytes))) {
            let reason = format!(
                "step {} wrote a secret into the workspace ({}); its patch was not kept",
                step.id,
                p.changed_files.join(", ")
            );
            return Ok(step_failed(step, FailureClass::DeterministicPolicy, reason));
        }
        let checkpoint = StepState {
            schema_version: SCHEMA_VERSION,
            step_id: step.id.clone(),
            step_index: step.index,
            attempt: state.attempt,
            summary: summary.to_owned(),
            diff_hash: patch.map(|p| p.sha256.clone()),
            changed_files: patch.map(|p| p.changed_files.clone()).unwrap_or_default(),
            finished_at: now_rfc3339(),
        };
        let bytes = patch.map(|p| p.bytes.as_slice()).unwrap_or_default();
        blocking(|| self.artifacts.write_step_checkpoint(bytes, &checkpoint))?;
        if let Some(hooks) = self.hooks.clone() {
            let last_step = self.job.steps.last().is_some_and(|last| last.index == step.index);
            hooks
                .checkpointed(bytes, &checkpoint, last_step)
                .await
                .map_err(|message| SelfHealError::Checkpoint {
                    step_index: step.index,
                    message,
                })?;
        }
        self.remember_checkpoint(bytes, &checkpoint);
        self.current_tree = Some(tried.after);
        self.events.emit(Event::AttemptFinished {
            step: StepAttemptRef {
                step_id: step.id.clone(),
                step_index: step.index,
                attempt: state.attempt,
            },
            summary: summary.to_owned(),
            diff_hash: checkpoint.diff_hash.clone(),
            wall_clock_seconds: tried.report.wall_clock_seconds,
            fuel_consumed: tried.report.fuel_consumed,
            granted: grants::used(&step.capabilities, &tried.report.http, &self.redactor),
        })?;
        if let Some((class, strategy)) = state.healed_by {
            let scope = MetricScope {
                step: &step.id,
                attempt: state.attempt,
            };
            self.metrics.recovered(scope, class.as_str(), strategy.as_str());
        }
        Ok(PassOutcome::Succeeded)
    }

    /// The attempt failed: judge it, walk the ladder, record the decision
    /// and carry it out.
    fn heal(&mut self, step: &ResolvedStep, state: &mut StepAttempts, tried: &Tried) -> Result<Next, SelfHealError> {
        let attempt = state.attempt;
        let scope = MetricScope {
            step: &step.id,
            attempt,
        };
        let failure = self.assess_failure(
            step,
            attempt,
            &tried.report,
            tried.patch.as_ref(),
            &mut state.tracker,
            scope,
        );
        let strategy = decide(DecisionInput {
            cancel_requested: self.cancel.is_cancelled(),
            class: failure.class,
            attempt: attempt - state.first_attempt + 1,
            step_max_attempts: self.config.step_max_attempts,
            resets_left: self.config.job_self_heal_max_resets.saturating_sub(self.resets_used),
        });
        // What the next attempt is told — in this pass (a soft or hard
        // reset) or the job's next attempt (a queue retry, on any worker:
        // the failure's event carries it to the store).
        let next_context = matches!(
            strategy,
            Strategy::SoftReset | Strategy::HardReset | Strategy::QueueRetry
        )
        .then(|| self.retry_context(&failure, tried.patch.as_ref(), strategy));
        if let Some(context) = &next_context {
            self.last_contexts.insert(step.index, context.clone());
        }
        let judged = Judged {
            step,
            attempt,
            tried,
            failure: &failure,
            strategy,
        };
        self.record_failure(&judged, next_context.as_ref())?;
        let decision = SelfHealDecision {
            step: StepAttemptRef {
                step_id: step.id.clone(),
                step_index: step.index,
                attempt,
            },
            failure_class: failure.class.as_str().to_owned(),
            failure_signature: failure.signature.hash.clone(),
            diff_hash: failure.diff_hash.clone(),
            strategy: strategy.as_str().to_owned(),
            retryable: None,
        };
        if let Some(outcome) = give_up(strategy, step, failure.class, &failure.summary) {
            if let Some(context) = next_context {
                self.carried_contexts.insert(step.index, context);
            }
            if matches!(strategy, Strategy::QueueRetry | Strategy::Fail) {
                // Self-heal gives up: the queue may retry the job, or the
                // failure is deterministic and the job fails.
                self.metrics.exhausted(scope, failure.class.as_str(), strategy.as_str());
                self.events.emit(Event::SelfHealExhausted(SelfHealDecision {
                    retryable: Some(strategy == Strategy::QueueRetry),
                    ..decision
                }))?;
            }
            return Ok(Next::Done(outcome));
        }
        if strategy == Strategy::HardReset {
            self.events.emit(Event::SelfHealEscalated(decision))?;
            self.resets_used += 1;
            match self.rebuild_for_step(step.index) {
                Ok(tree) => state.start_tree = tree,
                Err(e) => {
                    let reason = format!("hard reset of step {} failed: {e}", step.id);
                    return Ok(Next::Done(step_failed(step, FailureClass::DeterministicRepo, reason)));
                }
            }
        } else {
            self.events.emit(Event::SelfHealTriggered(decision))?;
        }
        state.healed_by = Some((failure.class, strategy));
        state.retry_context = next_context;
        Ok(Next::Again)
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
            grants: self.grants.clone(),
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

    /// Record a judged failure: its metric, its attempt record and its
    /// `task.step.attempt.failed` event.
    fn record_failure(&self, judged: &Judged<'_>, next_context: Option<&RetryContext>) -> Result<(), SelfHealError> {
        let Judged {
            step,
            attempt,
            tried,
            failure,
            strategy,
        } = *judged;
        let (report, patch) = (&tried.report, tried.patch.as_ref());
        let scope = MetricScope {
            step: &step.id,
            attempt,
        };
        self.metrics
            .attempt_failed(scope, failure.class.as_str(), strategy.as_str(), report.outcome.name());
        let record = AttemptRecord {
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
            granted: grants::used(&step.capabilities, &report.http, &self.redactor),
        };
        blocking(|| self.artifacts.write_attempt_record(&record))?;
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
            granted: grants::used(&step.capabilities, &report.http, &self.redactor),
            retry_context: next_context.map(retry_context_json),
        }))?;
        Ok(())
    }
}

/// A failed attempt, judged.
pub(crate) struct AssessedFailure {
    class: FailureClass,
    signature: FailureSignature,
    diff_hash: Option<String>,
    summary: String,
}

/// A retry context read back from its JSON (an event or a stored attempt
/// row), `None` when it is not one.
pub(crate) fn retry_context_from_json(value: &serde_json::Value) -> Option<RetryContext> {
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let list = |field: &str| -> Vec<String> {
        value
            .get(field)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    Some(RetryContext {
        failure_summary: text("failureSummary")?,
        failure_class: text("failureClass")?,
        failure_signature: text("failureSignature")?,
        changed_files: list("changedFiles"),
        diff_hash: text("diffHash"),
        strategy: text("strategy")?,
        constraints: list("constraints"),
    })
}

/// The retry context as the attempt artifact records it (camelCase, like
/// every artifact).
pub(crate) fn retry_context_json(context: &RetryContext) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> ResolvedStep {
        ResolvedStep {
            id: "lint".into(),
            index: 2,
            title: String::new(),
            instructions: String::new(),
            inputs: "{}".into(),
            plugin_name: "no-progress".into(),
            plugin_path: "no-progress.wasm".into(),
            plugin_sha256: String::new(),
            capabilities: Default::default(),
        }
    }

    #[test]
    fn a_reset_heals_and_every_other_rung_ends_the_pass_its_own_way() {
        let class = FailureClass::TransientRuntime;
        assert_eq!(give_up(Strategy::SoftReset, &step(), class, "s"), None);
        assert_eq!(give_up(Strategy::HardReset, &step(), class, "s"), None);
        assert_eq!(
            give_up(Strategy::QueueRetry, &step(), class, "s"),
            Some(PassOutcome::RetryableExhausted { step_index: 2, class })
        );
        assert_eq!(
            give_up(Strategy::Fail, &step(), FailureClass::DeterministicPolicy, "no"),
            Some(PassOutcome::Failed {
                step_id: "lint".into(),
                step_index: 2,
                class: FailureClass::DeterministicPolicy,
                reason: "no".into(),
            })
        );
        assert_eq!(
            give_up(Strategy::Cancel, &step(), class, "s"),
            Some(PassOutcome::Cancelled)
        );
    }
}
