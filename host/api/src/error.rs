//! The API's one error shape, `{code, message}`, and its status codes
//! (docs/OPERATIONS.md#http-api): every refusal names what was wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::control::ControlError;
use stepd_store::StoreError;

/// What a 503 asks the caller to wait: a database restart or a broken
/// connection being replaced takes about this long.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// An API error: a status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a human.
    pub message: String,
    /// Seconds after which the same request is worth sending again (a 503
    /// while the store is unreachable), sent as `Retry-After`.
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401: no or a bad token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 403: a token of the wrong scope.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    /// 404: no such job or file.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 409: impossible in the job's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 422: a well-formed request this host cannot act on as it stands
    /// (a payload naming a plugin or directory it does not have).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after_seconds: None,
        }
    }

    /// 503: the store cannot be reached just now; try again after
    /// [`RETRY_AFTER_SECONDS`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after_seconds: Some(RETRY_AFTER_SECONDS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// The `code` field: a stable, machine-readable name of the status.
    pub fn code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code(), "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownJob(id) => ApiError::not_found(format!("unknown job {id}")),
            StoreError::DuplicateJob(id) => ApiError::conflict(format!("job {id} already exists")),
            StoreError::Contended(id) => ApiError::conflict(format!("job {id} is changing too fast; try again")),
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "the store is unreachable");
                ApiError::unavailable(format!("the store is unreachable just now ({other}); try again"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::BadRequest(m) => ApiError::bad_request(m),
            ControlError::Conflict(m) => ApiError::conflict(m),
        }
    }
}

/// A path parameter, or a JSON 400 naming what is wrong with it (axum's
/// own rejection is plain text).
pub fn path_param<T>(
    value: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<T, ApiError> {
    value
        .map(|axum::extract::Path(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// Query parameters, or a JSON 400 naming what is wrong with them.
pub fn query_param<T>(
    value: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    value
        .map(|axum::extract::Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

/// File-system work off the async threads: a slow disk (or many plugin
/// files to hash) must not stall the API's other requests.
pub(crate) async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("file work failed: {e}")))?
}
