//! The dashboard (docs/OPERATIONS.md#dashboard): three static files compiled into the
//! binary and served at `/`, so `stepd serve` needs no Node server and the
//! page works offline. The page itself asks for the operator token and
//! calls the same API as every other client.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// A page that never reaches out: no external fonts, scripts or frames.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'";

/// `GET /`: the page.
#[utoipa::path(get, path = "/", tag = "dashboard", operation_id = "dashboard", security(()),
    responses((status = 200, description = "the dashboard page", content((String = "text/html")))))]
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// `GET /dashboard/app.js`.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard", operation_id = "dashboard_script", security(()),
    responses((status = 200, description = "the dashboard's script", content((String = "text/javascript")))))]
pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

/// `GET /dashboard/app.css`.
#[utoipa::path(get, path = "/dashboard/app.css", tag = "dashboard", operation_id = "dashboard_style", security(()),
    responses((status = 200, description = "the dashboard's style sheet", content((String = "text/css")))))]
pub async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}
