//! Health, readiness, metrics, egress and the JSON fallbacks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{ApiError, AppState, ErrorBody};
use crate::error::ErrorCode;
use crate::model::EgressView;

/// `{"status"}` of the health routes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process is up.", body = Health))
)]
pub async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// The database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The database answers.", body = Health),
        (status = 503, description = "The database is not reachable (`database_unavailable`).", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::store::ping(&state.pool),
    )
    .await;
    crate::metrics::database_reached(matches!(ping, Ok(true)));
    if matches!(ping, Ok(true)) {
        Json(Health { status: "ready" }).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DatabaseUnavailable,
            "the database is not reachable",
        )
        .into_response()
    }
}

/// Prometheus metrics (SPEC §4), text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"),
        (status = 404, description = "Another metrics recorder is installed in this process (`metrics_disabled`).", body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            crate::metrics::render(handle),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MetricsDisabled,
            "another metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// The addresses callbacks come from, for customers' allow-lists.
#[utoipa::path(
    get,
    path = "/v1/egress",
    operation_id = "getEgress",
    tag = "operations",
    responses(
        (status = 200, description = "Source and public addresses.", body = EgressView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    )
)]
pub async fn egress(State(state): State<AppState>) -> Response {
    Json(EgressView {
        source_addresses: state.source_addresses.clone(),
        public_addresses: state.public_addresses.clone(),
    })
    .into_response()
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such route; GET /openapi.json lists the API",
    )
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; GET /openapi.json lists the API",
    )
}
