//! The HTTP API (docs/OPERATIONS.md#http-api): submit, list, read, events (polling and
//! server-sent events), the worker heartbeat, operator control, artifacts,
//! `/healthz`, `/readyz`, `/metrics`, the OpenAPI document and the
//! dashboard at `/`. Bearer
//! tokens with operator and worker scopes; every error is JSON `{code,
//! message}`. The API writes to the store and pokes the dispatcher; it
//! never runs a step.

mod artifacts;
mod auth;
pub mod control;
mod dashboard;
mod error;
mod health;
mod jobs;
mod openapi;
mod views;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Method;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

pub use auth::{load_or_generate_token, token_file, Caller, Operator, Scope, TokenConflict, Tokens, WorkerCaller};
pub use error::ApiError;
pub use health::{metrics_text, probe_router, readiness};
pub use openapi::openapi_document;
pub use views::{ErrorBody, JobView};

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
    /// What a submitted job may be granted (capabilities, local baselines).
    pub grants: Arc<stepd_job::payload::HostGrants>,
    /// The process's Prometheus registry, served at `/metrics`.
    pub prometheus: Arc<stepd_records::prometheus::Prometheus>,
    /// Scrubs the process's secrets from what operators send (a control
    /// reason) before the store or an event keeps it.
    pub redactor: Arc<stepd_records::redact::Redactor>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the dashboard's files, `/healthz`, the OpenAPI document.
    Public,
    /// A bearer token of this scope (the handler's `Operator` or
    /// `WorkerCaller` extractor checks it).
    Needs(Scope),
}

/// One route of the API: what it answers and who may call it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, in the router's syntax (`{id}`, `{*path}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// Every route with its handler. A route cannot be added without saying
/// who may call it; tests/tests/auth_matrix.rs holds each declaration to
/// what the server does and to the OpenAPI document.
fn routes() -> Vec<(Route, MethodRouter<ApiState>)> {
    use Access::{Needs, Public};
    use Scope::{Operator, Worker};
    let route = |method: Method, path, access| Route { method, path, access };
    vec![
        (route(Method::GET, "/", Public), get(dashboard::index)),
        (route(Method::GET, "/dashboard/app.js", Public), get(dashboard::app_js)),
        (
            route(Method::GET, "/dashboard/app.css", Public),
            get(dashboard::app_css),
        ),
        (route(Method::GET, "/healthz", Public), get(jobs::healthz)),
        (route(Method::GET, "/readyz", Public), get(health::readyz)),
        (route(Method::GET, "/metrics", Public), get(health::metrics)),
        (route(Method::GET, "/api/openapi.json", Public), get(openapi::serve)),
        (
            route(Method::POST, "/api/queue/jobs", Needs(Operator)),
            post(jobs::submit),
        ),
        (route(Method::GET, "/api/queue/jobs", Needs(Operator)), get(jobs::list)),
        (
            route(Method::GET, "/api/queue/jobs/{id}", Needs(Operator)),
            get(jobs::get_job),
        ),
        (
            route(Method::GET, "/api/queue/jobs/{id}/events", Needs(Operator)),
            get(jobs::events),
        ),
        (
            route(Method::POST, "/api/queue/jobs/{id}/heartbeat", Needs(Worker)),
            post(jobs::heartbeat),
        ),
        (
            route(Method::GET, "/api/queue/jobs/{id}/artifacts", Needs(Operator)),
            get(artifacts::list),
        ),
        (
            route(Method::GET, "/api/queue/jobs/{id}/artifacts/{*path}", Needs(Operator)),
            get(artifacts::download),
        ),
        (
            route(Method::POST, "/api/task-runs/{id}/control", Needs(Operator)),
            post(jobs::control),
        ),
    ]
}

/// Every route the API serves, and who may call it.
pub fn route_table() -> Vec<Route> {
    routes().into_iter().map(|(route, _)| route).collect()
}

/// The router of the whole API.
pub fn router(state: ApiState) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (route, handler)| {
            router.route(route.path, handler)
        })
        .route_layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(log_response),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here; see /api/openapi.json",
            )
        })
        .with_state(state)
}

/// The span of one request: method, route (the template, so ids stay out
/// of the route field) and, once the token was checked, the caller's label
/// (never the token).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("-", axum::extract::MatchedPath::as_str)
        .to_owned();
    tracing::info_span!("request", method = %request.method(), route, caller = tracing::field::Empty)
}

/// One log line per answered request, in its span: status and latency.
fn log_response(response: &axum::http::Response<axum::body::Body>, latency: std::time::Duration, _: &tracing::Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        "answered"
    );
}

/// Serve a worker's probe listener ([`probe_router`]) until `stop`.
pub async fn serve_probes(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
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
