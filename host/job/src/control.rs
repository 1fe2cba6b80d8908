//! Operator control as a job carries it: the closed set of actions, and
//! the `liveControl` state a worker reads with each heartbeat. The rules
//! that say what an action does to a job in each state live with the API
//! (`stepd-api`'s `control` module); the store only writes what they decide.

/// Every action an operator can take on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
