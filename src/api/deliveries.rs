//! `/v1/deliveries` routes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use super::body::JsonBody;
use super::{ApiError, AppState};
use crate::model::NewDelivery;

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "delivery_not_found",
            format!("delivery {id} was not found (delivery ids are UUIDs)"),
        )
    })
}

/// `POST /v1/deliveries`.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(delivery): JsonBody<NewDelivery>,
) -> Result<Response, ApiError> {
    let id = state.postback.enqueue(&state.pool, delivery).await?;
    if let Some(waker) = &state.waker {
        waker.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"deliveryId": id}))).into_response())
}

/// `GET /v1/deliveries/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.postback.delivery(&state.pool, parse_id(&id)?).await?;
    Ok(Json(view).into_response())
}

/// `POST /v1/deliveries/{id}/replay`.
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    state.postback.replay(&state.pool, id).await?;
    if let Some(waker) = &state.waker {
        waker.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"deliveryId": id}))).into_response())
}
