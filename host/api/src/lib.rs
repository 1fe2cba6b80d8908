//! The HTTP API (docs/OPERATIONS.md#http-api): submit, list, read, events (polling and
//! server-sent events), the worker heartbeat, operator control, artifacts,
//! `/healthz`, the OpenAPI document and the dashboard at `/`. Bearer
//! tokens with operator and worker scopes; every error is JSON `{code,
//! message}`. The API writes to the store and pokes the dispatcher; it
//! never runs a step.

mod artifacts;
mod auth;
pub mod control;
mod dashboard;
mod error;
mod jobs;
mod openapi;

use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use auth::{load_or_generate_token, token_file, Caller, Operator, Scope, Tokens, WorkerCaller};
pub use error::ApiError;
pub use openapi::openapi_document;

use stepd_queue::Dispatcher;
use stepd_store::Store;

/// The largest request body accepted (a job payload is small).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// Who to tell about new jobs and control changes.
    pub dispatcher: Dispatcher,
    /// Accepted tokens.
    pub tokens: Arc<Tokens>,
    /// Where job artifacts are (`<root>/agent_jobs/<id>/`).
    pub artifact_root: PathBuf,
    /// Named plugins are checked against this directory at submit.
    pub plugin_dir: PathBuf,
    /// Relative repository paths of a submitted payload are taken from here.
    pub base_dir: PathBuf,
    /// How long a worker's heartbeat extends its lease.
    pub lease: std::time::Duration,
}

/// The router of the whole API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/dashboard/app.css", get(dashboard::app_css))
        .route("/healthz", get(jobs::healthz))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/queue/jobs", post(jobs::submit).get(jobs::list))
        .route("/api/queue/jobs/{id}", get(jobs::get_job))
        .route("/api/queue/jobs/{id}/events", get(jobs::events))
        .route("/api/queue/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/api/queue/jobs/{id}/artifacts", get(artifacts::list))
        .route("/api/queue/jobs/{id}/artifacts/{*path}", get(artifacts::download))
        .route("/api/task-runs/{id}/control", post(jobs::control))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here; see /api/openapi.json",
            )
        })
        .with_state(state)
}

/// Serve `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
