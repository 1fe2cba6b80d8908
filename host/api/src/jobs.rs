//! Job endpoints: submit, list, get, events, heartbeat and control.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

use super::auth::{Operator, WorkerCaller};
use super::error::{off_thread, path_param, query_param, ApiError};
use super::{ApiState, MAX_BODY_BYTES};
use crate::control::{plan, ControlRequest};
use stepd_job::control::ControlAction;
use stepd_job::payload::JobPayload;
use stepd_records::events::Event;
use stepd_store::{ms_to_rfc3339, ClaimedBy, JobRecord, JobState, NewJob, StoreError};

/// Read a JSON body of at most [`MAX_BODY_BYTES`] into `T`, with errors
/// that say what is wrong and where.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    let mut too_large = false;
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        seen += chunk.len();
        if seen > MAX_BODY_BYTES {
            // Read (and drop) the rest, up to a bound, so the client gets
            // the 413 instead of a reset connection.
            too_large = true;
            if seen > 64 * MAX_BODY_BYTES {
                break;
            }
            continue;
        }
        bytes.extend_from_slice(&chunk);
    }
    if too_large {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request("request body is empty; send a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("malformed JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("malformed JSON body at {path}: {inner}"))
        }
    })
}

/// The JSON view of a job.
pub fn job_view(job: &JobRecord, first_unfinished: u32) -> Value {
    let steps: Vec<Value> = job
        .step_ids()
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            json!({
                "id": id,
                "index": index,
                "title": job.payload["task"]["steps"][i]["title"],
                "finished": index < first_unfinished,
                "capabilities": capabilities_view(&job.payload["task"]["steps"][i]["capabilities"]),
            })
        })
        .collect();
    json!({
        "id": job.id,
        "status": job.status.as_str(),
        "attempt": job.attempt,
        "maxAttempts": job.max_attempts,
        "nextAttemptAt": ms_to_rfc3339(job.next_attempt_at),
        "leaseOwner": job.lease_owner,
        "leaseExpiresAt": job.lease_expires_at.map(ms_to_rfc3339),
        "cancelRequested": job.cancel_requested,
        "resumeFromStep": job.resume_step,
        "currentStep": job.current_step_id.as_ref().map(|id| json!({"id": id, "index": job.current_step_index})),
        "firstUnfinishedStep": first_unfinished,
        "workspace": job.workspace_path,
        "lastError": job.last_error,
        "createdAt": ms_to_rfc3339(job.created_at),
        "updatedAt": ms_to_rfc3339(job.updated_at),
        "finishedAt": job.finished_at.map(ms_to_rfc3339),
        "steps": steps,
        "payload": job.payload_with_live_control(),
    })
}

/// What a step declared it needs, by name: variable names (never their
/// values), secret names, mounts and its HTTP grant (origins, methods,
/// prefixes, limits; `null` without one). Empty lists when it declared
/// nothing.
fn capabilities_view(declared: &Value) -> Value {
    let names = |v: &Value| -> Vec<String> { v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default() };
    let list = |v: &Value| -> Vec<Value> { v.as_array().cloned().unwrap_or_default() };
    json!({
        "env": names(&declared["env"]),
        "secrets": list(&declared["secrets"]),
        "mounts": list(&declared["mounts"])
            .iter()
            .map(|m| json!({"guest": m["guest"], "host": m["host"], "readOnly": true}))
            .collect::<Vec<_>>(),
        "http": declared["http"],
    })
}

/// The job, or a 404 naming it.
pub(super) async fn load_job(state: &ApiState, id: &str) -> Result<JobRecord, ApiError> {
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))
}

