//! `POST /v1/replays` and `GET /v1/stats` (SPEC §2 "Finding deliveries and
//! replaying in bulk", "Console"): a thin layer over the library's
//! `Postback::replay_matching` and `Postback::queue_stats`. It must not
//! touch the database itself.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::JsonBody;
use super::{ApiError, AppState, ErrorBody};
use crate::model::{QueueStats, ReplayReport, ReplayRequest};

/// Replay every delivery a filter matches, or preview it with `dryRun`.
///
/// The filter takes the fields of the list plus `ids`, and needs `status`
/// or `ids`. Deliveries are replayed the oldest first, in batches of 1,000
/// per statement, each with a fresh schedule and its id kept. Deliveries
/// being attempted right now are skipped (counted in `skipped`): replay them
/// once that attempt ends. Ids that name no delivery (or an expired one)
/// match nothing. A dry run changes nothing.
#[utoipa::path(
    post,
    path = "/v1/replays",
    operation_id = "replayDeliveries",
    tag = "deliveries",
    request_body(content = ReplayRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What matched, what was replayed, and a sample.", body = ReplayReport),
        (status = 400, description = "Bad input (no status nor ids, a bad filter value, rate or limit); the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Response, ApiError> {
    let report = state
        .postback
        .replay_matching(&state.pool, &request)
        .await?;
    if report.replayed > 0 {
        state.wake_workers();
    }
    Ok(Json(report).into_response())
}

/// The queue now (due, scheduled, in flight, oldest due) and the
/// deliveries that ended in the last hour.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "getStats",
    tag = "operations",
    responses(
        (status = 200, description = "The queue.", body = QueueStats),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
    )
)]
pub async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.postback.queue_stats(&state.pool).await?).into_response())
}
