//! The OpenAPI 3.1 document of the whole API, served at
//! `/api/openapi.json`. Written by hand next to the routes; a test checks
//! that every route is in it.

use axum::Json;
use serde_json::{json, Value};

use stepd_job::control::ControlAction;
use stepd_store::JobState;

fn error_responses(codes: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            (*code).to_owned(),
            json!({"description": describe(code), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(map)
}

fn describe(code: &str) -> &'static str {
    match code {
        "400" => "malformed request, unknown action, missing or unknown stepId",
        "401" => "no or unknown bearer token",
        "403" => "token of the wrong scope",
        "404" => "unknown job or artifact",
        "409" => "action impossible in the job's state",
        "413" => "request body too large",
        "503" => "the store is unreachable just now; try again after Retry-After seconds",
        _ => "error",
    }
}

/// The members of two JSON objects together.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// `ok` with the error responses `codes`, and 503: every route that
/// answers from the store may meet it unreachable.
fn with_errors(ok: Value, codes: &[&str]) -> Value {
    let codes: Vec<&str> = codes.iter().copied().chain(["503"]).collect();
    let mut responses = error_responses(&codes);
    if let (Some(r), Some(ok)) = (responses.as_object_mut(), ok.as_object()) {
        for (k, v) in ok {
            r.insert(k.clone(), v.clone());
        }
    }
    responses
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}})
}

/// The document.
pub fn openapi_document() -> Value {
    let operator = json!([{"operator": []}]);
    let worker = json!([{"worker": []}]);
    let job_ok = |status: &str, what: &str| json!({ status: {"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "stepd", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Self-healing step runner: jobs, events, operator control and artifacts."},
        "components": {
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer", "description": "STEPD_OPERATOR_TOKENS"},
                "worker": {"type": "http", "scheme": "bearer", "description": "STEPD_WORKER_TOKENS"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"],
                          "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "LiveControl": {"type": "object", "properties": {
                    "paused": {"type": "boolean"}, "takeover": {"type": "boolean"},
                    "recovery": {"type": ["object", "null"], "properties": {
                        "action": {"type": "string"}, "stepId": {"type": "string"}, "reason": {"type": ["string", "null"]},
                        "requestedBy": {"type": "string"}, "updatedAt": {"type": "string"}}}}},
                "Job": {"type": "object", "required": ["id", "status", "attempt", "maxAttempts", "payload", "steps"], "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": JobState::ALL.map(JobState::as_str)},
                    "attempt": {"type": "integer"}, "maxAttempts": {"type": "integer"},
                    "nextAttemptAt": {"type": "string", "format": "date-time"},
                    "leaseOwner": {"type": ["string", "null"]},
                    "cancelRequested": {"type": "boolean"},
                    "currentStep": {"type": ["object", "null"]},
                    "firstUnfinishedStep": {"type": "integer"},
                    "steps": {"type": "array", "items": {"type": "object"}},
                    "attempts": {"type": "array", "items": {"type": "object"}},
                    "controlEvents": {"type": "array", "items": {"type": "object"}},
                    "payload": {"type": "object", "properties": {"liveControl": {"$ref": "#/components/schemas/LiveControl"}}}}},
                "Event": {"type": "object", "required": ["seq", "jobId", "at", "event", "payload"], "properties": {
                    "seq": {"type": "integer"}, "jobId": {"type": "string"}, "at": {"type": "string"},
                    "event": {"type": "string"}, "payload": {"type": "object"}}},
                "ControlRequest": {"type": "object", "required": ["action"], "additionalProperties": false, "properties": {
                    "action": {"type": "string", "enum": ControlAction::ALL.map(ControlAction::as_str)},
                    "stepId": {"type": "string"}, "reason": {"type": "string"}}}
            }
        },
        "paths": {
            "/": {"get": {"summary": "The dashboard", "security": [],
                "responses": {"200": {"description": "the dashboard page", "content": {"text/html": {}}}}}},
            "/dashboard/app.js": {"get": {"summary": "The dashboard's script", "security": [],
                "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}}}},
            "/dashboard/app.css": {"get": {"summary": "The dashboard's style sheet", "security": [],
                "responses": {"200": {"description": "CSS", "content": {"text/css": {}}}}}},
            "/healthz": {"get": {"summary": "The server and its store answer", "security": [],
                "responses": {"200": {"description": "healthy"}, "503": {"description": "store unavailable"}}}},
            "/readyz": {"get": {"summary": "The store and the broker (when there is one) answer", "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "the store or the broker is unavailable (the message names which)"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text): stepd's counters and histogram, jobs by status, queue depth, the oldest lease's age, running attempts", "security": [],
                "responses": {"200": {"description": "the metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
            "/api/openapi.json": {"get": {"summary": "This document", "security": [],
                "responses": {"200": {"description": "the OpenAPI document"}}}},
            "/api/queue/jobs": {
                "post": {"summary": "Submit a job payload", "security": operator,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "becomes the job's id: sent again with the same payload, the same job comes back (200); with another payload, 409",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": with_errors(merge(job_ok("201", "queued"), job_ok("200", "the job this Idempotency-Key already submitted")), &["400", "401", "403", "409", "413"])},
                "get": {"summary": "List jobs, newest first", "security": operator,
                    "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}},
                                   {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                    "responses": with_errors(json!({"200": {"description": "{jobs: [Job]}"}}), &["400", "401", "403"])}
            },
            "/api/queue/jobs/{id}": {"get": {"summary": "A job with its attempts and control events", "security": operator,
                "parameters": [id_param()], "responses": with_errors(job_ok("200", "the job"), &["401", "403", "404"])}},
            "/api/queue/jobs/{id}/events": {"get": {"summary": "Events after a sequence number; text/event-stream for a live stream",
                "security": operator,
                "parameters": [id_param(), {"name": "after", "in": "query", "schema": {"type": "integer"}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                               {"name": "stream", "in": "query", "schema": {"type": "boolean"}}],
                "responses": with_errors(json!({"200": {"description": "{events: [Event]} or server-sent events",
                    "content": {"application/json": {}, "text/event-stream": {}}}}), &["401", "403", "404"])}},
            "/api/queue/jobs/{id}/heartbeat": {"post": {"summary": "Renew a worker's lease; returns the job with payload.liveControl",
                "security": worker, "parameters": [id_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object",
                    "required": ["workerId"], "properties": {"workerId": {"type": "string"}}}}}},
                "responses": with_errors(job_ok("200", "lease renewed"), &["400", "401", "403", "404", "409"])}},
            "/api/queue/jobs/{id}/artifacts": {"get": {"summary": "List the job's artifact files", "security": operator,
                "parameters": [id_param()], "responses": with_errors(json!({"200": {"description": "{artifacts: [{path, size}]}"}}), &["401", "403", "404"])}},
            "/api/queue/jobs/{id}/artifacts/{path}": {"get": {"summary": "Download one artifact", "security": operator,
                "parameters": [id_param(), {"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with_errors(json!({"200": {"description": "the file"}}), &["400", "401", "403", "404"])}},
            "/api/task-runs/{id}/control": {"post": {"summary": "Pause, resume, takeover, cancel, retry_step, hard_reset_step or resume_from_step",
                "security": operator, "parameters": [id_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ControlRequest"}}}},
                "responses": with_errors(json!({"200": {"description": "{action, stepId, note, job}"}}), &["400", "401", "403", "404", "409", "413"])}}
        }
    })
}

/// `GET /api/openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(openapi_document())
}