/// `GET /healthz`: the process answers and its store does too.
pub async fn healthz(State(state): State<ApiState>) -> Response {
    match state.store.schema_versions().await {
        Ok(versions) => Json(json!({
            "status": "ok",
            "store": state.store.backend(),
            "dispatch": state.dispatcher.kind(),
            "schemaVersion": versions.last(),
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response(),
    }
}

/// `POST /api/queue/jobs`: validate and queue a job payload.
pub async fn submit(
    State(state): State<ApiState>,
    _operator: Operator,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let raw: Value = json_body(body).await?;
    let payload: JobPayload = JobPayload::parse(&raw.to_string()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Resolution reads plugin files: off the async threads, so a slow disk
    // never stalls the server's other requests.
    let (base_dir, plugin_dir, grants) = (state.base_dir.clone(), state.plugin_dir.clone(), state.grants.clone());
    let validated = off_thread(move || {
        payload
            .validate(&base_dir, &plugin_dir, &grants)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    })
    .await?;
    // The job is resolved here, once: workers run this form as it is.
    let resolved = serde_json::to_value(&validated)
        .map_err(|e| ApiError::bad_request(format!("the resolved job cannot be stored: {e}")))?;
    let id = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let payload = serde_json::to_value(&validated.payload).unwrap_or(raw);
    let inserted = state
        .store
        .insert_job(&NewJob {
            id: id.clone(),
            payload: payload.clone(),
            resolved: Some(resolved),
            max_attempts: validated.payload.max_attempts,
        })
        .await;
    let job = match inserted {
        Ok(job) => job,
        // A submission sent again (its answer was lost, or it met a 503):
        // the same job, not a second one.
        Err(StoreError::DuplicateJob(_)) => return resubmitted(&state, &id, &payload).await,
        Err(e) => return Err(e.into()),
    };
    match state.dispatcher.announce(&id).await {
        Ok(()) => {
            // The job is stored either way: a failure here only means the
            // sweep announces it once more.
            if let Err(e) = state.store.mark_announced(&id).await {
                tracing::warn!(job = %id, error = %e, "marking a job announced failed");
            }
        }
        // The job is stored; the sweep announces it once the broker is back.
        Err(e) => tracing::warn!(job = %id, error = %e, "announcing a new job failed; the sweep will retry"),
    }
    Ok((StatusCode::CREATED, Json(job_view(&job, 0))).into_response())
}

/// The `Idempotency-Key` header, which becomes the job's id: a client that
/// sends a submission again with the same key gets the same job back.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    // The key becomes the job's id, which names its artifact directory:
    // the same characters a job id may hold.
    let valid = (1..=128).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !valid {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 128 letters, digits, '-' or '_', starting with a letter or digit",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The answer to a submission whose key names a job already stored: that
/// job (200) when the payload is the same, else 409.
async fn resubmitted(state: &ApiState, id: &str, payload: &Value) -> Result<Response, ApiError> {
    let existing = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::conflict(format!("job {id} already exists")))?;
    if &existing.payload != payload {
        return Err(ApiError::conflict(format!(
            "Idempotency-Key {id} was already used for a different payload"
        )));
    }
    Ok((StatusCode::OK, Json(job_view(&existing, 0))).into_response())
}

/// Query of `GET /api/queue/jobs`.
#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/queue/jobs`: newest first, optionally by status.
pub async fn list(
    State(state): State<ApiState>,
    _operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = query_param(query)?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?}; use one of: {}",
                JobState::ALL.map(JobState::as_str).join(", ")
            ))
        })?),
    };
    let jobs = state
        .store
        .list_jobs(status, query.limit.unwrap_or(100).min(1000))
        .await?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let first = state.store.first_unfinished_steps(&ids).await?;
    let views: Vec<Value> = jobs
        .iter()
        .map(|job| job_view(job, first.get(&job.id).copied().unwrap_or(0)))
        .collect();
    Ok(Json(json!({ "jobs": views })))
}

/// `GET /api/queue/jobs/<id>`: the job, its attempts and control events.
pub async fn get_job(
    State(state): State<ApiState>,
    _operator: Operator,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let job = load_job(&state, &id).await?;
    let first = state.store.first_unfinished_step(&id).await?;
    let mut view = job_view(&job, first);
    view["attempts"] = serde_json::to_value(state.store.attempts(&id).await?).unwrap_or_default();
    view["controlEvents"] = serde_json::to_value(state.store.control_events(&id).await?).unwrap_or_default();
    Ok(Json(view))
}

/// Query of the events endpoint.
#[derive(Debug, serde::Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
    stream: Option<bool>,
}

