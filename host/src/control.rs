//! Operator control (DESIGN.md §9): the closed set of actions, the
//! `liveControl` state a job carries, and the rules that say what each
//! action does to a job in each state — or why it cannot. Pure: the API
//! asks, the store writes, the worker acts.

use crate::store::{JobRecord, JobState};

/// Every action an operator can take on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Hold before the next attempt or step.
    Pause,
    /// Release a pause or a takeover.
    Resume,
    /// Hold like a pause, for a human to work in the workspace.
    Takeover,
    /// Stop the job; it ends `cancelled`.
    Cancel,
    /// Tear the running attempt down; restart the step with a fresh budget.
    RetryStep,
    /// Tear it down; rebuild the workspace and run the step again.
    HardResetStep,
    /// Rebuild the workspace from the checkpoints before a step and go on
    /// from there; re-opens a job that has ended.
    ResumeFromStep,
}

impl ControlAction {
    /// Every action, in the order the API documents them.
    pub const ALL: [ControlAction; 7] = [
        ControlAction::Pause,
        ControlAction::Resume,
        ControlAction::Takeover,
        ControlAction::Cancel,
        ControlAction::RetryStep,
        ControlAction::HardResetStep,
        ControlAction::ResumeFromStep,
    ];

    /// The wire name (`retry_step`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Takeover => "takeover",
            ControlAction::Cancel => "cancel",
            ControlAction::RetryStep => "retry_step",
            ControlAction::HardResetStep => "hard_reset_step",
            ControlAction::ResumeFromStep => "resume_from_step",
        }
    }

    /// Parse a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Actions the worker must act on and acknowledge (`liveControl.recovery`).
    pub fn is_recovery(self) -> bool {
        matches!(
            self,
            ControlAction::RetryStep | ControlAction::HardResetStep | ControlAction::ResumeFromStep
        )
    }

    /// Actions that name a step.
    pub fn needs_step(self) -> bool {
        self.is_recovery()
    }
}

/// A recovery request waiting for the worker (`liveControl.recovery`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRequest {
    /// What to do.
    pub action: ControlAction,
    /// The step it names.
    pub step_id: String,
    /// The operator's reason.
    pub reason: Option<String>,
    /// Who asked (the token's label).
    pub requested_by: String,
    /// When (RFC 3339).
    pub updated_at: String,
}

/// `payload.liveControl`: what operators asked of a running job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveControl {
    /// Hold before the next attempt or step.
    pub paused: bool,
    /// Hold, and leave the workspace to a human.
    pub takeover: bool,
    /// A recovery the worker has not acted on yet.
    pub recovery: Option<RecoveryRequest>,
}

impl LiveControl {
    /// True when the job must hold.
    pub fn holds(&self) -> bool {
        self.paused || self.takeover
    }

    /// `takeover` or `pause`, for events.
    pub fn hold_mode(&self) -> &'static str {
        if self.takeover {
            "takeover"
        } else {
            "pause"
        }
    }
}

/// The body of `POST /api/task-runs/<id>/control`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlRequest {
    /// The action's wire name; checked by [`plan`], so an unknown one gets
    /// a message listing the known ones.
    pub action: String,
    /// The step, for the step actions.
    #[serde(default)]
    pub step_id: Option<String>,
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Why an action was refused. `BadRequest` is the caller's mistake (400),
/// `Conflict` an action the job's state does not allow (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Malformed: unknown action, missing or unknown step.
    #[error("{0}")]
    BadRequest(String),
    /// Impossible in the job's state.
    #[error("{0}")]
    Conflict(String),
}

/// A control action checked against the job, and the job as it must be
/// written back.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlan {
    /// The action.
    pub action: ControlAction,
    /// The step it names, when it names one.
    pub step_id: Option<String>,
    /// The job with the action applied (only the fields the store writes
    /// for a control action change).
    pub job: JobRecord,
    /// For events: the job was re-opened or cancelled outright.
    pub note: Option<String>,
    /// The job had ended and runs again (due at once).
    pub reopened: bool,
}

