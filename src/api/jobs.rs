//! `/v1/jobs` routes.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::body::{JsonBody, RawBody};
use super::{ApiError, AppState};
use crate::intake::Created;
use crate::model::{CallbackSpec, JobResult, NewJob};
use crate::validate::parse_json;

/// `?webhook=URL`: one analytics callback, POST.
#[derive(Debug, Deserialize)]
pub struct CreateQuery {
    webhook: Option<String>,
}

/// `POST /v1/jobs`.
pub async fn create(
    State(state): State<AppState>,
    Query(query): Query<CreateQuery>,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    let mut job: NewJob = if bytes.iter().all(u8::is_ascii_whitespace) && query.webhook.is_some() {
        NewJob::default()
    } else {
        parse_json(&bytes)?
    };
    if let Some(url) = query.webhook {
        job.publish.callbacks.push(CallbackSpec {
            url,
            ..CallbackSpec::default()
        });
    }
    let (view, created) = state.postback.create_job(&state.pool, job).await?;
    let status = match created {
        Created::New => StatusCode::CREATED,
        Created::Existing => StatusCode::OK,
    };
    Ok((status, Json(view)).into_response())
}

/// `GET /v1/jobs/{jobId}`.
pub async fn get(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.postback.job(&state.pool, &job_id).await?;
    Ok(Json(view).into_response())
}

/// `POST /v1/jobs/{jobId}/result`.
pub async fn post_result(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    JsonBody(result): JsonBody<JobResult>,
) -> Result<Response, ApiError> {
    let view = state
        .postback
        .post_result(&state.pool, &job_id, result)
        .await?;
    if let Some(waker) = &state.waker {
        waker.wake();
    }
    Ok(Json(view).into_response())
}