/// `GET /api/queue/jobs/<id>/events?after=N`: events after `N`; with
/// `Accept: text/event-stream` (or `stream=true`) a server-sent-events
/// stream that goes on as events arrive.
pub async fn events(
    State(state): State<ApiState>,
    _operator: Operator,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(id)?;
    let query = query_param(query)?;
    load_job(&state, &id).await?;
    let after = query.after.unwrap_or(0);
    let wants_stream = query.stream.unwrap_or(false)
        || headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        return Ok(Sse::new(event_stream(state, id, after))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
            .into_response());
    }
    let events = state
        .store
        .events_after(&id, after, query.limit.unwrap_or(1000).min(10_000))
        .await?;
    Ok(Json(json!({ "events": events })).into_response())
}

fn event_stream(state: ApiState, id: String, after: i64) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold((state, id, after), |(state, id, after)| async move {
        loop {
            match state.store.events_after(&id, after, 500).await {
                Ok(batch) if !batch.is_empty() => {
                    let last = batch.last().map_or(after, |e| e.seq);
                    let items: Vec<Result<SseEvent, Infallible>> = batch
                        .iter()
                        .map(|e| {
                            Ok(SseEvent::default()
                                .id(e.seq.to_string())
                                .event(e.event.clone())
                                .data(serde_json::to_string(e).unwrap_or_default()))
                        })
                        .collect();
                    return Some((stream::iter(items), (state, id, last)));
                }
                Ok(_) => {}
                Err(StoreError::UnknownJob(_)) => return None,
                Err(e) => tracing::warn!(job = %id, error = %e, "event stream: store error"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .flatten()
}

/// Body of the heartbeat.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    worker_id: String,
}

/// `POST /api/queue/jobs/<id>/heartbeat` (worker scope): renew the
/// caller's lease; returns the job with `payload.liveControl`.
pub async fn heartbeat(
    State(state): State<ApiState>,
    _worker: WorkerCaller,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let request: HeartbeatRequest = json_body(body).await?;
    load_job(&state, &id).await?;
    let by = ClaimedBy {
        owner: request.worker_id.clone(),
        lease: state.lease,
    };
    let job = state.store.heartbeat(&id, &by).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "worker {} does not hold job {id} (it is not running under that worker's lease)",
            request.worker_id
        ))
    })?;
    let first = state.store.first_unfinished_step(&id).await?;
    Ok(Json(job_view(&job, first)))
}

/// `POST /api/task-runs/<id>/control`: an operator's action.
pub async fn control(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let mut request: ControlRequest = json_body(body).await?;
    // A reason is free text an operator typed: it may hold a secret.
    request.reason = request.reason.map(|r| state.redactor.redact(&r));
    for _ in 0..10 {
        let job = load_job(&state, &id).await?;
        let first = state.store.first_unfinished_step(&id).await?;
        let now = ms_to_rfc3339(stepd_store::now_ms());
        let plan = plan(&job, &request, &caller.label, &now, first)?;
        let mut extra = Vec::new();
        if plan.action == ControlAction::Cancel && plan.job.status == JobState::Cancelled {
            extra.push(Event::JobCancelled {
                reason: format!("cancelled by {} before a worker claimed it", caller.label),
            });
        }
        let reason = request.reason.as_deref().filter(|r| !r.trim().is_empty());
        match state
            .store
            .apply_control(&plan.to_write(), job.version, &caller.label, reason, &extra)
            .await
        {
            Ok(updated) => {
                state.dispatcher.control_changed(&id);
                if updated.status == JobState::Queued && !updated.live_control.holds() {
                    if let Err(e) = state.dispatcher.announce(&id).await {
                        tracing::warn!(job = %id, error = %e, "announcing failed; the sweep will retry");
                    }
                }
                let first = state.store.first_unfinished_step(&id).await?;
                return Ok(Json(json!({
                    "action": plan.action.as_str(),
                    "stepId": plan.step_id,
                    "note": plan.note,
                    "job": job_view(&updated, first),
                })));
            }
            Err(StoreError::Contended(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!("job {id} is changing too fast; try again")))
}