/// Check `request` against `job` and work out the job after it.
/// `first_unfinished` is the index of the first step without a checkpoint.
pub fn plan(
    job: &JobRecord,
    request: &ControlRequest,
    requested_by: &str,
    now_rfc3339: &str,
    first_unfinished: u32,
) -> Result<ControlPlan, ControlError> {
    let action = ControlAction::parse(&request.action).ok_or_else(|| {
        ControlError::BadRequest(format!(
            "unknown action {:?}; use one of: {}",
            request.action,
            ControlAction::ALL.map(ControlAction::as_str).join(", ")
        ))
    })?;
    let step_ids = job.step_ids();
    let step_index = match request.step_id.as_deref() {
        Some(id) => Some(
            step_ids
                .iter()
                .position(|s| s == id)
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                .ok_or_else(|| {
                    ControlError::BadRequest(format!(
                        "unknown stepId {id:?}: job {} has steps {}",
                        job.id,
                        step_ids.join(", ")
                    ))
                })?,
        ),
        None if action.needs_step() => {
            return Err(ControlError::BadRequest(format!(
                "{} needs a stepId (one of: {})",
                action.as_str(),
                step_ids.join(", ")
            )))
        }
        None => None,
    };
    let reason = request.reason.clone().filter(|r| !r.trim().is_empty());
    let mut next = job.clone();
    let mut note = None;
    let mut reopened = false;
    let active = matches!(job.status, JobState::Queued | JobState::Running);
    let refuse_unless_active = || {
        if active {
            Ok(())
        } else {
            Err(ControlError::Conflict(format!(
                "cannot {} job {}: it has ended ({})",
                action.as_str().replace('_', " "),
                job.id,
                job.status.as_str()
            )))
        }
    };
    if action.is_recovery() && active {
        if let Some(pending) = &job.live_control.recovery {
            return Err(ControlError::Conflict(format!(
                "job {} already has a pending {} of step {} (requested {}); wait for the worker to acknowledge it",
                job.id,
                pending.action.as_str(),
                pending.step_id,
                pending.updated_at
            )));
        }
    }
    match action {
        ControlAction::Pause => {
            refuse_unless_active()?;
            next.live_control.paused = true;
        }
        ControlAction::Takeover => {
            refuse_unless_active()?;
            next.live_control.takeover = true;
        }
        ControlAction::Resume => {
            refuse_unless_active()?;
            if !job.live_control.holds() {
                return Err(ControlError::Conflict(format!(
                    "job {} is neither paused nor taken over",
                    job.id
                )));
            }
            next.live_control.paused = false;
            next.live_control.takeover = false;
        }
        ControlAction::Cancel => {
            refuse_unless_active()?;
            next.cancel_requested = true;
            next.live_control.recovery = None;
            if job.status == JobState::Queued {
                next.status = JobState::Cancelled;
                note = Some("cancelled before a worker claimed it".to_owned());
            }
        }
        ControlAction::RetryStep | ControlAction::HardResetStep => {
            let index = step_index.unwrap_or_default();
            if job.status != JobState::Running {
                return Err(ControlError::Conflict(format!(
                    "cannot {} job {}: it is {}, not running",
                    action.as_str().replace('_', " "),
                    job.id,
                    job.status.as_str()
                )));
            }
            if job.current_step_index != Some(index) {
                return Err(ControlError::Conflict(format!(
                    "step {} is not the running step of job {} ({})",
                    request.step_id.as_deref().unwrap_or_default(),
                    job.id,
                    job.current_step_id.as_deref().unwrap_or("none yet")
                )));
            }
            next.live_control.recovery = Some(recovery(action, request, reason.clone(), requested_by, now_rfc3339));
        }
        ControlAction::ResumeFromStep => {
            let index = step_index.unwrap_or_default();
            if index > first_unfinished {
                return Err(ControlError::Conflict(format!(
                    "cannot resume job {} from step {}: step {} has no checkpoint yet; resume from {} or earlier",
                    job.id,
                    request.step_id.as_deref().unwrap_or_default(),
                    step_ids.get(first_unfinished as usize).map_or("the last step", String::as_str),
                    step_ids.get(first_unfinished as usize).map_or("the last step", String::as_str),
                )));
            }
            match job.status {
                JobState::Running => {
                    next.live_control.recovery =
                        Some(recovery(action, request, reason.clone(), requested_by, now_rfc3339));
                }
                JobState::Queued => next.resume_step = Some(index),
                _ => {
                    // Re-open: the job runs again from the step, with a fresh
                    // attempt budget and no leftover operator state.
                    next.status = JobState::Queued;
                    next.resume_step = Some(index);
                    next.attempt = 1;
                    next.cancel_requested = false;
                    next.live_control = LiveControl::default();
                    next.finished_at = None;
                    next.last_error = None;
                    note = Some(format!("re-opened from {}", job.status.as_str()));
                    reopened = true;
                }
            }
        }
    }
    Ok(ControlPlan {
        action,
        step_id: request.step_id.clone(),
        job: next,
        note,
        reopened,
    })
}

fn recovery(
    action: ControlAction,
    request: &ControlRequest,
    reason: Option<String>,
    requested_by: &str,
    now: &str,
) -> RecoveryRequest {
    RecoveryRequest {
        action,
        step_id: request.step_id.clone().unwrap_or_default(),
        reason,
        requested_by: requested_by.to_owned(),
        updated_at: now.to_owned(),
    }
}
