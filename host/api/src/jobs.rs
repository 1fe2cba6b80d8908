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
use serde_json::Value;

use super::auth::{Operator, WorkerCaller};
use super::error::{off_thread, path_param, query_param, ApiError};
use super::{ApiState, MAX_BODY_BYTES};
use crate::control::{plan, ControlRequest};
use crate::views::{ControlResponse, ErrorBody, EventPage, Health, JobList, JobView, StreamedEvent};
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

/// The job, or a 404 naming it.
pub(super) async fn load_job(state: &ApiState, id: &str) -> Result<JobRecord, ApiError> {
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))
}

/// `GET /healthz`: the process answers and its store does too.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()),
    responses((status = 200, description = "the process and its store answer", body = Health),
              (status = 503, description = "the store does not answer", body = ErrorBody)))]
pub async fn healthz(State(state): State<ApiState>) -> Response {
    match state.store.schema_versions().await {
        Ok(versions) => Json(Health {
            status: "ok".into(),
            store: state.store.backend(),
            dispatch: state.dispatcher.kind().into(),
            schema_version: versions.last().copied(),
        })
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}")).into_response(),
    }
}

/// `POST /api/queue/jobs`: validate and queue a job payload. A body that
/// is not a payload is a 400; a payload validation refuses (a zero budget,
/// duplicate step ids, a plugin or directory this host does not have, a
/// grant it does not allow) is a 422: the document states the shape, and
/// no document can list what a host has.
#[utoipa::path(post, path = "/api/queue/jobs", tag = "jobs", operation_id = "submit_job",
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$",
        description = "becomes the job's id: sent again with the same payload, the same job comes back (200); with another payload, 409")),
    request_body = JobPayload,
    responses(
        (status = 201, description = "queued", body = JobView, links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")),
                description = "the job just submitted")),
            ("JobEvents" = (operation_id = "job_events", parameters(("id" = "$response.body#/id")))),
            ("JobArtifacts" = (operation_id = "job_artifacts", parameters(("id" = "$response.body#/id")))),
            ("ControlJob" = (operation_id = "control_job", parameters(("id" = "$response.body#/id")))))),
        (status = 200, description = "the job this Idempotency-Key already submitted", body = JobView),
        (status = 400, description = "the body is not a job payload (malformed JSON, a wrong type, an unknown field); a malformed Idempotency-Key", body = ErrorBody),
        (status = 409, description = "the Idempotency-Key was used for another payload", body = ErrorBody),
        (status = 413, description = "the body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "a payload validation refuses (a zero budget, duplicate step ids, a plugin, directory or grant this host does not have); the message names the field", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<ApiState>,
    _operator: Operator,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let mut raw: Value = json_body(body).await?;
    integral_numbers_as_integers(&mut raw);
    let payload: JobPayload = JobPayload::parse(&raw.to_string()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Past this point the body has the payload's shape: whatever is refused
    // now is refused for what it names, not how it is written.
    // Resolution reads plugin files: off the async threads, so a slow disk
    // never stalls the server's other requests.
    let (base_dir, plugin_dir, grants) = (state.base_dir.clone(), state.plugin_dir.clone(), state.grants.clone());
    let validated = off_thread(move || {
        payload
            .validate(&base_dir, &plugin_dir, &grants)
            .map_err(|e| ApiError::unprocessable(e.to_string()))
    })
    .await?;
    // The job is resolved here, once: workers run this form as it is.
    let resolved = serde_json::to_value(&validated)
        .map_err(|e| ApiError::bad_request(format!("the resolved job cannot be stored: {e}")))?;
    let id = key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let payload = serde_json::to_value(&validated.payload).unwrap_or(raw);
    let new_job = NewJob {
        id: id.clone(),
        payload: payload.clone(),
        resolved: Some(resolved),
        max_attempts: validated.payload.max_attempts,
    };
    // In-process (and same-host) wake-ups cannot fail: the insert marks
    // the job announced. A broker's message can: marked once it went out.
    let embedded = state.dispatcher.announcing_cannot_fail();
    let inserted = if embedded {
        state.store.insert_announced_job(&new_job).await
    } else {
        state.store.insert_job(&new_job).await
    };
    let job = match inserted {
        Ok(job) => job,
        // A submission sent again (its answer was lost, or it met a 503):
        // the same job, not a second one.
        Err(StoreError::DuplicateJob(_)) => return resubmitted(&state, &id, &payload).await,
        Err(e) => return Err(e.into()),
    };
    match state.dispatcher.announce(&id).await {
        Ok(()) if embedded => {}
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
    Ok((StatusCode::CREATED, Json(JobView::of(&job, 0))).into_response())
}

/// JSON Schema counts `3.0` as an integer, so a payload that writes a count
/// as `3.0` matches the document, while serde's integer types refuse it:
/// such numbers become integers before the payload is parsed. The steps'
/// `inputs` are left alone: they reach plugins exactly as sent.
fn integral_numbers_as_integers(value: &mut Value) {
    /// Integers a double holds exactly (2^53).
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT) {
                #[allow(clippy::cast_possible_truncation)] // integral and within 2^53
                let integer = f as i64;
                *value = Value::from(integer);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(fields) => fields
            .iter_mut()
            .filter(|(key, _)| key.as_str() != "inputs")
            .for_each(|(_, v)| integral_numbers_as_integers(v)),
        _ => {}
    }
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
    Ok((StatusCode::OK, Json(JobView::of(&existing, 0))).into_response())
}

/// Query of `GET /api/queue/jobs`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    status: Option<JobState>,
    /// At most this many (default 100; more than 1000 is read as 1000).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
}

