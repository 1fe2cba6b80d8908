//! Operator-control rules: what each action does to a job in each state —
//! or why it cannot (400 for a malformed request, 409 for one the job's
//! state does not allow, or a step it does not have). Pure: the API asks,
//! the store writes, the worker acts on `liveControl`.

use stepd_job::control::{ControlAction, LiveControl, RecoveryRequest};
use stepd_store::{ControlWrite, JobRecord, JobState};

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

/// Written out rather than derived: a step action (`retry_step`,
/// `hard_reset_step`, `resume_from_step`) requires `stepId`, which a
/// derived schema cannot say.
impl utoipa::PartialSchema for ControlRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let (step, other): (Vec<ControlAction>, Vec<ControlAction>) =
            ControlAction::ALL.into_iter().partition(|a| a.needs_step());
        let names = |actions: Vec<ControlAction>| actions.into_iter().map(ControlAction::as_str).collect::<Vec<_>>();
        // Two closed object shapes, told apart by the action.
        let shape = |actions: Vec<&str>, step_required: bool| {
            let step = if step_required {
                serde_json::json!({"type": "string", "description": "one of the job's step ids"})
            } else {
                serde_json::json!({"type": ["string", "null"], "description": "when given, one of the job's step ids"})
            };
            let required: &[&str] = if step_required {
                &["action", "stepId"]
            } else {
                &["action"]
            };
            serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": required,
                "properties": {
                    "action": {"type": "string", "enum": actions},
                    "stepId": step,
                    "reason": {"type": ["string", "null"], "description": "why, for the audit trail (secrets are redacted)"}
                }
            })
        };
        let schema = serde_json::json!({
            "description": "An operator's action on a job; the step actions name a step.",
            "oneOf": [shape(names(other), false), shape(names(step), true)]
        });
        utoipa::openapi::RefOr::T(serde_json::from_value(schema).unwrap_or_default())
    }
}

impl utoipa::ToSchema for ControlRequest {}

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

