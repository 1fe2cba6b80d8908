//! A job's run in this process: its workspace, baseline, budgets and
//! recorders; passes over its steps (`run_from`), and the rebuilds a hard
//! reset, a resume or an operator's recovery asks for. One step's attempts
//! and their healing live in `step`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

use sha2::{Digest, Sha256};

use stepd_job::payload::{ResolvedStep, ValidatedJob};
use stepd_records::artifacts::{JobArtifacts, StepState};
use stepd_records::events::{Event, EventSink, StepAttemptRef};
use stepd_records::metrics::Metrics;
use stepd_records::phases::{self, Phase};
use stepd_records::redact::Redactor;
use stepd_runtime::{AttemptGrants, CancellationToken, Plugin, RetryContext, Runtime};
use stepd_settings::SelfHealConfig;
use stepd_workspace::{Quota, TreeId, Workspace};

use crate::{blocking, PassOutcome, RebuildError, RunHooks, SelfHealError};

/// One job's self-heal state: its workspace, baseline, budgets and
/// recorders. Lives as long as the job runs in this process.
pub struct JobRun<'a> {
    pub(crate) runtime: &'a Runtime,
    pub(crate) job_id: String,
    pub(crate) job: ValidatedJob,
    pub(crate) config: SelfHealConfig,
    pub(crate) artifacts: JobArtifacts,
    pub(crate) events: EventSink,
    pub(crate) metrics: Metrics,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) workspace: Workspace,
    pub(crate) baseline: TreeId,
    pub(crate) cancel: CancellationToken,
    pub(crate) quota: Quota,
    pub(crate) resets_used: u32,
    /// The tree the next step starts from: the workspace as of the last
    /// checkpoint or rebuild (or as first seen). It survives a torn-down
    /// pass and an operator's hold, so whatever a stopped attempt or a human
    /// left in the workspace lands in the step's patch, and the baseline
    /// plus the patches always rebuild the workspace as it is.
    pub(crate) current_tree: Option<TreeId>,
    /// The last attempt number of each step, across job attempts.
    pub(crate) attempts_used: HashMap<u32, u32>,
    /// What the next attempt of a step is told when an earlier job attempt
    /// ended on its failure (a queue retry, here or on another worker).
    pub(crate) carried_contexts: HashMap<u32, RetryContext>,
    /// Each step's last failure as its next attempt would be told it: an
    /// operator's retry or hard reset of the step tells the new attempt
    /// the same.
    pub(crate) last_contexts: HashMap<u32, RetryContext>,
    pub(crate) plugins: HashMap<u32, Plugin>,
    pub(crate) hooks: Option<Arc<dyn RunHooks>>,
    /// The checkpoints when the host keeps them (the service's store);
    /// `None` when the artifacts are their record (`stepd run`).
    pub(crate) ledger: Option<BTreeMap<u32, Checkpoint>>,
    /// `STEPD_SECRETS_DIR`, where secrets not in the environment are read.
    pub(crate) secrets_dir: Option<PathBuf>,
    /// What the running step's attempts are granted.
    pub(crate) grants: AttemptGrants,
}

