//! Readiness and metrics, for probes and scrapers (no token: they carry
//! counts and states, never a payload, a secret or an id beyond step ids).
//! The same two functions serve `stepd worker`'s own small listener.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use stepd_queue::Dispatcher;
use stepd_records::prometheus::{Prometheus, CONTENT_TYPE};
use stepd_store::Store;

use super::views::{ErrorBody, Health};
use super::{ApiError, ApiState};

/// Whether this process can do its work: its store answers and its broker
/// (when it has one) is reachable. `Err` names what is not.
pub async fn readiness(store: &Store, dispatcher: &Dispatcher) -> Result<Health, String> {
    store
        .schema_versions()
        .await
        .map_err(|e| format!("store unavailable: {e}"))?;
    dispatcher
        .check_broker()
        .await
        .map_err(|e| format!("broker unavailable: {e}"))?;
    Ok(Health {
        status: "ready".into(),
        store: store.backend(),
        dispatch: dispatcher.kind().into(),
        schema_version: None,
    })
}

/// `/metrics`' body: the store's gauges as of now (when the store
/// answers; counters are served either way), then the whole registry.
pub async fn metrics_text(store: &Store, lease: Duration, prometheus: &Prometheus) -> String {
    match store.gauges(lease).await {
        Ok(g) => prometheus.set_store_view(&g.by_status, g.due, g.oldest_lease_age),
        Err(e) => tracing::warn!(error = %e, "metrics: the store's gauges are stale"),
    }
    prometheus.encode()
}

/// `GET /readyz`: 200 when the store and the broker answer, else 503
/// naming which.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses((status = 200, description = "the store and the broker (when there is one) answer", body = Health),
              (status = 503, description = "the store or the broker does not answer; the message names which", body = ErrorBody)))]
pub async fn readyz(State(state): State<ApiState>) -> Response {
    match readiness(&state.store, &state.dispatcher).await {
        Ok(body) => Json(body).into_response(),
        Err(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
    }
}

/// `GET /metrics`: the Prometheus registry in the text format.
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "stepd's counters and histograms, jobs by status, queue depth, the oldest lease's age, running attempts",
        content((String = "application/openmetrics-text")))))]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let text = metrics_text(&state.store, state.lease, &state.prometheus).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// What a worker's probe listener shares.
#[derive(Clone)]
struct ProbeState {
    store: Store,
    dispatcher: Dispatcher,
    lease: Duration,
    prometheus: std::sync::Arc<Prometheus>,
}

/// The router of `stepd worker --metrics-listen`: `/healthz` (the process
/// answers), `/readyz` (its store and broker answer) and `/metrics`.
pub fn probe_router(
    store: Store,
    dispatcher: Dispatcher,
    lease: Duration,
    prometheus: std::sync::Arc<Prometheus>,
) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(|State(s): State<ProbeState>| async move {
                match readiness(&s.store, &s.dispatcher).await {
                    Ok(body) => Json(body).into_response(),
                    Err(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<ProbeState>| async move {
                let text = metrics_text(&s.store, s.lease, &s.prometheus).await;
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
            }),
        )
        .with_state(ProbeState {
            store,
            dispatcher,
            lease,
            prometheus,
        })
}