impl ControlPlan {
    /// What the store writes for this plan.
    pub fn to_write(&self) -> ControlWrite {
        ControlWrite {
            action: self.action,
            step_id: self.step_id.clone(),
            job: self.job.clone(),
            reopened: self.reopened,
        }
    }
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
    let step_index = named_step(job, action, request.step_id.as_deref(), &step_ids)?;
    let reason = request.reason.clone().filter(|r| !r.trim().is_empty());
    let active = matches!(job.status, JobState::Queued | JobState::Running);
    if action.is_recovery() && active {
        refuse_a_second_recovery(job)?;
    }
    let asked = || recovery(action, request, reason.clone(), requested_by, now_rfc3339);
    let mut next = job.clone();
    let mut note = None;
    let mut reopened = false;
    match action {
        ControlAction::Pause | ControlAction::Takeover | ControlAction::Resume | ControlAction::Cancel => {
            note = hold_or_cancel(job, action, &mut next)?;
        }
        ControlAction::RetryStep | ControlAction::HardResetStep => {
            refuse_unless_running_step(job, action, request, step_index.unwrap_or_default())?;
            next.live_control.recovery = Some(asked());
        }
        ControlAction::ResumeFromStep => {
            let index = step_index.unwrap_or_default();
            refuse_resume_past(job, request, index, first_unfinished, &step_ids)?;
            // One path whatever the job's state: the request waits in
            // `liveControl.recovery` until a worker acts on it and
            // acknowledges it — the one running the job, or the next to
            // claim it. `resume_step` keeps the step in the row for a
            // queued job, so the claim starts there.
            match job.status {
                JobState::Running => {}
                JobState::Queued => next.resume_step = Some(index),
                _ => {
                    reopen(&mut next, index);
                    note = Some(format!("re-opened from {}", job.status.as_str()));
                    reopened = true;
                }
            }
            next.live_control.recovery = Some(asked());
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

/// Pause, takeover, resume or cancel an active job; returns the note for
/// events (a queued job is cancelled outright).
fn hold_or_cancel(
    job: &JobRecord,
    action: ControlAction,
    next: &mut JobRecord,
) -> Result<Option<String>, ControlError> {
    if !matches!(job.status, JobState::Queued | JobState::Running) {
        return Err(ControlError::Conflict(format!(
            "cannot {} job {}: it has ended ({})",
            action.as_str().replace('_', " "),
            job.id,
            job.status.as_str()
        )));
    }
    match action {
        ControlAction::Pause => next.live_control.paused = true,
        ControlAction::Takeover => next.live_control.takeover = true,
        ControlAction::Resume => {
            if !job.live_control.holds() {
                return Err(ControlError::Conflict(format!(
                    "job {} is neither paused nor taken over",
                    job.id
                )));
            }
            next.live_control.paused = false;
            next.live_control.takeover = false;
        }
        _ => {
            next.cancel_requested = true;
            next.live_control.recovery = None;
            if job.status == JobState::Queued {
                next.status = JobState::Cancelled;
                return Ok(Some("cancelled before a worker claimed it".to_owned()));
            }
        }
    }
    Ok(None)
}

/// A job resumes from a step at or before its first unfinished one: the
/// steps after have no checkpoint to rebuild from.
fn refuse_resume_past(
    job: &JobRecord,
    request: &ControlRequest,
    index: u32,
    first_unfinished: u32,
    step_ids: &[String],
) -> Result<(), ControlError> {
    if index <= first_unfinished {
        return Ok(());
    }
    let first = step_ids
        .get(first_unfinished as usize)
        .map_or("the last step", String::as_str);
    Err(ControlError::Conflict(format!(
        "cannot resume job {} from step {}: step {first} has no checkpoint yet; resume from {first} or earlier",
        job.id,
        request.step_id.as_deref().unwrap_or_default(),
    )))
}

/// A step action acts on the running step of a running job only.
fn refuse_unless_running_step(
    job: &JobRecord,
    action: ControlAction,
    request: &ControlRequest,
    index: u32,
) -> Result<(), ControlError> {
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
    Ok(())
}

/// Re-open an ended job: it runs again from step `index`, with a fresh
/// attempt budget and no leftover operator state.
fn reopen(next: &mut JobRecord, index: u32) {
    next.status = JobState::Queued;
    next.resume_step = Some(index);
    next.attempt = 1;
    next.cancel_requested = false;
    next.live_control = LiveControl::default();
    next.finished_at = None;
    next.last_error = None;
}

/// The index of the step a request names; a step action must name one.
fn named_step(
    job: &JobRecord,
    action: ControlAction,
    step_id: Option<&str>,
    step_ids: &[String],
) -> Result<Option<u32>, ControlError> {
    match step_id {
        Some(id) => step_ids
            .iter()
            .position(|s| s == id)
            .map(|i| Some(u32::try_from(i).unwrap_or(u32::MAX)))
            // Well formed, but this job has no such step: a conflict with
            // the job as it is (the request itself is not malformed).
            .ok_or_else(|| {
                ControlError::Conflict(format!(
                    "unknown stepId {id:?}: job {} has steps {}",
                    job.id,
                    step_ids.join(", ")
                ))
            }),
        None if action.needs_step() => Err(ControlError::BadRequest(format!(
            "{} needs a stepId (one of: {})",
            action.as_str(),
            step_ids.join(", ")
        ))),
        None => Ok(None),
    }
}

/// One recovery at a time: a second is refused until the worker
/// acknowledged the first.
fn refuse_a_second_recovery(job: &JobRecord) -> Result<(), ControlError> {
    match &job.live_control.recovery {
        Some(pending) => Err(ControlError::Conflict(format!(
            "job {} already has a pending {} of step {} (requested {}); wait for the worker to acknowledge it",
            job.id,
            pending.action.as_str(),
            pending.step_id,
            pending.updated_at
        ))),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobState) -> JobRecord {
        JobRecord {
            id: "j".into(),
            status,
            attempt: 2,
            max_attempts: 3,
            next_attempt_at: 0,
            published_at: None,
            lease_owner: None,
            lease_expires_at: None,
            payload: serde_json::json!({"task": {"steps": [{"id": "a"}, {"id": "b"}, {}]}}),
            live_control: LiveControl::default(),
            cancel_requested: false,
            resume_step: None,
            current_step_id: Some("b".into()),
            current_step_index: Some(1),
            workspace_path: None,
            last_error: Some("boom".into()),
            version: 7,
            created_at: 0,
            updated_at: 0,
            finished_at: Some(1),
        }
    }

    fn ask(action: &str, step: Option<&str>) -> ControlRequest {
        ControlRequest {
            action: action.into(),
            step_id: step.map(str::to_owned),
            reason: Some("because".into()),
        }
    }

    #[test]
    fn unknown_actions_and_missing_steps_are_bad_requests_unknown_steps_conflicts_all_naming_the_choices() {
        let running = job(JobState::Running);
        let err = plan(&running, &ask("explode", None), "op", "now", 1).expect_err("unknown");
        assert!(
            matches!(&err, ControlError::BadRequest(m) if m.contains("retry_step")),
            "{err}"
        );
        let err = plan(&running, &ask("retry_step", None), "op", "now", 1).expect_err("no step");
        assert!(
            matches!(&err, ControlError::BadRequest(m) if m.contains("a, b, step-2")),
            "{err}"
        );
        let err = plan(&running, &ask("pause", Some("zz")), "op", "now", 1).expect_err("unknown step");
        assert!(matches!(err, ControlError::Conflict(_)), "{err}");
    }

    #[test]
    fn step_actions_need_the_running_step_and_one_pending_request_at_a_time() {
        let running = job(JobState::Running);
        assert!(matches!(
            plan(&running, &ask("hard_reset_step", Some("a")), "op", "now", 1),
            Err(ControlError::Conflict(_))
        ));
        let p = plan(&running, &ask("retry_step", Some("b")), "op", "now", 1).expect("allowed");
        let pending = p.job.live_control.recovery.clone().expect("recovery set");
        assert_eq!(
            (pending.action, pending.requested_by.as_str()),
            (ControlAction::RetryStep, "op")
        );
        let err = plan(&p.job, &ask("resume_from_step", Some("a")), "op", "now", 1).expect_err("pending");
        assert!(
            matches!(&err, ControlError::Conflict(m) if m.contains("already has a pending retry_step")),
            "{err}"
        );
        assert!(matches!(
            plan(&job(JobState::Queued), &ask("retry_step", Some("b")), "op", "now", 1),
            Err(ControlError::Conflict(_))
        ));
    }

    #[test]
    fn resume_from_step_reopens_an_ended_job_but_not_past_its_first_unfinished_step() {
        let failed = job(JobState::Failed);
        let err = plan(&failed, &ask("resume_from_step", Some("b")), "op", "now", 0).expect_err("b not reached");
        assert!(matches!(err, ControlError::Conflict(_)));
        let p = plan(&failed, &ask("resume_from_step", Some("b")), "op", "now", 1).expect("reopen");
        assert!(p.reopened);
        assert_eq!(
            (
                p.job.status,
                p.job.resume_step,
                p.job.attempt,
                p.job.finished_at,
                p.job.last_error
            ),
            (JobState::Queued, Some(1), 1, None, None)
        );
        // The next worker to claim it acts on the request and acknowledges it.
        let pending = p
            .job
            .live_control
            .recovery
            .clone()
            .expect("recovery set on a re-opened job");
        assert_eq!(
            (pending.action, pending.step_id.as_str()),
            (ControlAction::ResumeFromStep, "b")
        );
        let queued = plan(
            &job(JobState::Queued),
            &ask("resume_from_step", Some("a")),
            "op",
            "now",
            1,
        )
        .expect("queued");
        assert_eq!(queued.job.resume_step, Some(0));
        assert!(
            queued.job.live_control.recovery.is_some(),
            "recovery set on a queued job"
        );
        let err = plan(&queued.job, &ask("resume_from_step", Some("a")), "op", "now", 1).expect_err("pending");
        assert!(matches!(err, ControlError::Conflict(_)), "{err}");
    }

    #[test]
    fn holds_cancel_and_resume_follow_the_job_state() {
        let queued = job(JobState::Queued);
        let p = plan(&queued, &ask("cancel", None), "op", "now", 0).expect("cancel queued");
        assert_eq!(p.job.status, JobState::Cancelled);
        let running = job(JobState::Running);
        let p = plan(&running, &ask("cancel", None), "op", "now", 0).expect("cancel running");
        assert_eq!((p.job.status, p.job.cancel_requested), (JobState::Running, true));
        assert!(matches!(
            plan(&running, &ask("resume", None), "op", "now", 0),
            Err(ControlError::Conflict(_))
        ));
        let paused = plan(&running, &ask("takeover", None), "op", "now", 0)
            .expect("takeover")
            .job;
        assert_eq!(paused.live_control.hold_mode(), "takeover");
        let resumed = plan(&paused, &ask("resume", None), "op", "now", 0).expect("resume").job;
        assert!(!resumed.live_control.holds());
        assert!(matches!(
            plan(&job(JobState::Succeeded), &ask("pause", None), "op", "now", 2),
            Err(ControlError::Conflict(m)) if m.contains("has ended")
        ));
    }

    mod fuzz {
        //! The planner against every job state, live control and request
        //! (fixed seed; `STEPD_FUZZ_CASES` runs longer, `STEPD_FUZZ_SEED`
        //! elsewhere): it answers with a plan or a typed refusal, never a
        //! panic, and a plan always names a step of the job.

        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        fn config() -> Config {
            let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
            Config {
                cases: var("STEPD_FUZZ_CASES").map_or(512, |n| n as u32),
                rng_seed: RngSeed::Fixed(var("STEPD_FUZZ_SEED").unwrap_or(10)),
                failure_persistence: None,
                ..Config::default()
            }
        }

        fn any_text() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just("step-2".to_owned()),
                Just("   ".to_owned()),
                "\\PC{0,12}",
            ]
        }

        fn any_action() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(ControlAction::ALL.map(|a| a.as_str().to_owned()).to_vec()),
                any_text(),
            ]
        }