/// `GET /api/queue/jobs`: newest first, optionally by status.
#[utoipa::path(get, path = "/api/queue/jobs", tag = "jobs", operation_id = "list_jobs", params(ListQuery),
    responses((status = 200, description = "newest first", body = JobList),
              (status = 400, description = "an unknown status or a limit that is not a number", body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    _operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let query = query_param(query)?;
    let jobs = state
        .store
        .list_jobs(query.status, query.limit.unwrap_or(100).min(1000))
        .await?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let first = state.store.first_unfinished_steps(&ids).await?;
    let jobs = jobs
        .iter()
        .map(|job| JobView::of(job, first.get(&job.id).copied().unwrap_or(0)))
        .collect();
    Ok(Json(JobList { jobs }))
}

/// `GET /api/queue/jobs/<id>`: the job, its attempts and control events.
#[utoipa::path(get, path = "/api/queue/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, description = "the job with its attempts and control events", body = JobView),
              (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn get_job(
    State(state): State<ApiState>,
    _operator: Operator,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let id = path_param(id)?;
    let job = load_job(&state, &id).await?;
    let first = state.store.first_unfinished_step(&id).await?;
    let mut view = JobView::of(&job, first);
    view.attempts = Some(state.store.attempts(&id).await?);
    view.control_events = Some(state.store.control_events(&id).await?);
    Ok(Json(view))
}

/// Query of the events endpoint.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with a larger `seq` than this (default 0: from the first).
    #[param(minimum = -9223372036854775808_i64, maximum = 9223372036854775807_i64)]
    after: Option<i64>,
    /// At most this many (default 1000; more than 10000 is read as 10000).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// A server-sent-events stream (as `Accept: text/event-stream` asks):
    /// it goes on as events arrive and ends after an ended job's last
    /// event (two seconds after it ended, at the latest).
    stream: Option<bool>,
}

/// `GET /api/queue/jobs/<id>/events?after=N`: events after `N`; with
/// `Accept: text/event-stream` (or `stream=true`) a server-sent-events
/// stream that goes on as events arrive and ends after an ended job's last
/// event.
#[utoipa::path(get, path = "/api/queue/jobs/{id}/events", tag = "jobs", operation_id = "job_events",
    params(("id" = String, Path, description = "the job's id"), EventsQuery),
    responses((status = 200, description = "the events after `after` (JSON), or a stream of them (`text/event-stream`: one `event` per stored event, its `data` the same JSON object, its `id` the `seq`)",
                content((EventPage = "application/json"), (StreamedEvent = "text/event-stream"))),
              (status = 400, description = "a query parameter that is not a number or a boolean", body = ErrorBody),
              (status = 404, description = "no such job", body = ErrorBody)))]
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
    Ok(Json(EventPage { events }).into_response())
}

/// How long after a job ended its stream may still wait for events: most
/// endings write the last event with the status in one transaction, but a
/// cancel that meets a requeue writes `task.job.cancelled` just after it,
/// and the API's clock may trail the database's a little.
const ENDED_GRACE_MS: i64 = 2_000;

fn event_stream(state: ApiState, id: String, after: i64) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold((state, id, after), |(state, id, after)| async move {
        loop {
            // The job's state is read before its events: a job that had
            // ended (a while ago) before a read that found nothing new has
            // nothing more to send.
            let ended = match state.store.job_status(&id).await {
                Ok(Some((status, changed))) => {
                    status.is_terminal() && changed + ENDED_GRACE_MS <= stepd_store::now_ms()
                }
                Ok(None) => return None,
                Err(_) => false,
            };
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
                Ok(_) if ended => return None,
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
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The worker that holds the job's lease.
    worker_id: String,
}

/// `POST /api/queue/jobs/<id>/heartbeat` (worker scope): renew the
/// caller's lease; returns the job with `payload.liveControl`.
#[utoipa::path(post, path = "/api/queue/jobs/{id}/heartbeat", tag = "workers", operation_id = "heartbeat",
    security(("worker" = [])),
    params(("id" = String, Path, description = "the job's id")),
    request_body = HeartbeatRequest,
    responses((status = 200, description = "lease renewed; `payload.liveControl` holds the operator's standing requests", body = JobView),
              (status = 400, description = "a body that is not a heartbeat", body = ErrorBody),
              (status = 404, description = "no such job", body = ErrorBody),
              (status = 409, description = "that worker does not hold the job's lease", body = ErrorBody),
              (status = 413, description = "the body is larger than 1 MiB", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<ApiState>,
    _worker: WorkerCaller,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<JobView>, ApiError> {
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
    Ok(Json(JobView::of(&job, first)))
}

/// `POST /api/task-runs/<id>/control`: an operator's action.
#[utoipa::path(post, path = "/api/task-runs/{id}/control", tag = "control", operation_id = "control_job",
    params(("id" = String, Path, description = "the job's id")),
    request_body = ControlRequest,
    responses((status = 200, description = "the action was taken", body = ControlResponse),
              (status = 400, description = "a body that is not a control request: an unknown action, a step action without stepId", body = ErrorBody),
              (status = 404, description = "no such job", body = ErrorBody),
              (status = 409, description = "the action is impossible in the job's state, or the job has no such step", body = ErrorBody),
              (status = 413, description = "the body is larger than 1 MiB", body = ErrorBody)))]
pub async fn control(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<ControlResponse>, ApiError> {
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
                return Ok(Json(ControlResponse {
                    action: plan.action,
                    step_id: plan.step_id,
                    note: plan.note,
                    job: JobView::of(&updated, first),
                }));
            }
            Err(StoreError::Contended(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!("job {id} is changing too fast; try again")))
}