/// A finished step's checkpoint: its patch, byte-exact, and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The patch (`git apply` format); replay checks its hash.
    pub patch: Vec<u8>,
    /// The step's state, with the patch's hash.
    pub state: StepState,
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
    /// What a step may leave in the workspace.
    pub quota: Quota,
    /// Where secrets not in the worker's environment are read.
    pub secrets_dir: Option<PathBuf>,
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
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
            quota: parts.quota,
            secrets_dir: parts.secrets_dir,
            grants: AttemptGrants::default(),
            resets_used: 0,
            current_tree: None,
            attempts_used: HashMap::new(),
            carried_contexts: HashMap::new(),
            last_contexts: HashMap::new(),
            plugins: HashMap::new(),
            hooks: None,
            ledger: None,
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

    /// Tell each step's next attempt what an earlier job attempt (maybe on
    /// another worker) left for it: (step index, the context's JSON).
    pub fn carry_retry_contexts(&mut self, contexts: impl IntoIterator<Item = (u32, serde_json::Value)>) {
        for (step, value) in contexts {
            if let Some(context) = super::step::retry_context_from_json(&value) {
                self.last_contexts.insert(step, context.clone());
                self.carried_contexts.insert(step, context);
            }
        }
    }

    /// An operator asked to retry or hard-reset step `index`: its next
    /// attempt is told the step's last failure, as a self-heal retry's
    /// would be (nothing when the step has not failed).
    pub fn carry_last_failure(&mut self, index: u32) {
        if let Some(context) = self.last_contexts.get(&index).cloned() {
            self.carried_contexts.insert(index, context);
        }
    }

    /// Continue attempt numbering after `last` (step index → last attempt
    /// number), as recorded by another process that ran the job before.
    pub fn continue_attempt_numbers(&mut self, last: impl IntoIterator<Item = (u32, u32)>) {
        for (step, attempt) in last {
            let entry = self.attempts_used.entry(step).or_insert(0);
            *entry = (*entry).max(attempt);
        }
    }

    /// True when step `k` has a checkpoint in this run's record.
    pub fn has_checkpoint(&self, k: u32) -> bool {
        match &self.ledger {
            Some(ledger) => ledger.contains_key(&k),
            None => matches!(self.artifacts.read_step_state(k), Ok(Some(_))),
        }
    }

    /// Keep this run's checkpoints in memory, starting from `checkpoints`:
    /// the host's store is their one source of truth (it gets each new one
    /// through the hooks before the step counts as done), and the artifacts
    /// only an export of them.
    pub fn keep_checkpoints(&mut self, checkpoints: Vec<Checkpoint>) {
        self.ledger = Some(checkpoints.into_iter().map(|c| (c.state.step_index, c)).collect());
    }

    /// A finished step's checkpoint has been written out: remember it.
    pub(crate) fn remember_checkpoint(&mut self, patch: &[u8], state: &StepState) {
        if let Some(ledger) = &mut self.ledger {
            ledger.insert(
                state.step_index,
                Checkpoint {
                    patch: patch.to_vec(),
                    state: state.clone(),
                },
            );
        }
    }

    // `&mut self` (not `&self`) across awaits: the run's future stays
    // `Send` although a workspace (libgit2) is not `Sync`.
    pub(crate) async fn hold_if_asked(&mut self, at: &StepAttemptRef) {
        if let Some(hooks) = self.hooks.clone() {
            hooks.before_attempt(at).await;
        }
    }

    /// Rebuild the workspace as it was before step `k`: baseline, then the
    /// patches of steps `0..k`, each checked against its state's hash first.
    /// Returns the rebuilt tree.
    pub fn rebuild_for_step(&mut self, k: u32) -> Result<TreeId, RebuildError> {
        blocking(|| self.rebuild_now(k))
    }

    fn rebuild_now(&mut self, k: u32) -> Result<TreeId, RebuildError> {
        let mut patches: Vec<Cow<'_, [u8]>> = Vec::new();
        for step_index in 0..k {
            let (state, patch) = read_checkpoint(&self.ledger, &self.artifacts, step_index)?;
            let state = state.ok_or(RebuildError::MissingState { step_index })?;
            let patch = patch.ok_or(RebuildError::MissingPatch { step_index })?;
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
        let refs: Vec<&[u8]> = patches.iter().map(|p| p.as_ref()).collect();
        let rebuilt = phases::timed(Phase::Workspace, || {
            self.workspace.rebuild_from_baseline(self.baseline, &refs)
        });
        self.current_tree = rebuilt.as_ref().ok().copied();
        rebuilt.map_err(RebuildError::Replay)
    }

    /// Resume at step `k`: rebuild the workspace from the checkpoints before
    /// it, forget the checkpoints from `k` on, and record
    /// `task.resume.from_step`.
    pub fn resume_from_step(&mut self, k: u32) -> Result<Result<(), RebuildError>, SelfHealError> {
        // Rebuild first: if the replay fails, every checkpoint is kept.
        if let Err(e) = self.rebuild_for_step(k) {
            return Ok(Err(e));
        }
        blocking(|| {
            self.job
                .steps
                .iter()
                .filter(|s| s.index >= k)
                .try_for_each(|step| self.artifacts.remove_step_checkpoint(step.index))
        })?;
        if let Some(ledger) = &mut self.ledger {
            ledger.retain(|&step, _| step < k);
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
            // Every line logged while the step runs carries its id.
            let span = tracing::info_span!("step", step = %step.id, index = step.index);
            match self.run_step(step).instrument(span).await? {
                PassOutcome::Succeeded => {}
                other => return Ok(other),
            }
        }
        Ok(PassOutcome::Succeeded)
    }

    pub(crate) fn plugin_for(&mut self, step: &ResolvedStep) -> Result<Plugin, String> {
        if let Some(plugin) = self.plugins.get(&step.index) {
            return Ok(plugin.clone());
        }
        // Loading compiles the component (or reads wasmtime's cache).
        let plugin = blocking(|| self.runtime.load_plugin(&step.plugin_path)).map_err(|e| e.to_string())?;
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
}

/// A step's state and patch as the run's record holds them, each `None`
/// when missing.
type StoredCheckpoint<'r> = (Option<Cow<'r, StepState>>, Option<Cow<'r, [u8]>>);

/// Step `k`'s state and patch from the run's record of checkpoints:
/// the host's (kept in memory since the run started) when it has one,
/// else the artifacts. Borrows what the ledger holds rather than copying it.
fn read_checkpoint<'r>(
    ledger: &'r Option<BTreeMap<u32, Checkpoint>>,
    artifacts: &JobArtifacts,
    k: u32,
) -> Result<StoredCheckpoint<'r>, RebuildError> {
    Ok(match ledger {
        Some(ledger) => match ledger.get(&k) {
            Some(checkpoint) => (
                Some(Cow::Borrowed(&checkpoint.state)),
                Some(Cow::Borrowed(checkpoint.patch.as_slice())),
            ),
            None => (None, None),
        },
        None => (
            artifacts.read_step_state(k)?.map(Cow::Owned),
            artifacts.read_step_patch(k)?.map(Cow::Owned),
        ),
    })
}