        fn any_job() -> impl Strategy<Value = JobRecord> {
            let recovery =
                (prop::sample::select(ControlAction::ALL.to_vec()), any_text()).prop_map(|(action, step_id)| {
                    RecoveryRequest {
                        action,
                        step_id,
                        reason: None,
                        requested_by: "op".into(),
                        updated_at: "then".into(),
                    }
                });
            (
                prop::sample::select(JobState::ALL.to_vec()),
                (any::<bool>(), any::<bool>(), prop::option::of(recovery)),
                prop::option::of(any_text()),
                prop::option::of(0u32..5),
                0usize..4,
                any::<bool>(),
            )
                .prop_map(|(status, (paused, takeover, recovery), current, resume, steps, cancel)| {
                    let mut job = job(status);
                    job.payload = serde_json::json!({"task": {"steps": (0..steps)
                        .map(|i| if i == 2 { serde_json::json!({}) } else { serde_json::json!({"id": (["a", "b"][i % 2])}) })
                        .collect::<Vec<_>>()}});
                    job.live_control = LiveControl {
                        paused,
                        takeover,
                        recovery,
                    };
                    job.current_step_index = current.as_ref().map(|_| 1);
                    job.current_step_id = current;
                    job.resume_step = resume;
                    job.cancel_requested = cancel;
                    job
                })
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_planner_answers_every_request_with_a_plan_or_a_refusal(
                job in any_job(),
                action in any_action(),
                step_id in prop::option::of(any_text()),
                reason in prop::option::of(any_text()),
                first_unfinished in 0u32..6,
            ) {
                let request = ControlRequest { action, step_id, reason };
                match plan(&job, &request, "op", "now", first_unfinished) {
                    Ok(planned) => {
                        prop_assert_eq!(planned.action.as_str(), request.action.as_str());
                        prop_assert_eq!(&planned.job.id, &job.id);
                        if let Some(step) = &planned.step_id {
                            prop_assert!(job.step_ids().contains(step), "{step} is not a step of the job");
                        }
                        if planned.action.needs_step() {
                            prop_assert!(planned.step_id.is_some(), "{:?} without a step", planned.action);
                        }
                        // A recovery the plan asks for names a step of the job.
                        if let Some(recovery) = &planned.job.live_control.recovery {
                            if Some(recovery) != job.live_control.recovery.as_ref() {
                                prop_assert!(job.step_ids().contains(&recovery.step_id));
                            }
                        }
                    }
                    Err(ControlError::BadRequest(message) | ControlError::Conflict(message)) => {
                        prop_assert!(!message.trim().is_empty());
                    }
                }
            }
        }
    }
}
