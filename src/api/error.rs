//! Library errors as HTTP answers: a 4xx (or 503 while the database is
//! away) with `{"error": {"code", "message"}}`; never a stack trace.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code for scripts, e.g. `job_not_found`.
    pub code: ErrorCode,
    /// A human sentence saying what to fix.
    #[schema(example = "publish.callbacks[0].url: url must use http or https, got ftp")]
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An answer with `status`, `code` and a human `message`.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let code = err.code();
        match &err {
            Error::Validation { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, err.to_string())
            }
            Error::NotFound { .. } | Error::Expired { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, code, err.to_string())
            }
            Error::Conflict { message, .. } => {
                ApiError::new(StatusCode::CONFLICT, code, message.clone())
            }
            Error::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the database is not reachable right now; nothing was stored, retry shortly",
                )
            }
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "an internal error occurred; nothing was stored",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
