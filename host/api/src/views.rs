//! The API's response bodies as types: what handlers return and what the
//! OpenAPI document describes (host/api/src/openapi.rs derives its schemas
//! from these, so the document cannot drift from the answers). Fields that
//! are always sent, `null` when empty, are marked required.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use stepd_job::control::ControlAction;
use stepd_job::http::HttpCapability;
use stepd_store::{ms_to_rfc3339, AttemptRow, Backend, ControlEventRow, JobRecord, JobState, StoredEvent};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job's id (its `Idempotency-Key` when it was submitted with one).
    pub id: String,
    /// Where it stands in the queue.
    pub status: JobState,
    /// Job attempts started so far.
    pub attempt: u32,
    /// Job attempts allowed (queue retries included).
    pub max_attempts: u32,
    /// When it may next be claimed (RFC 3339).
    pub next_attempt_at: String,
    /// The worker holding its lease.
    #[schema(required = true)]
    pub lease_owner: Option<String>,
    /// When that lease ends (RFC 3339).
    #[schema(required = true)]
    pub lease_expires_at: Option<String>,
    /// An operator asked to cancel it.
    pub cancel_requested: bool,
    /// The step index an operator asked it to resume from.
    #[schema(required = true)]
    pub resume_from_step: Option<u32>,
    /// The step running now.
    #[schema(required = true)]
    pub current_step: Option<CurrentStep>,
    /// The index of the first step without a checkpoint.
    pub first_unfinished_step: u32,
    /// The workspace directory on the worker that runs it.
    #[schema(required = true)]
    pub workspace: Option<String>,
    /// Why its last attempt failed (redacted).
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, once it ended.
    #[schema(required = true)]
    pub finished_at: Option<String>,
    /// Its steps, in order.
    pub steps: Vec<StepView>,
    /// The payload as submitted, with `liveControl` (the operator's
    /// standing requests, see [`stepd_job::control::LiveControl`]) added.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Its finished step attempts (on `GET /api/queue/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptRow>>,
    /// The operator actions it received (on `GET /api/queue/jobs/{id}`
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_events: Option<Vec<ControlEventRow>>,
}

/// The step a job is running.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrentStep {
    /// Its id.
    pub id: String,
    /// Its index.
    #[schema(required = true)]
    pub index: Option<u32>,
}

/// One step of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// Its id.
    pub id: String,
    /// Its index.
    pub index: u32,
    /// Its title.
    pub title: String,
    /// It has a checkpoint.
    pub finished: bool,
    /// What it declared it needs.
    pub capabilities: CapabilitiesView,
}

/// What a step declared it needs, by name: variable names (never their
/// values), secret names, mounts and its HTTP grant (`null` without one).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CapabilitiesView {
    /// Variable names.
    pub env: Vec<String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Read-only host directories.
    pub mounts: Vec<MountView>,
    /// Outbound HTTP, when granted.
    #[schema(value_type = Option<HttpCapability>, required = true)]
    pub http: Value,
}

/// A read-only host directory a step sees.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountView {
    /// Where the guest sees it.
    pub guest: String,
    /// The host directory.
    pub host: String,
    /// Always true: mounts are never writable.
    pub read_only: bool,
}

/// `GET /api/queue/jobs`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
}

/// `GET /api/queue/jobs/{id}/events` as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventPage {
    /// In order of `seq`.
    pub events: Vec<StoredEvent>,
}

/// One server-sent event of `GET /api/queue/jobs/{id}/events` as a stream.
// Never constructed: axum writes the frames; this type describes them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamedEvent {
    /// The stored event ([`StoredEvent`]) as JSON.
    #[schema(content_media_type = "application/json")]
    pub data: String,
    /// The event's name (`task.job.started`, ...).
    pub event: String,
    /// Its `seq`: reconnect with `after` set to the last one seen.
    pub id: String,
}

/// `GET /api/queue/jobs/{id}/artifacts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactList {
    /// The job.
    pub job_id: String,
    /// Every artifact file, by path relative to the job's directory.
    pub artifacts: Vec<ArtifactEntry>,
}

/// One artifact file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArtifactEntry {
    /// Relative path; download it at `.../artifacts/{path}`.
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// The answer to an operator's action.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlResponse {
    /// The action taken.
    pub action: ControlAction,
    /// The step it named.
    #[schema(required = true)]
    pub step_id: Option<String>,
    /// The job was re-opened or cancelled outright.
    #[schema(required = true)]
    pub note: Option<String>,
    /// The job as it is now.
    pub job: JobView,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
    /// The store's database.
    pub store: Backend,
    /// `embedded` or `rabbitmq`.
    pub dispatch: String,
    /// The newest applied migration (healthz).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}

/// Every error: a stable code and a message that names the problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unprocessable`, `unavailable`, ...
    pub code: String,
    /// What was wrong.
    pub message: String,
}

impl JobView {
    /// The view of `job`, whose first `first_unfinished` steps have
    /// checkpoints.
    pub fn of(job: &JobRecord, first_unfinished: u32) -> JobView {
        let steps = job
            .step_ids()
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let declared = &job.payload["task"]["steps"][i];
                StepView {
                    id,
                    index,
                    title: declared["title"].as_str().unwrap_or_default().to_owned(),
                    finished: index < first_unfinished,
                    capabilities: CapabilitiesView::of(&declared["capabilities"]),
                }
            })
            .collect();
        JobView {
            id: job.id.clone(),
            status: job.status,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            next_attempt_at: ms_to_rfc3339(job.next_attempt_at),
            lease_owner: job.lease_owner.clone(),
            lease_expires_at: job.lease_expires_at.map(ms_to_rfc3339),
            cancel_requested: job.cancel_requested,
            resume_from_step: job.resume_step,
            current_step: job.current_step_id.as_ref().map(|id| CurrentStep {
                id: id.clone(),
                index: job.current_step_index,
            }),
            first_unfinished_step: first_unfinished,
            workspace: job.workspace_path.clone(),
            last_error: job.last_error.clone(),
            created_at: ms_to_rfc3339(job.created_at),
            updated_at: ms_to_rfc3339(job.updated_at),
            finished_at: job.finished_at.map(ms_to_rfc3339),
            steps,
            payload: job.payload_with_live_control(),
            attempts: None,
            control_events: None,
        }
    }
}

impl CapabilitiesView {
    fn of(declared: &Value) -> CapabilitiesView {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|items| items.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        CapabilitiesView {
            env: declared["env"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            secrets: strings(&declared["secrets"]),
            mounts: declared["mounts"]
                .as_array()
                .map(|mounts| {
                    mounts
                        .iter()
                        .map(|m| MountView {
                            guest: text(&m["guest"]),
                            host: text(&m["host"]),
                            read_only: true,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            http: declared["http"].clone(),
        }
    }
}
