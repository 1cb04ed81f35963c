//! `/v1/jobs` routes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::body::{JsonBody, RawBody};
use super::{ApiError, AppState, ErrorBody};
use crate::error::ErrorCode;
use crate::intake::Created;
use crate::model::{CallbackSpec, JobResult, JobView, NewJob};
use crate::validate::{self, parse_json};

/// `?webhook=URL`: one analytics callback, POST.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    webhook: Option<String>,
}

/// The `{jobId}` of the path; one that cannot be decoded names no job.
fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::JobNotFound,
            "no job has this id (job ids are visible ASCII characters)",
        )
    })
}

/// Register a job when its media is accepted.
///
/// The body may be omitted when `?webhook=URL` is given. The same `jobId`
/// again with the same body answers `200` and the existing job; with a
/// different body, `409`.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "createJob",
    tag = "jobs",
    params(
        ("webhook" = Option<String>, Query,
         description = "Shorthand for one analytics callback (POST) to this URL, added after the body's callbacks."),
    ),
    request_body(
        content = NewJob,
        content_type = "application/json",
        description = "The job; may be left out entirely when `?webhook=URL` is given.",
    ),
    responses(
        (status = 201, description = "The job was registered.", body = JobView),
        (status = 200, description = "The same jobId with the same body: the existing job.", body = JobView),
        (status = 400, description = "Bad input; the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "The jobId belongs to an expired job (`job_expired`).", body = ErrorBody),
        (status = 409, description = "The jobId exists with a different body (`job_exists`).", body = ErrorBody),
        (status = 413, description = "The body is larger than POSTBACK_MAX_BODY.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    query: Result<Query<CreateQuery>, QueryRejection>,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            format!("{}; the only query parameter is webhook=URL", e.body_text()),
        )
    })?;
    let mut job: NewJob = if bytes.iter().all(u8::is_ascii_whitespace) && query.webhook.is_some() {
        NewJob::default()
    } else {
        parse_json(&bytes)?
    };
    if let Some(url) = query.webhook {
        validate::destination(state.postback.policy(), &url, "webhook")?;
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

/// Poll a job: its status, its result once completed, and the delivery
/// state of each callback.
#[utoipa::path(
    get,
    path = "/v1/jobs/{jobId}",
    operation_id = "getJob",
    tag = "jobs",
    params(("jobId" = String, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "`job_not_found` for ids never seen, `job_expired` past expirationTime.", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let job_id = job_id(path)?;
    let view = state.postback.job(&state.pool, &job_id).await?;
    Ok(Json(view).into_response())
}

/// Post the job's result: in one transaction the job is marked done and
/// one delivery per callback is queued (a failed job queues its analytics
/// callbacks only).
#[utoipa::path(
    post,
    path = "/v1/jobs/{jobId}/result",
    operation_id = "postJobResult",
    tag = "jobs",
    params(("jobId" = String, Path, description = "The job id.")),
    request_body(content = JobResult, content_type = "application/json"),
    responses(
        (status = 200, description = "The job, Completed or Failed, with its queued callbacks.", body = JobView),
        (status = 400, description = "Bad input; the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "`job_not_found` or `job_expired`.", body = ErrorBody),
        (status = 409, description = "The job already has a result (`result_exists`).", body = ErrorBody),
        (status = 413, description = "The body is larger than POSTBACK_MAX_BODY.", body = ErrorBody),
    )
)]
pub async fn post_result(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(result): JsonBody<JobResult>,
) -> Result<Response, ApiError> {
    let job_id = job_id(path)?;
    let view = state
        .postback
        .post_result(&state.pool, &job_id, result)
        .await?;
    state.wake_workers();
    Ok(Json(view).into_response())
}
