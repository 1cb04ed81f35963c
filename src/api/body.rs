//! Request bodies: read within POSTBACK_MAX_BODY (413 above it), under a
//! byte budget for all requests at once, and parsed with errors that name
//! the field.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::error::ErrorCode;
use crate::validate::{parse_json, JsonObjects};

/// A JSON body of type `T` (an empty body is refused unless `T` is `Option`).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// The raw body, possibly empty.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    ErrorCode::BodyTooLarge,
                    "the request body is larger than POSTBACK_MAX_BODY allows; send less or raise the limit",
                )
            } else {
                ApiError::new(status, ErrorCode::InvalidBody, rejection.body_text())
            }
        })?;
        Ok(RawBody(bytes))
    }
}

/// Bodies above this many bytes are parsed on a blocking thread: a large
/// JSON document takes milliseconds to parse (tens of them for a 16 MiB
/// one), and many of them at once on the async threads starved every
/// other connection (measured: with 40 concurrent 6 MB deliveries, queued
/// connections were closed by the header-read timeout before their head
/// was read).
const PARSE_INLINE_MAX: usize = 64 << 10;

impl<S: Send + Sync, T: DeserializeOwned + JsonObjects + Send + 'static> FromRequest<S>
    for JsonBody<T>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                "the request body is empty; send a JSON object",
            ));
        }
        if bytes.len() <= PARSE_INLINE_MAX {
            return Ok(JsonBody(parse_json(&bytes)?));
        }
        let parsed = tokio::task::spawn_blocking(move || parse_json::<T>(&bytes))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::InternalError,
                    "the request body could not be parsed; try again",
                )
            })??;
        Ok(JsonBody(parsed))
    }
}

/// Bytes of request bodies the API reads and handles at once. A body is
/// held two or three times while it is handled (as received, as parsed,
/// as the statement that stores it), so forty 6 MB deliveries arriving
/// together took `serve` to about 1 GB before; with the budget they wait
/// their turn (their bodies stay in the kernel's socket buffers, and the
/// 60 s arrival deadline still holds) and the process stays bounded by
/// settings (SPEC §3).
pub const BODY_BUDGET: usize = 64 << 20;

/// Requests whose body is at most this large (by `Content-Length`) skip
/// the budget: they are the common case and cost next to nothing.
const SMALL_BODY: u64 = 64 << 10;

/// The shared byte budget of request bodies (cheap to clone).
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget(Arc::new(Semaphore::new(BODY_BUDGET)))
    }
}

/// Holds room in the budget for a request's body while the request is
/// read and handled: its `Content-Length` (at most the budget), or
/// `POSTBACK_MAX_BODY` when it does not say (chunked). Small bodies and
/// bodiless requests pass at once.
///
/// Its state is the budget and `POSTBACK_MAX_BODY` alone (not the whole
/// `AppState`, which an extractor would clone on every request).
pub async fn hold_budget(
    State((budget, max_body)): State<(BodyBudget, usize)>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request
        .headers()
        .get(axum::http::header::TRANSFER_ENCODING)
        .is_some();
    let want = match declared {
        Some(len) if len <= SMALL_BODY => 0,
        // Refused by the body limit (413) before a byte of it is read.
        Some(len) if len > max_body as u64 => 0,
        Some(len) => len,
        None if chunked => max_body as u64,
        None => 0,
    };
    if want == 0 {
        return next.run(request).await;
    }
    let want = want.min(BODY_BUDGET as u64).min(u32::MAX as u64) as u32;
    let Ok(_room) = budget.0.clone().acquire_many_owned(want).await else {
        return next.run(request).await;
    };
    next.run(request).await
}
