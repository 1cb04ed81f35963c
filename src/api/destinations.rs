//! `/v1/destinations` routes (SPEC §2 "Destinations"): the circuit
//! breakers, and closing one by hand. A thin layer over the library.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::body::JsonBody;
use super::{ApiError, AppState, ErrorBody};
use crate::model::{DestinationList, ResetDestination};

/// The query of `GET /v1/destinations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `open`, `half_open` or `closed`.
    state: Option<String>,
}

/// The circuit breakers, open ones first.
#[utoipa::path(
    get,
    path = "/v1/destinations",
    operation_id = "listDestinations",
    tag = "destinations",
    params(ListQuery),
    responses(
        (status = 200, description = "The breakers.", body = DestinationList),
        (status = 400, description = "Bad filter (`invalid_query`).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            crate::error::ErrorCode::InvalidQuery,
            format!("{e}; the only parameter is state=open|half_open|closed"),
        )
    })?;
    let list = state
        .postback
        .destinations(&state.pool, query.state.as_deref())
        .await?;
    Ok(Json(list).into_response())
}

/// Close a breaker now: the origin's waiting deliveries become due at once.
#[utoipa::path(
    post,
    path = "/v1/destinations/reset",
    operation_id = "resetDestination",
    tag = "destinations",
    request_body(content = ResetDestination, content_type = "application/json"),
    responses(
        (status = 200, description = "Closed.", body = ResetDestination),
        (status = 400, description = "Not an origin.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No breaker for that origin (`destination_not_found`).", body = ErrorBody),
    )
)]
pub async fn reset(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ResetDestination>,
) -> Result<Response, ApiError> {
    let origin = state
        .postback
        .reset_destination(&state.pool, &request.origin)
        .await?;
    state.wake_workers();
    Ok(Json(ResetDestination { origin }).into_response())
}
