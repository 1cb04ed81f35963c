//! `/v1/deliveries` routes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use super::body::JsonBody;
use super::{ApiError, AppState, ErrorBody};
use crate::error::ErrorCode;
use crate::model::{DeliveryAccepted, DeliveryList, DeliveryListQuery, DeliveryView, NewDelivery};

/// The `{deliveryId}` of the path; anything but a UUID names no delivery.
fn delivery_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::DeliveryNotFound,
            "no delivery has this id (delivery ids are UUIDs, as in the webhook-id header)",
        )
    };
    let Path(id) = path.map_err(|_| not_found())?;
    Uuid::parse_str(&id).map_err(|_| not_found())
}

/// Queue any callback outside the job flow.
///
/// Exactly one of `body`, `bodyBase64` or `json` is sent.
#[utoipa::path(
    post,
    path = "/v1/deliveries",
    operation_id = "createDelivery",
    tag = "deliveries",
    request_body(content = NewDelivery, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued.", body = DeliveryAccepted),
        (status = 400, description = "Bad input; the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 413, description = "The body is larger than POSTBACK_MAX_BODY.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(delivery): JsonBody<NewDelivery>,
) -> Result<Response, ApiError> {
    let (delivery_id, started) = state
        .postback
        .enqueue_batched(&state.batcher, delivery, state.handoff.as_ref())
        .await?;
    if !started {
        state.wake_workers();
    }
    Ok((StatusCode::ACCEPTED, Json(DeliveryAccepted { delivery_id })).into_response())
}

/// A delivery with every attempt.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{deliveryId}",
    operation_id = "getDelivery",
    tag = "deliveries",
    params(("deliveryId" = Uuid, Path, description = "The delivery id (the `webhook-id` header).")),
    responses(
        (status = 200, description = "The delivery.", body = DeliveryView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such delivery, or it expired (`delivery_not_found`).", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let view = state
        .postback
        .delivery(&state.pool, delivery_id(path)?)
        .await?;
    Ok(Json(view).into_response())
}

/// Put a delivery back in the queue for a fresh cycle of the schedule,
/// keeping its id (receivers dedupe on `webhook-id`).
#[utoipa::path(
    post,
    path = "/v1/deliveries/{deliveryId}/replay",
    operation_id = "replayDelivery",
    tag = "deliveries",
    params(("deliveryId" = Uuid, Path, description = "The delivery id (the `webhook-id` header).")),
    responses(
        (status = 202, description = "Queued again.", body = DeliveryAccepted),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such delivery, or it expired (`delivery_not_found`).", body = ErrorBody),
        (status = 409, description = "An attempt is in flight right now (`delivery_in_flight`); retry shortly.", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let delivery_id = delivery_id(path)?;
    state.postback.replay(&state.pool, delivery_id).await?;
    state.wake_workers();
    Ok((StatusCode::ACCEPTED, Json(DeliveryAccepted { delivery_id })).into_response())
}

/// Find deliveries, newest first, a page at a time.
///
/// Every filter given narrows the list. `since` and `until` take an RFC 3339
/// time or a duration back from now (`2h`, `3d`) and bound `createdAt`. A
/// delivery whose worker's lease ran out is due again and listed `pending`.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    operation_id = "listDeliveries",
    tag = "deliveries",
    params(DeliveryListQuery),
    responses(
        (status = 200, description = "A page of deliveries, newest first.", body = DeliveryList),
        (status = 400, description = "A bad filter value (`invalid_query`); the message names the parameter.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<DeliveryListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            format!(
                "{}; the parameters are status, customerId, jobId, host, since, until, limit and cursor",
                e.body_text()
            ),
        )
    })?;
    let page = state.postback.list_deliveries(&state.pool, &query).await?;
    Ok(Json(page).into_response())
}
